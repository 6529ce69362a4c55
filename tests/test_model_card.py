"""The model card (README.md) of every model folder: its front matter parses with PyYAML and with
huggingface_hub, carries the base model's license and never invents one, and the text says what was
cut, the parameters, the healing and what `run` measured."""

import json

import pytest
import yaml
from huggingface_hub import ModelCard

from gradpruner.cli import main
from gradpruner.reports.model_card import (BaseModelInfo, Measured, base_model_info, front_matter,
                                   render_card)
from gradpruner.plan import MergeStep, PrunePlan, PruneRecord
from gradpruner.tasks import get_task
from tiny_models import save_tiny_model, tiny_model, write_color_questions
from tiny_tokenizer import tiny_tokenizer

SOURCE_README = "---\nlicense: mit\ntags: [tiny]\n---\n# A tiny model\n"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("card")
    hub_copy = root / "hub" / "models--acme--tiny-llama" / "snapshots" / "0123abcd"  # a Hub cache folder
    tiny_model("llama").save_pretrained(hub_copy)
    tiny_tokenizer().save_pretrained(hub_copy)
    (hub_copy / "README.md").write_text(SOURCE_README)
    write_color_questions(root / "data.jsonl", 40)
    return root, hub_copy


def _card(folder) -> tuple[dict, str]:
    """The front matter (read by PyYAML, checked against huggingface_hub's reading) and the text."""
    text = (folder / "README.md").read_text()
    assert text.startswith("---\n")
    data = yaml.safe_load(text.split("---\n")[1])
    assert ModelCard.load(folder / "README.md").data.to_dict() == data
    return data, text


def test_pruned_and_finetuned_folders_carry_a_card(workspace):
    root, source = workspace
    data = str(root / "data.jsonl")
    pruned, tuned = root / "pruned", root / "tuned"
    assert main(["prune", "--model", str(source), "--data", data, "--criterion", "block_influence",
                 "--layers", "2", "--merge", "fold", "--out", str(pruned)]) == 0
    meta, text = _card(pruned)
    side = json.loads((pruned / "gradpruner.json").read_text())
    assert meta["base_model"] == "acme/tiny-llama" and meta["license"] == "mit"
    assert meta["tags"] == ["gradpruner", "layer-pruning", "pruned"]
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "text-generation"
    assert "datasets" not in meta  # the user's own file has no Hub id
    removed = ", ".join(map(str, side["removed_layers"]))
    assert f"Removed decoder layers (0-based indices in the original model): {removed};" in text
    assert f"{side['params_before']:,} before, {side['params_after']:,} after" in text
    (receiver, donors), = side["merged"].items()
    assert f"layer {donors[0]} into layer {receiver}, by the linear fold" in text
    assert "Not fine-tuned after the cut" in text and "arXiv" in text
    assert (source / "README.md").read_text() == SOURCE_README  # the input folder is left alone

    assert main(["finetune", "--model", str(pruned), "--data", data, "--steps", "2", "--batch-size",
                 "4", "--lr", "2e-3", "--distill", "0.5", "--out", str(tuned)]) == 0
    meta, text = _card(tuned)
    assert meta["base_model"] == "acme/tiny-llama" and meta["license"] == "mit"
    assert f"Removed decoder layers (0-based indices in the original model): {removed};" in text
    assert f"{side['params_before']:,} before, {side['params_after']:,} after" in text
    assert "- Method: `lora+distill0.5`, LoRA on every linear module (rank 8, alpha 32)" in text
    assert "- 2 steps on task `data`, learning rate 0.002, batch size 4" in text
    assert "weight 0.5 of the teacher's token distributions" in text


