"""IGIACallback against an independent computation from raw gradients at the same hook."""

import json
import math

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import Trainer, TrainerCallback, TrainingArguments

from gradpruner.tasks.examples import PadCollator
from gradpruner.errors import GradPrunerError
from gradpruner.training.igia import IGIA, IGIACallback
from tiny_models import tiny_model


class Recorder(TrainerCallback):
    """Copies the raw gradients of the watched parameters at every pre-optimizer step."""

    def __init__(self, params: dict[str, tuple]):
        self.params = params
        self.steps: list[dict[str, tuple]] = []

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.steps.append({n: tuple(p.grad.detach().double().clone() for p in ps)
                           for n, ps in self.params.items()})


def random_features(n: int = 32, length: int = 12, vocab: int = 128, seed: int = 0) -> list[dict]:
    gen = torch.Generator().manual_seed(seed)
    feats = []
    for i in range(n):
        ids = torch.randint(3, vocab, (length - i % 4,), generator=gen).tolist()
        feats.append({"input_ids": ids, "labels": [-100] * 4 + ids[4:]})
    return feats


def train(model, callbacks, steps: int, tmp_path, max_grad_norm: float = 1.0):
    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=steps + 2,
        learning_rate=5e-3, max_grad_norm=max_grad_norm, save_strategy="no", report_to="none",
        remove_unused_columns=False, use_cpu=True, disable_tqdm=True, seed=0,
        warmup_steps=0.0, logging_steps=1000,
    )
    trainer = Trainer(model=model, args=args, train_dataset=random_features(),
                      data_collator=PadCollator(0), callbacks=callbacks)
    trainer.train()
    return trainer


def lora_params(model) -> dict[str, tuple]:
    out = {}
    for name, module in model.named_modules():
        if hasattr(module, "lora_A") and isinstance(module.lora_A, torch.nn.ModuleDict) and module.lora_A:
            base = name.removeprefix("base_model.model.") + ".weight"
            out[base] = (module.lora_A["default"].weight, module.lora_B["default"].weight)
    return out


def expected_from(recorder: Recorder, steps: int, lora: bool):
    matrices, sq_norms = {}, []
    for record in recorder.steps[:steps]:
        row = {}
        for name, grads in record.items():
            sim = grads[1] @ grads[0] if lora else grads[0]
            matrices[name] = matrices.get(name, 0) + sim * sim
            row[name] = float((sim * sim).sum())
        sq_norms.append(row)
    return matrices, sq_norms


def layer_of(name: str) -> int:
    return int(name.split("model.layers.")[1].split(".")[0])


@pytest.mark.parametrize("steps,rank", [(3, 2), (10, 8)])  # factor storage, then dense storage
def test_lora_igia_matches_independent_computation(tmp_path, steps, rank):
    model = get_peft_model(tiny_model("llama"), LoraConfig(r=rank, lora_alpha=16,
                                                           target_modules="all-linear"))
    params = lora_params(model)
    recorder, callback = Recorder(params), IGIACallback(max_steps=steps)
    trainer = train(model, [recorder, callback], steps, tmp_path)
    assert trainer.state.global_step == steps  # the callback stopped training
    igia = callback.result()
    assert igia.mode == "lora" and igia.steps == steps
    assert sorted(igia.module_names) == sorted(params)
    assert all(not n.startswith("base_model") for n in igia.module_names)

    matrices, sq_norms = expected_from(recorder, steps, lora=True)
    # B starts at zero, so the simulated gradient of the first step is exactly zero.
    assert float(igia.sq_norms[0].abs().sum()) == 0.0
    expected_scores = [0.0] * igia.num_layers
    expected_unsquared = [0.0] * igia.num_layers
    for row in sq_norms:
        for name, value in row.items():
            expected_scores[layer_of(name)] += value
            expected_unsquared[layer_of(name)] += math.sqrt(value)
    assert igia.layer_scores == pytest.approx(expected_scores, rel=1e-4)
    assert igia.scores("unsquared") == pytest.approx(expected_unsquared, rel=1e-4)
    assert max(expected_scores) > 0
    for name, expected in matrices.items():
        torch.testing.assert_close(igia.matrix(name).double(), expected, rtol=1e-4, atol=1e-12)
    want_dense = steps * rank * 96 >= 32 * 64  # q_proj-sized module check of the storage rule
    assert ("model.layers.0.mlp.up_proj.weight" in igia.dense) == want_dense
    assert igia.state_numel() <= igia.dense_numel()


