"""Architecture adapters and layer removal: find a decoder's layers, cut some, keep the config true.

Layer indices passed in always refer to the model as it is when the function is called; after
`cut_layers` the kept layers are renumbered 0..n-1 (the caller records the original indices).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from peft import PeftMixedModel, PeftModel
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer
from transformers import GenerationMixin, PreTrainedConfig, PreTrainedModel

from ..errors import GradPrunerError
from ..outputs import SIDECAR_NAME, atomic_output_dir, write_json
from ..removal import kept_indices


@dataclass(frozen=True)
class ArchAdapter:
    """Where one family of decoders keeps its layers, and which config fields depend on layer indices.

    The last three fields describe the layer's shape for the cost model (`costs.py`).
    """

    model_types: tuple[str, ...]
    layers_path: str = "model.layers"  # relative to the causal LM (after unwrapping PEFT)
    attn_attr: str = "self_attn"  # attention module of a layer; its `layer_idx` is the KV-cache slot
    sliced_fields: tuple[str, ...] = ("layer_types",)  # one entry per layer: keep the kept layers' entries
    threshold_fields: tuple[str, ...] = ()  # "layers with index < n" thresholds (Qwen's max_window_layers)
    qwen_moe: bool = False  # MoE blocks placed by decoder_sparse_step and mlp_only_layers
    norms_per_layer: int = 2
    qk_norm: Literal["head", "proj"] | None = None  # RMSNorm on q and k: per head, or over the whole projection
    qkv_bias: bool = False  # q, k, v always have biases, whatever config.attention_bias says
    mlp_output_norm: bool = False  # the MLP's output is normalised before the residual sum


_ADAPTER_LIST = (
    ArchAdapter(("llama", "mistral", "gemma", "granite", "phi3")),
    ArchAdapter(("smollm3",), sliced_fields=("layer_types", "no_rope_layers")),
    ArchAdapter(("qwen2",), threshold_fields=("max_window_layers",), qkv_bias=True),
    ArchAdapter(("qwen3",), threshold_fields=("max_window_layers",), qk_norm="head"),
    ArchAdapter(("qwen3_moe",), qwen_moe=True, qk_norm="head"),
    ArchAdapter(("gemma2",), norms_per_layer=4, mlp_output_norm=True),
    ArchAdapter(("gemma3_text",), norms_per_layer=4, qk_norm="head", mlp_output_norm=True),
    ArchAdapter(("olmo2",), qk_norm="proj", mlp_output_norm=True),
)

ADAPTERS: dict[str, ArchAdapter] = {t: a for a in _ADAPTER_LIST for t in a.model_types}


def base_model(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model inside a PEFT wrapper, or `model` itself."""
    if isinstance(model, (PeftModel, PeftMixedModel)):
        return model.get_base_model()
    if isinstance(model, BaseTuner):  # e.g. `peft_model.base_model`, a LoraModel
        return model.model
    return model


def is_peft_model(model: torch.nn.Module) -> bool:
    """Whether `model` is wrapped by PEFT or has PEFT adapter layers injected."""
    return base_model(model) is not model or any(isinstance(m, BaseTunerLayer) for m in model.modules())


def get_adapter(model_or_config: torch.nn.Module | PreTrainedConfig) -> ArchAdapter:
    """The adapter for a causal decoder model (plain or PEFT-wrapped) or its config."""
    is_config = isinstance(model_or_config, PreTrainedConfig)
    model = None if is_config else base_model(model_or_config)
    config = model_or_config if is_config else getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in ADAPTERS:
        raise GradPrunerError(f"unsupported architecture '{model_type}' (supported: {', '.join(sorted(ADAPTERS))})")
    if not is_config and not isinstance(model, GenerationMixin):
        raise GradPrunerError(
            f"{type(model).__name__} is not a causal language model; load it with AutoModelForCausalLM"
        )
    return ADAPTERS[model_type]


