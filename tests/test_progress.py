"""Progress off a terminal: periodic lines with counts and time left, one closing line per stage;
`gradpruner tasks` without loading data or torch."""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

import gradpruner
from gradpruner.cli import main
from gradpruner.errors import GradPrunerError
from gradpruner.progress import INTERVAL_ENV, Progress, interval_seconds, layer_ranges, stage, track
from gradpruner.tasks import list_tasks
from tiny_models import save_tiny_model, write_color_questions

COUNT_LINE = re.compile(r"^\[gradpruner\] (?P<stage>[^:]+): (?P<done>\d+)/(?P<total>\d+) (?P<unit>[a-z ]+),"
                        r".* (so far), .*(left|not known yet)")


def stage_lines(err: str, label: str) -> list[re.Match]:
    """The count lines of stage `label` in captured stderr."""
    return [m for m in map(COUNT_LINE.match, err.splitlines()) if m and m["stage"] == label]


def test_a_counting_loop_reports_done_total_and_time_left(monkeypatch, capsys):
    monkeypatch.setenv(INTERVAL_ENV, "0.000001")
    with stage("scoring", "3 batches") as st:
        for _ in track(range(3), "batches"):
            pass
        st.result = "3 batches scored"
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert lines[0] == "[gradpruner] scoring: 3 batches"
    counts = stage_lines(err, "scoring")
    assert counts and all(m["total"] == "3" and m["unit"] == "batches" for m in counts)
    assert any(int(m["done"]) > 0 and m.group(0).endswith(" left") for m in counts)
    assert re.fullmatch(r"\[gradpruner\] scoring done: 3 batches scored \(0 s\)", lines[-1])


def test_a_stage_without_a_count_still_says_it_runs(monkeypatch, capsys):
    monkeypatch.setenv(INTERVAL_ENV, "0.01")
    with stage("loading"):
        time.sleep(0.3)
    err = capsys.readouterr().err.splitlines()
    assert any(re.fullmatch(r"\[gradpruner\] loading: running, 0 s so far", line) for line in err)
    assert err[-1] == "[gradpruner] loading done (0 s)"


def test_the_interval_defaults_to_30_s_and_rejects_nonsense(monkeypatch):
    monkeypatch.delenv(INTERVAL_ENV, raising=False)
    assert interval_seconds() == 30
    for bad in ("soon", "0", "-1"):
        monkeypatch.setenv(INTERVAL_ENV, bad)
        with pytest.raises(GradPrunerError, match=INTERVAL_ENV):
            interval_seconds()


def test_no_line_before_the_interval_and_none_outside_a_stage(monkeypatch, capsys):
    monkeypatch.setenv(INTERVAL_ENV, "60")
    with Progress(5, "items") as progress:  # no stage: a library call stays quiet
        progress.update(5)
    with stage("quick"):
        for _ in track(range(5), "items"):
            pass
    assert capsys.readouterr().err.splitlines() == ["[gradpruner] quick",
                                                    "[gradpruner] quick done (0 s)"]


def test_layer_ranges():
    assert layer_ranges([26, 13, 14, 15, 17, 25]) == "13-15, 17, 25-26"
    assert layer_ranges([]) == "none"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("progress")
    save_tiny_model(root / "model")
    write_color_questions(root / "data.jsonl", 40)
    return root


def test_a_redirected_run_reports_evaluation_training_and_what_each_stage_made(workspace, capsys,
                                                                              monkeypatch):
    """stderr is captured (not a terminal): with the interval near 0, every counted loop prints."""
    monkeypatch.setenv(INTERVAL_ENV, "0.000001")
    w = workspace
    assert main([str(a) for a in (
        "run", "--model", w / "model", "--data", w / "data.jsonl", "--out", w / "run",
        "--probe-steps", "2", "--layers", "2", "--merge", "none", "--selection-budget", "none",
        "--limit", "8", "--steps", "4", "--batch-size", "4", "--lr", "5e-3", "--seed", "0")]) == 0
    err = capsys.readouterr().err
    evaluation = stage_lines(err, "dense zero-shot evaluation")
    assert evaluation and {m["unit"] for m in evaluation} == {"choices scored"}
    assert any(int(m["done"]) > 0 and "left" in m.group(0) for m in evaluation)
    for label in ("probe", "healing", "dense fine-tune"):
        training = stage_lines(err, label)
        assert training and {m["unit"] for m in training} == {"steps"}, label
        assert any(int(m["done"]) > 0 and "left" in m.group(0) for m in training), label
    report = json.loads((w / "run" / "report.json").read_text())
    removed = layer_ranges(report["prune"]["removed_layers"])
    assert f"[gradpruner] pruning done: removed layers {removed}; merged none (" in err
    tune = report["pruned_finetune"]
    assert f"[gradpruner] healing done: {tune['steps']} steps, loss {tune['train_loss']:.4g} (" in err
    acc = report["pruned_finetuned"]
    assert (f"[gradpruner] pruned model evaluation done: acc {acc['acc']:.3f} on {acc['n']} items ("
            in err)
    assert "{'loss'" not in capsys.readouterr().out  # the Trainer's log dicts are not printed


def test_tasks_lists_every_builtin_task_with_sizes_without_torch(tmp_path):
    code = ("import sys\nfrom gradpruner.cli import main\nmain(['tasks'])\n"
            "print('heavy:', [m for m in ('torch', 'transformers', 'datasets') if m in sys.modules])")
    src = str(Path(gradpruner.__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": src, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                          env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[-1] == "heavy: []"
    rows = {line.split()[0]: line.split()[2:4] for line in lines[1:-1]}
    for task in list_tasks():
        expected = [str(n) for n in task.sizes] if task.sizes else ["--data", "--data"]
        assert rows[task.name] == expected
    assert len(rows) == len(list_tasks())


def test_a_bad_interval_stops_the_cli_before_any_loading(tmp_path):
    code = ("import sys\nfrom gradpruner.cli import main\ncode = main(['eval', '--task', 'sst2'])\n"
            "print(code, [m for m in ('torch', 'transformers') if m in sys.modules])")
    env = {**os.environ, "PYTHONPATH": str(Path(gradpruner.__file__).parents[1]), INTERVAL_ENV: "soon"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                          env=env, timeout=60)
    assert done.stdout.strip() == "2 []"
    assert done.stderr.strip() == f"gradpruner: error: {INTERVAL_ENV} must be a number of seconds, got 'soon'"
