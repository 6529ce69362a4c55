"""Pinned behaviour of the stage commands and of a tiny `run`: the records they write (the probe's
scores, the sidecars of `prune` and `finetune`, the run's report.json) and the weights of every
model they save are exactly what they were when this was written, and the stage commands give
the plan and the weights that `run` gives for the same settings.

Timings, library versions and this machine's paths are left out of the pins. To regenerate them
(only when a change of results is intended):

    cd tests && ../.venv/bin/python test_stage_pins.py [OUTPUT.json]
"""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from gradpruner.cli import main
from tiny_models import save_tiny_model, write_color_questions

PINS = Path(__file__).with_name("pinned_stages.json")
TRAIN = ["--batch-size", "4", "--lr", "5e-3", "--seed", "0"]
VOLATILE = re.compile(r"seconds|per_second|^versions$|^resumed_from$|^checkpoint_dir$")


def stable(value, root: str):
    """`value` (parsed JSON) without timings and versions, `root` written as <root>, floats to
    9 significant digits."""
    if isinstance(value, dict):
        return {k: stable(v, root) for k, v in value.items() if not VOLATILE.search(k)}
    if isinstance(value, list):
        return [stable(v, root) for v in value]
    if isinstance(value, str):
        return value.replace(root, "<root>")
    if isinstance(value, float) and math.isfinite(value):
        return float(f"{value:.9g}")
    return value


def fingerprint(folder: Path) -> dict[str, list[float]]:
    """Float64 sum and sum of squares of every tensor a model folder saved."""
    tensors = load_file(str(folder / "model.safetensors"))
    return {name: [float(f"{t.double().sum().item():.10g}"), float(f"{t.double().square().sum().item():.10g}")]
            for name, t in sorted(tensors.items())}


def cli(*args) -> None:
    assert main([str(a) for a in args]) == 0


def produce(root: Path) -> dict:
    """Run the stages and a tiny `run` in `root`; what is pinned of them."""
    save_tiny_model(root / "model")
    data = root / "data.jsonl"
    write_color_questions(data, 40)
    model = root / "model"
    cli("probe", "--model", model, "--data", data, "--steps", "3", "--schedule-steps", "3",
        "--heldout", "8", "--out", root / "probe", *TRAIN)
    cli("prune", "--model", model, "--scores", root / "probe", "--data", data, "--layers", "2",
        "--merge", "auto", "--selection-budget", "none", "--out", root / "pruned")
    cli("finetune", "--model", root / "pruned", "--data", data, "--steps", "3", "--warm-start",
        root / "probe", "--out", root / "tuned", *TRAIN)
    cli("run", "--model", model, "--data", data, "--probe-steps", "3", "--steps", "3",
        "--heldout", "8", "--layers", "2", "--merge", "auto", "--selection-budget", "none",
        "--limit", "8", "--no-dense", "--out", root / "run", *TRAIN)
    cli("run", "--model", model, "--data", data, "--probe-steps", "2", "--steps", "3",
        "--heldout", "8", "--layers", "2", "--merge", "none", "--selection-budget", "none",
        "--limit", "8", "--out", root / "run-dense", *TRAIN)
    read = lambda path: stable(json.loads(path.read_text()), str(root))  # noqa: E731
    return {
        "probe": read(root / "probe" / "scores.json"),
        "prune": read(root / "pruned" / "gradpruner.json"),
        "finetune": read(root / "tuned" / "gradpruner.json"),
        "run": read(root / "run" / "report.json"),
        "run_dense": read(root / "run-dense" / "report.json"),
        "weights": {name: fingerprint(root / path) for name, path in (
            ("pruned", "pruned"), ("tuned", "tuned"), ("run", "run/model"),
            ("run_dense", "run-dense/model"))},
    }


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("pins")


@pytest.fixture(scope="module")
def produced(root) -> dict:
    return produce(root)


@pytest.mark.parametrize("key", ["probe", "prune", "finetune", "run", "run_dense"])
def test_records_are_pinned(produced, key):
    pinned = json.loads(PINS.read_text())
    assert produced[key] == pinned[key]


@pytest.mark.parametrize("name", ["pruned", "tuned", "run", "run_dense"])
def test_weights_are_pinned(produced, name):
    pinned = json.loads(PINS.read_text())["weights"][name]
    assert produced["weights"][name].keys() == pinned.keys()
    for tensor, (total, squares) in pinned.items():
        mine = produced["weights"][name][tensor]
        assert math.isclose(mine[0], total, rel_tol=1e-9, abs_tol=1e-9), tensor
        assert math.isclose(mine[1], squares, rel_tol=1e-9, abs_tol=1e-9), tensor


