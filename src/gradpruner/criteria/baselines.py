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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from ..evaluation.judge import Judge, Scoring, task_batches
from ..model.surgery import decoder_layers, num_layers
from ..removal import lowest_scored
from .base import Criterion, ScoreContext, Selection, register


@register
class Tail(Criterion):
    """The final layer is kept; before it, the later a layer the lower its score."""

    name = "tail"
    score = "reverse position (the last layer kept)"
    paper = "Lu et al. 2024, Reassessing Layer Pruning in LLMs (reverse-order baseline)"

    def layer_scores(self, ctx: ScoreContext) -> list[float]:
        total = num_layers(ctx.model)
        return [float(total - 2 - i) for i in range(total - 1)] + [float(total)]


@register
class Random(Criterion):
    """A seeded random permutation of the layers."""

    name = "random"
    score = "seeded random rank"
    paper = "random baseline (seeded)"

    def layer_scores(self, ctx: ScoreContext) -> list[float]:
        total = num_layers(ctx.model)
        return [float(s) for s in random.Random(ctx.seed).sample(range(total), total)]


@dataclass(frozen=True)
class TaskDataSettings:
    """A criterion computed on the first `max_examples` training examples, `batch_size` a batch."""

    max_examples: int = 64
    batch_size: int = 8


class OnTaskData(Criterion):
    """A criterion computed on the first examples of the task's training data."""

    settings_class = TaskDataSettings
    needs_data = True

    def __init__(self, settings: TaskDataSettings | None = None):
        self.settings = settings or self.settings_class()

    def batches(self, ctx: ScoreContext) -> list[dict]:
        return task_batches(ctx.tokenizer, ctx.examples[:self.settings.max_examples],
                            self.settings.batch_size, self.name)


class FromStatistics(OnTaskData):
    """A criterion read off `layer_statistics` of the task data (one pass shared by several)."""

    gradients = False  # whether it needs the pass's |weight * gradient| sums

    def layer_scores(self, ctx: ScoreContext) -> list[float]:
        return self.scores_from(self.statistics(ctx))

    def select(self, ctx: ScoreContext, count: int) -> Selection:
        return self.select_from(self.statistics(ctx), count)

    def statistics(self, ctx: ScoreContext) -> LayerStatistics:
        return layer_statistics(ctx.model, self.batches(ctx), self.gradients)

    def scores_from(self, stats: LayerStatistics) -> list[float]:
        raise NotImplementedError

    def select_from(self, stats: LayerStatistics, count: int) -> Selection:
        """The selection read off a statistics pass shared with other criteria (`auto`)."""
        scores = self.scores_from(stats)
        return Selection(lowest_scored(scores, count), scores)


@register
class BlockInfluence(FromStatistics):
    """1 - mean cosine(input, output) of each layer over the non-padding tokens of task data."""

    name = "block_influence"
    score = "block influence: 1 - cos(input, output)"
    paper = "Men et al. 2024, ShortGPT: Layers in LLMs are More Redundant Than You Expect"

    def scores_from(self, stats: LayerStatistics) -> list[float]:
        return (1.0 - stats.cosines).tolist()


@register
class LossIncrease(OnTaskData):
    """Task loss with the layer skipped minus the loss of the whole model (forward passes only)."""

    name = "ppl"
    score = "task-loss increase with the layer skipped"
    paper = "Kim et al. 2024, Shortened LLaMA (PPL criterion); Song et al. 2024, SLEB"

    def layer_scores(self, ctx: ScoreContext) -> list[float]:
        return self.select(ctx, 0).scores

    def select(self, ctx: ScoreContext, count: int) -> Selection:
        judge = Judge(ctx.model, Scoring(self.batches(ctx)))
        base = judge.loss([])
        scores = [judge.loss([i]) - base for i in range(num_layers(ctx.model))]
        removed = lowest_scored(scores, count) if count else []
        return Selection(removed, scores, report={"judge": judge.cost()})


@register
class Taylor(FromStatistics):
    """Sum of |weight * gradient| over each layer's parameters, gradients of the task loss."""

    name = "taylor"
    score = "Taylor: sum of |weight x gradient|"
    paper = "Kim et al. 2024, Shortened LLaMA (Taylor+ criterion)"
    gradients = True

    def scores_from(self, stats: LayerStatistics) -> list[float]:
        return stats.taylor


