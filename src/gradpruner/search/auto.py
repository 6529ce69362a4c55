"""`auto`: among several candidate cuts, the one whose held-out task loss is lowest.

Candidates are the removal sets of the criteria that need only forward passes or one gradient
pass (block influence, angular distance and Taylor, read off one shared pass: `candidate_sets`),
of the IGIA score variants (when a probe is given), and of a greedy removal that drops one
layer at a time, trying the `greedy_width` lowest-scored layers by block influence and keeping
the one whose removal raises the held-out answer loss of `greedy_examples` examples least.
Every candidate is judged on held-out examples with its layers skipped (forward passes only, no
copy of the model): by the choice loss where the task is multiple choice (it predicts the
accuracy after healing better than the answer loss: `benchmarks/check_proxy.py`), else by the
answer loss. The search runs what its `SearchPlan` affords (`budget.plan_search`); when nothing
can be judged, block influence's cut (the best single criterion of the comparison on average)
is kept unjudged. The report records every candidate: its layers, its held-out loss (None when
not judged) and the layer scores that proposed it (None for the greedy search).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

from ..criteria import Criterion, Found, ScoreContext, Selection, get_criterion
from ..criteria.baselines import FromStatistics, TaskDataSettings, layer_statistics
from ..evaluation.judge import Judge, Scoring, choice_scoring, task_batches
from ..tasks.examples import MCExample
from .budget import FORWARD_SHARE, SearchPlan, SearchSize, SelectionBudget, plan_search

CANDIDATES = ("block_influence", "gradpruner", "angular", "gradpruner_relative", "taylor",
              "gradpruner_unsquared", "tail")  # judged in this order while the budget lasts


@dataclass(frozen=True)
class AutoSettings:
    """`auto`'s search: its candidates, the held-out judge (at most `choice_rows` example-choice
    rows of the last `heldout_examples`), the statistics pass's examples, the greedy search, and
    the merge search's donor counts and scales, and whether it tries the linear fold."""

    candidates: tuple[str, ...] = CANDIDATES
    heldout_examples: int = 32
    choice_rows: int = 64
    scoring_examples: int = 32
    greedy_width: int = 2
    greedy_examples: int = 16
    merge_donors: tuple[int, ...] = (1, 2, 3)
    merge_scales: tuple[float, ...] = (1.0, 0.5, 0.25)
    merge_fold: bool = True

    @property
    def merge_trials(self) -> int:
        """Trials of the merge search at most: the linear fold, one donor at each scale, then
        more donors."""
        return int(self.merge_fold) + len(self.merge_scales) + len(self.merge_donors) - 1


def heldout_scoring(ctx: ScoreContext, settings: AutoSettings, measure: str = "choice",
                    count: int | None = None) -> Scoring:
    """The held-out measure on the last `count` (default `settings.heldout_examples`) of
    `ctx.heldout`, or of the training examples when none are held out.

    `measure` "choice": the choice loss of the last examples with at most `choice_rows` choices
    in all, where every example is multiple choice; otherwise (and for "answer") the answer loss.
    """
    examples = (ctx.heldout or ctx.examples)[-(count or settings.heldout_examples):]
    multiple_choice = all(isinstance(ex, MCExample) and len(ex.contexts) > 1 for ex in examples)
    if examples and measure == "choice" and multiple_choice:
        rows = 0
        for taken, ex in enumerate(reversed(examples)):
            rows += len(ex.contexts)
            if rows > settings.choice_rows and taken:
                examples = examples[len(examples) - taken:]
                break
        return choice_scoring(ctx.tokenizer, examples)
    return Scoring(task_batches(ctx.tokenizer, examples, 8, "auto"))


def greedy_removal(judge: Judge, count: int, guide: list[float], width: int) -> list[int]:
    """Drop `count` layers one at a time: of the `width` lowest-`guide` layers left, the one
    whose removal (with those already dropped) gives the lowest held-out loss."""
    removed: list[int] = []
    for _ in range(count):
        left = [i for i in range(len(guide)) if i not in removed]
        tries = sorted(left, key=lambda i: (guide[i], -i))[:width]
        removed.append(min(tries, key=lambda i: (judge.loss(removed + [i]), -i)))
    return sorted(removed)


def candidate_criteria(ctx: ScoreContext, settings: AutoSettings) -> list[Criterion]:
    """The candidates that the context allows (the IGIA variants only with a probe)."""
    chosen = [get_criterion(name) for name in settings.candidates]
    return [c for c in chosen if ctx.igia is not None or not c.needs_probe]


