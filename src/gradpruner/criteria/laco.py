"""LaCo's layer collapse as a merge baseline (Yang et al. 2024, "LaCo: Large Language Model
Pruning via Layer Collapse").

Layers l+1..l+m fold into layer l by the RDSC merge (`apply.collapse`). Walking down from the top
(the final layer stays), a merge of up to `group` consecutive layers is kept when the model's
last-token final hidden states on calibration examples keep a mean cosine similarity of at least
`threshold` to the original's; after a kept merge the walk jumps `interval` layers, else one. A
second walk without the threshold removes what the first left short, so the asked count is always
met. The kept merges, in order, are the selection's merge steps; the model is put back as it was.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..merging.collapse import collapse_into
from ..model.surgery import decoder_layers, num_layers, skipping
from .base import ScoreContext, Selection, register
from .baselines import OnTaskData, last_token_states


@dataclass(frozen=True)
class LaCoSettings:
    """LaCo's C (`group`), I (`interval`) and T (`threshold`); calibration examples and batch."""

    group: int = 4
    interval: int = 2
    threshold: float = 0.65
    max_examples: int = 16
    batch_size: int = 8


def _similarity(model, batches: list[dict], reference: torch.Tensor, skip: list[int]) -> float:
    with skipping(model, skip):
        final = last_token_states(model, batches)[-1]
    return float(torch.nn.functional.cosine_similarity(final, reference, dim=-1).mean())


@register
class LaCo(OnTaskData):
    """Layer collapse: removes layers by merging them into the layer below (see module doc)."""

    name = "laco"
    paper = "Yang et al. 2024, LaCo: Large Language Model Pruning via Layer Collapse"
    score = "none (LaCo ranks no single layers)"
    rule = "layers collapsed into the one below while the outputs stay similar"
    settings_class = LaCoSettings

    def layer_scores(self, ctx: ScoreContext) -> list[float]:
        """LaCo ranks no single layers; every layer scores 0 (the collapse decides)."""
        return [0.0] * num_layers(ctx.model)

    def select(self, ctx: ScoreContext, count: int) -> Selection:
        layers = decoder_layers(ctx.model)
        saved = [{k: v.clone() for k, v in layer.state_dict().items()} for layer in layers]
        try:
            steps, trials = self._collapse(ctx, count)
        finally:
            for layer, state in zip(layers, saved):
                layer.load_state_dict(state)
        removed = sorted(d for _, donors in steps for d in donors)
        s = self.settings
        report = {"group": s.group, "interval": s.interval, "threshold": s.threshold, "trials": trials}
        return Selection(removed, self.layer_scores(ctx), merges=steps, report=report)

    def _collapse(self, ctx: ScoreContext, count: int) -> tuple[list[tuple[int, list[int]]], list[dict]]:
        """Merge layers of `ctx.model` in place until `count` are folded: the kept merges in
        order, and every trial."""
        s, model = self.settings, ctx.model
        batches = self.batches(ctx)
        reference = last_token_states(model, batches)[-1]
        total = num_layers(model)
        removed: list[int] = []
        steps: list[tuple[int, list[int]]] = []
        trials = []
        for threshold in (s.threshold, -1.0):
            alive = [i for i in range(total) if i not in removed]
            pos = len(alive) - s.group  # groups end before the final layer
            while pos >= 0 and len(removed) < count:
                alive = [i for i in range(total) if i not in removed]
                pos = min(pos, len(alive) - 3)
                if pos < 0:
                    break
                receiver = alive[pos]
                donors = alive[pos + 1:min(pos + s.group, len(alive) - 1)][:count - len(removed)]
                state = {k: v.clone() for k, v in decoder_layers(model)[receiver].state_dict().items()}
                collapse_into(model, receiver, donors)
                sim = _similarity(model, batches, reference, removed + donors)
                trials.append({"receiver": receiver, "donors": donors, "similarity": sim})
                if sim >= threshold:
                    removed += donors
                    steps.append((receiver, donors))
                    pos -= s.interval
                else:
                    decoder_layers(model)[receiver].load_state_dict(state)
                    pos -= 1
        return steps, trials
