"""LaCo's layer collapse as a merge baseline (Yang et al. 2024, "LaCo: Large Language Model
Pruning via Layer Collapse").

Reserving-Differences-while-Seeking-Common (RDSC) merge: layers l+1..l+m fold into layer l as
theta_l + sum_k (theta_{l+k} - theta_l), every parameter of the layer included. Walking down from
the top (the final layer stays), a merge of up to C=4 consecutive layers is kept when the
model's last-token final hidden states on calibration examples keep a mean cosine similarity of at
least T to the original's; after a kept merge the walk jumps I=2 layers, else one. A second walk
without the threshold removes what the first left short, so the asked count is always met.
"""

from __future__ import annotations

import torch

from ..surgery import decoder_layers, num_layers
from . import ScoreContext, register
from .baselines import _OnTaskData, last_token_states
from .judge import skipping

GROUP = 4
INTERVAL = 2
THRESHOLD = 0.65


def collapse_into(model, receiver: int, donors: list[int]) -> None:
    """RDSC merge in place: receiver += sum over donors of (donor - receiver), all parameters."""
    layers = decoder_layers(model)
    with torch.no_grad():
        target = dict(layers[receiver].named_parameters())
        original = {name: p.detach().float().clone() for name, p in target.items()}
        for donor in donors:
            for name, p in layers[donor].named_parameters():
                target[name].add_((p.detach().float() - original[name]).to(p.dtype))


def _similarity(model, batches: list[dict], reference: torch.Tensor, skip: list[int]) -> float:
    with skipping(model, skip):
        final = last_token_states(model, batches)[-1]
    return float(torch.nn.functional.cosine_similarity(final, reference, dim=-1).mean())


@register
class LaCo(_OnTaskData):
    """Layer collapse: removes layers by merging them into the layer below (see module doc)."""

    name = "laco"
    paper = "Yang et al. 2024, LaCo: Large Language Model Pruning via Layer Collapse"
    max_examples = 16

    def layer_scores(self, ctx: ScoreContext) -> list[float]:
        """LaCo ranks no single layers; every layer scores 0 (the collapse decides)."""
        return [0.0] * num_layers(ctx.model)

    def collapse(self, ctx: ScoreContext, count: int) -> dict[int, list[int]]:
        """Merge layers of `ctx.model` in place until `count` are folded; receiver -> donors."""
        batches = self.batches(ctx)
        reference = last_token_states(ctx.model, batches)[-1]
        total = num_layers(ctx.model)
        removed: list[int] = []
        plan: dict[int, list[int]] = {}
        trials = []
        for threshold in (THRESHOLD, -1.0):
            alive = [i for i in range(total) if i not in removed]
            pos = len(alive) - GROUP  # groups end before the final layer
            while pos >= 0 and len(removed) < count:
                alive = [i for i in range(total) if i not in removed]
                pos = min(pos, len(alive) - 3)
                if pos < 0:
                    break
                receiver = alive[pos]
                donors = alive[pos + 1:min(pos + GROUP, len(alive) - 1)][:count - len(removed)]
                saved = {k: v.clone() for k, v in decoder_layers(ctx.model)[receiver].state_dict().items()}
                collapse_into(ctx.model, receiver, donors)
                sim = _similarity(ctx.model, batches, reference, removed + donors)
                trials.append({"receiver": receiver, "donors": donors, "similarity": sim})
                if sim >= threshold:
                    removed += donors
                    plan[receiver] = plan.get(receiver, []) + donors
                    for donor in donors:  # a donor that had received layers passes them on
                        plan[receiver] += plan.pop(donor, [])
                    pos -= INTERVAL
                else:
                    decoder_layers(ctx.model)[receiver].load_state_dict(saved)
                    pos -= 1
        ctx.notes["laco"] = {"group": GROUP, "interval": INTERVAL, "threshold": THRESHOLD,
                             "trials": trials}
        return {r: sorted(d) for r, d in sorted(plan.items())}