def layer_prefix(model: torch.nn.Module) -> str:
    """Parameter-name prefix of the decoder layers on the base model, e.g. "model.layers"."""
    return get_adapter(model).layers_path


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The decoder layers of a causal LM, plain or PEFT-wrapped."""
    adapter = get_adapter(model)
    layers: Any = base_model(model)
    for attr in adapter.layers_path.split("."):
        layers = getattr(layers, attr, None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise GradPrunerError(f"{type(base_model(model)).__name__} has no decoder layers at '{adapter.layers_path}'")
    return layers


def num_layers(model: torch.nn.Module) -> int:
    """Number of decoder layers."""
    return len(decoder_layers(model))


def layer_index(param_name: str, prefix: str) -> int | None:
    """Index of the layer a parameter or module name belongs to (PEFT prefixes allowed), or None."""
    match = re.search(rf"(?:^|\.){re.escape(prefix)}\.(\d+)(?:\.|$)", param_name)
    return int(match.group(1)) if match else None


def _adapter_parameter_ids(model: torch.nn.Module) -> set[int]:
    """Ids of the parameters PEFT added (adapter weights), not those of the wrapped base layers."""
    ids: set[int] = set()
    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            base_ids = {id(p) for p in module.get_base_layer().parameters()}
            ids.update(id(p) for p in module.parameters() if id(p) not in base_ids)
    return ids


def count_parameters(model: torch.nn.Module) -> int:
    """Number of the model's own parameters: shared (tied) tensors once, PEFT adapter weights excluded."""
    adapter_ids = _adapter_parameter_ids(model)
    return sum(p.numel() for p in model.parameters() if id(p) not in adapter_ids)


def _check_cache_indices(layers: torch.nn.ModuleList, adapter: ArchAdapter) -> None:
    """Fail before any change if a layer's attention module has no integer `layer_idx`."""
    for i, layer in enumerate(layers):
        if not isinstance(getattr(getattr(layer, adapter.attn_attr, None), "layer_idx", None), int):
            raise GradPrunerError(f"layer {i} has no '{adapter.attn_attr}.layer_idx' (unexpected model layout)")


def _renumber(layers: torch.nn.ModuleList) -> None:
    """Set `layer_idx` (KV-cache slot) of every submodule of layer j to j."""
    for j, layer in enumerate(layers):
        for module in layer.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = j


def moe_layers(config: PreTrainedConfig) -> list[bool]:
    """Which layers of a Qwen-style MoE config have a sparse MoE block (the rest have a dense MLP)."""
    step = config.decoder_sparse_step
    return [
        i not in config.mlp_only_layers and config.num_experts > 0 and (i + 1) % step == 0
        for i in range(config.num_hidden_layers)
    ]


def _remap_config(config: PreTrainedConfig, adapter: ArchAdapter, kept: list[int]) -> None:
    """Rewrite the config's per-layer fields so that it describes exactly the kept layers.

    A threshold n ("layers with index < n", e.g. Qwen2's max_window_layers) becomes the number of
    kept layers below n, so every kept layer stays on its side of it. A Qwen-MoE stride
    (decoder_sparse_step) cannot survive an arbitrary cut: it becomes 1, and `mlp_only_layers`
    lists every kept layer that had a dense MLP.
    """
    if adapter.qwen_moe:
        sparse = moe_layers(config)
        config.mlp_only_layers = [j for j, i in enumerate(kept) if not sparse[i]]
        config.decoder_sparse_step = 1
    for name in adapter.sliced_fields:
        values = getattr(config, name, None)
        if values is not None:
            setattr(config, name, [values[i] for i in kept])
    for name in adapter.threshold_fields:
        threshold = getattr(config, name, None)
        if threshold is not None:
            setattr(config, name, sum(i < threshold for i in kept))
    _remap_window_pattern(config)
    config.num_hidden_layers = len(kept)


def _remap_window_pattern(config: PreTrainedConfig) -> None:
    """A sliding-window pattern kept beside the sliced `layer_types` (Gemma 3's "every n-th layer
    is global", which transformers reads only without `layer_types` and other readers may read
    instead) says the kept layers' period when they still follow one, and is dropped otherwise."""
    types = getattr(config, "layer_types", None)
    for name in ("sliding_window_pattern", "_sliding_window_pattern"):
        if name not in vars(config) or not types:
            continue
        period = types.index("full_attention") + 1 if "full_attention" in types else None
        regular = period is not None and all(
            (kind == "full_attention") == ((i + 1) % period == 0) for i, kind in enumerate(types))
        if regular:
            setattr(config, name, period)
        else:
            delattr(config, name)


