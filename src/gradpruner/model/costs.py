"""Cost model of a decoder: parameters and forward FLOPs from its config, and what a cut saves.

FLOP convention: 2 FLOPs per multiply-add of the matrix products only: the q, k, v, o projections,
the attention scores QK^T and the weighted sum AV, the MLP (and MoE router), and the LM head. Norms,
activations, softmax, rotary embeddings and the embedding lookup count 0. Attention is causal: in a
sequence of `seq_len` tokens the query at position t (1-based) attends min(t, window) keys, and
per-token figures are averages over the sequence: (seq_len + 1) / 2 keys when there is no window.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Integral

from transformers import PreTrainedConfig

from ..errors import GradPrunerError
from .surgery import ArchAdapter, get_adapter, moe_layers


@dataclass(frozen=True)
class LayerFlops:
    """Forward FLOPs per token of one decoder layer."""

    attn_proj: float  # q, k, v, o projections
    attn_scores: float  # QK^T and AV
    mlp: float  # dense MLP, or router plus the active experts

    @property
    def total(self) -> float:
        return self.attn_proj + self.attn_scores + self.mlp


def _dims(config: PreTrainedConfig) -> tuple[int, int, int, int]:
    """(hidden size, query heads, key-value heads, head dim)."""
    hidden, heads = config.hidden_size, config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    return hidden, heads, kv_heads, head_dim


def _attention_weights(config: PreTrainedConfig) -> int:
    """Weights of the q, k, v, o projections (fused or not, the count is the same)."""
    hidden, heads, kv_heads, head_dim = _dims(config)
    return hidden * head_dim * (2 * heads + 2 * kv_heads)


def _attention_extras(config: PreTrainedConfig, adapter: ArchAdapter) -> int:
    """Attention parameters besides the projection weights: biases and q/k norms."""
    hidden, heads, kv_heads, head_dim = _dims(config)
    attention_bias = bool(getattr(config, "attention_bias", False))
    extras = head_dim * (heads + 2 * kv_heads) if adapter.qkv_bias or attention_bias else 0
    extras += hidden if attention_bias else 0
    if adapter.qk_norm == "head":
        extras += 2 * head_dim
    elif adapter.qk_norm == "proj":
        extras += head_dim * (heads + kv_heads)
    return extras


def _dense_mlp_params(config: PreTrainedConfig) -> int:
    """Gated MLP: gate, up and down matrices, with biases where the config asks for them."""
    hidden, inter = config.hidden_size, config.intermediate_size
    biases = 2 * inter + hidden if getattr(config, "mlp_bias", False) else 0
    return 3 * hidden * inter + biases


def _moe_params(config: PreTrainedConfig) -> int:
    """Qwen-style MoE block: router plus gated experts, no biases."""
    hidden, experts = config.hidden_size, config.num_experts
    return experts * hidden + experts * 3 * hidden * config.moe_intermediate_size


def _sparse_layers(config: PreTrainedConfig, adapter: ArchAdapter) -> list[bool]:
    """Which layers have an MoE block instead of a dense MLP."""
    return moe_layers(config) if adapter.qwen_moe else [False] * config.num_hidden_layers


def layer_parameter_counts(config: PreTrainedConfig) -> list[int]:
    """Parameters of each decoder layer."""
    adapter = get_adapter(config)
    attention = _attention_weights(config) + _attention_extras(config, adapter)
    norms = adapter.norms_per_layer * config.hidden_size
    return [
        attention + norms + (_moe_params(config) if sparse else _dense_mlp_params(config))
        for sparse in _sparse_layers(config, adapter)
    ]


def parameter_count(config: PreTrainedConfig) -> int:
    """Parameters of the causal LM the config describes (tied embeddings counted once)."""
    embeddings = config.vocab_size * config.hidden_size
    head = 0 if config.tie_word_embeddings else embeddings
    return embeddings + sum(layer_parameter_counts(config)) + config.hidden_size + head


def average_context(seq_len: int, window: int | None = None) -> float:
    """Mean number of keys a query attends to over a causal sequence of `seq_len` tokens."""
    if seq_len < 1:
        raise GradPrunerError(f"sequence length must be at least 1, got {seq_len}")
    if window is None or window >= seq_len:
        return (seq_len + 1) / 2
    return (window * (window + 1) / 2 + (seq_len - window) * window) / seq_len


def _windows(config: PreTrainedConfig) -> list[int | None]:
    """Sliding-window size of each layer (None: full attention)."""
    window = getattr(config, "sliding_window", None) or None
    layer_types = getattr(config, "layer_types", None)
    if layer_types is None:
        return [window] * config.num_hidden_layers
    return [window if t == "sliding_attention" else None for t in layer_types]


def _moe_flops(config: PreTrainedConfig) -> float:
    """Router over all experts plus the gated MLPs of the active experts."""
    hidden = config.hidden_size
    return 2 * hidden * config.num_experts + config.num_experts_per_tok * 6 * hidden * config.moe_intermediate_size


def layer_flops(config: PreTrainedConfig, seq_len: int) -> list[LayerFlops]:
    """Forward FLOPs per token of each decoder layer, averaged over a causal sequence of `seq_len`."""
    adapter = get_adapter(config)
    _, heads, _, head_dim = _dims(config)
    proj = 2 * _attention_weights(config)
    dense = 6 * config.hidden_size * config.intermediate_size
    return [
        LayerFlops(
            attn_proj=proj,
            attn_scores=4 * heads * head_dim * average_context(seq_len, window),
            mlp=_moe_flops(config) if sparse else dense,
        )
        for window, sparse in zip(_windows(config), _sparse_layers(config, adapter))
    ]


def lm_head_flops(config: PreTrainedConfig) -> float:
    """FLOPs per token of the output projection to the vocabulary."""
    return 2 * config.hidden_size * config.vocab_size


def forward_flops_per_token(config: PreTrainedConfig, seq_len: int) -> float:
    """Forward FLOPs per token of the whole model, averaged over a causal sequence of `seq_len`."""
    return sum(layer.total for layer in layer_flops(config, seq_len)) + lm_head_flops(config)


def flops_ratio(config: PreTrainedConfig, kept_layers: Sequence[int], seq_len: int,
                head_share: float = 1.0) -> float:
    """Forward FLOPs of the cut model over the whole model's: the ideal time ratio of a cut.

    `head_share` is the fraction of positions that go through the LM head: 1 (every position, as
    in `cut_costs`), the answer positions' share in training, 1 / seq_len in a prefill that needs
    the last position's logits only.
    """
    _check_kept(kept_layers, config.num_hidden_layers)
    flops = [layer.total for layer in layer_flops(config, seq_len)]
    head = head_share * lm_head_flops(config)
    return (head + sum(flops[i] for i in kept_layers)) / (head + sum(flops))


def _check_kept(kept_layers: Sequence[int], n_layers: int) -> None:
    """GradPrunerError unless `kept_layers` are distinct valid indices, at least one."""
    if not kept_layers:
        raise GradPrunerError("at least one layer must be kept")
    valid = all(isinstance(i, Integral) and not isinstance(i, bool) and 0 <= i < n_layers for i in kept_layers)
    if not valid or len(set(kept_layers)) != len(kept_layers):
        raise GradPrunerError(f"kept layers {list(kept_layers)} must be distinct indices in 0..{n_layers - 1}")


def cut_costs(config: PreTrainedConfig, kept_layers: Sequence[int], seq_len: int = 512) -> dict:
    """Parameters and per-token forward FLOPs before and after keeping only `kept_layers` (original indices)."""
    layer_params = layer_parameter_counts(config)
    _check_kept(kept_layers, len(layer_params))
    flops = [layer.total for layer in layer_flops(config, seq_len)]
    kept = set(kept_layers)
    params_before = parameter_count(config)
    params_after = params_before - sum(p for i, p in enumerate(layer_params) if i not in kept)
    flops_before = forward_flops_per_token(config, seq_len)
    flops_after = lm_head_flops(config) + sum(flops[i] for i in kept_layers)
    return {
        "seq_len": seq_len,
        "layers_before": len(layer_params),
        "layers_after": len(kept_layers),
        "params_before": params_before,
        "params_after": params_after,
        "param_fraction_removed": 1 - params_after / params_before,
        "flops_per_token_before": flops_before,
        "flops_per_token_after": flops_after,
        "ideal_speedup": flops_before / flops_after,
    }
