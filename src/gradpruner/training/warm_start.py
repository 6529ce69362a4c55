"""`--warm-start`: the pruned model continues from the probe's LoRA adapters.

The paper discards the probe's steps and starts the fine-tune from fresh adapters. Here the
probe's adapters are kept (`adapters.safetensors` in the probe folder, by original layer index);
after the cut, layer j of the pruned model is original layer `kept[j]`, so its adapters start
from that layer's probe adapters. A merged receiver is a kept layer and keeps its own adapters.
The optimizer state is not carried over.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..errors import GradPrunerError
from .igia import lora_modules

ADAPTERS = "adapters.safetensors"
_LAYER = re.compile(r"\.layers\.(\d+)\.")


def _lora_weights(peft_model) -> dict[str, torch.Tensor]:
    """`<module>.lora_A` / `<module>.lora_B` -> the active adapter's weight, base-model names."""
    out = {}
    for name, (lora_a, lora_b), _, _ in lora_modules(peft_model):
        base = name.removeprefix("base_model.model.")
        out[f"{base}.lora_A"], out[f"{base}.lora_B"] = lora_a, lora_b
    return out


def adapter_state(peft_model) -> dict[str, torch.Tensor]:
    """A CPU copy of every LoRA weight of `peft_model`, keyed by base-model module name."""
    return {k: v.detach().float().cpu().clone() for k, v in _lora_weights(peft_model).items()}


def save_adapters(state: dict[str, torch.Tensor], folder: str | Path) -> None:
    save_file({k: v.contiguous() for k, v in state.items()}, str(Path(folder) / ADAPTERS))


def load_adapters(folder: str | Path) -> dict[str, torch.Tensor]:
    path = Path(folder) / ADAPTERS
    if not path.is_file():
        raise GradPrunerError(f"{folder}: no probe adapters ({ADAPTERS}); probe again with this version")
    return load_file(str(path))


def warm_start(peft_model, saved: dict[str, torch.Tensor], kept: list[int]) -> int:
    """Copy the probe's adapters of original layer kept[j] into layer j of the pruned model;
    returns how many adapter matrices were copied."""
    copied = 0
    with torch.no_grad():
        for name, weight in _lora_weights(peft_model).items():
            match = _LAYER.search(name)
            if match is None or int(match.group(1)) >= len(kept):
                continue
            source = _LAYER.sub(f".layers.{kept[int(match.group(1))]}.", name, count=1)
            if source in saved and saved[source].shape == weight.shape:
                weight.copy_(saved[source].to(weight.dtype))
                copied += 1
    if not copied:
        raise GradPrunerError(f"the probe's adapters fit no module of this model (their LoRA rank "
                              f"{_rank(saved)}, this model's {_rank(_lora_weights(peft_model))}): "
                              "give the probe of the model it was pruned from and its --lora-rank, "
                              "or leave --warm-start out")
    return copied


def _rank(weights: dict[str, torch.Tensor]) -> int | None:
    """The LoRA rank of a set of adapter weights (rows of an A matrix)."""
    return next((w.shape[0] for name, w in weights.items() if name.endswith("lora_A")), None)