def test_the_stage_commands_give_what_run_gives(produced):
    """probe -> prune -> finetune --warm-start with `run`'s settings: the same plan and weights."""
    assert produced["prune"]["plan"] == produced["run"]["prune"]["plan"]
    assert produced["prune"]["layer_scores"] == produced["run"]["prune"]["layer_scores"]
    assert produced["weights"]["tuned"] == produced["weights"]["run"]
    stage_tune, run_tune = produced["finetune"]["finetune"], produced["run"]["pruned_finetune"]
    assert stage_tune["train_loss"] == run_tune["train_loss"]
    assert stage_tune["warm_started_matrices"] == run_tune["warm_started_matrices"] > 0


CUT_FIELDS = {"num_hidden_layers", "layer_types", "_sliding_window_pattern"}


def saved_config(folder: Path) -> dict:
    return json.loads((folder / "config.json").read_text())


def changed_fields(source: Path, output: Path) -> set[str]:
    """The config.json fields in which `output` differs from `source`."""
    mine, theirs = saved_config(output), saved_config(source)
    return {k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k)}


def test_every_saved_config_is_the_source_s_but_for_the_cut(produced, root):
    for output in ("pruned", "tuned", "run/model", "run-dense/model"):
        assert changed_fields(root / "model", root / output) == {"num_hidden_layers"}, output
        assert saved_config(root / output)["use_cache"] is True  # as the source says


def test_an_explicit_cut_of_a_gemma3_records_what_was_done(tmp_path):
    """`--remove` runs no criterion, and the record says so; the pruned and the healed Gemma 3
    keep the source's config but for the layers (their attention types sliced, the stale
    every-sixth-layer pattern dropped)."""
    save_tiny_model(tmp_path / "model", "gemma3_text")
    data = tmp_path / "data.jsonl"
    write_color_questions(data, 24)
    cli("prune", "--model", tmp_path / "model", "--remove", "2,5", "--merge", "none",
        "--out", tmp_path / "pruned")
    cli("finetune", "--model", tmp_path / "pruned", "--data", data, "--steps", "1",
        "--out", tmp_path / "tuned", *TRAIN)
    sidecar = json.loads((tmp_path / "tuned" / "gradpruner.json").read_text())
    assert sidecar["criterion"] == "remove" and sidecar["removed_layers"] == [2, 5]
    card = (tmp_path / "tuned" / "README.md").read_text()
    assert "Criterion: none, the layers were given (`--remove`)." in card and "`auto`" not in card
    source = saved_config(tmp_path / "model")
    for output in ("pruned", "tuned"):
        assert changed_fields(tmp_path / "model", tmp_path / output) <= CUT_FIELDS
        config = saved_config(tmp_path / output)
        assert config["layer_types"] == [source["layer_types"][i] for i in (0, 1, 3, 4)]
        assert config.get("_sliding_window_pattern") is None  # the kept layers follow no period
        assert config["use_cache"] is True


def test_an_explicit_cut_merges_by_a_probe_made_on_user_data(produced, root, tmp_path):
    """An explicit `--remove` runs no criterion: the paper's merge needs only the probe's IGIA,
    not the user's data that the probe does not keep."""
    cli("prune", "--model", root / "model", "--scores", root / "probe", "--remove", "2,3",
        "--merge", "all", "--out", tmp_path / "merged")
    sidecar = json.loads((tmp_path / "merged" / "gradpruner.json").read_text())
    assert sidecar["criterion"] == "remove" and sidecar["removed_layers"] == [2, 3]
    assert sidecar["plan"]["merge_rule"] == "gradpruner" and sum(sidecar["merged_entries"].values()) > 0


def test_a_fold_the_architecture_refuses_stops_before_the_model_loads(tmp_path, monkeypatch, capsys):
    import gradpruner.workflows.run as run_module
    import gradpruner.workflows.stages as stages_module

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(stages_module, "load_model", no_loading)
    monkeypatch.setattr(run_module, "load_model", no_loading)
    save_tiny_model(tmp_path / "model", "gemma2")
    write_color_questions(tmp_path / "data.jsonl", 40)
    common = ["--model", tmp_path / "model", "--data", tmp_path / "data.jsonl", "--merge", "fold",
              "--heldout", "8"]
    capsys.readouterr()
    for command in (["prune", "--remove", "2", *common, "--out", tmp_path / "pruned"],
                    ["run", "--layers", "2", *common, "--out", tmp_path / "run"]):
        assert main([str(a) for a in command]) == 2
        assert capsys.readouterr().err.strip() == (
            "gradpruner: error: --merge fold: this architecture normalises the MLP output before "
            "the residual sum, so a linear map cannot be folded into a weight; use --merge none "
            "or a number of donors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.jsonl", "model"]


if __name__ == "__main__":
    import os
    import tempfile

    os.environ.setdefault("TQDM_DISABLE", "1")

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        result = produce(Path(tmp))
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else PINS
    target.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    print(f"wrote {target}")
