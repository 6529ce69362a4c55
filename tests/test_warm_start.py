"""--warm-start: the pruned model's adapters start from the probe's, layer by original index."""

import json

import torch

from gradpruner.cli import main
from gradpruner.model.surgery import cut_layers
from gradpruner.training.trainer import TrainConfig, add_lora
from gradpruner.training.warm_start import load_adapters, warm_start
from tiny_models import save_tiny_model, tiny_model

TRAIN = ["--steps", "3", "--batch-size", "4", "--lr", "5e-3"]


def test_adapters_of_each_kept_layer_come_from_its_original_layer(tmp_path):
    save_tiny_model(tmp_path / "model", "llama")
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Q {i}?", "choices": ["a", "b"], "answer": i % 2})
                            + "\n" for i in range(24)))
    assert main(["probe", "--model", str(tmp_path / "model"), "--data", str(data),
                 "--out", str(tmp_path / "probe"), *TRAIN]) == 0
    saved = load_adapters(tmp_path / "probe")
    assert len(saved) == 6 * 7 * 2  # 6 layers x 7 linear modules x (A, B)
    assert any(float(v.abs().sum()) > 0 for k, v in saved.items() if k.endswith("lora_B"))

    model = tiny_model("llama")
    cut_layers(model, [1, 4])
    peft_model = add_lora(model, TrainConfig())
    assert warm_start(peft_model, saved, [0, 2, 3, 5]) == 4 * 7 * 2
    for j, old in enumerate([0, 2, 3, 5]):
        module = peft_model.base_model.model.model.layers[j].mlp.up_proj
        assert torch.equal(module.lora_B["default"].weight, saved[f"model.layers.{old}.mlp.up_proj.lora_B"])
        assert torch.equal(module.lora_A["default"].weight, saved[f"model.layers.{old}.mlp.up_proj.lora_A"])

    assert main(["prune", "--model", str(tmp_path / "model"), "--criterion", "tail", "--layers", "2",
                 "--merge", "none", "--out", str(tmp_path / "pruned")]) == 0
    assert main(["finetune", "--model", str(tmp_path / "pruned"), "--data", str(data), "--out",
                 str(tmp_path / "tuned"), "--warm-start", str(tmp_path / "probe"), *TRAIN]) == 0
    side = json.loads((tmp_path / "tuned" / "gradpruner.json").read_text())
    assert side["finetune"]["warm_started_matrices"] == 4 * 7 * 2


def test_warm_start_from_a_folder_without_adapters_is_one_line(tmp_path, capsys):
    save_tiny_model(tmp_path / "model", "llama")
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Q {i}?", "completion": " a"}) + "\n"
                            for i in range(8)))
    assert main(["finetune", "--model", str(tmp_path / "model"), "--data", str(data), "--out",
                 str(tmp_path / "t"), "--warm-start", str(tmp_path), *TRAIN]) == 2
    assert "no probe adapters" in capsys.readouterr().err
    assert not (tmp_path / "t").exists()
