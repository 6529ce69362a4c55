"""Two processes on CPU (torchrun, gloo): the probe's IGIA equals one process's with the same
global batch, only rank 0 writes, and a 2-process fine-tune completes and loads."""

import json
import subprocess

import pytest
import torch
from transformers import AutoModelForCausalLM

from gradpruner.cli import main
from gradpruner.igia import IGIA
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
