"""`run` works in OUT.partial and resumes: a run killed in a fine-tune continues from its last
finished stage and checkpoint to the weights and numbers of an uninterrupted run; SIGTERM stops
it with exit code 143, no temporary folder and one line saying how to resume."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import gradpruner
import gradpruner.workflows.run as pipeline
from gradpruner.errors import GradPrunerError
from gradpruner.cli import build_parser, command_config, main
from tiny_models import save_tiny_model, write_color_questions

SETTINGS = ["--probe-steps", "2", "--layers", "2", "--heldout", "8", "--limit", "8",
            "--selection-budget", "none", "--steps", "40", "--batch-size", "2", "--lr", "5e-3",
            "--seed", "0", "--save-every", "5", "--device", "cpu"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("run-resume")
    save_tiny_model(root / "model", "llama")
    write_color_questions(root / "data.jsonl", 64, choices=3)
    assert main(run_args(root, root / "whole")) == 0  # the uninterrupted run
    return root


def run_args(w: Path, out: Path, *extra: str) -> list[str]:
    return ["run", "--model", str(w / "model"), "--data", str(w / "data.jsonl"), "--out", str(out),
            *SETTINGS, *extra]


def start_run(w: Path, out: Path, stderr) -> subprocess.Popen:
    src = str(Path(gradpruner.__file__).parents[1])
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, "-m", "gradpruner.cli", *run_args(w, out)], env=env,
                            stdout=subprocess.DEVNULL, stderr=stderr)


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 600) -> None:
    deadline = time.time() + timeout
    while not path.is_dir() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert path.is_dir() and process.poll() is None, f"the run did not reach {path} running"


def assert_same_run(whole: Path, resumed: Path) -> None:
    """The same files, model weights (torch.equal), plan and accuracies as the uninterrupted run."""
    files = lambda folder: sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))  # noqa: E731
    assert files(resumed) == files(whole)
    a, b = load_file(str(whole / "model" / "model.safetensors")), load_file(str(resumed / "model" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    mine, theirs = (json.loads((f / "report.json").read_text()) for f in (whole, resumed))
    for key in ("dense_zero_shot", "pruned_finetuned", "dense_finetuned"):
        assert {k: v for k, v in mine[key].items() if "second" not in k} == \
               {k: v for k, v in theirs[key].items() if "second" not in k}, key
    assert mine["prune"]["plan"] == theirs["prune"]["plan"]
    assert mine["prune"]["layer_scores"] == theirs["prune"]["layer_scores"]
    assert mine["pruned_finetune"]["steps"] == theirs["pruned_finetune"]["steps"] == 40
    assert not resumed.with_name(resumed.name + ".partial").exists()


def test_a_killed_run_resumes_to_the_same_result(workspace):
    w, out = workspace, workspace / "killed"
    run = start_run(w, out, subprocess.DEVNULL)
    wait_for(w / "killed.partial" / "pruned.checkpoints" / "checkpoint-10", run)
    run.send_signal(signal.SIGKILL)
    run.wait()
    journal = json.loads((w / "killed.partial" / "journal.json").read_text())
    assert list(journal["stages"]) == ["zero_shot", "probe", "cut"]

    assert main(run_args(w, out, "--resume")) == 0
    assert_same_run(w / "whole", out)
    report = json.loads((out / "report.json").read_text())
    # checkpoint-10 may have been half-written when the run was killed: the one before serves
    assert int(report["pruned_finetune"]["resumed_from"].rsplit("-", 1)[1]) >= 5
    assert "resumed_seconds" in report["pruned_finetune"]  # its seconds count all 40 steps


def test_sigterm_keeps_the_work_says_how_to_resume_and_resume_finishes(workspace, tmp_path):
    w, out = workspace, workspace / "stopped"
    log = tmp_path / "stderr.txt"
    with open(log, "w") as stderr:
        run = start_run(w, out, stderr)
        wait_for(w / "stopped.partial" / "dense.checkpoints" / "checkpoint-10", run)
        sent = time.time()
        run.send_signal(signal.SIGTERM)
        assert run.wait(timeout=60) == 143
        assert time.time() - sent < 20  # within seconds, its clean-up and the interpreter's exit included
    last = log.read_text().strip().splitlines()[-1]
    partial = w / "stopped.partial"
    assert last.startswith(f"gradpruner: stopped by SIGTERM; kept in {partial}: finished stages "
                           "zero_shot, probe, cut, pruned_finetune, pruned_eval; the dense fine-tune's checkpoint "
                           f"{partial}/dense.checkpoints/checkpoint-"), last
    assert last.endswith(f"resume with: gradpruner {' '.join(run_args(w, out))} --resume"), last
    leftovers = [p for p in w.rglob("*") if ".tmp" in p.name or p.name.startswith("tmp")]
    assert leftovers == [] and not out.exists()

    assert main(run_args(w, out, "--resume")) == 0
    assert_same_run(w / "whole", out)
    report = json.loads((out / "report.json").read_text())
    assert int(report["dense_finetune"]["resumed_from"].rsplit("-", 1)[1]) >= 5


def test_a_run_over_an_interrupted_one_needs_resume_or_overwrite(workspace, tmp_path, capsys,
                                                                monkeypatch):
    out = tmp_path / "run"
    partial = tmp_path / "run.partial"
    partial.mkdir()
    settings = command_config(build_parser().parse_args(run_args(workspace, out))).fingerprint()
    (partial / "journal.json").write_text(json.dumps({"settings": {**settings, "probe_steps": 9},
                                                      "stages": {}, "seconds": 0}))
    assert main(run_args(workspace, out)) == 2
    assert "holds an interrupted run: pass --resume to continue it, or --overwrite" in capsys.readouterr().err
    assert main(run_args(workspace, out, "--resume")) == 2
    assert "holds an interrupted run with other settings (probe_steps): resume it with its own" \
        in capsys.readouterr().err
    assert (partial / "journal.json").is_file()  # refused: nothing changed

    def unloadable(*args, **kwargs):
        raise GradPrunerError("cannot load model: broken")

    monkeypatch.setattr(pipeline, "load_model", unloadable)  # fails before any stage finished
    assert main(run_args(workspace, tmp_path / "fresh", "--resume")) == 2
    err = capsys.readouterr().err
    assert "no interrupted run in" in err and "error: cannot load model: broken" in err
    assert not (tmp_path / "fresh.partial").exists()  # nothing worth resuming is kept
