"""Every row of the README's bad-input table through the CLI: one line naming the problem, a
non-zero exit, no traceback, nothing written. Plus a fuzz of the CLI's arguments and the memory
check that stops a run too large for the machine."""

import json
import os
import stat

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import BertConfig, BertModel

from gradpruner.cli import main
from gradpruner.model.memory import training_bytes
from tiny_models import save_tiny_model, tiny_config, tiny_model

TRAIN = ["--steps", "2", "--batch-size", "4", "--lr", "5e-3"]


@pytest.fixture(scope="module")
def w(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    save_tiny_model(root / "model", "llama")
    BertModel(BertConfig(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=32)).save_pretrained(root / "bert")
    (root / "unreadable").mkdir()
    (root / "unreadable" / "config.json").write_text("{not json")
    good = [{"prompt": f"Q {i}?", "choices": ["a", "b"], "answer": i % 2} for i in range(20)]
    (root / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in good))
    (root / "empty.jsonl").write_text("")
    (root / "truncated.jsonl").write_text(json.dumps(good[0]) + "\n" + '{"prompt": "Q", "choi')
    (root / "latin1.jsonl").write_bytes('{"prompt": "caf\xe9", "completion": "x"}\n'.encode("latin-1"))
    (root / "fields.jsonl").write_text('{"question": "Q?", "reply": "yes"}\n')
    (root / "answer.jsonl").write_text('{"prompt": "Q", "choices": ["a", "b"], "answer": 2}\n')
    assert main(["probe", "--model", str(root / "model"), "--data", str(root / "data.jsonl"),
                 "--out", str(root / "probe"), *TRAIN]) == 0
    return root


ROWS = [
    (["eval", "--model", "{w}/missing", "--data", "{w}/data.jsonl"],
     "model not found: {w}/missing (give a model folder or a Hub id, or leave --model out for the "
     "default model)"),
    (["eval", "--model", "{w}/unreadable", "--data", "{w}/data.jsonl"], "cannot load model"),
    (["probe", "--model", "{w}/bert", "--data", "{w}/data.jsonl", "--out", "{w}/x"], "bert"),
    (["prune", "--model", "{w}/model", "--scores", "{w}/probe", "--ratio", "0", "--out", "{w}/x"], "ratio"),
    (["prune", "--model", "{w}/model", "--scores", "{w}/probe", "--ratio", "1", "--out", "{w}/x"], "ratio"),
    (["prune", "--model", "{w}/model", "--scores", "{w}/probe", "--ratio=-0.1", "--out", "{w}/x"], "ratio"),
    (["prune", "--model", "{w}/model", "--scores", "{w}/probe", "--ratio", "1.5", "--out", "{w}/x"], "ratio"),
    (["prune", "--model", "{w}/model", "--scores", "{w}/probe", "--ratio", "nan", "--out", "{w}/x"], "ratio"),
    (["prune", "--model", "{w}/model", "--scores", "{w}/probe", "--remove", "0-5", "--out", "{w}/x"], "cannot remove all"),
    (["prune", "--model", "{w}/model", "--scores", "{w}/probe", "--remove", "2,2", "--out", "{w}/x"], "more than once"),
    (["prune", "--model", "{w}/model", "--scores", "{w}/probe", "--remove", "6", "--out", "{w}/x"], "out of range"),
    (["prune", "--model", "{w}/model", "--scores", "{w}/probe", "--remove", "1.5", "--out", "{w}/x"], "not a layer"),
    (["finetune", "--model", "{w}/model", "--data", "{w}/empty.jsonl", "--out", "{w}/x"], "empty"),
    (["finetune", "--model", "{w}/model", "--data", "{w}/truncated.jsonl", "--out", "{w}/x"], "jsonl:2: invalid JSON"),
    (["finetune", "--model", "{w}/model", "--data", "{w}/latin1.jsonl", "--out", "{w}/x"], "UTF-8"),
    (["finetune", "--model", "{w}/model", "--data", "{w}/fields.jsonl", "--out", "{w}/x"], "prompt"),
    (["finetune", "--model", "{w}/model", "--data", "{w}/answer.jsonl", "--out", "{w}/x"], "outside"),
    (["eval", "--model", "{w}/model", "--task", "no_such_task"], "unknown task"),
    (["compare", "--model", "{w}/model", "--data", "{w}/data.jsonl", "--ratio", "x", "--out", "{w}/x"], "--ratio"),
    (["finetune", "--model", "{w}/model", "--data", "{w}/data.jsonl", "--out", "{w}/model"], "input model"),
]


@pytest.mark.parametrize("args,message", ROWS)
def test_bad_input_row(w, capsys, args, message):
    args, message = [a.format(w=w) for a in args], message.format(w=w)
    before = sorted(p.name for p in w.iterdir())
    capsys.readouterr()
    assert main(args) != 0
    err = capsys.readouterr().err.strip()
    assert message.lower() in err.lower(), err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert sorted(p.name for p in w.iterdir()) == before