def test_no_license_is_invented_for_a_base_without_a_card(workspace, tmp_path):
    save_tiny_model(tmp_path / "model")
    assert main(["prune", "--model", str(tmp_path / "model"), "--criterion", "tail", "--layers", "1",
                 "--merge", "none", "--out", str(tmp_path / "pruned")]) == 0
    meta, text = _card(tmp_path / "pruned")
    assert "license" not in meta and "base_model" not in meta  # a local folder: no Hub id either
    assert "gradpruner" in meta["tags"] and "Merged: none; the removed layers were dropped." in text
    assert "`" + str(tmp_path / "model") + "`" in text  # the text names the local base instead
    # the dense model fine-tuned without a cut gets a card too
    assert main(["finetune", "--model", str(tmp_path / "model"), "--data", str(workspace[0] / "data.jsonl"),
                 "--steps", "1", "--batch-size", "4", "--out", str(tmp_path / "tuned")]) == 0
    meta, text = _card(tmp_path / "tuned")
    assert "license" not in meta and meta["tags"] == ["gradpruner", "fine-tuned"]
    assert "## Fine-tuning" in text and "Removed decoder layers" not in text


def test_the_default_model_is_known_by_its_hub_id_and_license(tmp_path, monkeypatch):
    monkeypatch.setenv("GRADPRUNER_CACHE", str(tmp_path))
    folder = tmp_path / "models" / "SmolLM2-135M-Instruct"
    folder.mkdir(parents=True)
    assert base_model_info(str(folder)) == BaseModelInfo(
        str(folder), "HuggingFaceTB/SmolLM2-135M-Instruct", {"license": "apache-2.0"})
    assert base_model_info(str(tmp_path)).license == {}  # any other folder without a card


def test_the_card_of_a_run_reports_the_accuracies_and_the_speed():
    plan = PrunePlan(6, (2, 3), (MergeStep(1, (2,)),), "gradpruner", density=0.2, scale=1.0)
    record = PruneRecord(plan, "gradpruner", [1.0] * 6, 1000, 700, config={"datasets": ["allenai/ai2_arc"]})
    record.finetune = {"steps": 60, "train_loss": 0.81, "warm_started_matrices": 56,
                       "task": "arc_easy", "datasets": ["allenai/ai2_arc"],
                       "config": {"lora_rank": 8, "lora_alpha": 32, "batch_size": 8, "max_length": 256},
                       "heal": {"method": "lora", "describe": "lora", "distill": 0.0, "lr": 3e-4,
                                "full": False}}
    measured = Measured("arc_easy", {"acc": 0.537, "acc_norm": 0.5, "n": 200},
                        {"acc": 0.597, "acc_norm": 0.55, "n": 200}, {"acc": 0.4, "acc_norm": 0.41, "n": 200},
                        {"dense": 0.125, "pruned": 0.1})
    base = BaseModelInfo("/cache/SmolLM2", "HuggingFaceTB/SmolLM2-135M-Instruct", {"license": "apache-2.0"})
    text = render_card(record.to_json(), base, measured)
    meta = front_matter(text)
    assert meta["datasets"] == ["allenai/ai2_arc"] and meta["license"] == "apache-2.0"
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert "| model | acc | acc_norm |" in text
    assert "| pruned, fine-tuned (this model) | 0.537 | 0.500 |" in text
    assert "| dense, fine-tuned alike | 0.597 | 0.550 |" in text
    assert "| dense, zero-shot | 0.400 | 0.410 |" in text
    assert "dense 0.1250 s, pruned 0.1000 s (1.25x as fast)" in text
    assert "layer 2 into layer 1, by GradPruner's rule: each donor matrix sparsified to density 0.2" in text
    assert "1,000 before, 700 after (30.0% fewer)" in text
    assert "warm-started from the probe's adapters (56 matrices)" in text
    assert "60 steps on task `arc_easy`, learning rate 0.0003" in text
    assert "Evaluation" not in render_card(record.to_json(), base)  # nothing measured, nothing said


def test_built_in_tasks_name_their_hub_datasets():
    assert get_task("arc_challenge").datasets == ("allenai/ai2_arc",)
    assert get_task("mmlu_clinical").datasets == ("openlifescienceai/medmcqa",)  # what it trains on
