"""The replacement layer (LLM-Streamline, Chen et al., ICLR 2025): a removed block of layers and the
kept layer before it become that one layer, trained alone to reproduce the block's output.

For each step (receiver r, the removed block r+1..e right after it), the receiver's inputs (its
hidden states and the keyword arguments the model gives it: position embeddings, the attention
mask) and the block's outputs are taken on the calibration examples (training data), then the
receiver alone is trained by Adam to map the first to the second (squared error over the
non-padding tokens, each hidden dimension in units of its spread over the targets, so that the few
very large residual dimensions do not decide alone; LLM-Streamline's plain MSE did worse on the
default model; `EPOCHS` passes at `LR`), everything else untouched. The receiver was kept
anyway, so the model has exactly the layers the cut keeps: LLM-Streamline's replacement initialised
from the block's first layer, with the block taken to start at the kept layer before the removed
span. Blocks are replaced one after the other, each on the model with the blocks before it already
replaced and skipped; a block at layer 0 has no layer before it and is dropped. The training is
deterministic on a device, so a plan replays to the same weights there.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..model.surgery import decoder_layers, layer_prefix, skipping
from ..plan import MergeStep
from ..progress import track
from .fold import Calibration

EPOCHS = 4
LR = 1e-4
REPLACE_EXAMPLES = 128  # calibration examples (training data) the replacement trains on


@dataclass(frozen=True)
class BlockPair:
    """One calibration batch of a block: the receiver's positional inputs and keyword arguments,
    the block's output, and the non-padding positions."""

    args: tuple
    kwargs: dict
    target: torch.Tensor
    mask: torch.Tensor


def block_pairs(model, step: MergeStep, batches: list[dict], skipped) -> list[BlockPair]:
    """The receiver's inputs and the block's outputs on `batches`, with the `skipped` layers
    passing their input through (no gradients kept)."""
    layers = decoder_layers(model)
    receiver, last = layers[step.receiver], layers[step.donors[-1]]
    seen: dict[str, object] = {}

    def keep_input(module, args, kwargs):
        seen["args"], seen["kwargs"] = args, dict(kwargs)

    def keep_output(module, args, output):
        seen["end"] = output[0] if isinstance(output, tuple) else output

    handles = [receiver.register_forward_pre_hook(keep_input, with_kwargs=True),
               last.register_forward_hook(keep_output)]
    device = next(model.parameters()).device
    pairs = []
    try:
        with skipping(model, skipped), torch.no_grad():
            for batch in batches:
                model(input_ids=batch["input_ids"].to(device),
                      attention_mask=batch["attention_mask"].to(device), use_cache=False,
                      logits_to_keep=1)
                pairs.append(BlockPair(seen["args"], seen["kwargs"], seen["end"],
                                       batch["attention_mask"].bool().to(device)))
    finally:
        for handle in handles:
            handle.remove()
    return pairs


def target_scale(pairs: list[BlockPair]) -> torch.Tensor:
    """Each hidden dimension's standard deviation over the pairs' target tokens (at least a
    millionth of the largest), so that a few very large residual dimensions do not outweigh the
    rest in the loss."""
    targets = torch.cat([pair.target[pair.mask].float() for pair in pairs])
    std = targets.std(dim=0)
    return std.clamp(min=float(std.max()) * 1e-6)


def block_loss(layer, pairs: list[BlockPair], scale: torch.Tensor | None = None) -> float:
    """The mean over `pairs` of the squared error between the layer's output and the block's,
    each dimension divided by `scale` (default `target_scale`)."""
    scale = target_scale(pairs) if scale is None else scale
    with torch.no_grad():
        return float(sum(_pair_loss(layer, pair, scale) for pair in pairs) / len(pairs))


def _pair_loss(layer, pair: BlockPair, scale: torch.Tensor) -> torch.Tensor:
    output = layer(*pair.args, **pair.kwargs)
    output = output[0] if isinstance(output, tuple) else output
    return (((output - pair.target)[pair.mask].float() / scale) ** 2).mean()


def train_replacement(layer, pairs: list[BlockPair], epochs: int = EPOCHS, lr: float = LR) -> None:
    """Train `layer` alone, in place, to map each pair's inputs to its target (Adam, in order;
    the squared error of each dimension in units of its spread, `target_scale`)."""
    scale = target_scale(pairs)
    params = list(layer.parameters())
    flags = [p.requires_grad for p in params]
    for param in params:
        param.requires_grad_(True)
    optimizer = torch.optim.Adam(params, lr=lr)
    try:
        with torch.enable_grad():
            for _ in range(epochs):
                for pair in pairs:
                    optimizer.zero_grad()
                    _pair_loss(layer, pair, scale).backward()
                    optimizer.step()
    finally:
        for param, flag in zip(params, flags):
            param.grad = None
            param.requires_grad_(flag)


def replace_blocks(model, steps: tuple[MergeStep, ...], calibration: Calibration) -> dict[str, int]:
    """Train every step's receiver to stand for its block, in place, one block after the other;
    returns the changed entries per weight (every entry of each receiver)."""
    layers = decoder_layers(model)
    batches = calibration.batches()
    changed: dict[str, int] = {}
    replaced: list[int] = []
    for step in track(steps, "blocks replaced"):
        pairs = block_pairs(model, step, batches, replaced)
        train_replacement(layers[step.receiver], pairs)
        prefix = f"{layer_prefix(model)}.{step.receiver}"
        changed.update({f"{prefix}.{name}": p.numel()
                        for name, p in layers[step.receiver].named_parameters()})
        replaced += list(step.donors)
    return changed
