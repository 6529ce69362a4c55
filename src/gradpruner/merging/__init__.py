"""Changing a model by a plan: fold the donors into their receivers by the plan's merge rule
(`rules.py`: the paper's sparsified merge, LaCo's collapse, or the least-squares linear fold),
then cut the removed layers. `apply` replays any sidecar's plan exactly (the linear fold given the
same calibration examples)."""

from __future__ import annotations

from ..errors import GradPrunerError
from ..model.surgery import cut_layers, num_layers
from ..plan import PrunePlan
from .fold import Calibration
from .rules import get_rule


def apply(model, plan: PrunePlan, igia=None, calibration: Calibration | None = None
          ) -> tuple[object, dict[str, int]]:
    """Merge and cut `model` in place by `plan`; returns the model and the entries the merge
    changed per receiver weight (the paper's rule reads the probe's `igia`; the linear fold fits
    on the first `plan.calibration` examples of `calibration`)."""
    if num_layers(model) != plan.num_layers:
        raise GradPrunerError(f"the plan is for a model with {plan.num_layers} layers, this one has "
                              f"{num_layers(model)}: apply it to the model it was made for")
    entries: dict[str, int] = {}
    if plan.merges:
        rule = get_rule(plan.merge_rule)
        rule.check(plan)
        entries = rule.apply(model, plan, igia, calibration)
    cut_layers(model, list(plan.removed))
    return model, entries
