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
def produced(tmp_path_factory) -> dict:
    return produce(tmp_path_factory.mktemp("pins"))


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
