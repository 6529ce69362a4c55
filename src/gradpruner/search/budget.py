"""How long the selection may take (`SelectionBudget`: a share of the healing fine-tune that
follows), and which parts of the search it affords (`plan_search`), decided before the search
starts.

The parts are worth different amounts and cost different amounts, so they are planned in order
of worth: the statistics pass every candidate needs (always run), judging block influence's cut
on held-out examples, Taylor's backward pass (with judging its cut), judging the other candidates
one by one, the merge search's trials (only when a merge search follows), and the greedy removal.
A part is estimated from the seconds of one dense training step (the probe's, or a first timed
batch), a forward pass of a batch counting `FORWARD_SHARE` of a training step; a part that does
not fit in what is left is a `SkippedPart`, and the parts after it may still fit.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from ..errors import GradPrunerError

FORWARD_SHARE = 1 / 3  # a forward pass of a batch, as a share of a training step on it


@dataclass(frozen=True)
class SelectionBudget:
    """`fraction` of `heal_steps` healing steps, each as long as `kept_share` of a dense
    training step of `step_seconds`; `heal_steps` or `fraction` None: no limit.

    `step_seconds` None: not timed yet (the search times a first batch when it needs to).
    """

    fraction: float | None = None
    heal_steps: int | None = None
    kept_share: float = 1.0
    step_seconds: float | None = None

    @property
    def limited(self) -> bool:
        return self.fraction is not None and self.heal_steps is not None

    @property
    def seconds(self) -> float:
        """The whole budget; infinite without a limit."""
        if not self.limited:
            return math.inf
        if self.step_seconds is None:
            raise GradPrunerError("the selection budget needs the seconds of a training step")
        return self.fraction * self.heal_steps * self.step_seconds * self.kept_share

    def to_json(self) -> dict:
        if not self.limited:
            return {"limit": None}
        return {"fraction": self.fraction, "heal_steps": self.heal_steps,
                "step_seconds": None if self.step_seconds is None else round(self.step_seconds, 4),
                "seconds": round(self.seconds, 3)}


@dataclass(frozen=True)
class SearchSize:
    """What the search would run: batches of each pass, candidates, the cut's size and the merge
    trials (0 when no merge search follows)."""

    statistics_batches: int
    judge_batches: int
    greedy_batches: int
    candidates: tuple[str, ...]
    count: int
    greedy_width: int
    merge_trials: int
    taylor: str = "taylor"


@dataclass(frozen=True)
class SkippedPart:
    """A part of the search the budget left out: its estimate and what was left for it."""

    part: str
    estimate_seconds: float
    left_seconds: float

    def __str__(self) -> str:
        return f"{self.part} (about {self.estimate_seconds:.2g} s, {max(self.left_seconds, 0):.2g} s left)"


@dataclass
class SearchPlan:
    """Which parts of the search run: the candidates judged (in order; empty: none judged),
    whether Taylor's backward pass runs, how many merge trials and whether the greedy search."""

    judged: list[str]
    taylor: bool
    merge_trials: int
    greedy: bool
    budget: SelectionBudget
    estimate_seconds: float = 0.0
    skipped: list[SkippedPart] = field(default_factory=list)

    def to_json(self) -> dict:
        return {**self.budget.to_json(), "judged": self.judged, "taylor": self.taylor,
                "merge_trials": self.merge_trials, "greedy": self.greedy,
                "estimate_seconds": round(self.estimate_seconds, 3),
                "skipped": [asdict(s) for s in self.skipped]}


def plan_search(budget: SelectionBudget, size: SearchSize) -> SearchPlan:
    """The parts of the search that `budget` affords, in order of worth (see the module doc)."""
    if not budget.limited:
        return SearchPlan(list(size.candidates), size.taylor in size.candidates, size.merge_trials,
                          True, budget)
    step = budget.step_seconds
    forward = lambda batches: batches * step * FORWARD_SHARE  # noqa: E731
    judge = forward(size.judge_batches)  # one cut judged (at most a full forward pass)
    left = budget.seconds - forward(size.statistics_batches)  # the statistics pass always runs
    spent = budget.seconds - left
    skipped: list[SkippedPart] = []

    def affords(part: str, estimate: float) -> bool:
        nonlocal left, spent
        if estimate <= left:
            left, spent = left - estimate, spent + estimate
            return True
        skipped.append(SkippedPart(part, estimate, left))
        return False

    first, *others = size.candidates
    judged: list[str] = []
    taylor = merge_trials = 0
    greedy = False
    backward = size.statistics_batches * step * (1 - FORWARD_SHARE)  # Taylor's, beyond the forward
    if affords("judging the candidates", 2 * judge):  # the dense pass and the first candidate
        judged.append(first)
        taylor = size.taylor in others and affords("Taylor's backward pass and judging", backward + judge)
        for name in others:
            if name == size.taylor:
                if taylor:
                    judged.append(name)
            elif affords(f"judging {name}", judge):
                judged.append(name)
        merge_trials = sum(affords(f"merge trial {k + 1}", judge) for k in range(size.merge_trials))
        greedy_cost = forward(size.greedy_batches) * (1 + size.count * size.greedy_width) + judge
        greedy = affords("the greedy search", greedy_cost)
    else:
        if size.taylor in others:
            skipped.append(SkippedPart("Taylor's backward pass and judging", backward + judge, left))
        if size.merge_trials:
            skipped.append(SkippedPart("the merge search", size.merge_trials * judge, left))
    return SearchPlan([n for n in size.candidates if n in judged], bool(taylor), merge_trials,
                      greedy, budget, spent, skipped)


def check_fraction(fraction: float | None) -> None:
    """Refuse a budget share that is not a non-negative number (None: no limit)."""
    if fraction is not None and not (math.isfinite(fraction) and fraction >= 0):
        raise GradPrunerError(f"--selection-budget must be a non-negative number or 'none', got {fraction}")


def heal_budget(fraction: float | None, heal_steps: int | None, total_layers: int, removed: int,
                step_seconds: float | None = None) -> SelectionBudget:
    """The budget of a selection that `heal_steps` healing steps will follow: `fraction` of
    their time (None for either: no limit); `step_seconds`: a dense training step (the probe's)."""
    check_fraction(fraction)
    if heal_steps is not None and heal_steps < 1:
        raise GradPrunerError(f"--heal-steps must be at least 1, got {heal_steps}")
    return SelectionBudget(fraction, heal_steps, 1 - removed / total_layers, step_seconds)


def plan_merge_search(budget: SelectionBudget, judge_batches: int, trials: int) -> tuple[int, list[SkippedPart]]:
    """How many of `trials` merge trials fit when the merge search runs alone (after a criterion
    that judged nothing): the dense pass and "no merge" first, then each trial."""
    if not budget.limited:
        return trials, []
    judge = judge_batches * budget.step_seconds * FORWARD_SHARE
    left = budget.seconds - 2 * judge
    if left < 0:
        return 0, [SkippedPart("the merge search", (2 + trials) * judge, budget.seconds)]
    fits = min(trials, int(left // judge)) if judge > 0 else trials
    skipped = [SkippedPart(f"merge trial {k + 1}", judge, left - fits * judge) for k in range(fits, trials)]
    return fits, skipped