def test_full_finetuning_igia_uses_true_gradients(tmp_path):
    model = tiny_model("qwen2")
    params = {n: (p,) for n, p in model.named_parameters()
              if ".layers." in n and p.dim() == 2}
    recorder, callback = Recorder(params), IGIACallback(max_steps=3)
    train(model, [recorder, callback], 3, tmp_path)
    igia = callback.result()
    assert igia.mode == "full"
    assert sorted(igia.module_names) == sorted(params)
    matrices, _ = expected_from(recorder, 3, lora=False)
    for name, expected in matrices.items():
        torch.testing.assert_close(igia.matrix(name).double(), expected, rtol=1e-4, atol=1e-12)
    expected_scores = [0.0] * igia.num_layers
    for name, m in matrices.items():
        expected_scores[layer_of(name)] += float(m.sum())
    assert igia.layer_scores == pytest.approx(expected_scores, rel=1e-4)


def test_gradients_are_read_after_clipping(tmp_path):
    model = tiny_model("llama")
    callback = IGIACallback(max_steps=2)
    train(model, [callback], 2, tmp_path, max_grad_norm=1e-3)
    igia = callback.result()
    # the total gradient norm was clipped to 1e-3, so the summed squared norms are at most 1e-6
    assert float(igia.sq_norms.sum(dim=1).max()) <= 1e-6 * (1 + 1e-3)


def test_save_and_load_round_trip(tmp_path):
    model = get_peft_model(tiny_model("mistral"), LoraConfig(r=2, target_modules="all-linear"))
    callback = IGIACallback(max_steps=3)
    train(model, [callback], 3, tmp_path / "train")
    igia = callback.result()
    igia.save(tmp_path / "igia")
    loaded = IGIA.load(tmp_path / "igia")
    assert loaded.layer_scores == pytest.approx(igia.layer_scores)
    assert loaded.module_names == igia.module_names
    assert loaded.model_info["num_hidden_layers"] == 6
    for name in igia.module_names:
        torch.testing.assert_close(loaded.matrix(name), igia.matrix(name))


def test_full_fine_tuning_run_is_recorded(tmp_path):
    """Under a plain Trainer without PEFT: full fine-tuning, no LoRA settings, no max_length, and
    no source model for a model built from a config (prune then needs --model)."""
    callback = IGIACallback(max_steps=2)
    train(tiny_model("llama"), [callback], 2, tmp_path / "train")
    callback.result().save(tmp_path / "igia")
    scores = json.loads((tmp_path / "igia" / "scores.json").read_text())
    assert scores["source_model"] is None and scores["task"] is None
    assert scores["train_config"] == {"steps": 4, "batch_size": 4, "grad_accum": 1, "processes": 1,
                                      "lr": 5e-3, "full": True, "lora_rank": None,
                                      "lora_alpha": None, "max_length": None}
    assert scores["probe"]["steps"] == 2 and scores["probe"]["step_seconds"] > 0


def test_load_rejects_a_folder_that_is_not_a_probe(tmp_path):
    with pytest.raises(GradPrunerError, match="not a probe output .*: give the folder `gradpruner probe --out` wrote"):
        IGIA.load(tmp_path)


def test_nan_gradients_stop_the_probe_with_a_clear_error(tmp_path):
    model = tiny_model("llama")

    class Poison(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, **kwargs):
            model.model.layers[2].mlp.up_proj.weight.grad[0, 0] = float("nan")

    with pytest.raises(GradPrunerError, match="non-finite gradient.*layers.2.mlp.up_proj"):
        train(model, [Poison(), IGIACallback(max_steps=2)], 2, tmp_path, max_grad_norm=0.0)
