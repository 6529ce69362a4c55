"""Changing a model by a plan: fold the donors into their receivers (the paper's sparsified merge,
LaCo's collapse, or the least-squares linear fold), then cut the removed layers. `apply` replays
any sidecar's plan exactly (the linear fold given the same calibration examples)."""

from __future__ import annotations

from ..errors import GradPrunerError
from ..plan import PrunePlan
from ..surgery import cut_layers, layer_prefix, num_layers
from .collapse import collapse_into
from .fold import Calibration, fold_blocks
from .merge import merge_layers


def apply(model, plan: PrunePlan, igia=None, calibration: Calibration | None = None
          ) -> tuple[object, dict[str, int]]:
    """Merge and cut `model` in place by `plan`; returns the model and the entries the merge
    changed per receiver weight (the paper's rule reads the probe's `igia`; the linear fold fits
    on the first `plan.calibration` examples of `calibration`)."""
    if num_layers(model) != plan.num_layers:
        raise GradPrunerError(f"the plan is for a model with {plan.num_layers} layers, this one has "
                              f"{num_layers(model)}: apply it to the model it was made for")
    entries: dict[str, int] = {}
    if plan.merge_rule == "gradpruner":
        if igia is None:
            raise GradPrunerError("this plan merges by the probe's IGIA: give the probe's output (--scores DIR)")
        groups = {s.receiver: list(s.donors) for s in plan.merges}
        entries = merge_layers(model, groups, igia.matrix, layer_prefix(model), plan.density,
                               plan.scale, mergeable=set(igia.module_names))
    elif plan.merge_rule == "laco":
        for step in plan.merges:
            collapse_into(model, step.receiver, list(step.donors))
    elif plan.merge_rule == "fold":
        if calibration is None:
            raise GradPrunerError("this plan folds blocks fitted on training examples: give the calibration examples")
        used = Calibration(calibration.tokenizer, calibration.examples[:plan.calibration],
                           calibration.batch_size, calibration.max_length)
        entries = fold_blocks(model, plan.merges, used, plan.ridge)
    cut_layers(model, list(plan.removed))
    return model, entries
