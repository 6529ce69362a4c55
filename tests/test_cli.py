"""The CLI end to end on a tiny model: probe -> prune -> finetune -> eval, and `run`."""

import json
import subprocess
import sys

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from gradpruner.cli import main
from tiny_models import save_tiny_model, tiny_model, write_color_questions
from tiny_tokenizer import tiny_tokenizer

TRAIN = ["--steps", "4", "--batch-size", "4", "--lr", "5e-3", "--seed", "0"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    save_tiny_model(root / "model")
    write_color_questions(root / "data.jsonl", 40)
    (root / "empty.jsonl").write_text("")
    (root / "bad.jsonl").write_text('{"prompt": "p", "choices": ["a", "b"], "answer": 5}\n')
    return root


def cli(*args: str) -> int:
    return main([str(a) for a in args])


def test_probe_prune_finetune_eval(workspace, capsys):
    w = workspace
    assert cli("probe", "--model", w / "model", "--data", w / "data.jsonl", "--out", w / "probe",
               "--schedule-steps", "20", *TRAIN) == 0
    scores = json.loads((w / "probe" / "scores.json").read_text())
    assert len(scores["layer_scores"]) == 6 and scores["probe"]["steps"] == 4
    assert scores["model"]["num_hidden_layers"] == 6

    assert cli("prune", "--model", w / "model", "--scores", w / "probe", "--layers", "2",
               "--criterion", "gradpruner", "--merge", "1", "--out", w / "pruned") == 0
    side = json.loads((w / "pruned" / "gradpruner.json").read_text())
    order = sorted(range(6), key=lambda i: (scores["layer_scores"][i], -i))
    assert side["removed_layers"] == sorted(order[:2])
    assert side["kept_layers"] == [i for i in range(6) if i not in side["removed_layers"]]
    assert sum(len(d) for d in side["merged"].values()) == 1
    assert side["params_after"] < side["params_before"]
    assert side["costs"]["ideal_speedup"] > 1
    pruned = AutoModelForCausalLM.from_pretrained(w / "pruned")
    assert pruned.config.num_hidden_layers == 4 and len(pruned.model.layers) == 4
    assert sum(p.numel() for p in pruned.parameters()) == side["params_after"]

    assert cli("finetune", "--model", w / "pruned", "--data", w / "data.jsonl",
               "--out", w / "tuned", *TRAIN) == 0
    tuned_side = json.loads((w / "tuned" / "gradpruner.json").read_text())
    assert tuned_side["removed_layers"] == side["removed_layers"]
    assert tuned_side["finetune"]["steps"] == 4
    tuned = AutoModelForCausalLM.from_pretrained(w / "tuned")
    assert not any("lora" in n for n, _ in tuned.named_parameters())
    changed = any(not torch.equal(a, b) for a, b in zip(tuned.parameters(), pruned.parameters()))
    assert changed

    capsys.readouterr()
    assert cli("eval", "--model", w / "tuned", "--data", w / "data.jsonl", "--limit", "8",
               "--out", w / "metrics.json") == 0
    metrics = json.loads((w / "metrics.json").read_text())
    assert 0 <= metrics["acc"] <= 1 and metrics["n"] > 0


def test_prune_with_baseline_criteria_needs_no_probe(workspace):
    w = workspace
    assert cli("prune", "--model", w / "model", "--criterion", "tail", "--layers", "2",
               "--merge", "none", "--out", w / "tail") == 0
    assert json.loads((w / "tail" / "gradpruner.json").read_text())["removed_layers"] == [3, 4]
    assert cli("prune", "--model", w / "model", "--criterion", "block_influence", "--data",
               w / "data.jsonl", "--ratio", "0.5", "--merge", "none", "--out", w / "bi") == 0
    side = json.loads((w / "bi" / "gradpruner.json").read_text())
    assert side["criterion"] == "block_influence" and len(side["removed_layers"]) == 3
    assert len(side["layer_scores"]) == 6


def test_run_writes_report_and_plot(workspace):
    w = workspace
    assert cli("run", "--model", w / "model", "--data", w / "data.jsonl", "--out", w / "run",
               "--probe-steps", "3", "--layers", "2", "--merge", "none", "--limit", "8",
               "--selection-budget", "none", *TRAIN) == 0
    report = json.loads((w / "run" / "report.json").read_text())
    for key in ("dense_zero_shot", "pruned_finetuned", "dense_finetuned"):
        assert 0 <= report[key]["acc"] <= 1
    assert report["prune"]["merged"] == {}
    assert report["prune"]["criterion"] == "auto"  # the default: the best candidate cut
    auto = report["prune"]["selection"]["auto"]
    chosen = auto["chosen"]
    losses = {c["name"]: c["loss"] for c in auto["candidates"]}
    assert losses[chosen] == min(losses.values())
    assert (w / "run" / "layer_scores.png").stat().st_size > 1000
    text = (w / "run" / "report.md").read_text()
    assert "pruned, fine-tuned" in text and f"| {chosen} (chosen) |" in text
    plotted = chosen if chosen != "greedy" else "block_influence"  # greedy: the scores guiding it
    assert f"The plot shows the layer scores of `{plotted}` (" in text
    selection, tune = auto["seconds"], report["pruned_finetune"]
    assert (f"Selection and merge search: {selection:.0f} s, as long as "
            f"{selection / tune['seconds_per_step']:.0f} of the pruned model's fine-tuning steps "
            f"({selection / tune['train_seconds']:.0%} of its {tune['steps']}-step fine-tune)") in text
    assert AutoConfig.from_pretrained(w / "run" / "model").num_hidden_layers == 4
    card = (w / "run" / "model" / "README.md").read_text()  # rewritten once the run measured it
    assert (f"| pruned, fine-tuned (this model) | {report['pruned_finetuned']['acc']:.3f} | "
            f"{report['pruned_finetuned']['acc_norm']:.3f} |") in card
    assert f"| dense, fine-tuned alike | {report['dense_finetuned']['acc']:.3f} |" in card
    assert f"pruned {report['prefill_seconds']['pruned']:.4f} s" in card
    # the default warm start: every LoRA matrix of the 4 kept layers started from the probe's
    assert report["pruned_finetune"]["warm_started_matrices"] == 4 * 7 * 2


@pytest.mark.parametrize("args,message", [
    (["prune", "--scores", "{w}/probe", "--ratio", "1.5", "--out", "{w}/x"], "ratio"),
    (["prune", "--scores", "{w}/probe", "--ratio", "nan", "--out", "{w}/x"], "ratio"),
    (["prune", "--scores", "{w}/probe", "--layers", "6", "--out", "{w}/x"], "at least one"),
    (["prune", "--scores", "{w}/probe", "--remove", "1,1", "--out", "{w}/x"], "more than once"),
    (["prune", "--scores", "{w}/probe", "--remove", "9", "--out", "{w}/x"], "out of range"),
    (["prune", "--scores", "{w}/probe", "--remove", "a", "--out", "{w}/x"], "not a layer"),
    (["prune", "--scores", "{w}", "--layers", "1", "--out", "{w}/x"], "not a probe output"),
    (["prune", "--scores", "{w}/probe", "--layers", "1", "--out", "{w}/x"],
     "was made on your data (data), which is not saved with it: pass --data FILE (your training "
     "data) or --task NAME so that auto can judge cuts, or --criterion gradpruner --merge none"),
    (["prune", "--scores", "{w}/probe", "--layers", "1", "--selection-budget", "-1", "--out", "{w}/x"],
     "--selection-budget"),
    (["prune", "--scores", "{w}/probe", "--layers", "1", "--heal-steps", "0", "--data", "{w}/data.jsonl",
      "--out", "{w}/x"], "--heal-steps"),
    (["eval", "--model", "{w}/nope", "--data", "{w}/data.jsonl"],
     "model not found: {w}/nope (give a model folder or a Hub id, or leave --model out"),
    (["eval", "--task", "no_such_task"], "unknown task"),
    (["probe", "--model", "{w}/model", "--data", "{w}/empty.jsonl", "--out", "{w}/x"], "empty"),
    (["probe", "--model", "{w}/model", "--data", "{w}/bad.jsonl", "--out", "{w}/x"], "outside"),
    (["finetune", "--model", "{w}/model", "--data", "{w}/bad.jsonl", "--out", "{w}/x"], "outside"),
    (["probe", "--model", "{w}/model", "--data", "{w}/data.jsonl", "--out", "{w}/model"], "input model"),
    (["prune", "--scores", "{w}/probe", "--layers", "1", "--out", "{w}/model/sub"], "input model"),
])
def test_bad_input_gives_one_line_and_nonzero_exit(workspace, capsys, args, message):
    w = workspace
    if not (w / "probe").exists():
        cli("probe", "--model", w / "model", "--data", w / "data.jsonl", "--out", w / "probe", *TRAIN)
    args, message = [a.format(w=w) for a in args], message.format(w=w)
    if args[0] == "prune":
        args += ["--model", str(w / "model")]
    before = sorted(p.name for p in w.iterdir())
    capsys.readouterr()
    assert cli(*args) != 0
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert sorted(p.name for p in w.iterdir()) == before  # nothing half-written


def test_prune_keeps_auto_within_the_heal_budget(workspace):
    w = workspace
    if not (w / "probe").exists():
        cli("probe", "--model", w / "model", "--data", w / "data.jsonl", "--out", w / "probe", *TRAIN)
    probe = json.loads((w / "probe" / "scores.json").read_text())["probe"]
    assert cli("prune", "--model", w / "model", "--scores", w / "probe", "--data", w / "data.jsonl",
               "--layers", "2", "--heal-steps", "3", "--out", w / "budgeted") == 0
    side = json.loads((w / "budgeted" / "gradpruner.json").read_text())
    auto = side["selection"]["auto"]
    budget = auto["plan"]
    assert budget["seconds"] == pytest.approx(
        0.1 * 3 * probe["step_seconds"] * 4 / 6, abs=0.006)
    assert 0 < probe["step_seconds"] < probe["probe_seconds"]
    assert budget["skipped"] and side["merged"] == {}  # a 3-step heal affords no held-out search
    assert auto["judge"] is None and auto["chosen"] == "block_influence" and budget["judged"] == []
    assert side["removed_layers"] == auto["candidates"][0]["removed"]


def test_scores_from_another_model_are_refused(workspace, tmp_path, capsys):
    w = workspace
    if not (w / "probe").exists():
        cli("probe", "--model", w / "model", "--data", w / "data.jsonl", "--out", w / "probe", *TRAIN)
    other = tiny_model("llama", num_hidden_layers=8)
    other.save_pretrained(tmp_path / "other")
    tiny_tokenizer().save_pretrained(tmp_path / "other")
    assert cli("prune", "--model", tmp_path / "other", "--scores", w / "probe", "--layers", "1",
               "--out", tmp_path / "x") == 2
    assert "6 layers" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_console_script_exit_code_and_single_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "gradpruner.cli", "prune", "--model",
                           str(tmp_path / "missing"), "--ratio", "0.5", "--out", str(tmp_path / "o")],
                          capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip().startswith("gradpruner: error:") and len(done.stderr.strip().splitlines()) == 1


