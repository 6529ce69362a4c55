"""Two processes on CPU (torchrun, gloo): the probe's IGIA equals one process's with the same
global batch, only rank 0 writes, and a 2-process fine-tune completes and loads. A 2-process
`run` gives one process's cut and weights, and a killed one resumes to its uninterrupted weights."""

import json
import subprocess
import time

import pytest
import torch
from transformers import AutoModelForCausalLM

from gradpruner.cli import build_parser, command_config, main
from gradpruner.training.igia import IGIA
import processes
from tiny_models import save_tiny_model

TRAIN = ["--steps", "3", "--lr", "5e-3", "--seed", "0", "--schedule-steps", "20", "--device", "cpu"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    save_tiny_model(root / "model", "qwen3")
    with open(root / "data.jsonl", "w") as f:
        for i in range(48):
            f.write(json.dumps({"prompt": f"Question: color {i}? Answer:", "choices": ["blue", "red"],
                                "answer": i % 2}) + "\n")
    return root


def torchrun(*args) -> subprocess.CompletedProcess:
    return processes.torchrun("-m", "gradpruner.cli", *args)


def test_two_process_probe_equals_one_process_with_the_same_global_batch(workspace):
    w = workspace
    assert main(["probe", "--model", str(w / "model"), "--data", str(w / "data.jsonl"),
                 "--out", str(w / "one"), "--batch-size", "4", "--heldout", "8", *TRAIN]) == 0
    done = torchrun("probe", "--model", w / "model", "--data", w / "data.jsonl", "--out", w / "two",
                    "--batch-size", "2", "--heldout", "8", *TRAIN)
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = IGIA.load(w / "one"), IGIA.load(w / "two")
    assert two.steps == one.steps == 3
    assert torch.allclose(two.sq_norms, one.sq_norms, rtol=1e-4, atol=1e-12)
    assert float(one.sq_norms.sum()) > 0
    for name in one.module_names[:4]:
        assert torch.allclose(two.matrix(name), one.matrix(name), rtol=1e-3, atol=1e-12)
    leftovers = [p.name for p in w.iterdir() if p.name.startswith(".two")]
    assert leftovers == []  # rank 1 wrote nothing, rank 0's temporary folder was renamed


def test_two_process_finetune_completes_and_loads(workspace):
    w = workspace
    done = torchrun("finetune", "--model", w / "model", "--data", w / "data.jsonl", "--out",
                    w / "tuned", "--batch-size", "2", "--steps", "2", "--lr", "5e-3")
    assert done.returncode == 0, done.stderr[-3000:]
    tuned = AutoModelForCausalLM.from_pretrained(w / "tuned")
    base = AutoModelForCausalLM.from_pretrained(w / "model")
    assert any(not torch.equal(a, b) for a, b in zip(tuned.parameters(), base.parameters()))
    side = json.loads((w / "tuned" / "gradpruner.json").read_text())
    assert side["finetune"]["steps"] == 2


def test_probe_refuses_fsdp1_and_deepspeed_at_start(workspace, monkeypatch, capsys):
    w = workspace
    for variable, engine in (("ACCELERATE_USE_FSDP", "FSDP1"), ("ACCELERATE_USE_DEEPSPEED", "DeepSpeed")):
        monkeypatch.setenv(variable, "true")
        assert main(["probe", "--model", str(w / "model"), "--data", str(w / "data.jsonl"),
                     "--out", str(w / "x"), *TRAIN]) == 2
        err = capsys.readouterr().err.strip()
        assert engine in err and "use FSDP2" in err and "DDP" in err and len(err.splitlines()) == 1
        assert not (w / "x").exists()
        monkeypatch.delenv(variable)


RUN = ["--probe-steps", "2", "--steps", "6", "--save-every", "3", "--criterion", "block_influence",
       "--merge", "none", "--selection-budget", "none", "--heldout", "8", "--limit", "8",
       "--lr", "5e-3", "--seed", "0", "--device", "cpu"]


def weights(folder) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "model" / "model.safetensors"))


