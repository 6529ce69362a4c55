"""Deciding what to cut: `select` runs a criterion (and, for `auto`, its search within the budget)
and the merge rule, and returns a `PrunePlan` with a `SelectionReport`. It reads the model and
changes nothing: every trial is undone before it returns.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace

from ..catalog import DEFAULT_DENSITY
from ..criteria import Criterion, ScoreContext, Selection, get_criterion
from ..errors import GradPrunerError
from ..evaluation.judge import Judge
from ..merging.fold import Calibration, FoldSettings, check_foldable, fold_refusal, fold_steps
from ..merging.replace import REPLACE_EXAMPLES
from ..merging.merge import plan_merge
from ..model.surgery import num_layers
from ..plan import MergeStep, PrunePlan, paper_merge_plan
from ..removal import removal_count, validate_removal
from .auto import Auto, AutoSettings, heldout_scoring
from .budget import FORWARD_SHARE, SelectionBudget, SkippedPart, plan_merge_search
from .merge_search import FoldTrial, search_merge


@dataclass
class SelectionReport:
    """How the plan was chosen: the criterion, its layer scores, what the criterion and the
    merge search found (candidates, trials, judges, the budget's plan) and the seconds."""

    criterion: str
    layer_scores: list[float] | None
    criterion_report: dict = field(default_factory=dict)
    merge_search: dict | None = None
    seconds: float = 0.0

    def to_json(self) -> dict:
        return {"criterion": self.criterion, self.criterion: self.criterion_report,
                "merge_search": self.merge_search, "seconds": round(self.seconds, 2)}


def make_criterion(name: str, settings: object | None = None) -> Criterion:
    """The criterion `name`: `auto`'s search, or one of the registry's (`criteria.CRITERIA`)."""
    if name == "auto":
        return Auto(settings)
    return get_criterion(name, settings)


def select(model, tokenizer=None, examples: list | None = None, *, heldout: list | None = None,
           igia=None, criterion: str = "auto", ratio: float | None = None,
           count: int | None = None, remove: list[int] | None = None,
           merge: int | str | None = "auto", density: float = DEFAULT_DENSITY,
           budget: SelectionBudget = SelectionBudget(), seed: int = 0,
           settings: dict[str, object] | None = None) -> tuple[PrunePlan, SelectionReport]:
    """The plan for `model`: `remove` as given, or `count` (or `ratio`) layers by `criterion`;
    then the merge: `merge` donors by the paper's rule at `density`, "all", None, "fold" (the
    linear fold, `settings["fold"]`), "replace" (the replacement layer), or "auto" (the held-out merge search over
    these). `heldout` are examples never trained on that judge cuts; `budget` limits `auto` and
    the merge search; `settings` maps a criterion's name (or "fold") to its settings."""
    start, settings = time.perf_counter(), settings or {}
    total = num_layers(model)
    ctx = ScoreContext(model=model, tokenizer=tokenizer, examples=list(examples or []), igia=igia,
                       seed=seed, heldout=list(heldout or []))
    chosen = make_criterion(criterion, settings.get(criterion))
    searched = merge == "auto"
    judge, trials = None, None  # auto's held-out judge and the merge trials its plan affords
    if remove is not None:
        selection = Selection(validate_removal(remove, total), chosen.layer_scores(ctx) if merge else None)
    else:
        found = chosen.search(ctx, removal_count(total, ratio, count), budget, searched)
        selection, judge, trials = found.selection, found.judge, found.merge_trials
    removed = selection.removed
    kept = [i for i in range(total) if i not in removed]
    merge_report = None
    if selection.merges:  # the criterion folds as it removes (LaCo)
        steps = tuple(MergeStep(r, tuple(d)) for r, d in selection.merges)
        plan = PrunePlan(total, tuple(removed), steps, criterion)
    elif merge == "fold":
        check_foldable(model)
        folding = settings.get("fold") or FoldSettings()
        plan = PrunePlan(total, tuple(removed), fold_steps(removed, total), "fold",
                         ridge=folding.ridge, calibration=min(folding.examples, len(ctx.examples)),
                         fit=folding.fit)
        if not ctx.examples:
            raise GradPrunerError("--merge fold needs task data to fit the fold: pass --task NAME or "
                                  "--data FILE, or use --merge none")
    elif merge == "replace":
        if not ctx.examples:
            raise GradPrunerError("--merge replace trains the replacement layers on task data: pass "
                                  "--task NAME or --data FILE, or use --merge none")
        plan = PrunePlan(total, tuple(removed), fold_steps(removed, total), "replace",
                         calibration=min(REPLACE_EXAMPLES, len(ctx.examples)))
    elif merge == "auto":
        auto_settings = settings.get("auto") or AutoSettings()
        if igia is None and not (auto_settings.merge_fold and ctx.examples and fold_steps(removed, total)
                                 and fold_refusal(model) is None):
            plan, merge_report = PrunePlan(total, tuple(removed)), {"skipped": "nothing to merge by"}
        else:
            plan, merge_report = _merge_search(ctx, selection, chosen, budget, judge, trials,
                                               density, auto_settings,
                                               settings.get("fold") or FoldSettings())
    else:
        merged = plan_merge(removed, kept, selection.scores or [0.0] * total, merge)
        if merged and igia is None:
            raise GradPrunerError("merging needs the probe's IGIA (--scores DIR), or use --merge none")
        plan = paper_merge_plan(total, removed, merged, density)
    report = SelectionReport(criterion, selection.scores, selection.report, merge_report,
                             time.perf_counter() - start)
    return plan, report


def _merge_search(ctx: ScoreContext, selection: Selection, chosen, budget: SelectionBudget,
                  judge: Judge | None, trials: int | None, density: float,
                  settings: AutoSettings, folding: FoldSettings) -> tuple[PrunePlan, dict]:
    """The merge search on `selection`'s cut, with auto's judge and planned trials when auto
    chose the cut, else with a judge and a budget plan of its own."""
    total = num_layers(ctx.model)
    removed = selection.removed
    kept = [i for i in range(total) if i not in removed]
    skipped: list[SkippedPart] = []
    if trials is None:  # not planned by auto: the merge search plans its own trials
        scoring = heldout_scoring(ctx, settings)
        if budget.limited and budget.step_seconds is None:  # timed by the judge's dense pass
            judge = Judge(ctx.model, scoring)
            budget = replace(budget, step_seconds=judge.first_pass_seconds / len(judge.batches) / FORWARD_SHARE)
        trials, skipped = plan_merge_search(budget, len(scoring.batches), settings.merge_trials)
        if trials and judge is None:
            judge = Judge(ctx.model, scoring)
    if not trials:  # auto's plan, or the merge search's own, affords no trial
        return PrunePlan(total, tuple(removed)), {"trials": [], "skipped": [asdict(p) for p in skipped]}
    donor_scores = selection.scores or chosen.layer_scores(ctx)
    fold = None
    if settings.merge_fold and ctx.examples and fold_steps(removed, total) and fold_refusal(ctx.model) is None:
        fold = FoldTrial(Calibration(ctx.tokenizer, ctx.examples[:folding.examples]), folding.ridge,
                         folding.fit)
    plan, report = search_merge(judge, ctx.igia, removed, kept, donor_scores, density,
                                settings.merge_donors, settings.merge_scales, trials, fold)
    report["skipped"] = [asdict(p) for p in skipped]
    report["chosen"] = {"rule": plan.merge_rule, "plan": {str(r): d for r, d in plan.merged.items()},
                        "scale": plan.scale}
    return plan, report
