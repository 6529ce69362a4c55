"""QLoRA (`--load-in-4bit` / `--load-in-8bit`): the memory estimate, the refusals, the merge into
the full-precision weights, and (where bitsandbytes is installed) the probe and the fine-tune on
a quantized tiny model on the CPU."""

import copy
import importlib.util
import json
import sys
import types

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig

from gradpruner.model.costs import layer_parameter_counts, parameter_count
from gradpruner.errors import GradPrunerError
from gradpruner.model.memory import QUANT_BYTES, training_bytes
from gradpruner.model.loading import quantization_config
from gradpruner.training.trainer import add_lora, finetune, merge_adapters_into
from gradpruner.training.train_config import TrainConfig
from tiny_models import tiny_model, write_color_questions
from tiny_tokenizer import tiny_tokenizer

LLAMA8B = dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
               num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=False)


def test_memory_estimate_counts_quantized_layer_weights():
    config = AutoConfig.for_model("llama", **LLAMA8B)
    layers = sum(layer_parameter_counts(config))
    rest = parameter_count(config) - layers
    plain = training_bytes(config, torch.bfloat16, 1, 512)
    for bits in (4, 8):
        quantized = training_bytes(config, torch.bfloat16, 1, 512, load_in_bits=bits)
        assert quantized["weights"] == int(layers * QUANT_BYTES[bits]) + rest * 4
        assert quantized["activations"] == plain["activations"]
    weights = {bits: training_bytes(config, torch.bfloat16, 1, 512, load_in_bits=bits)["weights"]
               for bits in (4, 8)}
    assert 4.5e9 < weights[4] < weights[8] < plain["weights"] < 17e9  # ~5.6, ~9.0, ~16 GB


def test_quantized_training_settings_are_checked(monkeypatch):
    with pytest.raises(GradPrunerError, match="must be 4 or 8"):
        TrainConfig(load_in_bits=2).validate()
    with pytest.raises(GradPrunerError, match="not with --full"):
        TrainConfig(load_in_bits=4, full=True).validate()
    with pytest.raises(GradPrunerError, match="not with --heal partial"):
        TrainConfig(load_in_bits=8).check_heal("partial")
    TrainConfig(load_in_bits=8).check_heal("lora")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "bitsandbytes" else real(name, *a))
    with pytest.raises(GradPrunerError, match=r"--load-in-4bit needs bitsandbytes: pip install bitsandbytes"):
        TrainConfig(load_in_bits=4).validate()


