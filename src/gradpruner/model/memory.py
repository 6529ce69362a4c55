"""How much memory a probe or fine-tune will need, checked before a long run starts.

The estimate counts the weights, what training adds (LoRA: adapters with their gradients and
two Adam moments; full: fp32 weights, fp32 gradients and two Adam moments for every weight, as
`train.master_weights` trains a 16-bit model in mixed precision), and the
activations kept for the backward pass (Korthikanti et al. 2022: about 34*s*b*h + 5*a*s^2*b bytes
per layer in 16-bit, scaled to the dtype; with checkpointing only the layer inputs), plus the
logits of the batch in fp32. With a quantized base (QLoRA, `load_in_bits`) the decoder layers'
weights take `QUANT_BYTES` each and the other weights (embeddings, LM head) fp32, as PEFT's k-bit
preparation casts them. It is an estimate, not a bound.
"""

from __future__ import annotations

import os

import torch

from ..errors import GradPrunerError
from ..progress import say
from .costs import layer_parameter_counts, parameter_count

GIB = 1024 ** 3
# bytes per quantized weight: NF4 with its double-quantized scales (one 8-bit scale per 64
# weights, one fp32 per 256 scales); int8 with one scale per row (negligible)
QUANT_BYTES = {4: 0.5 + 1 / 64 + 4 / (64 * 256), 8: 1.0}


def training_bytes(config, dtype: torch.dtype, batch: int, seq_len: int, full: bool = False,
                   lora_rank: int = 8, checkpointing: bool = False, teacher: bool = False,
                   load_in_bits: int | None = None) -> dict[str, int]:
    """Estimated bytes by part (`weights`, `training_state`, `activations`, `logits`, and with a
    distillation `teacher` the teacher's weights, logits and layer outputs) and `total`; `load_in_bits` (4 or
    8): the decoder layers' weights quantized."""
    width = torch.empty((), dtype=dtype).element_size()
    params = parameter_count(config)
    weights = params * width
    if load_in_bits:
        layer_params = sum(layer_parameter_counts(config))
        weights = int(layer_params * QUANT_BYTES[load_in_bits]) + (params - layer_params) * 4
    hidden, layers = config.hidden_size, config.num_hidden_layers
    heads = config.num_attention_heads
    if full:
        weights = params * 4  # fp32 master weights, whatever the dtype
        state = params * (4 + 8)  # fp32 gradient + Adam's two fp32 moments
    else:
        inter = getattr(config, "intermediate_size", 4 * hidden)
        per_layer = 4 * (hidden + hidden) + 3 * (hidden + inter)  # r * (in + out), 7 modules
        adapters = lora_rank * per_layer * layers
        state = adapters * (width + 4 + 8)
    tokens = batch * seq_len
    if checkpointing:
        activations = layers * tokens * hidden * width
    else:
        activations = layers * (34 * tokens * hidden + 5 * heads * seq_len * tokens) * width // 2
    logits = tokens * config.vocab_size * 4
    parts = {"weights": weights, "training_state": state, "activations": activations,
             "logits": logits}
    if teacher:  # the dense teacher beside the student: its weights, its logits and the KL's two
        # fp32 log-softmaxes (every position, as the all-position KL takes them), and its layers'
        # outputs kept for the hidden-state alignment
        parts["teacher"] = params * width + 3 * logits + layers * tokens * hidden * width
    return {**parts, "total": sum(parts.values())}


def available_bytes(device: torch.device) -> int:
    """Free memory on `device`: CUDA's free memory, or the machine's available RAM."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    pages = os.sysconf("SC_AVPHYS_PAGES") if hasattr(os, "sysconf") else 0
    return pages * os.sysconf("SC_PAGE_SIZE") if pages else 0


def check_fits(config, dtype: torch.dtype, device: torch.device, batch: int, seq_len: int,
               full: bool, lora_rank: int, checkpointing: bool, teacher: bool = False,
               load_in_bits: int | None = None) -> dict[str, int]:
    """Print the estimate; refuse with one clear line when it exceeds the free memory."""
    need = training_bytes(config, dtype, batch, seq_len, full, lora_rank, checkpointing, teacher,
                          load_in_bits)
    free = available_bytes(device)
    say(f"memory: about {need['total'] / GIB:.1f} GiB needed ({free / GIB:.1f} GiB free on "
        f"{device.type})")
    if free and need["total"] > free:
        raise GradPrunerError(
            f"this run needs about {need['total'] / GIB:.1f} GiB but {free / GIB:.1f} GiB are free "
            f"on {device.type}: use --gradient-checkpointing, a smaller --batch-size or "
            "--max-length, --dtype bfloat16, LoRA instead of --full, --load-in-4bit, or --device-map auto")
    return need
