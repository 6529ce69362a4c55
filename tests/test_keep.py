"""`run --keep S`: the search for the largest cut that keeps a share of the dense accuracy on
held-out examples, on planted accuracy curves, and through `run`."""

import json
import math

import pytest

import gradpruner.workflows.run as pipeline
from gradpruner.cli import build_parser, command_config, main
from gradpruner.config import KEEP_HELDOUT, RunConfig
from gradpruner.errors import GradPrunerError
from gradpruner.model.surgery import num_layers
from gradpruner.search.keep import KeepPoint, confidence, search_cut_size, share_of
from tiny_models import save_tiny_model, write_color_questions


def planted(shares: list[float]):
    """A candidate scorer whose share at n layers removed is `shares[n]`; it counts its calls."""
    calls = []

    def score(n: int) -> KeepPoint:
        calls.append(n)
        return KeepPoint(n, list(range(n)), 0.5 * shares[n], 100, shares[n], 0.02)
    return score, calls


@pytest.mark.parametrize("keep, expected", [(0.95, 5), (0.999, 0), (0.5, 29), (0.9, 10)])
def test_the_search_stops_at_the_largest_cut_that_keeps_the_share(keep, expected):
    shares = [1.0 - 0.01 * n for n in range(30)]  # falls by 0.01 a layer
    score, calls = planted(shares)
    chosen, points = search_cut_size(score, 30, keep)
    assert chosen == expected
    assert len(calls) <= math.ceil(math.log2(30)) and len(set(calls)) == len(calls)
    assert [p.removed for p in points] == sorted(calls)
    if expected:
        assert expected in calls and shares[expected] >= keep  # the chosen size was measured


def test_the_share_and_its_standard_error_by_hand():
    share, error = share_of(0.45, 0.6, 100)
    assert share == pytest.approx(0.75)
    relative = math.sqrt(0.45 * 0.55 / 100) / 0.45, math.sqrt(0.6 * 0.4 / 100) / 0.6
    assert error == pytest.approx(0.75 * math.hypot(*relative))
    assert confidence(KeepPoint(3, [], 0.45, 100, 0.75, error), 0.75) == pytest.approx(0.5)
    assert confidence(KeepPoint(3, [], 0.45, 100, 0.75, error), 0.75 - 2 * error) > 0.97
    with pytest.raises(GradPrunerError, match="no held-out item"):
        share_of(0.3, 0.0, 100)


def test_keep_settings_are_checked_before_any_model_loads():
    def config(*flags):
        return command_config(build_parser().parse_args(["run", *flags]))

    cfg = config("--keep", "0.95")
    assert cfg.ratio is None and cfg.keep == 0.95 and cfg.heldout_count == KEEP_HELDOUT
    assert RunConfig.from_dict({"keep": 0.9}).ratio is None  # a config file's keep, too
    for flags, message in [(["--keep", "0.95", "--layers", "3"], "give no --ratio"),
                           (["--keep", "0"], "share in"), (["--keep", "0.9", "--no-dense"], "dense"),
                           (["--keep", "0.9", "--rounds", "2", "--criterion", "block_influence"],
                            "rounds"),
                           (["--keep", "0.9", "--keep-steps", "0"], "keep-steps")]:
        with pytest.raises(GradPrunerError, match=message):
            config(*flags)


def planted_run(tmp_path, monkeypatch, interrupt_at: int | None = None):
    """A tiny model, data, and `run --keep 0.9` flags, with the held-out accuracy planted: 0.8
    for the dense model, 4 % less for each layer removed. Returns the flags and the layer counts
    of the models healed (the heal of a model with `interrupt_at` layers stops the run, as Ctrl-C
    does, the first time)."""
    save_tiny_model(tmp_path / "model", "llama")
    write_color_questions(tmp_path / "data.jsonl", KEEP_HELDOUT + 64, choices=3)
    real_evaluate, real_heal = pipeline.evaluate_examples, pipeline.heal
    heals = []

    def planted_accuracy(model, tokenizer, examples, kind, **kwargs):
        result = real_evaluate(model, tokenizer, examples, kind, **kwargs)
        if len(examples) == KEEP_HELDOUT:  # the held-out items: the planted curve
            result["acc"] = 0.8 * (1 - 0.04 * (6 - num_layers(model)))
        return result

    def counted_heal(model, *args, **kwargs):
        if num_layers(model) == interrupt_at and interrupt_at not in heals:
            heals.append(interrupt_at)
            raise KeyboardInterrupt
        heals.append(num_layers(model))
        return real_heal(model, *args, **kwargs)

    monkeypatch.setattr(pipeline, "evaluate_examples", planted_accuracy)
    monkeypatch.setattr(pipeline, "heal", counted_heal)
    flags = ["run", "--model", str(tmp_path / "model"), "--data", str(tmp_path / "data.jsonl"),
             "--out", str(tmp_path / "run"), "--keep", "0.9", "--probe-steps", "2",
             "--limit", "8", "--selection-budget", "none", "--steps", "2", "--batch-size", "4",
             "--criterion", "block_influence", "--merge", "none", "--device", "cpu"]
    return flags, heals