def test_quantization_refuses_a_missing_library_or_an_unsupported_device(monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import fails
    with pytest.raises(GradPrunerError, match="pip install bitsandbytes"):
        quantization_config(4, torch.float32, torch.device("cpu"))
    fake = types.SimpleNamespace(__version__="0.0-test", supported_torch_devices={"cuda"})
    monkeypatch.setitem(sys.modules, "bitsandbytes", fake)
    with pytest.raises(GradPrunerError, match=r"bitsandbytes 0.0-test does not support cpu \(it supports cuda\)"):
        quantization_config(8, torch.float32, torch.device("cpu"))
    config = quantization_config(4, torch.bfloat16, torch.device("cuda"))
    assert config.load_in_4bit and config.bnb_4bit_quant_type == "nf4"
    assert config.bnb_4bit_compute_dtype == torch.bfloat16


def _train_randomly(peft_model, seed: int = 1) -> None:
    """Give every LoRA matrix random values (as a fine-tune would leave them)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)


def test_adapters_merge_into_the_full_precision_weights():
    # stand-in for QLoRA: the adapters are trained on a rounded copy (bf16) of the fp32 model
    cfg = TrainConfig(lora_rank=4)
    full = tiny_model("llama")
    rounded = copy.deepcopy(full).to(torch.bfloat16).float()
    base = {k: v.clone() for k, v in rounded.state_dict().items()}
    trained = add_lora(rounded, cfg)
    _train_randomly(trained)
    expected = {k: v.clone() for k, v in copy.deepcopy(trained).merge_and_unload().state_dict().items()}
    fp32 = {k: v.clone() for k, v in full.state_dict().items()}
    merged = merge_adapters_into(full, trained, cfg).state_dict()
    name = "model.layers.2.mlp.down_proj.weight"
    delta = expected[name] - base[name]  # the adapters' B @ A * scale
    assert delta.abs().max() > 1e-3
    torch.testing.assert_close(merged[name], fp32[name] + delta, rtol=0, atol=1e-6)
    assert not torch.equal(merged[name], expected[name])  # not the rounded weights
    torch.testing.assert_close(merged["model.embed_tokens.weight"], fp32["model.embed_tokens.weight"])


def test_merge_refuses_adapters_of_another_shape():
    cfg = TrainConfig(lora_rank=4)
    trained = add_lora(tiny_model("llama"), cfg)
    with pytest.raises(GradPrunerError, match="do not fit the full-precision model"):
        merge_adapters_into(tiny_model("llama", num_hidden_layers=4), trained, cfg)


def test_finetune_merges_into_what_full_precision_loads(tmp_path):
    write_color_questions(tmp_path / "q.jsonl", 16)
    from gradpruner.tasks import resolve_task

    examples = resolve_task(None, str(tmp_path / "q.jsonl")).train_examples()
    cfg = TrainConfig(steps=2, batch_size=2, lr=1e-2, lora_rank=4)
    full = tiny_model("llama")
    stand_in = copy.deepcopy(full).to(torch.bfloat16).float()
    before = {k: v.clone() for k, v in stand_in.state_dict().items()}
    tuned, stats = finetune(stand_in, tiny_tokenizer(), examples, cfg, full_precision=lambda: full)
    assert tuned is full and stats["steps"] == 2
    name = "model.layers.0.self_attn.q_proj.weight"
    delta = tuned.state_dict()[name] - tiny_model("llama").state_dict()[name]
    assert 0 < torch.linalg.matrix_rank(delta) <= 4  # the full weights plus a rank-4 update
    assert not torch.equal(tuned.state_dict()[name], before[name])
    stand_in.is_loaded_in_4bit = True
    with pytest.raises(GradPrunerError, match="give full_precision"):
        finetune(stand_in, tiny_tokenizer(), examples, cfg)


# ---- with bitsandbytes: 4 and 8-bit on the CPU ------------------------------------------------

@pytest.fixture(scope="module")
def bnb_workspace(tmp_path_factory):
    pytest.importorskip("bitsandbytes")
    root = tmp_path_factory.mktemp("qlora")
    # bitsandbytes' CPU 4-bit kernels need rows of whole 64-weight blocks
    tiny_model("llama", hidden_size=64, intermediate_size=128).save_pretrained(root / "model")
    tiny_tokenizer().save_pretrained(root / "model")
    write_color_questions(root / "q.jsonl", 24)
    return root


@pytest.mark.parametrize("bits", [4, 8])
def test_quantized_probe_scores_every_layer(bnb_workspace, bits, monkeypatch):
    import gradpruner.workflows.recipe as recipe_module
    from gradpruner.cli import main

    monkeypatch.setattr(recipe_module, "quantized_copy", None)  # loaded quantized: quantized once

    out = bnb_workspace / f"probe{bits}"
    code = main(["probe", "--model", str(bnb_workspace / "model"), "--data", str(bnb_workspace / "q.jsonl"),
                 "--out", str(out), "--steps", "4", "--lr", "1e-2", "--batch-size", "2", "--heldout", "4",
                 "--device", "cpu", f"--load-in-{bits}bit"])
    assert code == 0
    scores = json.loads((out / "scores.json").read_text())
    assert len(scores["layer_scores"]) == 6 and all(s > 0 for s in scores["layer_scores"])
    assert scores["train_config"]["load_in_bits"] == bits


@pytest.mark.parametrize("bits", [4, 8])
def test_quantized_finetune_saves_full_precision_weights_plus_adapters(bnb_workspace, bits):
    from gradpruner.cli import main

    out = bnb_workspace / f"tuned{bits}"
    code = main(["finetune", "--model", str(bnb_workspace / "model"), "--data",
                 str(bnb_workspace / "q.jsonl"), "--out", str(out), "--steps", "3", "--batch-size",
                 "2", "--lr", "1e-2", "--lora-rank", "4", "--device", "cpu", f"--load-in-{bits}bit"])
    assert code == 0
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config
    tuned = load_file(str(out / "model.safetensors"))
    base = load_file(str(bnb_workspace / "model" / "model.safetensors"))
    assert tuned.keys() == base.keys()
    for name in ("model.layers.0.self_attn.q_proj.weight", "model.layers.5.mlp.down_proj.weight"):
        assert tuned[name].dtype == torch.float32
        delta = tuned[name] - base[name]
        # merged into the fp32 weights: a rank-4 update, not the quantization error everywhere
        assert 0 < torch.linalg.matrix_rank(delta) <= 4
    torch.testing.assert_close(tuned["model.embed_tokens.weight"], base["model.embed_tokens.weight"])


@pytest.mark.parametrize("bits", [4, 8])
def test_load_in_bits_quantizes_the_decoder_linears_only(bnb_workspace, bits):
    import bitsandbytes as bnb

    from gradpruner.model.loading import is_quantized, load_model

    model, _, _ = load_model(str(bnb_workspace / "model"), "float32", "cpu", load_in_bits=bits)
    kind = bnb.nn.Linear4bit if bits == 4 else bnb.nn.Linear8bitLt
    assert is_quantized(model)
    assert isinstance(model.model.layers[3].mlp.up_proj, kind)
    assert not isinstance(model.lm_head, kind) and model.lm_head.weight.dtype == torch.float32


def test_quantized_run_heals_the_full_precision_cut(bnb_workspace, tmp_path, monkeypatch):
    import gradpruner.workflows.recipe as recipe_module
    from gradpruner.config import RunConfig
    from gradpruner.model.loading import is_quantized
    from gradpruner.workflows.run import run

    copies, original = [], recipe_module.quantized_copy

    def quantized_copy(model, bits):
        copies.append(original(model, bits))
        return copies[-1]

    monkeypatch.setattr(recipe_module, "quantized_copy", quantized_copy)

    cfg = RunConfig.from_dict(dict(
        model=str(bnb_workspace / "model"), task=None, data=str(bnb_workspace / "q.jsonl"),
        criterion="gradpruner", merge=None, ratio=None, count=2, probe_steps=2, heldout=4,
        eval_limit=4, selection_budget=None, device="cpu", out=str(tmp_path / "run"),
        train=dict(steps=3, batch_size=2, lr=1e-2, lora_rank=4, seed=0,
                   load_in_bits=4)))
    results = run(cfg)
    kept = results["prune"]["kept_layers"]
    assert len(kept) == 4 and results["dense_finetune"]["probe_steps_reused"] == 2
    assert results["pruned_finetune"]["warm_started_matrices"] == 4 * 7 * 2  # from the 4-bit probe
    # the probe, the pruned model's and the dense model's fine-tunes each trained a 4-bit copy
    assert len(copies) == 3 and all(is_quantized(c) for c in copies)
    assert [c.config.num_hidden_layers for c in copies] == [6, 4, 6]
    tuned = load_file(str(tmp_path / "run" / "model" / "model.safetensors"))
    base = load_file(str(bnb_workspace / "model" / "model.safetensors"))
    for j, i in enumerate(kept):  # kept layer i is layer j of the pruned model, cut without a merge
        delta = tuned[f"model.layers.{j}.mlp.up_proj.weight"] - base[f"model.layers.{i}.mlp.up_proj.weight"]
        assert 0 < torch.linalg.matrix_rank(delta) <= 4