def _set_layers(model: torch.nn.Module, path: str, layers: torch.nn.ModuleList) -> None:
    """Replace the module at dotted `path` under `model`."""
    parent_path, _, attr = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, attr, layers)


def cut_layers(model: torch.nn.Module, remove: Sequence[int]) -> list[int]:
    """Remove decoder layers in place (plain or PEFT-wrapped model); return the kept original indices.

    Renumbers the kept layers' KV-cache indices and rewrites `num_hidden_layers`, `layer_types`
    and the architecture's other per-layer config fields (see `ArchAdapter`).
    """
    adapter = get_adapter(model)
    layers = decoder_layers(model)
    kept = kept_indices(remove, len(layers))
    _check_cache_indices(layers, adapter)
    new_layers = torch.nn.ModuleList(layers[i] for i in kept)
    _renumber(new_layers)
    _set_layers(base_model(model), adapter.layers_path, new_layers)
    _remap_config(base_model(model).config, adapter, kept)
    return kept


def save_pretrained_atomic(
    model: PreTrainedModel,
    tokenizer: Any | None,
    out_dir: str | os.PathLike,
    sidecar: dict,
    overwrite: bool = False,
    source_dir: str | os.PathLike | None = None,
    card: str | None = None,
) -> Path:
    """Save a plain HF model folder (safetensors, config, tokenizer) plus the `gradpruner.json` sidecar
    and, when given, the model card `card` as README.md.

    The folder appears whole or not at all (see `outputs.atomic_output_dir`). PEFT adapters must be
    merged or dropped first, so that the folder loads with plain `AutoModelForCausalLM`. A
    sliding-window pattern beside `layer_types` is written as the layers follow it
    (`_remap_window_pattern`: transformers gives a reloaded Gemma 3 config its default 6 again).
    """
    if is_peft_model(model):
        raise GradPrunerError("cannot save a model with PEFT adapters; call merge_and_unload() or unload() first")
    _remap_window_pattern(model.config)
    with atomic_output_dir(out_dir, overwrite, source_dir) as tmp:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
            _copy_vocab_files(tokenizer, tmp)
        write_json(tmp / SIDECAR_NAME, sidecar)
        if card is not None:
            (tmp / "README.md").write_text(card, encoding="utf-8")
    return Path(out_dir)


def _copy_vocab_files(tokenizer, folder: Path) -> None:
    """Copy the vocabulary files of the tokenizer's own folder that its `save_pretrained` left
    out: transformers 5 saves a SentencePiece tokenizer's `tokenizer.json` but not its
    `tokenizer.model`, which llama.cpp's converter (and slow tokenizers) read."""
    source = Path(getattr(tokenizer, "name_or_path", "") or "")
    if not source.is_dir():
        return
    for name in getattr(tokenizer, "vocab_files_names", {}).values():
        if (source / name).is_file() and not (folder / name).exists():
            shutil.copy2(source / name, folder / name)


def returns_tuple(model) -> bool:
    """Whether the model's decoder layers return a tuple (hidden, ...) rather than the hidden
    states alone; found by a one-token forward pass."""
    outputs: list[object] = []
    handle = decoder_layers(model)[0].register_forward_hook(lambda m, a, o: outputs.append(o))
    device = next(model.parameters()).device
    try:
        with torch.inference_mode():
            model(input_ids=torch.zeros(1, 1, dtype=torch.long, device=device), use_cache=False)
    finally:
        handle.remove()
    return isinstance(outputs[0], tuple)


@contextmanager
def skipping(model, indices: Collection[int], as_tuple: bool | None = None) -> Iterator[None]:
    """Within the block, the `indices` layers return their input without computing anything.

    `as_tuple`: whether layers return tuples (`returns_tuple`); found when not given. A forward
    set on the layer before (accelerate's device hooks) is put back afterwards.
    """
    if not indices:
        yield
        return
    layers = decoder_layers(model)
    as_tuple = returns_tuple(model) if as_tuple is None else as_tuple
    saved = {i: layers[i].__dict__.get("forward") for i in indices}
    for i in indices:
        layers[i].forward = lambda hidden, *args, **kwargs: (hidden,) if as_tuple else hidden
    try:
        yield
    finally:
        for i, forward in saved.items():
            if forward is None:
                del layers[i].forward
            else:
                layers[i].forward = forward
