"""The probe inside a user's own TRL `SFTTrainer` run, then `gradpruner prune` and `finetune` from
the saved folder: the README's "Probe inside your own training" recipe on a tiny model."""

import json
import shutil
from pathlib import Path

import pytest
from datasets import load_dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer

from gradpruner import IGIACallback
from gradpruner.cli import main
from tiny_models import save_tiny_model

PROBE_STEPS, RUN_STEPS = 3, 20


def cli(*args) -> int:
    return main([str(a) for a in args])


@pytest.fixture(scope="module")
def sft(tmp_path_factory) -> Path:
    """A tiny model folder, its prompt/completion training data, and the probe folder of a LoRA
    SFT run with the callback, saved as the README says."""
    root = tmp_path_factory.mktemp("trl")
    save_tiny_model(root / "my-model")
    with open(root / "train.jsonl", "w") as f:
        for i in range(48):
            f.write(json.dumps({"prompt": f"Question: color {i}? Answer:",
                                "completion": " " + ["blue", "green", "red"][i % 3]}) + "\n")
    # the README's recipe, with a tiny batch, a short run and CPU-friendly precision
    model = AutoModelForCausalLM.from_pretrained(root / "my-model")
    tokenizer = AutoTokenizer.from_pretrained(root / "my-model")
    train = load_dataset("json", data_files=str(root / "train.jsonl"), split="train",
                         cache_dir=str(root / "hf-cache"))
    probe = IGIACallback(max_steps=PROBE_STEPS)
    args = SFTConfig(output_dir=str(root / "sft"), max_steps=RUN_STEPS, report_to=[],
                     per_device_train_batch_size=4, gradient_accumulation_steps=2,
                     learning_rate=5e-3, max_length=64, bf16=False, save_strategy="no",
                     disable_tqdm=True)
    trainer = SFTTrainer(model=model, args=args, train_dataset=train, processing_class=tokenizer,
                         peft_config=LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"),
                         callbacks=[probe])
    trainer.train()
    assert trainer.state.global_step == PROBE_STEPS  # the callback stopped the run
    probe.result().save(root / "probe")
    return root


def test_saved_probe_records_the_run(sft):
    scores = json.loads((sft / "probe" / "scores.json").read_text())
    assert len(scores["layer_scores"]) == 6 and all(s > 0 for s in scores["layer_scores"])
    assert scores["steps"] == scores["probe"]["steps"] == PROBE_STEPS
    assert scores["source_model"] == str((sft / "my-model").resolve())
    assert scores["task"] is None
    assert 0 < scores["probe"]["step_seconds"] < 10  # what the selection budget reads
    assert scores["probe"]["schedule_steps"] == RUN_STEPS
    assert scores["train_config"] == {"steps": RUN_STEPS, "batch_size": 4, "grad_accum": 2,
                                      "processes": 1, "lr": 5e-3, "full": False, "lora_rank": 4,
                                      "lora_alpha": 8, "max_length": 64}


@pytest.mark.parametrize("merge", ["none", "3"])  # no task data needed either way
def test_prune_by_the_igia_alone_removes_the_lowest_scored_layers(sft, merge):
    scores = json.loads((sft / "probe" / "scores.json").read_text())["layer_scores"]
    out = sft / f"by-igia-{merge}"
    assert cli("prune", "--scores", sft / "probe", "--model", sft / "my-model", "--criterion",
               "gradpruner", "--merge", merge, "--ratio", "0.34", "--out", out) == 0
    side = json.loads((out / "gradpruner.json").read_text())
    lowest = sorted(range(6), key=lambda i: scores[i])[:2]
    assert side["removed_layers"] == sorted(lowest)
    assert bool(side["merged"]) == (merge == "3")
    pruned = AutoModelForCausalLM.from_pretrained(out)
    assert pruned.config.num_hidden_layers == 4 and len(pruned.model.layers) == 4


def test_readme_prune_and_finetune_from_the_saved_probe(sft):
    """`prune --scores probe/ --data train.jsonl` (default `auto`, the recorded model), then
    `finetune` of the pruned folder, as the README's recipe runs them."""
    assert cli("prune", "--scores", sft / "probe", "--data", sft / "train.jsonl", "--ratio", "0.34",
               "--out", sft / "pruned") == 0
    side = json.loads((sft / "pruned" / "gradpruner.json").read_text())
    assert side["source_model"] == str((sft / "my-model").resolve())  # no --model: the recorded one
    assert side["criterion"] == "auto" and len(side["removed_layers"]) == 2
    pruned = AutoModelForCausalLM.from_pretrained(sft / "pruned")
    assert pruned.config.num_hidden_layers == 4 and len(pruned.model.layers) == 4
    assert cli("finetune", "--model", sft / "pruned", "--data", sft / "train.jsonl", "--steps", "2",
               "--batch-size", "4", "--out", sft / "tuned") == 0
    tuned = AutoModelForCausalLM.from_pretrained(sft / "tuned")
    assert tuned.config.num_hidden_layers == 4
    assert json.loads((sft / "tuned" / "gradpruner.json").read_text())["finetune"]["steps"] == 2


def test_prune_budget_is_timed_by_the_trainers_steps(sft):
    """auto's selection budget for `--heal-steps` comes from the step time the callback measured."""
    step = json.loads((sft / "probe" / "scores.json").read_text())["probe"]["step_seconds"]
    assert cli("prune", "--scores", sft / "probe", "--data", sft / "train.jsonl", "--layers", "2",
               "--heal-steps", "30", "--out", sft / "budgeted") == 0
    plan = json.loads((sft / "budgeted" / "gradpruner.json").read_text())["selection"]["auto"]["plan"]
    assert plan["step_seconds"] == pytest.approx(step, abs=1e-4)
    assert plan["seconds"] == pytest.approx(0.1 * 30 * step * 4 / 6, abs=1e-3)


@pytest.mark.parametrize("args,message", [
    ([], "names no task: pass --data FILE (your training data) or --task NAME so that auto can "
         "judge cuts, or --criterion gradpruner --merge none"),
    (["--criterion", "gradpruner"], "so that --merge auto can judge merges"),
    (["--criterion", "block_influence", "--merge", "none"], "so that block_influence can score layers"),
    (["--model-missing"], "pass --model (the probed model's folder or Hub id)"),
])
def test_prune_from_a_trainer_probe_says_what_to_pass(sft, capsys, args, message):
    probe = sft / "probe"
    if args == ["--model-missing"]:
        probe, args = sft / "moved-probe", []
        shutil.copytree(sft / "probe", probe, dirs_exist_ok=True)
        scores = json.loads((probe / "scores.json").read_text())
        scores["source_model"] = str(sft / "deleted-model")
        (probe / "scores.json").write_text(json.dumps(scores))
    before = sorted(p.name for p in sft.iterdir())
    capsys.readouterr()
    assert cli("prune", "--scores", probe, "--ratio", "0.34", *args, "--out", sft / "x") == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and str(probe) in err
    assert sorted(p.name for p in sft.iterdir()) == before  # nothing written
