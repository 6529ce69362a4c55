"""Layer removal on every tiny architecture: config, KV cache, save/reload, PEFT, bad input."""

from __future__ import annotations

import json

import pytest
import torch
from peft import LoraConfig, get_peft_model
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    BertConfig,
    BertLMHeadModel,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaForSequenceClassification,
    LlamaModel,
    PreTrainedTokenizerFast,
)

from gradpruner.model import costs
from gradpruner.errors import GradPrunerError
from gradpruner.outputs import SIDECAR_NAME
from gradpruner.model.surgery import (
    ADAPTERS,
    base_model,
    count_parameters,
    cut_layers,
    decoder_layers,
    get_adapter,
    layer_index,
    layer_prefix,
    num_layers,
    save_pretrained_atomic,
)
from tiny_models import ARCHS, tiny_config, tiny_model

REMOVE = [1, 3]
KEPT = [0, 2, 4, 5]
PER_LAYER_FIELDS = ("layer_types", "max_window_layers", "no_rope_layers", "mlp_only_layers", "decoder_sparse_step")


def _prompt(length: int = 18) -> dict[str, torch.Tensor]:
    """A batch of two random prompts, longer than the tiny models' sliding window (16)."""
    ids = torch.randint(3, 128, (2, length), generator=torch.Generator().manual_seed(1))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _generate(model: torch.nn.Module, new_tokens: int = 4):
    """Greedy generation with a KV cache, keeping each step's logits."""
    with torch.no_grad():
        return model.generate(
            **_prompt(),
            max_new_tokens=new_tokens,
            do_sample=False,
            use_cache=True,
            output_logits=True,
            return_dict_in_generate=True,
        )


def _layer_params(model: torch.nn.Module, index: int) -> int:
    return sum(p.numel() for p in decoder_layers(model)[index].parameters())


def _per_layer_fields(config) -> dict:
    return {name: getattr(config, name) for name in PER_LAYER_FIELDS if hasattr(config, name)}


@pytest.mark.parametrize("arch", ARCHS)
def test_cut_rewrites_config_and_cache_indices(arch):
    model = tiny_model(arch)
    types = getattr(model.config, "layer_types", None)
    assert cut_layers(model, REMOVE) == KEPT
    assert model.config.num_hidden_layers == 4 == num_layers(model)
    if types is not None:
        assert model.config.layer_types == [types[i] for i in KEPT]
    for j, layer in enumerate(decoder_layers(model)):
        assert layer.self_attn.layer_idx == j
        assert all(m.layer_idx == j for m in layer.modules() if hasattr(m, "layer_idx"))


@pytest.mark.parametrize("arch", ARCHS)
def test_cut_model_generates_with_cache(arch):
    model = tiny_model(arch)
    cut_layers(model, REMOVE)
    out = _generate(model)
    assert out.sequences.shape == (2, 18 + 4)
    with torch.no_grad():
        full = model(out.sequences).logits  # no cache: every position recomputed
    for step, logits in enumerate(out.logits):
        torch.testing.assert_close(logits, full[:, 17 + step], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("arch", ARCHS)
def test_saved_cut_model_reloads_with_same_logits(arch, tmp_path):
    model = tiny_model(arch)
    cut_layers(model, REMOVE)
    out = save_pretrained_atomic(model, None, tmp_path / "pruned", {"kept_layers": KEPT})
    reloaded, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert reloaded.config.num_hidden_layers == 4
    assert _per_layer_fields(reloaded.config) == _per_layer_fields(model.config)
    for mine, theirs in zip(decoder_layers(model), decoder_layers(reloaded.eval())):
        assert [type(m) for m in mine.modules()] == [type(m) for m in theirs.modules()]
    expected, got = _generate(model), _generate(reloaded)
    assert torch.equal(expected.sequences, got.sequences)
    for a, b in zip(expected.logits, got.logits):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    assert json.loads((out / SIDECAR_NAME).read_text()) == {"kept_layers": KEPT}


@pytest.mark.parametrize("arch", ARCHS)
def test_parameter_counts_after_cut(arch):
    model = tiny_model(arch)
    before = count_parameters(model)
    removed = sum(_layer_params(model, i) for i in REMOVE)
    assert before == costs.parameter_count(model.config)
    cut_layers(model, REMOVE)
    assert count_parameters(model) == before - removed == costs.parameter_count(model.config)


@pytest.mark.parametrize(("arch", "remove"), [("qwen2", [1, 3]), ("qwen2", [0, 4]), ("qwen3", [2, 3, 5])])
def test_max_window_layers_reproduces_kept_layer_types(arch, remove):
    model = tiny_model(arch)
    cut_layers(model, remove)
    settings = model.config.to_dict()
    del settings["layer_types"]
    derived = type(model.config)(**settings)  # types derived from max_window_layers alone
    assert derived.layer_types == model.config.layer_types


def test_moe_layout_is_kept_when_sparse_step_no_longer_fits():
    model = tiny_model("qwen3_moe", mlp_only_layers=[5])  # sparse step 2: MoE blocks in layers 1, 3
    kinds = [type(layer.mlp).__name__ for layer in decoder_layers(model)]
    kept = cut_layers(model, [0, 4])
    assert model.config.decoder_sparse_step == 1
    assert model.config.mlp_only_layers == [1, 3]  # original layers 2 and 5
    rebuilt = AutoModelForCausalLM.from_config(model.config)
    assert [type(layer.mlp).__name__ for layer in decoder_layers(rebuilt)] == [kinds[i] for i in kept]


@pytest.mark.parametrize("arch", ARCHS)
def test_cut_peft_wrapped_model(arch):
    plain = tiny_model(arch)
    cut_layers(plain, REMOVE)
    peft_model = get_peft_model(tiny_model(arch), LoraConfig(r=4, target_modules="all-linear"))
    assert cut_layers(peft_model, REMOVE) == KEPT
    assert base_model(peft_model).config.num_hidden_layers == 4
    assert base_model(peft_model.base_model) is base_model(peft_model)
    assert {k.replace(".base_layer", "") for k in base_model(peft_model).state_dict()
            if "lora_" not in k} == set(plain.state_dict())  # the same layers cut, the same weights kept
    assert count_parameters(peft_model) == count_parameters(plain)
    lora_layers = {layer_index(name, layer_prefix(peft_model)) for name, _ in peft_model.named_parameters()
                   if "lora_" in name}
    assert lora_layers == {0, 1, 2, 3}
    for a, b in zip(_generate(peft_model).logits, _generate(plain).logits):  # LoRA B starts at zero
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_merged_peft_model_saves_and_reloads(tmp_path):
    peft_model = get_peft_model(tiny_model("llama"), LoraConfig(r=4, target_modules="all-linear"))
    cut_layers(peft_model, REMOVE)
    with pytest.raises(GradPrunerError, match="merge_and_unload"):
        save_pretrained_atomic(peft_model, None, tmp_path / "out", {})
    merged = peft_model.merge_and_unload()
    reloaded = AutoModelForCausalLM.from_pretrained(save_pretrained_atomic(merged, None, tmp_path / "out", {}))
    for a, b in zip(_generate(merged).logits, _generate(reloaded.eval()).logits):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("model_class", "config", "name"),
    [
        (BertLMHeadModel, BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=32, is_decoder=True), "bert"),
        (GPT2LMHeadModel, GPT2Config(vocab_size=64, n_embd=16, n_layer=2, n_head=2), "gpt2"),
    ],
)
def test_unsupported_architecture(model_class, config, name):
    model = model_class(config)
    with pytest.raises(GradPrunerError, match=f"unsupported architecture '{name}' \\(supported: .*llama"):
        cut_layers(model, [0])
    with pytest.raises(GradPrunerError, match=f"'{name}'"):
        get_adapter(model.config)