def candidate_sets(ctx: ScoreContext, count: int, settings: AutoSettings, criteria: list[Criterion],
                   gradients: bool) -> tuple[dict[str, list[int]], dict[str, list[float]]]:
    """Each criterion's removal set of `count` layers, in order, and the layer scores behind them.

    The criteria read off task statistics (block influence, angular, Taylor) share one pass over
    the first `scoring_examples` training examples; forward only, and Taylor left out, without
    `gradients`.
    """
    scoring = replace(ctx, examples=ctx.examples[:settings.scoring_examples])
    chosen = [c for c in criteria if gradients or not getattr(c, "gradients", False)]
    shared = [c for c in chosen if isinstance(c, FromStatistics)]
    stats = layer_statistics(ctx.model, shared[0].batches(scoring), gradients) if shared else None
    sets, scores = {}, {}
    for criterion in chosen:
        picked = criterion.select_from(stats, count) if criterion in shared else criterion.select(scoring, count)
        sets[criterion.name] = picked.removed
        scores[criterion.name] = picked.scores
    return sets, scores


def first_batch_seconds(ctx: ScoreContext, settings: AutoSettings) -> float:
    """Seconds of a dense training step, from one timed forward pass of a statistics batch."""
    batch = task_batches(ctx.tokenizer, ctx.examples[:settings.scoring_examples], 8, "auto")[0]
    started = time.perf_counter()
    layer_statistics(ctx.model, [batch])
    return (time.perf_counter() - started) / FORWARD_SHARE


class Auto(Criterion):
    """The candidate cut with the lowest held-out loss (see the module's docstring); `select`
    runs it by the name "auto", beside the registered criteria whose cuts it judges."""

    name = "auto"
    settings_class = AutoSettings
    needs_data = True
    paper = "this project: candidates of the other criteria judged by held-out loss"
    score = "the probe's IGIA (block influence without a probe)"

    def __init__(self, settings: AutoSettings | None = None):
        self.settings = settings or AutoSettings()

    def layer_scores(self, ctx: ScoreContext) -> list[float]:
        """The probe's score when there is one (it ranks merge donors), else block influence on
        the statistics pass's examples."""
        if ctx.igia is not None:
            return get_criterion("gradpruner").layer_scores(ctx)
        settings = TaskDataSettings(max_examples=self.settings.scoring_examples)
        return get_criterion("block_influence", settings).layer_scores(ctx)

    def select(self, ctx: ScoreContext, count: int) -> Selection:
        return self.search(ctx, count).selection

    def search(self, ctx: ScoreContext, count: int, budget: SelectionBudget = SelectionBudget(),
               merge_search: bool = False) -> Found:
        """The search within `budget`, planned knowing whether a merge search follows."""
        s, start = self.settings, time.perf_counter()
        scoring = heldout_scoring(ctx, s)  # first: without task data, this is the error to show
        guide = heldout_scoring(ctx, s, "answer", s.greedy_examples)
        criteria = candidate_criteria(ctx, s)
        if budget.limited and budget.step_seconds is None:
            budget = replace(budget, step_seconds=first_batch_seconds(ctx, s))
        statistics = len(task_batches(ctx.tokenizer, ctx.examples[:s.scoring_examples], 8, "auto"))
        size = SearchSize(statistics, len(scoring.batches), len(guide.batches),
                          tuple(c.name for c in criteria), count, s.greedy_width,
                          s.merge_trials if merge_search else 0)
        plan = plan_search(budget, size)
        sets, scores = candidate_sets(ctx, count, s, criteria, plan.taylor)
        criteria_seconds = time.perf_counter() - start
        judge, found, report = None, [], {"judge": None}
        if plan.judged:
            judge = Judge(ctx.model, scoring)
            found = [{"name": n, "removed": r, "loss": judge.loss(r) if n in plan.judged else None,
                      "scores": scores[n]} for n, r in sets.items()]
            if plan.greedy:
                guide_judge = Judge(ctx.model, guide)
                sets["greedy"] = greedy_removal(guide_judge, count, scores["block_influence"],
                                                s.greedy_width)
                found.append({"name": "greedy", "removed": sets["greedy"], "loss": judge.loss(sets["greedy"]),
                              "scores": None})
                report["greedy_judge"] = guide_judge.cost()
            report["judge"] = judge.cost()
        else:  # no held-out judging fits: block influence, the best single criterion on average
            found = [{"name": name, "removed": removed, "loss": None, "scores": scores[name]}
                     for name, removed in sets.items()]
        best = min((c for c in found if c["loss"] is not None), key=lambda c: c["loss"], default=found[0])
        layer_scores = scores.get("gradpruner") or scores["block_influence"]
        report.update(chosen=best["name"], candidates=found, criteria_seconds=round(criteria_seconds, 2),
                      plan=plan.to_json(), seconds=round(time.perf_counter() - start, 2))
        return Found(Selection(best["removed"], layer_scores, report=report), judge,
                     plan.merge_trials)
