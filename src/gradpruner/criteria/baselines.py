"""Baseline criteria that need no probe: what a user would pick instead of GradPruner.

- `tail`: remove the last layers before the final one, in reverse order (Gromov et al.,
  "The Unreasonable Ineffectiveness of the Deeper Layers", 2024; "Reassessing Layer Pruning in
  LLMs", Lu et al., 2024, where it is the baseline that is hard to beat).
- `random`: a seeded random order.
- `block_influence`: ShortGPT's block influence, 1 - mean cosine similarity between a layer's
  input and output hidden states on task data (Men et al., 2024).
- `angular`: Gromov et al.'s angular distance between the input of layer l and the output of
  layer l+n-1 at the last token; the contiguous block of n layers with the smallest distance goes
  ("The Unreasonable Ineffectiveness of the Deeper Layers", 2024).
- `taylor`: first-order Taylor importance, sum over a layer's weights of |w * dL/dw| on task data,
  one gradient pass (Shortened LLaMA's Taylor+ criterion, Kim et al., 2024).
- `ppl`: the increase of the task loss when the layer alone is skipped (Shortened LLaMA's PPL
  criterion, Kim et al., 2024; SLEB, Song et al., 2024).
"""

from __future__ import annotations

import random

import torch

from ..surgery import decoder_layers, num_layers
from . import Criterion, ScoreContext, register
from .judge import Judge, Scoring, task_batches


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


class _OnTaskData(Criterion):
    """A criterion computed on the first `max_examples` training examples of the task."""

    max_examples = 64
    batch_size = 8

    def batches(self, ctx: ScoreContext) -> list[dict]:
        return task_batches(ctx, self.max_examples, self.batch_size, self.name)


@register
class BlockInfluence(_OnTaskData):
    """1 - mean cosine(input, output) of each layer over the non-padding tokens of task data."""

    name = "block_influence"
    paper = "Men et al. 2024, ShortGPT: Layers in LLMs are More Redundant Than You Expect"

    def layer_scores(self, ctx: ScoreContext) -> list[float]:
        sums = torch.zeros(num_layers(ctx.model), dtype=torch.float64)
        count = 0
        for batch in self.batches(ctx):
            cosines = layer_cosines(ctx.model, batch["input_ids"], batch["attention_mask"])
            sums += cosines.sum(dim=1)
            count += cosines.shape[1]
        return (1.0 - sums / count).tolist()


@register
class LossIncrease(_OnTaskData):
    """Task loss with the layer skipped minus the loss of the whole model (forward passes only)."""

    name = "ppl"
    paper = "Kim et al. 2024, Shortened LLaMA (PPL criterion); Song et al. 2024, SLEB"

    def layer_scores(self, ctx: ScoreContext) -> list[float]:
        judge = Judge(ctx.model, Scoring(self.batches(ctx)))
        base = judge.loss([])
        scores = [judge.loss([i]) - base for i in range(num_layers(ctx.model))]
        ctx.notes["ppl"] = {"judge": judge.cost()}
        return scores


@register
class Taylor(_OnTaskData):
    """Sum of |weight * gradient| over each layer's parameters, gradients of the task loss."""

    name = "taylor"
    paper = "Kim et al. 2024, Shortened LLaMA (Taylor+ criterion)"

    def layer_scores(self, ctx: ScoreContext) -> list[float]:
        batches = self.batches(ctx)
        params = [list(layer.parameters()) for layer in decoder_layers(ctx.model)]
        in_layers = {id(p) for ps in params for p in ps}
        everything = list(ctx.model.parameters())
        saved = [p.requires_grad for p in everything]
        device = everything[0].device
        try:
            for p in everything:  # gradients for the decoder layers only
                p.requires_grad_(id(p) in in_layers)
                p.grad = None
            for batch in batches:
                out = ctx.model(**{k: v.to(device) for k, v in batch.items()}, use_cache=False)
                (out.loss / len(batches)).backward()
            return [sum(float((p.detach() * p.grad).abs().sum()) for p in ps if p.grad is not None)
                    for ps in params]
        finally:
            for p, flag in zip(everything, saved):
                p.grad = None
                p.requires_grad_(flag)


@register
class Angular(_OnTaskData):
    """Angular distance across blocks of layers at the last token; removes one contiguous block.

    Per-layer scores are the distances of single-layer blocks; `removal` picks the block of the
    asked size whose input and output are closest.
    """

    name = "angular"
    paper = "Gromov et al. 2024, The Unreasonable Ineffectiveness of the Deeper Layers"

    def layer_scores(self, ctx: ScoreContext) -> list[float]:
        return block_distances(last_token_states(ctx.model, self.batches(ctx)), 1)

    def removal(self, ctx: ScoreContext, count: int) -> list[int]:
        distances = block_distances(last_token_states(ctx.model, self.batches(ctx)), count)
        start = min(range(len(distances)), key=distances.__getitem__)
        return list(range(start, start + count))


def last_token_states(model, batches: list[dict]) -> torch.Tensor:
    """(layers + 1, samples, hidden): the input of every layer and the last layer's output,
    at each sample's last real token."""
    layers = decoder_layers(model)
    rows: list[torch.Tensor] = []
    for batch in batches:
        captured: list[torch.Tensor] = []

        def keep_input(module, args, kwargs):
            captured.append((args[0] if args else kwargs["hidden_states"]).detach())

        def keep_output(module, args, kwargs, output):
            captured.append((output[0] if isinstance(output, tuple) else output).detach())

        handles = [layer.register_forward_pre_hook(keep_input, with_kwargs=True) for layer in layers]
        handles.append(layers[-1].register_forward_hook(keep_output, with_kwargs=True))
        device = next(model.parameters()).device
        try:
            with torch.inference_mode():
                model(input_ids=batch["input_ids"].to(device),
                      attention_mask=batch["attention_mask"].to(device), use_cache=False)
        finally:
            for handle in handles:
                handle.remove()
        last = batch["attention_mask"].sum(dim=1) - 1
        rows.append(torch.stack([h[torch.arange(len(last)), last.to(h.device)].double().cpu()
                                 for h in captured]))
    return torch.cat(rows, dim=1)


def block_distances(states: torch.Tensor, size: int) -> list[float]:
    """Mean angular distance arccos(cos)/pi between states l and l + size, for every start l."""
    out = []
    for start in range(states.shape[0] - size):
        cos = torch.nn.functional.cosine_similarity(states[start], states[start + size], dim=-1)
        out.append(float((torch.arccos(cos.clamp(-1, 1)) / torch.pi).mean()))
    return out


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
