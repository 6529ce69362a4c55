"""`gradpruner compare` end to end on a tiny model: every method, resume, tables and plots."""

import csv
import json

import pytest

from gradpruner.cli import main
from gradpruner.config import all_methods
from gradpruner.reports.compare_report import spearman
from tiny_models import save_tiny_model, write_color_questions

ARGS = ["--steps", "3", "--batch-size", "4", "--lr", "5e-3", "--probe-steps", "3",
        "--heldout", "8", "--limit", "8", "--ratio", "0.3,0.5"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    save_tiny_model(root / "model", "llama")
    write_color_questions(root / "data.jsonl", 60)
    return root


@pytest.fixture(scope="module")
def compared(workspace):
    out = workspace / "cmp"
    code = main(["compare", "--model", str(workspace / "model"), "--data",
                 str(workspace / "data.jsonl"), "--out", str(out), *ARGS])
    assert code == 0
    return out


def test_every_method_and_ratio_has_a_row(compared):
    with open(compared / "results.csv") as f:
        table = list(csv.DictReader(f))
    cells = {(r["method"], r["ratio"]) for r in table}
    assert cells == {("dense", "0.0")} | {(m, r) for m in all_methods() for r in ("0.3", "0.5")}
    for row in table:
        if row["method"] != "dense":
            removed = row["layers_removed"].split()
            assert len(removed) == (2 if row["ratio"] == "0.3" else 3)  # round(0.3 * 6), 0.5 * 6
            assert 0 < float(row["params_removed"]) < 1
        assert 0 <= float(row["acc_after"]) <= 1
    md = (compared / "results.md").read_text()
    assert "## Ratio 0.5" in md and "rank correlation" in md
    for name in ("accuracy.png", "layers-r0.3.png", "layers-r0.5.png"):
        assert (compared / name).stat().st_size > 1000


def test_shared_work_is_done_once_and_same_cuts_share_a_fine_tune(compared):
    assert sorted(p.name for p in compared.glob("probe-*")) == ["probe-s0"]
    results = json.loads((compared / "results.json").read_text())
    by_key = {}
    for cell in results["cells"]:
        key = (cell["ratio"], json.dumps(cell["prune"]["plan"]))
        if key in by_key:  # a later cell with the same cut reuses the earlier fine-tune
            assert cell["same_cut_as"] == by_key[key]["method"]
            assert cell["after"] == by_key[key]["after"]
        else:
            by_key[key] = cell
    probe = json.loads((compared / "probe-s0" / "scores.json").read_text())["probe"]
    for ratio in (0.3, 0.5):
        cells = {c["method"]: c for c in results["cells"] if c["ratio"] == ratio}
        auto = cells["auto"]["prune"]["selection"]["auto"]
        # 10 % of a 3-step heal, timed by the probe: too little to judge, so block influence's cut
        assert auto["plan"]["heal_steps"] == 3 and auto["plan"]["fraction"] == 0.1
        assert auto["plan"]["step_seconds"] == pytest.approx(probe["step_seconds"], abs=1e-3)
        assert auto["judge"] is None and auto["chosen"] == "block_influence"
        assert cells["auto"]["prune"]["removed_layers"] == cells["block_influence"]["prune"]["removed_layers"]


def test_a_finished_comparison_resumes_without_recomputing(compared, workspace):
    cells = compared / "cells"
    stamps = {p.name: p.stat().st_mtime_ns for p in cells.iterdir()}
    victim = cells / "tail-r0.3-s0.json"
    victim.unlink()
    settings = json.loads((compared / "settings.json").read_text())
    assert not {"progress", "save_every", "resume"} & set(settings["train"])  # control only
    code = main(["compare", "--model", str(workspace / "model"), "--data",
                 str(workspace / "data.jsonl"), "--out", str(compared), *ARGS])
    assert code == 0
    assert victim.is_file()
    assert {p.name: p.stat().st_mtime_ns for p in cells.iterdir() if p != victim} == \
        {k: v for k, v in stamps.items() if k != victim.name}


def test_other_settings_in_the_same_folder_are_refused(compared, workspace, capsys):
    code = main(["compare", "--model", str(workspace / "model"), "--data",
                 str(workspace / "data.jsonl"), "--out", str(compared), *ARGS[:-2], "--steps", "5",
                 "--ratio", "0.3"])
    assert code == 2
    assert "other settings (train)" in capsys.readouterr().err


def test_seeds_start_at_the_given_seed(workspace, tmp_path):
    out = tmp_path / "seeded"
    assert main(["compare", "--model", str(workspace / "model"), "--data",
                 str(workspace / "data.jsonl"), "--out", str(out), "--methods", "tail",
                 "--ratio", "0.3", "--seed", "5", "--seeds", "2", *ARGS[:-2]]) == 0
    assert sorted(p.name for p in (out / "cells").iterdir()) == [
        "dense-s5.json", "dense-s6.json", "dense-zero-shot.json", "tail-r0.3-s5.json", "tail-r0.3-s6.json"]
    assert (out / "layers-r0.3.png").is_file()


def test_unknown_method_is_one_line(workspace, tmp_path, capsys):
    code = main(["compare", "--model", str(workspace / "model"), "--data",
                 str(workspace / "data.jsonl"), "--out", str(tmp_path / "x"), "--methods", "tail,nope"])
    assert code == 2
    assert "unknown method(s) nope" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_spearman_matches_hand_computation():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ranks with a tie: x -> 0, 1.5, 1.5, 3; y -> 0, 1, 2, 3
    assert spearman([1, 5, 5, 9], [1, 2, 3, 4]) == pytest.approx(0.9486832980505138)
    assert spearman([1, 2], [1, 2]) is None