@pytest.mark.parametrize("keep_steps", [None, 1])
def test_run_keep_chooses_the_cut_on_a_planted_accuracy_curve(tmp_path, monkeypatch, keep_steps):
    """With --keep 0.9 on the planted curve the run removes 2 layers (0.92 of dense), not 3
    (0.88), and its report shows the curve, the prediction and the shares of the model delivered.
    Candidates healed as long as the final cut (the default of --keep-steps) are that heal: the
    chosen one is delivered, not cut and healed again (3 heals); shorter ones are followed by the
    full heal of the chosen size (4 heals)."""
    flags, heals = planted_run(tmp_path, monkeypatch)
    out = tmp_path / "run"
    assert main(flags + (["--keep-steps", str(keep_steps)] if keep_steps else [])) == 0
    report = json.loads((out / "report.json").read_text())
    found = report["keep"]
    assert found["chosen"] == 2 and found["dense_accuracy"] == pytest.approx(0.8)
    assert found["steps"] == (keep_steps or 2) and report["pruned_finetune"]["steps"] == 2
    assert {p["removed"]: round(p["share"], 3) for p in found["points"]} == \
        {3: 0.88, 1: 0.96, 2: 0.92}
    chosen = next(p for p in found["points"] if p["removed"] == 2)
    assert report["prune"]["removed_layers"] == chosen["removed_layers"]
    assert report["prune"]["finetune"]["steps"] == 2
    assert found["delivered"] is (keep_steps is None)
    assert heals == ([3, 5, 4] if keep_steps is None else [3, 5, 4, 4])
    assert (out / "model").is_dir() and not (out / "keep.chosen").exists()
    assert report["pruned_heldout"]["acc"] == pytest.approx(0.8 * 0.92)
    assert {"dense_finetuned", "pruned_finetuned"} <= set(report)
    text = (out / "report.md").read_text()
    assert "`--keep 0.9`" in text and "| 2 **chosen** |" in text
    assert f"healed for {keep_steps or 2} steps" in text
    lead = ("The model delivered is the chosen candidate itself (its heal was the full heal)"
            if keep_steps is None else "After the full heal")
    assert f"{lead}: held-out share 0.920 (predicted 0.920)" in text


def test_a_stopped_keep_search_resumes_at_the_candidate_it_was_healing(tmp_path, monkeypatch):
    """Each candidate scored is a stage of the run's journal: a run stopped while healing its
    second candidate (1 layer removed) keeps the first (3 removed), and `--resume` heals only the
    candidates not yet scored, to the same choice and the same curve."""
    flags, heals = planted_run(tmp_path, monkeypatch, interrupt_at=5)
    out = tmp_path / "run"
    assert main(flags) != 0
    journal = json.loads((out.with_name("run.partial") / "journal.json").read_text())
    assert "keep_3" in journal["stages"] and "keep_1" not in journal["stages"]
    assert heals == [3, 5]
    assert main(flags + ["--resume"]) == 0
    assert heals == [3, 5, 5, 4]  # the 3-layer candidate is not healed again
    found = json.loads((out / "report.json").read_text())["keep"]
    assert found["chosen"] == 2 and found["delivered"] is True
    assert {p["removed"]: round(p["share"], 3) for p in found["points"]} == \
        {3: 0.88, 1: 0.96, 2: 0.92}
