"""Ctrl-C and SIGTERM stop every command with exit code 130 / 143 and one line saying what was
kept and how to go on (the whole `run` is killed for real in test_run_resume.py)."""

import json
import os
import signal
import time

import pytest

import gradpruner.cli as cli
from gradpruner.cli import main
from gradpruner.interrupt import Terminated, sigterm_raises
from gradpruner.outputs import atomic_output_dir


def sigterm(args):
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(5)  # the handler raises long before this ends
    raise AssertionError("SIGTERM did not stop the command")


def ctrl_c(args):
    raise KeyboardInterrupt


@pytest.mark.parametrize("argv,line", [
    (["probe", "--data", "d.jsonl", "--out", "p"],
     "nothing written; run it again: gradpruner probe --data d.jsonl --out p"),
    (["prune", "--scores", "p", "--ratio", "0.2", "--out", "q"],
     "nothing written; run it again: gradpruner prune --scores p --ratio 0.2 --out q"),
    (["eval", "--task", "arc_easy"], "nothing written; run it again: gradpruner eval --task arc_easy"),
    (["finetune", "--data", "d.jsonl", "--out", "t"],
     "nothing kept (--save-every N keeps checkpoints); run it again: gradpruner finetune --data "
     "d.jsonl --out t"),
    (["run", "--out", "r"], "nothing kept; run it again: gradpruner run --out r"),
    (["compare", "--out", "c"],
     "kept 0 finished cell(s) in c/cells; the same command resumes: gradpruner compare --out c"),
])
def test_every_command_stops_on_sigterm_and_ctrl_c(argv, line, monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli, "_dispatch", sigterm)
    before = signal.getsignal(signal.SIGTERM)
    assert main(argv) == 143
    assert capsys.readouterr().err == f"gradpruner: stopped by SIGTERM; {line}\n"
    assert signal.getsignal(signal.SIGTERM) is before  # the CLI's handler is gone again
    monkeypatch.setattr(cli, "_dispatch", ctrl_c)
    assert main(argv) == 130
    assert capsys.readouterr().err == f"gradpruner: stopped by Ctrl-C; {line}\n"


def test_the_line_names_what_was_kept(monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli, "_dispatch", sigterm)
    for step in (5, 10):  # checkpoint-10 is complete, a checkpoint-15 half-written
        (tmp_path / "t.checkpoints" / f"checkpoint-{step}").mkdir(parents=True)
        (tmp_path / "t.checkpoints" / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    (tmp_path / "t.checkpoints" / "checkpoint-15").mkdir()
    assert main(["finetune", "--data", "d.jsonl", "--out", "t", "--save-every", "5"]) == 143
    assert capsys.readouterr().err == (
        "gradpruner: stopped by SIGTERM; kept t.checkpoints/checkpoint-10; resume with: "
        "gradpruner finetune --data d.jsonl --out t --save-every 5 --resume\n")
    (tmp_path / "c" / "cells").mkdir(parents=True)
    for name in ("dense-s0", "auto-r0.25-s0"):
        (tmp_path / "c" / "cells" / f"{name}.json").write_text("{}")
    assert main(["compare", "--out", "c"]) == 143
    assert "kept 2 finished cell(s) in c/cells; the same command resumes" in capsys.readouterr().err
    (tmp_path / "r.partial" / "pruned.checkpoints" / "checkpoint-4").mkdir(parents=True)
    (tmp_path / "r.partial" / "pruned.checkpoints" / "checkpoint-4" / "trainer_state.json").write_text("{}")
    (tmp_path / "r.partial" / "journal.json").write_text(json.dumps(
        {"settings": {}, "stages": {"zero_shot": {}, "probe": {}, "cut": {}}, "seconds": 1.0}))
    assert main(["run", "--out", "r", "--steps", "9"]) == 143
    assert capsys.readouterr().err == (
        "gradpruner: stopped by SIGTERM; kept in r.partial: finished stages zero_shot, probe, cut; "
        "the pruned fine-tune's checkpoint r.partial/pruned.checkpoints/checkpoint-4; resume with: gradpruner run "
        "--out r --steps 9 --resume\n")


def test_sigterm_removes_the_temporary_folders(tmp_path):
    with pytest.raises(Terminated), sigterm_raises(), atomic_output_dir(tmp_path / "out") as tmp:
        (tmp / "half-written").write_text("x")
        sigterm(None)
    assert list(tmp_path.iterdir()) == []
