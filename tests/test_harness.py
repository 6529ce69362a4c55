"""The lm-evaluation-harness bridge on a local-file lm-eval task (no Hub): `eval --harness` agrees
with our own evaluation of the same items, `run --harness` reports it, and a missing lm-eval or
an unknown task name is one clear line before any model loads."""

from __future__ import annotations

import json
import sys

import pytest

from gradpruner.workflows import stages as pipeline
from gradpruner.cli import main
from gradpruner.tasks.examples import read_examples
from gradpruner.errors import GradPrunerError
from gradpruner.evaluation.scoring import evaluate_mc
from gradpruner.evaluation.harness import HarnessSpec, harness_metrics, harness_table, run_harness
from test_evaluate import char_tokenizer, rigged_model
from tiny_models import save_tiny_model

pytest.importorskip("lm_eval")

COLORS = ["blue", "green", "red", "black", "a dark grey one"]

TASK_YAML = """\
task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {path}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{prompt}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list:
  - metric: acc
  - metric: acc_norm
"""


def write_items(path, start: int, count: int) -> None:
    """Our multiple-choice JSONL; its fields are also what the lm-eval task YAML reads."""
    with open(path, "w") as f:
        for i in range(start, start + count):
            choices = COLORS[i % 2:] if i % 3 else COLORS[:4]
            f.write(json.dumps({"prompt": f"Question: color {i}? Answer:", "choices": choices,
                                "answer": i % len(choices)}) + "\n")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("harness")
    save_tiny_model(root / "model")
    write_items(root / "train.jsonl", 100, 24)
    write_items(root / "eval.jsonl", 0, 12)
    (root / "tasks").mkdir()
    (root / "tasks" / "tiny_colors.yaml").write_text(TASK_YAML.format(name="tiny_colors", path=root / "eval.jsonl"))
    return root


def cli(*args) -> int:
    return main([str(a) for a in args])


def test_eval_harness_equals_our_evaluation_of_the_same_items(workspace, capsys):
    w = workspace
    assert cli("eval", "--model", w / "model", "--data", w / "train.jsonl", "--eval-data",
               w / "eval.jsonl", "--harness", "tiny_colors", "--harness-include", w / "tasks",
               "--out", w / "metrics.json") == 0
    metrics = json.loads((w / "metrics.json").read_text())
    theirs = metrics["harness"]["tiny_colors"]
    assert theirs["n"] == metrics["n"] == 12
    assert theirs["acc"] == pytest.approx(metrics["acc"])
    assert theirs["acc_norm"] == pytest.approx(metrics["acc_norm"])
    assert "acc_stderr" in theirs
    assert json.loads(capsys.readouterr().out)["harness"] == metrics["harness"]


def test_eval_harness_alone_and_limit(workspace, capsys):
    w = workspace
    assert cli("eval", "--model", w / "model", "--harness", "tiny_colors", "--harness-include",
               w / "tasks", "--limit", "5") == 0
    result = json.loads(capsys.readouterr().out)
    assert "acc" not in result and result["task"] is None
    assert result["harness"]["tiny_colors"]["n"] == 5


# A rigged model (one token per character, next-token log-probabilities fixed: z > y > space >
# the rest) and choices where `acc` (the sum), `acc_norm` per character of the choice (lm-eval)
# and per character of the continuation with its space (not lm-eval) pick differently:
# acc 2/5, acc_norm 3/5 (dividing by the continuation would give 1/5).
RIGGED = [(["z", "yy", "zyq"], 2), (["zq", "y", "qqq", "zzzy"], 1), (["q", "zz", "yyy"], 1),
          (["yz", "qz", "z y"], 2), (["z", "yy", "zyq"], 2)]


def test_harness_acc_norm_equals_ours_on_a_rigged_model(tmp_path):
    with open(tmp_path / "items.jsonl", "w") as f:
        for i, (choices, gold) in enumerate(RIGGED):
            f.write(json.dumps({"prompt": f"Q{i}:", "choices": choices, "answer": gold}) + "\n")
    (tmp_path / "rigged.yaml").write_text(TASK_YAML.format(name="rigged_mc",
                                                           path=tmp_path / "items.jsonl"))
    tokenizer = char_tokenizer()
    model = rigged_model(tokenizer, {"z": 5.0, "y": 3.0, " ": 2.0})
    ours = evaluate_mc(model, tokenizer, read_examples(tmp_path / "items.jsonl"))
    assert ours == {"acc": 0.4, "acc_norm": 0.6, "n": 5}
    theirs = run_harness(model, tokenizer, HarnessSpec(("rigged_mc",), str(tmp_path)))
    assert theirs["rigged_mc"]["acc"] == pytest.approx(0.4)
    assert theirs["rigged_mc"]["acc_norm"] == pytest.approx(0.6)