def test_the_stages_leave_the_judging_examples_out_of_training(workspace, tmp_path):
    w = workspace
    assert cli("probe", "--model", w / "model", "--data", w / "data.jsonl", "--heldout", "8",
               "--out", tmp_path / "probe", *TRAIN) == 0
    assert json.loads((tmp_path / "probe" / "scores.json").read_text())["heldout"] == 8
    assert cli("prune", "--model", w / "model", "--scores", tmp_path / "probe", "--data",
               w / "data.jsonl", "--layers", "2", "--merge", "none", "--selection-budget", "none",
               "--out", tmp_path / "pruned") == 0
    side = json.loads((tmp_path / "pruned" / "gradpruner.json").read_text())
    assert side["config"] == {"task": "data", "heldout": 8, "datasets": []}  # the probe's count
    assert side["selection"]["auto"]["judge"]["examples"] == 8
    assert cli("finetune", "--model", tmp_path / "pruned", "--data", w / "data.jsonl",
               "--out", tmp_path / "tuned", *TRAIN) == 0
    tuned = json.loads((tmp_path / "tuned" / "gradpruner.json").read_text())
    assert tuned["finetune"]["heldout"] == 8
    assert cli("finetune", "--model", w / "model", "--data", w / "data.jsonl",
               "--out", tmp_path / "dense", *TRAIN) == 0  # no sidecar: every example trains
    assert json.loads((tmp_path / "dense" / "gradpruner.json").read_text())["finetune"]["heldout"] == 0
