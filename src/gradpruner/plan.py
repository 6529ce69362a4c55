"""What was decided and what was done: `PrunePlan` (the layers to remove and what of them is folded
into the kept ones) and `PruneRecord` (the plan with the scores, the selection's report and the
sizes), which is the `gradpruner.json` sidecar. Both are versioned and round-trip through JSON.

Layer indices always refer to the original model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .catalog import MERGE_RULES
from .errors import GradPrunerError

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class MergeStep:
    """Fold `donors` into `receiver` (original indices)."""

    receiver: int
    donors: tuple[int, ...]


@dataclass(frozen=True)
class PrunePlan:
    """Remove `removed` of `num_layers` layers after folding `merges` by `merge_rule`, with the
    settings that rule reads (`merging.rules`: `density` and `scale` for the paper's merge,
    `ridge`, `calibration` and `fit` for the linear fold, none for LaCo's collapse); the rule
    checks the plan when it applies it."""

    num_layers: int
    removed: tuple[int, ...]
    merges: tuple[MergeStep, ...] = ()
    merge_rule: str | None = None
    density: float | None = None
    scale: float | None = None
    ridge: float | None = None
    calibration: int | None = None
    fit: str | None = None

    def __post_init__(self):
        if self.merges and self.merge_rule not in MERGE_RULES:
            raise GradPrunerError(f"unknown merge rule {self.merge_rule!r}; known: {', '.join(MERGE_RULES)}")
        donors = [d for step in self.merges for d in step.donors]
        if any(d not in self.removed for d in donors):
            raise GradPrunerError(f"merge donors {donors} must all be removed layers {list(self.removed)}")

    @property
    def kept(self) -> list[int]:
        return [i for i in range(self.num_layers) if i not in self.removed]

    @property
    def merged(self) -> dict[int, list[int]]:
        """Receiver -> every layer folded into it (a donor's own donors included)."""
        out: dict[int, list[int]] = {}
        for step in self.merges:
            out.setdefault(step.receiver, []).extend(step.donors)
            for donor in step.donors:
                out[step.receiver] += out.pop(donor, [])
        return {r: sorted(d) for r, d in sorted(out.items())}

    @property
    def key(self) -> tuple:
        """Plans with equal keys give the same weights."""
        return (self.removed, self.merges, self.merge_rule, self.density, self.scale, self.ridge,
                self.calibration, self.fit)

    def to_json(self) -> dict:
        return {"num_layers": self.num_layers, "removed": list(self.removed),
                "merges": [{"receiver": s.receiver, "donors": list(s.donors)} for s in self.merges],
                "merge_rule": self.merge_rule, "density": self.density, "scale": self.scale,
                "ridge": self.ridge, "calibration": self.calibration,
                **({"fit": self.fit} if self.fit else {})}

    @classmethod
    def from_json(cls, data: dict) -> "PrunePlan":
        merges = tuple(MergeStep(int(s["receiver"]), tuple(int(d) for d in s["donors"]))
                       for s in data.get("merges", []))
        return cls(int(data["num_layers"]), tuple(int(i) for i in data["removed"]), merges,
                   data.get("merge_rule"), data.get("density"), data.get("scale"), data.get("ridge"),
                   data.get("calibration"), data.get("fit"))


def paper_merge_plan(num_layers: int, removed, merged: dict[int, list[int]], density: float,
                     scale: float = 1.0) -> PrunePlan:
    """A plan that folds `merged` (receiver -> donors) by the paper's rule; no merge when empty."""
    steps = tuple(MergeStep(r, tuple(sorted(d))) for r, d in sorted(merged.items()) if d)
    if not steps:
        return PrunePlan(num_layers, tuple(sorted(removed)))
    return PrunePlan(num_layers, tuple(sorted(removed)), steps, "gradpruner", density, scale)


@dataclass
class PruneRecord:
    """The sidecar of a pruned model: the plan, how it was chosen, and what it did.

    `selection` is the selection's report (`search.SelectionReport.to_json()`); `merged_entries`
    counts the entries the merge changed per receiver weight; `costs` is the cut's cost model;
    `rounds`, with iterative pruning, what each round removed (original indices), merged and
    healed (the plan then replays the cut, not the healing between rounds).
    """

    plan: PrunePlan
    criterion: str
    layer_scores: list[float] | None
    params_before: int
    params_after: int
    merged_entries: dict[str, int] = field(default_factory=dict)
    selection: dict = field(default_factory=dict)
    costs: dict = field(default_factory=dict)
    source_model: str | None = None
    scores_dir: str | None = None
    config: dict = field(default_factory=dict)
    versions: dict = field(default_factory=dict)
    finetune: dict | None = None
    rounds: list[dict] = field(default_factory=list)

    @property
    def removed_layers(self) -> list[int]:
        return list(self.plan.removed)

    @property
    def kept_layers(self) -> list[int]:
        return self.plan.kept

    @property
    def merged(self) -> dict[int, list[int]]:
        return self.plan.merged

    def to_json(self) -> dict[str, Any]:
        """The sidecar: the record, and beside it the plan's derived views for readers."""
        plan = self.plan
        return {
            "schema_version": SCHEMA_VERSION,
            "plan": plan.to_json(),
            "method": f"{self.criterion}+merge" if plan.merges else self.criterion,
            "criterion": self.criterion,
            "removed_layers": list(plan.removed),
            "kept_layers": plan.kept,
            "merged": {str(r): d for r, d in plan.merged.items()},
            "layer_scores": self.layer_scores,
            "merged_entries": self.merged_entries,
            "num_layers_before": plan.num_layers,
            "num_layers_after": len(plan.kept),
            "params_before": self.params_before,
            "params_after": self.params_after,
            "param_fraction_removed": 1 - self.params_after / self.params_before,
            "selection": self.selection,
            "costs": self.costs,
            "source_model": self.source_model,
            "scores_dir": self.scores_dir,
            "config": self.config,
            "versions": self.versions,
            "finetune": self.finetune,
            "rounds": self.rounds,
        }

    @classmethod
    def from_json(cls, data: dict) -> "PruneRecord":
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise GradPrunerError(f"sidecar schema version {version!r} is not {SCHEMA_VERSION}: "
                                  "prune the model again with this version")
        return cls(PrunePlan.from_json(data["plan"]), data["criterion"], data.get("layer_scores"),
                   data["params_before"], data["params_after"], data.get("merged_entries", {}),
                   data.get("selection", {}), data.get("costs", {}), data.get("source_model"),
                   data.get("scores_dir"), data.get("config", {}), data.get("versions", {}),
                   data.get("finetune"), data.get("rounds", []))