def test_missing_lm_eval_is_one_line_before_the_model_loads(workspace, monkeypatch, capsys):
    w = workspace
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # `import lm_eval` raises ImportError

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(pipeline, "load_model", no_loading)
    for args in (["eval", "--model", w / "model", "--harness", "arc_easy"],
                 ["run", "--model", w / "model", "--data", w / "train.jsonl", "--harness",
                  "arc_easy", "--out", w / "never"]):
        assert cli(*args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == ["gradpruner: error: lm-evaluation-harness is not installed: "
                       "pip install lm-eval (or gradpruner[harness])"]
    assert not (w / "never").exists()


def test_unknown_task_is_one_line(workspace, monkeypatch, capsys):
    w = workspace
    monkeypatch.setattr(pipeline, "load_model", lambda *a, **k: pytest.fail("model loaded"))
    assert cli("eval", "--model", w / "model", "--harness", "tiny_colors,no_such_task_17",
               "--harness-include", w / "tasks") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown lm-eval task(s) no_such_task_17" in err[0]
    for args, message in ((["--harness", " , "], "comma-separated"),
                          (["--harness-include", w / "tasks"], "needs --harness"),
                          (["--harness", "x", "--harness-include", w / "nowhere"], "not found")):
        assert cli("eval", "--model", w / "model", *args) == 2
        assert message in capsys.readouterr().err


def test_run_reports_harness_for_dense_and_pruned(workspace):
    w = workspace
    assert cli("run", "--model", w / "model", "--data", w / "train.jsonl", "--eval-data",
               w / "eval.jsonl", "--out", w / "run", "--criterion", "tail", "--layers", "2",
               "--merge", "none", "--probe-steps", "2", "--steps", "3", "--batch-size", "4",
               "--heldout", "4", "--limit", "10", "--harness", "tiny_colors",
               "--harness-include", w / "tasks") == 0
    report = json.loads((w / "run" / "report.json").read_text())
    for model in ("dense_finetuned", "pruned_finetuned"):
        theirs = report["harness"][model]["tiny_colors"]
        assert theirs["n"] == report[model]["n"] == 10
        assert theirs["acc"] == pytest.approx(report[model]["acc"])
    assert report["config"]["harness"] == ["tiny_colors"]
    text = (w / "run" / "report.md").read_text()
    dense, pruned = (report["harness"][m]["tiny_colors"] for m in ("dense_finetuned",
                                                                   "pruned_finetuned"))
    assert (f"| tiny_colors | acc | {dense['acc']:.3f} ± {dense['acc_stderr']:.3f} | "
            f"{pruned['acc']:.3f} ± {pruned['acc_stderr']:.3f} |") in text


def test_harness_metrics_and_table():
    output = {"results": {"t": {"name": "t", "alias": "t", "acc,none": 0.5, "acc_stderr,none": 0.1,
                                "exact_match,strict-match": 0.25,
                                "exact_match_stderr,strict-match": "N/A"}},
              "n-samples": {"t": {"original": 40, "effective": 8}}}
    metrics = harness_metrics(output)
    assert metrics == {"t": {"acc": 0.5, "acc_stderr": 0.1, "exact_match,strict-match": 0.25,
                             "n": 8}}
    assert harness_table({"a": metrics, "b": None}) == [
        "| lm-eval task | metric | a | b |", "|---|---|---|---|",
        "| t | acc | 0.500 ± 0.100 | - |", "| t | exact_match,strict-match | 0.250 | - |"]


def test_spec_validate_without_a_model(workspace):
    HarnessSpec(("tiny_colors",), str(workspace / "tasks")).validate()
    with pytest.raises(GradPrunerError, match="names no lm-eval task: give names such as --harness arc_easy,hellaswag"):
        HarnessSpec(()).validate()


def test_chat_template_on_renders_lm_eval_prompts_as_ours(workspace, tmp_path):
    from transformers import AutoTokenizer

    from test_formats import TEMPLATE

    model = tmp_path / "chat-model"
    save_tiny_model(model)
    tokenizer = AutoTokenizer.from_pretrained(model)
    tokenizer.chat_template = TEMPLATE
    tokenizer.save_pretrained(model)
    w = workspace
    assert cli("eval", "--model", model, "--data", w / "train.jsonl", "--eval-data",
               w / "eval.jsonl", "--chat-template", "on", "--harness", "tiny_colors",
               "--harness-include", w / "tasks", "--out", tmp_path / "metrics.json") == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["harness"]["tiny_colors"]["acc"] == pytest.approx(metrics["acc"])