@pytest.mark.skipif(os.geteuid() == 0 if hasattr(os, "geteuid") else True,
                    reason="root writes into read-only folders")
def test_read_only_output_disk(w, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        assert main(["prune", "--model", str(w / "model"), "--criterion", "tail", "--layers", "1",
                     "--merge", "none", "--out", str(locked / "out")]) != 0
    finally:
        locked.chmod(stat.S_IRWXU)
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "ermission" in err
    assert list(locked.iterdir()) == []


def test_read_only_output_disk_as_the_os_reports_it(w, tmp_path, monkeypatch, capsys):
    """The same row where the tests run as root (which may write anywhere): the OS's refusal to
    create the output folder, simulated at the call that makes it."""
    import gradpruner.outputs as outputs

    def refused(prefix, dir):
        raise PermissionError(13, "Permission denied", str(dir))

    monkeypatch.setattr(outputs.tempfile, "mkdtemp", refused)
    assert main(["prune", "--model", str(w / "model"), "--criterion", "tail", "--layers", "1",
                 "--merge", "none", "--out", str(tmp_path / "out")]) == 1
    *progress, err = capsys.readouterr().err.strip().splitlines()  # the pruning stage ran first
    assert err == f"gradpruner: error: Permission denied: {tmp_path}"
    assert all(line.startswith("[gradpruner] pruning") for line in progress)
    assert list(tmp_path.iterdir()) == []


def test_full_output_disk_leaves_nothing(w, tmp_path, monkeypatch, capsys):
    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(type(tiny_model("llama")), "save_pretrained", disk_full)
    assert main(["prune", "--model", str(w / "model"), "--criterion", "tail", "--layers", "1",
                 "--merge", "none", "--out", str(tmp_path / "out")]) == 1
    *progress, err = capsys.readouterr().err.strip().splitlines()  # the pruning stage ran first
    assert err == "gradpruner: error: No space left on device"
    assert all(line.startswith("[gradpruner] pruning") for line in progress)
    assert list(tmp_path.iterdir()) == []


def test_a_run_too_large_for_memory_stops_before_loading(w, monkeypatch, capsys):
    import gradpruner.workflows.stages as pipeline

    monkeypatch.setattr(pipeline, "check_fits", pipeline.check_fits)
    monkeypatch.setattr("gradpruner.model.memory.available_bytes", lambda device: 1024)
    assert main(["finetune", "--model", str(w / "model"), "--data", str(w / "data.jsonl"),
                 "--out", str(w / "y"), *TRAIN]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("[gradpruner] memory: about") and len(err) == 2
    assert "needs about" in err[1] and "--gradient-checkpointing" in err[1]
    assert not (w / "y").exists()


def test_memory_estimate_against_a_hand_count():
    config = tiny_config("llama")  # hidden 32, 6 layers, 4 heads, intermediate 64, vocab 128, tied
    h, L, a, inter, V = 32, 6, 4, 64, 128
    params = sum(p.numel() for p in tiny_model("llama").parameters())
    lora = training_bytes(config, torch.float32, batch=2, seq_len=16, lora_rank=8)
    assert lora["weights"] == params * 4
    assert lora["training_state"] == 8 * L * (4 * 2 * h + 3 * (h + inter)) * (4 + 4 + 8)
    assert lora["activations"] == L * (34 * 32 * h + 5 * a * 16 * 32) * 4 // 2
    assert lora["logits"] == 32 * V * 4
    full = training_bytes(config, torch.bfloat16, batch=2, seq_len=16, full=True, checkpointing=True)
    assert full["training_state"] == params * 12 and full["activations"] == L * 32 * h * 2
    assert full["weights"] == params * 4  # fp32 master weights of a bf16 model
    assert full["total"] == sum(v for k, v in full.items() if k != "total")


COMMANDS = ["probe", "prune", "finetune", "eval", "run", "compare", "tasks"]
TOKENS = ["--ratio", "--layers", "--remove", "--merge", "--density", "--steps", "--lr", "--seed",
          "--batch-size", "--criterion", "--methods", "--seeds", "--limit", "--out", "--model",
          "--data", "--task", "--dtype", "--device", "-1", "0", "1.5", "nan", "inf", "abc", "3-1",
          "1,1", "", "all", "none", "auto", "{w}/nope", "{w}/empty.jsonl", "--overwrite"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(command=st.sampled_from(COMMANDS[:-1]), tokens=st.lists(st.sampled_from(TOKENS), max_size=6))
def test_fuzzed_arguments_never_give_a_traceback(w, capsys, command, tokens):
    """Random argument soups: a clean exit or one error line; never a traceback or a stray file.

    `--model` always points to a missing folder so that no fuzzed call starts real work."""
    args = [command, *(t.format(w=w) for t in tokens), "--model", str(w / "absent")]
    before = sorted(p.name for p in w.iterdir())
    try:
        code = main(args)
    except SystemExit as exit_:  # argparse usage errors and --help
        code = exit_.code
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    if code:
        assert len(err.splitlines()) == 1, err
    assert sorted(p.name for p in w.iterdir()) == before
