"""The merge search: of "no merge", the linear fold and the paper's merge at several donor counts
and scales, the plan with the lowest held-out loss.

The linear fold first (when a calibration is given), then the paper's merge: one donor at each
scale on the added weights, then more donors at the best scale until one more raises the loss,
keeping the lowest loss of all; "no merge" is a trial, so the search never returns a merge that
raises the loss. Trials change the receivers in place and put them back.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from ..evaluation.judge import Judge
from ..merging.fold import Calibration, fold_blocks, fold_steps
from ..merging.merge import add_deltas, plan_deltas, plan_merge
from ..model.surgery import decoder_layers, layer_prefix
from ..plan import PrunePlan, paper_merge_plan


@dataclass(frozen=True)
class FoldTrial:
    """The linear fold as a trial of the merge search: its calibration examples, ridge and fit."""

    calibration: Calibration
    ridge: float
    fit: str = "lstsq"


def search_merge(judge: Judge, igia, removed: list[int], kept: list[int], donor_scores: list[float],
                 density: float, donors: tuple[int, ...], scales: tuple[float, ...],
                 trials_allowed: int, fold: FoldTrial | None = None) -> tuple[PrunePlan, dict]:
    """The plan with the lowest loss of `judge` on the cut `removed`, and the search's report; at
    most `trials_allowed` trials besides "no merge" (the fold, when given, is the first; the
    paper's merge only with the probe's `igia`)."""
    start, model = time.perf_counter(), judge.model
    total = len(decoder_layers(model))
    trials = [{"donors": 0, "scale": 0.0, "loss": judge.loss(removed)}]
    steps = fold_steps(removed, total) if fold else ()
    if steps and trials_allowed:
        trials.append({"fold": True, "loss": _fold_loss(judge, removed, steps, fold)})
    if igia is None:  # no probe: the paper's merge cannot be tried
        donors, scales = (), ()
    deltas: dict[int, dict[str, torch.Tensor]] = {}  # donor -> its amounts, planned when first tried
    saved = _snapshot(model, plan_merge(removed, kept, donor_scores, max(donors, default=0)))

    def attempt(k: int, scale: float) -> float:
        if len(trials) > trials_allowed:
            return math.inf
        plan = plan_merge(removed, kept, donor_scores, k)
        new = {r: [d for d in group if d not in deltas] for r, group in plan.items()}
        deltas.update(plan_deltas(model, new, igia.matrix, layer_prefix(model), density,
                                  set(igia.module_names)))
        for donor in (d for group in plan.values() for d in group):
            add_deltas(model, deltas[donor], scale)
        try:
            loss = judge.loss(removed, cached=False, changed_from=min(plan, default=None))
        finally:
            _restore(model, saved)
        trials.append({"donors": k, "scale": scale, "loss": loss})
        return loss

    for scale in scales:
        attempt(donors[0], scale)
    best = _lowest([t for t in trials if "fold" not in t])
    if best["donors"]:  # more donors at the best scale, until one more makes it worse
        previous = best["loss"]
        for k in (k for k in donors[1:] if k <= len(removed)):
            loss = attempt(k, best["scale"])
            if loss >= previous:
                break
            previous = loss
    best = _lowest(trials)
    report = {"trials": trials, "density": density, "judge": judge.cost(),
              "seconds": round(time.perf_counter() - start, 2)}
    if "fold" in best:
        return PrunePlan(total, tuple(removed), steps, "fold", ridge=fold.ridge,
                         calibration=len(fold.calibration.examples), fit=fold.fit), report
    merged = plan_merge(removed, kept, donor_scores, best["donors"])
    return paper_merge_plan(total, removed, merged, density, best["scale"]), report


def _fold_loss(judge: Judge, removed: list[int], steps, fold: FoldTrial) -> float:
    """The loss of the cut with its blocks folded into the receivers (put back afterwards)."""
    model = judge.model
    saved = _snapshot(model, {s.receiver: [] for s in steps})
    try:
        fold_blocks(model, steps, fold.calibration, fold.ridge, fold.fit)
        return judge.loss(removed, cached=False, changed_from=min(s.receiver for s in steps))
    finally:
        _restore(model, saved)


def _lowest(trials: list[dict]) -> dict:
    """The trial with the lowest loss, the first of equal ones."""
    return min(trials, key=lambda t: t["loss"])


def _snapshot(model, plan: dict[int, list[int]]) -> dict[int, dict[str, torch.Tensor]]:
    layers = decoder_layers(model)
    return {r: {k: v.detach().clone() for k, v in layers[r].state_dict().items()} for r in plan}


def _restore(model, saved: dict[int, dict[str, torch.Tensor]]) -> None:
    layers = decoder_layers(model)
    for receiver, state in saved.items():
        layers[receiver].load_state_dict(state)
