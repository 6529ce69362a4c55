"""A fine-tune killed mid-run resumes from its last checkpoint to the same model; the same seed
gives the same scores, removed layers and fine-tuned weights."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from gradpruner.cli import main
from tiny_models import save_tiny_model, write_color_questions

STEPS = ["--steps", "60", "--batch-size", "2", "--lr", "5e-3", "--seed", "0", "--save-every", "5",
         "--device", "cpu"]  # the killed run is pinned to the CPU too


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    save_tiny_model(root / "model", "llama")
    write_color_questions(root / "data.jsonl", 64, choices=3)
    return root


def weights(folder):
    return load_file(str(folder / "model.safetensors"))


def finetune_args(w, out, *extra):
    return ["finetune", "--model", str(w / "model"), "--data", str(w / "data.jsonl"),
            "--out", str(out), *STEPS, *extra]


def test_killed_finetune_resumes_to_the_same_model(workspace):
    w = workspace
    assert main(finetune_args(w, w / "whole")) == 0
    assert not (w / "whole.checkpoints").exists()  # a finished run removes its checkpoints

    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    run = subprocess.Popen([sys.executable, "-m", "gradpruner.cli", *finetune_args(w, w / "cut")],
                           env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoints = w / "cut.checkpoints"
    deadline = time.time() + 300
    while not (checkpoints / "checkpoint-10").is_dir() and time.time() < deadline:
        time.sleep(0.05)
    run.send_signal(signal.SIGKILL)
    run.wait()
    assert not (w / "cut").exists(), "the run finished before it could be killed"
    assert (checkpoints / "checkpoint-10").is_dir()

    assert main(finetune_args(w, w / "cut", "--resume")) == 0
    side = json.loads((w / "cut" / "gradpruner.json").read_text())
    assert side["finetune"]["resumed_from"].endswith(tuple(f"checkpoint-{n}" for n in range(5, 60, 5)))  # checkpoint-10 may be half-written
    whole, resumed = weights(w / "whole"), weights(w / "cut")
    assert whole.keys() == resumed.keys()
    for name in whole:
        assert torch.allclose(whole[name], resumed[name], atol=1e-6), name
    assert not checkpoints.exists()


def test_resume_without_a_checkpoint_starts_from_the_beginning(workspace, capsys):
    w = workspace
    assert main(finetune_args(w, w / "fresh", "--resume")) == 0
    assert "no checkpoint" in capsys.readouterr().err
    fresh, whole = weights(w / "fresh"), weights(w / "whole") if (w / "whole").exists() else None
    if whole is not None:
        assert all(torch.allclose(fresh[k], whole[k], atol=1e-6) for k in fresh)


def test_same_seed_same_scores_removed_layers_and_weights(workspace):
    w = workspace
    common = ["--data", str(w / "data.jsonl"), "--steps", "3", "--batch-size", "4", "--lr", "5e-3"]
    outs = []
    for run in ("a", "b"):
        assert main(["probe", "--model", str(w / "model"), *common, "--out", str(w / f"probe-{run}")]) == 0
        assert main(["prune", "--model", str(w / "model"), "--scores", str(w / f"probe-{run}"),
                     "--data", str(w / "data.jsonl"), "--layers", "2", "--out",
                     str(w / f"pruned-{run}")]) == 0
        assert main(["finetune", "--model", str(w / f"pruned-{run}"), *common,
                     "--out", str(w / f"tuned-{run}")]) == 0
        outs.append(run)
    scores = [json.loads((w / f"probe-{r}" / "scores.json").read_text())["layer_scores"] for r in outs]
    assert scores[0] == scores[1]
    sides = [json.loads((w / f"pruned-{r}" / "gradpruner.json").read_text()) for r in outs]
    assert sides[0]["removed_layers"] == sides[1]["removed_layers"]
    assert sides[0]["selection"]["auto"]["candidates"] == sides[1]["selection"]["auto"]["candidates"]
    a, b = weights(w / "tuned-a"), weights(w / "tuned-b")
    assert all(torch.equal(a[k], b[k]) for k in a)