def test_two_process_run_equals_one_process_with_the_same_global_batch(workspace):
    # the same examples in each global batch; the sums differ in rounding only, which training
    # amplifies (measured on this model at lr 5e-3: within 1e-4 after 6 steps, 1.5e-3 after 9,
    # 4.5e-2 after 20), so the fine-tunes here are short
    w = workspace
    common = ["run", "--model", w / "model", "--data", w / "data.jsonl", *RUN]
    assert main([str(a) for a in common] + ["--out", str(w / "run1"), "--batch-size", "4"]) == 0
    done = torchrun(*common, "--out", w / "run2", "--batch-size", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = (json.loads((w / name / "report.json").read_text()) for name in ("run1", "run2"))
    assert two["prune"]["plan"] == one["prune"]["plan"]
    assert two["prune"]["plan"]["removed"]
    a, b = weights(w / "run1"), weights(w / "run2")
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-6) for k in a)
    base = AutoModelForCausalLM.from_pretrained(w / "model").state_dict()
    assert any(not torch.equal(a[k], base[k]) for k in a if k in base)  # the heal trained
    for key in ("pruned_finetune", "dense_finetune"):
        assert two[key]["steps"] == one[key]["steps"] == 6
        # the Trainer's final loss is averaged over the processes only at its logging steps (every
        # 10): here it is rank 0's half of each batch, close to the whole batch's
        assert two[key]["train_loss"] == pytest.approx(one[key]["train_loss"], rel=0.05)
    for key in ("dense_zero_shot", "pruned_finetuned", "dense_finetuned"):
        assert two[key]["acc"] == one[key]["acc"], key
    files = lambda folder: sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))  # noqa: E731
    assert files(w / "run2") == files(w / "run1")
    runs = sorted(p.name for p in w.iterdir() if p.name.startswith((".run", "run")))
    assert runs == ["run1", "run2"]  # no partial or temporary folder left
    AutoModelForCausalLM.from_pretrained(w / "run2" / "model")


def test_run_refuses_fsdp_and_deepspeed_at_start(workspace, monkeypatch, capsys):
    w = workspace
    for variable in ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED"):
        monkeypatch.setenv(variable, "true")
        monkeypatch.setenv("FSDP_VERSION", "2")
        assert main(["run", "--model", str(w / "model"), "--data", str(w / "data.jsonl"),
                     "--out", str(w / "refused"), *RUN]) == 2
        err = capsys.readouterr().err.strip()
        assert "under DDP" in err and "`probe` (under FSDP2)" in err and len(err.splitlines()) == 1
        assert not any(p.name.startswith("refused") for p in w.iterdir())
        monkeypatch.delenv(variable)


def test_two_processes_do_not_resume_a_one_process_run(workspace):
    w = workspace
    args = ["run", "--model", str(w / "model"), "--data", str(w / "data.jsonl"), *RUN,
            "--out", str(w / "solo"), "--batch-size", "2"]
    partial = w / "solo.partial"
    partial.mkdir()
    settings = command_config(build_parser().parse_args(args)).fingerprint()
    (partial / "journal.json").write_text(json.dumps({"settings": settings, "stages": {},
                                                      "seconds": 0}))
    done = torchrun(*args, "--resume")
    assert done.returncode != 0
    assert "holds an interrupted run with other settings (processes)" in done.stderr
    assert "rank 0 failed" in done.stderr  # rank 1 stops with rank 0's error instead of waiting
    assert sorted(p.name for p in partial.iterdir()) == ["journal.json"]


def test_a_killed_two_process_run_resumes_to_the_uninterrupted_weights(workspace):
    w = workspace
    common = ["run", "--model", w / "model", "--data", w / "data.jsonl", *RUN, "--steps", "40",
              "--save-every", "5", "--batch-size", "2"]
    done = torchrun(*common, "--out", w / "long")
    assert done.returncode == 0, done.stderr[-3000:]
    launcher = processes.start_torchrun("-m", "gradpruner.cli", *common, "--out", w / "killed")
    checkpoint = w / "killed.partial" / "pruned.checkpoints" / "checkpoint-10"
    deadline = time.time() + 300
    while not checkpoint.is_dir() and launcher.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert checkpoint.is_dir() and launcher.poll() is None, "the run did not reach its heal"
    processes.kill_torchrun(launcher)
    journal = json.loads((w / "killed.partial" / "journal.json").read_text())
    assert list(journal["stages"]) == ["zero_shot", "probe", "cut"]
    assert journal["settings"]["processes"] == 2

    done = torchrun(*common, "--out", w / "killed", "--resume")
    assert done.returncode == 0, done.stderr[-3000:]
    whole, resumed = (json.loads((w / name / "report.json").read_text())
                      for name in ("long", "killed"))
    assert resumed["prune"]["plan"] == whole["prune"]["plan"]
    assert int(resumed["pruned_finetune"]["resumed_from"].rsplit("-", 1)[1]) >= 5
    for key in ("pruned_finetuned", "dense_finetuned"):
        assert resumed[key]["acc"] == whole[key]["acc"]
    a, b = weights(w / "long"), weights(w / "killed")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not (w / "killed.partial").exists()
