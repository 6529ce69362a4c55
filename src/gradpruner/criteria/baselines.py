"""Baseline criteria that need no probe: what a user would pick instead of GradPruner.

- `tail`: remove the last layers before the final one, in reverse order (Gromov et al.,
  "The Unreasonable Ineffectiveness of the Deeper Layers", 2024; "Reassessing Layer Pruning in
  LLMs", Lu et al., 2024, where it is the baseline that is hard to beat).
- `random`: a seeded random order.
- `block_influence`: ShortGPT's block influence, 1 - mean cosine similarity between a layer's
  input and output hidden states on task data (Men et al., 2024).
"""

from __future__ import annotations

import random

import torch

from ..data import PadCollator, training_features
from ..errors import GradPrunerError
from ..surgery import decoder_layers, num_layers
from . import Criterion, ScoreContext, register


@register
class Tail(Criterion):
    """The final layer is kept; before it, the later a layer the lower its score."""

    name = "tail"
    paper = "Lu et al. 2024, Reassessing Layer Pruning in LLMs (reverse-order baseline)"

    def layer_scores(self, ctx: ScoreContext) -> list[float]:
        total = num_layers(ctx.model)
        return [float(total - 2 - i) for i in range(total - 1)] + [float(total)]


@register
class Random(Criterion):
    """A seeded random permutation of the layers."""

    name = "random"
    paper = "random baseline (seeded)"

    def layer_scores(self, ctx: ScoreContext) -> list[float]:
        total = num_layers(ctx.model)
        return [float(s) for s in random.Random(ctx.seed).sample(range(total), total)]


@register
class BlockInfluence(Criterion):
    """1 - mean cosine(input, output) of each layer over the non-padding tokens of task data."""

    name = "block_influence"
    paper = "Men et al. 2024, ShortGPT: Layers in LLMs are More Redundant Than You Expect"
    max_examples = 64
    batch_size = 8

    def layer_scores(self, ctx: ScoreContext) -> list[float]:
        if not ctx.examples or ctx.tokenizer is None:
            raise GradPrunerError("block_influence needs task data (--task or --data)")
        feats = training_features(ctx.tokenizer, ctx.examples[: self.max_examples])
        pad = ctx.tokenizer.pad_token_id if ctx.tokenizer.pad_token_id is not None else 0
        collate = PadCollator(pad)
        sums = torch.zeros(num_layers(ctx.model), dtype=torch.float64)
        count = 0
        for start in range(0, len(feats), self.batch_size):
            batch = collate(feats[start:start + self.batch_size])
            cosines = layer_cosines(ctx.model, batch["input_ids"], batch["attention_mask"])
            sums += cosines.sum(dim=1)
            count += cosines.shape[1]
        return (1.0 - sums / count).tolist()


def layer_cosines(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(layers, tokens) cosine similarity of each layer's input and output at the real tokens."""
    captured: list[tuple[torch.Tensor, torch.Tensor]] = []

    def hook(module, args, kwargs, output):
        hidden_in = args[0] if args else kwargs["hidden_states"]
        hidden_out = output[0] if isinstance(output, tuple) else output
        captured.append((hidden_in.detach(), hidden_out.detach()))

    handles = [layer.register_forward_hook(hook, with_kwargs=True) for layer in decoder_layers(model)]
    device = next(model.parameters()).device
    try:
        with torch.inference_mode():
            model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                  use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    real = attention_mask.to(device).bool()
    return torch.stack([
        torch.nn.functional.cosine_similarity(a[real].double(), b[real].double(), dim=-1)
        for a, b in captured
    ]).cpu()
