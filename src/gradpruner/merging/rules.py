"""The merge rules behind one registry: each folds the donors of a plan's merge steps into their
receivers, declares the plan settings it reads (`settings`), and checks a plan's steps.

    gradpruner  the paper's sparsified merge (`merge.py`): density, scale
    laco        LaCo's collapse (`collapse.py`): no settings
    fold        the linear fold (`fold.py`): ridge, calibration examples, fit (least squares or
                cosine distance)
    replace     the replacement layer (`replace.py`): calibration examples

`catalog.MERGE_RULES` lists their names without importing them; the registry checks itself
against it.
"""

from __future__ import annotations

from typing import ClassVar

from ..catalog import MERGE_RULES
from ..errors import GradPrunerError
from ..model.surgery import layer_prefix
from ..plan import PrunePlan
from .collapse import collapse_into
from .fold import Calibration, fold_blocks
from .replace import replace_blocks
from .merge import merge_layers

SETTINGS = ("density", "scale", "ridge", "calibration", "fit")  # every rule's settings, as a plan holds them


class MergeRule:
    """Base class: the rule's `name`, the plan `settings` it reads (the others stay unset),
    `check(plan)` and `apply(model, plan, igia, calibration)`, which returns the entries changed
    per receiver weight."""

    name: ClassVar[str] = ""
    settings: ClassVar[tuple[str, ...]] = ()

    def check(self, plan: PrunePlan) -> None:
        """Refuse a plan whose settings are not this rule's."""
        stray = [s for s in SETTINGS if s not in self.settings and getattr(plan, s) is not None]
        if stray:
            raise GradPrunerError(f"a {self.name} merge takes no {', '.join(stray)}")

    def apply(self, model, plan: PrunePlan, igia, calibration: Calibration | None) -> dict[str, int]:
        raise NotImplementedError


RULES: dict[str, MergeRule] = {}


def register(cls: type[MergeRule]) -> type[MergeRule]:
    """Class decorator adding a merge rule to the registry under its `name`."""
    if cls.name not in MERGE_RULES:
        raise TypeError(f"merge rule {cls.name!r} is not in catalog.MERGE_RULES")
    RULES[cls.name] = cls()
    return cls


def get_rule(name: str) -> MergeRule:
    if name not in RULES:
        raise GradPrunerError(f"unknown merge rule {name!r}; known: {', '.join(RULES)}")
    return RULES[name]


@register
class PaperMerge(MergeRule):
    """Each donor matrix sparsified to `density` by its IGIA, same-sign entries added times
    `scale` (all from the original weights, so the order of the steps does not matter)."""

    name = "gradpruner"
    settings = ("density", "scale")

    def apply(self, model, plan, igia, calibration):
        if igia is None:
            raise GradPrunerError("this plan merges by the probe's IGIA: give the probe's output (--scores DIR)")
        groups = {s.receiver: list(s.donors) for s in plan.merges}
        return merge_layers(model, groups, igia.matrix, layer_prefix(model), plan.density,
                            plan.scale, mergeable=set(igia.module_names))


@register
class Collapse(MergeRule):
    """LaCo: every parameter of the donors folded in as differences, step after step in order."""

    name = "laco"

    def apply(self, model, plan, igia, calibration):
        for step in plan.merges:
            collapse_into(model, step.receiver, list(step.donors))
        return {}


@register
class LinearFold(MergeRule):
    """Each step's block (consecutive donors right after the receiver) replaced by the linear map
    fitted (`fit`: least squares with `ridge`, or cosine distance from there; None, as plans
    before the cosine fit: least squares) on the first `calibration` training examples, folded
    into the receiver's MLP down projection, step after step in order."""

    name = "fold"
    settings = ("ridge", "calibration", "fit")

    def check(self, plan: PrunePlan) -> None:
        super().check(plan)
        _check_blocks(self.name, plan)

    def apply(self, model, plan, igia, calibration):
        used = _calibration(plan, calibration)
        return fold_blocks(model, plan.merges, used, plan.ridge, plan.fit or "lstsq")


@register
class Replacement(MergeRule):
    """Each step's receiver trained alone to reproduce its block (itself and the consecutive
    donors right after it) on the first `calibration` training examples, step after step."""

    name = "replace"
    settings = ("calibration",)

    def check(self, plan: PrunePlan) -> None:
        super().check(plan)
        _check_blocks(self.name, plan)

    def apply(self, model, plan, igia, calibration):
        return replace_blocks(model, plan.merges, _calibration(plan, calibration))


def _check_blocks(rule: str, plan: PrunePlan) -> None:
    """Refuse a step whose donors are not the layers right after its receiver."""
    for step in plan.merges:
        if list(step.donors) != list(range(step.receiver + 1, step.receiver + 1 + len(step.donors))):
            raise GradPrunerError(f"a {rule} step's donors must be the layers right after its "
                                  f"receiver, got {step.receiver} <- {list(step.donors)}")


def _calibration(plan: PrunePlan, calibration: Calibration | None) -> Calibration:
    """The first `plan.calibration` of the calibration examples, which the rule fits on."""
    if calibration is None:
        raise GradPrunerError(f"this plan's {plan.merge_rule} is fitted on training examples: "
                              "give the calibration examples")
    return Calibration(calibration.tokenizer, calibration.examples[:plan.calibration],
                       calibration.batch_size, calibration.max_length)


if tuple(RULES) != MERGE_RULES:
    raise TypeError("merging.RULES is not catalog.MERGE_RULES")
