"""Tiny randomly initialised decoder models of several architectures, for tests."""

from __future__ import annotations

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

torch.set_num_threads(1)  # tiny matrices: extra threads only contend on the 2-core test machines

COMMON = dict(
    vocab_size=128,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=6,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    tie_word_embeddings=False,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)

ARCH_KWARGS: dict[str, dict] = {
    "llama": {},
    "mistral": {"sliding_window": 16},
    "qwen2": {"use_sliding_window": True, "sliding_window": 16, "max_window_layers": 3},
    "qwen3": {"head_dim": 8, "use_sliding_window": True, "sliding_window": 16, "max_window_layers": 2},
    "gemma2": {"head_dim": 8, "sliding_window": 16},
    "gemma3_text": {"head_dim": 8, "sliding_window": 16},
    "phi3": {},
    "gemma": {"head_dim": 8},
    "granite": {},
    "olmo2": {},
    "smollm3": {"use_sliding_window": True, "sliding_window": 16, "no_rope_layer_interval": 2},
    "qwen3_moe": {"head_dim": 8, "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 16,
                  "decoder_sparse_step": 2},
}

ARCHS = list(ARCH_KWARGS)


def tiny_config(arch: str, **overrides):
    """A tiny config of the given `model_type`."""
    kwargs = {**COMMON, **ARCH_KWARGS[arch], **overrides}
    return AutoConfig.for_model(arch, **kwargs)


def tiny_model(arch: str, seed: int = 0, **overrides) -> PreTrainedModel:
    """A tiny random causal LM of the given architecture, in fp32 eval mode."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, **overrides), dtype=torch.float32)
    return model.eval()


def save_tiny_model(folder, arch: str = "llama") -> None:
    """A tiny random model of `arch` and the tiny tokenizer, saved as one HF model folder."""
    from tiny_tokenizer import tiny_tokenizer

    tiny_model(arch).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)


def write_color_questions(path, count: int, choices: int = 4) -> None:
    """A JSONL task of `count` questions ("Question: color i?") of `choices` colours, gold i % choices."""
    import json

    colors = ["blue", "green", "red", "black"][:choices]
    with open(path, "w") as f:
        for i in range(count):
            f.write(json.dumps({"prompt": f"Question: color {i}? Answer:", "choices": colors,
                                "answer": i % choices}) + "\n")