@pytest.mark.parametrize("model_class", [LlamaModel, LlamaForSequenceClassification])
def test_not_a_causal_lm(model_class):
    with pytest.raises(GradPrunerError, match="not a causal language model"):
        decoder_layers(model_class(tiny_config("llama")))


@pytest.mark.parametrize(
    ("remove", "message"),
    [
        ([1, 1], "more than once"),
        ([6], "out of range"),
        ([-1], "out of range"),
        (list(range(6)), "all 6 layers"),
        ([1.0], "integers"),
        (["1"], "integers"),
        ([True], "integers"),
        ("12", "list of integers"),
    ],
)
def test_bad_remove_lists(remove, message):
    model = tiny_model("llama")
    with pytest.raises(GradPrunerError, match=message):
        cut_layers(model, remove)
    assert num_layers(model) == model.config.num_hidden_layers == 6


def test_removing_nothing_keeps_every_layer():
    model = tiny_model("llama")
    assert cut_layers(model, []) == list(range(6))
    assert num_layers(model) == 6


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("model.layers.3.self_attn.q_proj.weight", 3),
        ("base_model.model.model.layers.3.self_attn.q_proj.lora_A.default.weight", 3),
        ("model.layers.12", 12),
        ("model.embed_tokens.weight", None),
        ("lm_head.weight", None),
        ("vision_model.layers.3.mlp.fc1.weight", None),
    ],
)
def test_layer_index(name, expected):
    assert layer_index(name, "model.layers") == expected


def test_tied_embeddings_counted_once():
    untied, tied = tiny_model("llama"), tiny_model("llama", tie_word_embeddings=True)
    assert count_parameters(tied) == count_parameters(untied) - 128 * 32 == costs.parameter_count(tied.config)


def test_registry_covers_the_tiny_architectures():
    assert set(ARCHS) <= set(ADAPTERS)
    assert layer_prefix(tiny_model("gemma3_text")) == "model.layers"


def _tiny_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {"[UNK]": 0, "hello": 1, "world": 2}
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel(vocab, unk_token="[UNK]")), unk_token="[UNK]")


def test_save_writes_plain_folder_with_tokenizer_and_sidecar(tmp_path):
    out = save_pretrained_atomic(tiny_model("llama"), _tiny_tokenizer(), tmp_path / "out", {"removed": REMOVE})
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    assert AutoTokenizer.from_pretrained(out).convert_tokens_to_ids("world") == 2
    assert (out / SIDECAR_NAME).read_text() == json.dumps({"removed": REMOVE}, indent=2) + "\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_save_refuses_existing_output_and_input_folder(tmp_path):
    model = tiny_model("llama")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(GradPrunerError, match="not empty"):
        save_pretrained_atomic(model, None, tmp_path / "out", {})
    with pytest.raises(GradPrunerError, match="input model"):
        save_pretrained_atomic(model, None, tmp_path / "src" / "pruned", {}, source_dir=tmp_path / "src")
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


def test_crash_mid_save_leaves_previous_output_intact(tmp_path, monkeypatch):
    model = tiny_model("llama")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("previous")

    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(model, "save_pretrained", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        save_pretrained_atomic(model, None, out, {}, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
