"""`auto`: among several candidate cuts, the one whose held-out task loss is lowest.

Candidates are the removal sets of the criteria that need only forward passes or one gradient
pass (block influence, angular distance and Taylor, read off one shared pass: `candidate_sets`),
of the IGIA score variants (when a probe is given), and of a greedy removal that drops one
layer at a time, trying the `GREEDY_WIDTH` lowest-scored layers by block influence and keeping
the one whose removal raises the held-out answer loss of `GREEDY_EXAMPLES` examples least.
Every candidate is judged on held-out task examples with its layers skipped (forward passes
only, no copy of the model): by the choice loss where the task is multiple choice (it predicts
the accuracy after healing better than the answer loss: `benchmarks/check_proxy.py`), else by
the answer loss. Each candidate, its loss and the cost of the search go into the sidecar.

`search_merge` does the same for the merge: one donor at each scale (1, 0.5, 0.25) on the added
weights, then more donors at the best scale until one more raises the loss, keeping the lowest
loss of all, "no merge" included.

Both stay within the context's `SelectionBudget` (a share of the healing fine-tune): parts that
do not fit are skipped, greedy search first, then merge trials, then judging (block influence's
cut, the best single criterion of the comparison on average, is kept when nothing can be
judged); what was skipped is recorded.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace

import torch

from ..merge import add_deltas, plan_deltas, plan_merge
from ..selection import lowest_scored
from ..surgery import decoder_layers, layer_prefix
from . import Criterion, ScoreContext, get_criterion, register
from ..data import MCExample
from .baselines import FromStatistics, layer_statistics
from .budget import FORWARD_SHARE, SelectionBudget
from .judge import Judge, Scoring, choice_scoring, task_batches

CANDIDATES = ("block_influence", "gradpruner", "angular", "gradpruner_relative", "taylor",
              "gradpruner_unsquared", "tail")  # judged in this order while the budget lasts
HELDOUT_EXAMPLES = 32
CHOICE_ROWS = 64  # the choice loss scores every choice: at most this many (example, choice) rows
SCORING_EXAMPLES = 32
GREEDY_WIDTH = 2
GREEDY_EXAMPLES = 16  # the greedy search's answer loss: on this many held-out examples
MERGE_DONORS = (1, 2, 3)
MERGE_SCALES = (1.0, 0.5, 0.25)


def heldout_scoring(ctx: ScoreContext, measure: str = "choice",
                    count: int = HELDOUT_EXAMPLES) -> Scoring:
    """The held-out measure on the last `count` of `ctx.heldout`, or of the training examples
    when none are held out.

    `measure` "choice": the choice loss of the last examples with at most `CHOICE_ROWS` choices
    in all, where every example is multiple choice; otherwise (and for "answer") the answer loss.
    """
    examples = (ctx.heldout or ctx.examples)[-count:]
    multiple_choice = all(isinstance(ex, MCExample) and len(ex.contexts) > 1 for ex in examples)
    if examples and measure == "choice" and multiple_choice:
        rows = 0
        for taken, ex in enumerate(reversed(examples)):
            rows += len(ex.contexts)
            if rows > CHOICE_ROWS and taken:
                examples = examples[len(examples) - taken:]
                break
        return choice_scoring(ctx.tokenizer, examples)
    held = ScoreContext(model=ctx.model, tokenizer=ctx.tokenizer, examples=examples)
    return Scoring(task_batches(held, len(examples), 8, "auto"))


def heldout_judge(ctx: ScoreContext, measure: str = "choice", count: int = HELDOUT_EXAMPLES) -> Judge:
    """A judge of `heldout_scoring(ctx, measure, count)`."""
    return Judge(ctx.model, heldout_scoring(ctx, measure, count))


def greedy_removal(judge: Judge, count: int, guide: list[float], width: int = GREEDY_WIDTH) -> list[int]:
    """Drop `count` layers one at a time: of the `width` lowest-`guide` layers left, the one
    whose removal (with those already dropped) gives the lowest held-out loss."""
    removed: list[int] = []
    for _ in range(count):
        left = [i for i in range(len(guide)) if i not in removed]
        tries = sorted(left, key=lambda i: (guide[i], -i))[:width]
        removed.append(min(tries, key=lambda i: (judge.loss(removed + [i]), -i)))
    return sorted(removed)


def candidate_sets(ctx: ScoreContext, count: int,
                   judging: float = 0.0) -> tuple[dict[str, list[int]], dict[str, list[float]]]:
    """Each of `CANDIDATES`' removal set of `count` layers, in that order, and the layer scores
    behind them.

    The criteria read off task statistics (block influence, angular, Taylor) share one pass over
    the first `SCORING_EXAMPLES` training examples; it is forward only, and Taylor left out, when
    the budget does not fit its backward pass and then `judging` seconds (an unjudged Taylor
    set is of no use).
    """
    scoring = replace(ctx, examples=ctx.examples[:SCORING_EXAMPLES], notes={})
    chosen = [get_criterion(name) for name in CANDIDATES]
    chosen = [c for c in chosen if ctx.igia is not None or not c.needs_probe]
    shared = [c for c in chosen if isinstance(c, FromStatistics)]
    batches = shared[0].batches(scoring) if shared else []
    budget = ctx.budget
    gradients = (any(c.gradients for c in shared)
                 and budget.affords("Taylor's backward pass and judging",
                                    len(batches) * (budget.step_seconds or 0.0) + judging))
    chosen = [c for c in chosen if gradients or not getattr(c, "gradients", False)]
    started = time.perf_counter()
    stats = layer_statistics(ctx.model, batches, gradients) if shared else None
    if batches:
        budget.calibrate((time.perf_counter() - started) / len(batches) / (1 if gradients else FORWARD_SHARE))
    sets, scores = {}, {}
    for criterion in chosen:
        if hasattr(criterion, "removal_from"):  # chooses its set itself (angular): no scores needed
            sets[criterion.name] = criterion.removal_from(stats, count)
            continue
        scores[criterion.name] = (criterion.scores_from(stats) if criterion in shared
                                  else criterion.layer_scores(scoring))
        sets[criterion.name] = lowest_scored(scores[criterion.name], count)
    return sets, scores


def judged(judge: Judge, sets: dict[str, list[int]], budget: SelectionBudget) -> list[dict]:
    """Each candidate with its held-out loss, in order, while the budget lasts (the first one
    always); the rest with loss None."""
    found = []
    for name, removed in sets.items():
        fits = not found or budget.affords(f"judging {name}", judge.mean_seconds())
        found.append({"name": name, "removed": removed, "loss": judge.loss(removed) if fits else None})
    return found


def greedy_seconds(judge: Judge, guide: Scoring, count: int) -> float:
    """Estimated seconds of `greedy_removal` judged on `guide`, from what `judge` measured."""
    batch = judge.first_pass_seconds / max(len(judge.batches), 1)
    share = judge.mean_seconds() / max(judge.first_pass_seconds, 1e-9)  # a trial runs part of the model
    return len(guide.batches) * batch * (1 + count * GREEDY_WIDTH * share)


@register
class Auto(Criterion):
    """The candidate cut with the lowest held-out loss (see the module's docstring)."""

    name = "auto"
    paper = "this project: candidates of the other criteria judged by held-out loss"

    def __init__(self):
        self._scores: list[float] | None = None

    def removal(self, ctx: ScoreContext, count: int) -> list[int]:
        start, budget = time.perf_counter(), ctx.budget
        scoring = heldout_scoring(ctx)  # first: without task data, this is the error to show
        judging = budget.forward(2 * len(scoring.batches))  # the dense pass and one candidate
        sets, scores = candidate_sets(ctx, count, judging)
        criteria_seconds = time.perf_counter() - start
        notes: dict = {"criteria_seconds": round(criteria_seconds, 2), "judge": None}
        if budget.affords("judging the candidates", judging):
            judge = Judge(ctx.model, scoring)
            found = judged(judge, sets, budget)
            guide = heldout_scoring(ctx, "answer", GREEDY_EXAMPLES)
            merge_reserve = (len(MERGE_SCALES) + 2) * judge.mean_seconds() if ctx.igia else 0.0
            if budget.affords("the greedy search", greedy_seconds(judge, guide, count) + merge_reserve):
                guide_judge = Judge(ctx.model, guide)
                sets["greedy"] = greedy_removal(guide_judge, count, scores["block_influence"])
                found.append({"name": "greedy", "removed": sets["greedy"], "loss": judge.loss(sets["greedy"])})
                notes["greedy_judge"] = guide_judge.cost()
            ctx.judge, notes["judge"] = judge, judge.cost()
        else:  # no held-out judging fits: block influence, the best single criterion on average
            found = [{"name": name, "removed": removed, "loss": None} for name, removed in sets.items()]
        best = min((c for c in found if c["loss"] is not None), key=lambda c: c["loss"], default=found[0])
        self._scores = scores.get("gradpruner", scores["block_influence"])
        ctx.notes["auto"] = {"chosen": best["name"], "candidates": found, **notes,
                             "budget": budget.notes(), "seconds": round(time.perf_counter() - start, 2)}
        return best["removed"]

    def layer_scores(self, ctx: ScoreContext) -> list[float]:
        """The probe's score when there is one (it ranks merge donors), else block influence."""
        if self._scores is None:
            name = "gradpruner" if ctx.igia is not None else "block_influence"
            self._scores = get_criterion(name).layer_scores(ctx)
        return self._scores


def search_merge(ctx: ScoreContext, removed: list[int], kept: list[int], donor_scores: list[float],
                 density: float = 0.2) -> tuple[dict[int, list[int]], float, list[dict]]:
    """The merge (plan, scale) with the lowest held-out loss on the cut `removed`, and all trials
    (those the budget allows).

    "No merge" is a trial, so the search never returns a merge that raises the loss.
    """
    start, budget = time.perf_counter(), ctx.budget
    judge = ctx.judge
    if judge is None:
        scoring = heldout_scoring(ctx)
        if not budget.affords("the merge search", budget.forward(2 * len(scoring.batches))):
            ctx.notes["merge_search"] = {"trials": [], "budget": budget.notes(), "seconds": 0.0}
            return {}, 0.0, []
        judge = Judge(ctx.model, scoring)
    model = ctx.model
    trials = [{"donors": 0, "scale": 0.0, "loss": judge.loss(removed)}]
    deltas: dict[int, dict[str, torch.Tensor]] = {}  # donor -> its amounts, planned when first tried
    saved = _snapshot(model, plan_merge(removed, kept, donor_scores, max(MERGE_DONORS)))

    def attempt(k: int, scale: float) -> float:
        if not budget.affords(f"merge trial {k} x {scale:g}", judge.mean_seconds()):
            return math.inf
        plan = plan_merge(removed, kept, donor_scores, k)
        new = {r: [d for d in donors if d not in deltas] for r, donors in plan.items()}
        deltas.update(plan_deltas(model, new, ctx.igia.matrix, layer_prefix(model), density,
                                  set(ctx.igia.module_names)))
        for donor in (d for donors in plan.values() for d in donors):
            add_deltas(model, deltas[donor], scale)
        try:
            loss = judge.loss(removed, cached=False, changed_from=min(plan, default=None))
        finally:
            _restore(model, saved)
        trials.append({"donors": k, "scale": scale, "loss": loss})
        return loss

    for scale in MERGE_SCALES:
        attempt(MERGE_DONORS[0], scale)
    best = _lowest(trials)
    if best["donors"]:  # more donors at the best scale, until one more makes it worse
        previous = best["loss"]
        for k in (k for k in MERGE_DONORS[1:] if k <= len(removed)):
            loss = attempt(k, best["scale"])
            if loss >= previous:
                break
            previous = loss
    ctx.notes["merge_search"] = {"trials": trials, "density": density, "judge": judge.cost(),
                                 "budget": budget.notes(),
                                 "seconds": round(time.perf_counter() - start, 2)}
    best = _lowest(trials)
    return plan_merge(removed, kept, donor_scores, best["donors"]), best["scale"], trials


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
