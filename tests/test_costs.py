"""Cost model against hand counts and against the instantiated tiny models."""

from __future__ import annotations

import pytest
from transformers import AutoModelForCausalLM

from gradpruner.model.costs import (
    average_context,
    cut_costs,
    flops_ratio,
    forward_flops_per_token,
    layer_flops,
    layer_parameter_counts,
    parameter_count,
)
from gradpruner.errors import GradPrunerError
from gradpruner.model.surgery import count_parameters
from tiny_models import ARCHS, tiny_config

# Tiny llama: vocab V=128, hidden H=32, MLP I=64, 4 heads / 2 KV heads of head_dim 8, 6 layers, untied.
EMBED = 128 * 32  # 4096, and the LM head is the same size
ATTN = 32 * 32 + 32 * 16 + 32 * 16 + 32 * 32  # q, k, v, o = 3072
MLP = 3 * 32 * 64  # gate, up, down = 6144
LAYER = ATTN + MLP + 2 * 32  # plus two RMSNorms = 9280
TOTAL = EMBED + 6 * LAYER + 32 + EMBED  # embeddings, layers, final norm, head = 63904


def test_parameter_count_by_hand():
    config = tiny_config("llama")
    assert layer_parameter_counts(config) == [LAYER] * 6
    assert parameter_count(config) == TOTAL == 63904
    assert parameter_count(tiny_config("llama", tie_word_embeddings=True)) == TOTAL - EMBED


def test_parameter_count_with_biases_by_hand():
    config = tiny_config("llama", attention_bias=True, mlp_bias=True)
    biases = (32 + 16 + 16 + 32) + (64 + 64 + 32)  # q, k, v, o; gate, up, down
    assert layer_parameter_counts(config)[0] == LAYER + biases


def test_flops_by_hand():
    config = tiny_config("llama")
    seq_len = 8  # causal: on average (8 + 1) / 2 = 4.5 keys per query
    per_layer = layer_flops(config, seq_len)[0]
    assert per_layer.attn_proj == 2 * ATTN == 6144
    assert per_layer.attn_scores == 2 * (4 * 8 * 4.5) * 2 == 576  # QK^T and AV, 4 heads of dim 8
    assert per_layer.mlp == 2 * MLP == 12288
    head = 2 * 32 * 128
    assert forward_flops_per_token(config, seq_len) == 6 * (6144 + 576 + 12288) + head == 122240


def test_sliding_window_caps_the_context():
    assert average_context(8) == 4.5
    assert average_context(4, window=16) == 2.5
    assert average_context(6, window=2) == (1 + 2 + 2 + 2 + 2 + 2) / 6
    config = tiny_config("qwen2")  # layers 3-5 slide over 16 tokens
    scores = [layer.attn_scores for layer in layer_flops(config, 512)]
    assert scores[0] == 4 * 4 * 8 * 256.5
    assert scores[5] == 4 * 4 * 8 * average_context(512, 16) < scores[0]


def test_moe_layers_count_router_and_active_experts():
    config = tiny_config("qwen3_moe")  # 4 experts of width 16, 2 active; MoE in layers 1, 3, 5
    params, flops = layer_parameter_counts(config), layer_flops(config, 8)
    assert params[1] - params[0] == (4 * 32 + 4 * 3 * 32 * 16) - 3 * 32 * 64
    assert flops[1].mlp == 2 * 32 * 4 + 2 * 2 * 3 * 32 * 16


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("tied", [False, True])
def test_parameter_count_matches_model(arch, tied):
    overrides = {"tie_word_embeddings": tied}
    if hasattr(tiny_config(arch), "attention_bias"):
        overrides["attention_bias"] = True
    if hasattr(tiny_config(arch), "mlp_bias"):
        overrides["mlp_bias"] = True
    config = tiny_config(arch, **overrides)
    assert parameter_count(config) == count_parameters(AutoModelForCausalLM.from_config(config))


def test_cut_costs():
    config = tiny_config("llama")
    costs = cut_costs(config, [0, 2, 4, 5], seq_len=8)
    head = 2 * 32 * 128
    layer = 6144 + 576 + 12288
    assert costs["params_before"] == TOTAL and costs["params_after"] == TOTAL - 2 * LAYER
    assert costs["param_fraction_removed"] == pytest.approx(2 * LAYER / TOTAL)
    assert costs["flops_per_token_after"] == 4 * layer + head
    assert costs["ideal_speedup"] == pytest.approx((6 * layer + head) / (4 * layer + head))
    assert costs["layers_before"] == 6 and costs["layers_after"] == 4


def test_flops_ratio_counts_the_head_only_where_it_runs():
    config = tiny_config("llama")
    head = 2 * 32 * 128
    layer = 6144 + 576 + 12288  # at 8 tokens
    kept = [0, 2, 4, 5]
    assert flops_ratio(config, kept, 8) == pytest.approx(1 / cut_costs(config, kept, 8)["ideal_speedup"])
    assert flops_ratio(config, kept, 8, head_share=0.25) == pytest.approx(
        (4 * layer + head / 4) / (6 * layer + head / 4))
    assert flops_ratio(config, kept, 8, head_share=0) == pytest.approx(4 / 6)


@pytest.mark.parametrize("kept", [[], [0, 0], [6], [-1], [0.5]])
def test_cut_costs_rejects_bad_kept_layers(kept):
    with pytest.raises(GradPrunerError):
        cut_costs(tiny_config("llama"), kept)