@register
class Angular(FromStatistics):
    """Angular distance across blocks of layers at the last token; removes one contiguous block.

    Per-layer scores are the distances of single-layer blocks; `select` picks the block of the
    asked size whose input and output are closest.
    """

    name = "angular"
    score = "angular distance of the layer's input and output"
    rule = "the contiguous block whose input and output are closest is removed"
    paper = "Gromov et al. 2024, The Unreasonable Ineffectiveness of the Deeper Layers"

    def scores_from(self, stats: LayerStatistics) -> list[float]:
        return block_distances(stats.states, 1)

    def select_from(self, stats: LayerStatistics, count: int) -> Selection:
        distances = block_distances(stats.states, count)
        start = min(range(len(distances)), key=distances.__getitem__)
        return Selection(list(range(start, start + count)), self.scores_from(stats))


@dataclass
class LayerStatistics:
    """What one pass over task data tells about each decoder layer.

    `cosines`: (layers,) mean cosine of each layer's input and output over the real tokens;
    `states`: (layers + 1, samples, hidden), every layer's input and the last layer's output at
    each sample's last real token; `taylor`: per layer, sum of |weight * gradient| of the task
    loss (when asked for).
    """

    cosines: torch.Tensor
    states: torch.Tensor
    taylor: list[float] | None = None


def layer_statistics(model, batches: list[dict], gradients: bool = False) -> LayerStatistics:
    """`LayerStatistics` of `batches` in one forward pass (and one backward with `gradients`)."""
    layers = decoder_layers(model)
    sums, count, rows = torch.zeros(len(layers), dtype=torch.float64), 0, []
    device = next(model.parameters()).device
    with decoder_gradients(model, gradients) as params:
        for batch in batches:
            inputs = {k: v.to(device) for k, v in batch.items() if gradients or k != "labels"}
            with torch.set_grad_enabled(gradients), layer_io(layers) as captured:
                out = model(**inputs, use_cache=False)  # with labels (Taylor): the task loss
            if gradients:
                (out.loss / len(batches)).backward()
            real = inputs["attention_mask"].bool()
            sums += torch.stack([torch.nn.functional.cosine_similarity(
                a[real].double(), b[real].double(), dim=-1).sum() for a, b in captured]).cpu()
            count += int(real.sum())
            last = inputs["attention_mask"].sum(dim=1) - 1
            picked = [a for a, _ in captured] + [captured[-1][1]]
            rows.append(torch.stack([h[torch.arange(len(last)), last].double().cpu() for h in picked]))
        taylor = ([sum(float((p.detach() * p.grad).abs().sum()) for p in ps if p.grad is not None)
                   for ps in params] if gradients else None)
    return LayerStatistics(sums / max(count, 1), torch.cat(rows, dim=1), taylor)


@contextmanager
def decoder_gradients(model, enabled: bool) -> Iterator[list[list[torch.nn.Parameter]]]:
    """Within the block only the decoder layers' weights take gradients (none unless
    `enabled`), starting from none; yields each layer's parameters. Put back afterwards."""
    params = [list(layer.parameters()) for layer in decoder_layers(model)]
    in_layers = {id(p) for ps in params for p in ps}
    everything = list(model.parameters())
    saved = [p.requires_grad for p in everything]
    try:
        for p in everything:
            p.requires_grad_(enabled and id(p) in in_layers)
            p.grad = None
        yield params
    finally:
        for p, flag in zip(everything, saved):
            p.grad = None
            p.requires_grad_(flag)


@contextmanager
def layer_io(layers) -> Iterator[list[tuple[torch.Tensor, torch.Tensor]]]:
    """Within the block, each forward of `layers` appends its (input, output) hidden states,
    detached, to the yielded list."""
    captured: list[tuple[torch.Tensor, torch.Tensor]] = []

    def keep(module, args, kwargs, output):
        hidden_in = args[0] if args else kwargs["hidden_states"]
        hidden_out = output[0] if isinstance(output, tuple) else output
        captured.append((hidden_in.detach(), hidden_out.detach()))

    handles = [layer.register_forward_hook(keep, with_kwargs=True) for layer in layers]
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def last_token_states(model, batches: list[dict]) -> torch.Tensor:
    """(layers + 1, samples, hidden): the input of every layer and the last layer's output,
    at each sample's last real token."""
    return layer_statistics(model, batches).states


def block_distances(states: torch.Tensor, size: int) -> list[float]:
    """Mean angular distance arccos(cos)/pi between states l and l + size, for every start l."""
    out = []
    for start in range(states.shape[0] - size):
        cos = torch.nn.functional.cosine_similarity(states[start], states[start + size], dim=-1)
        out.append(float((torch.arccos(cos.clamp(-1, 1)) / torch.pi).mean()))
    return out
