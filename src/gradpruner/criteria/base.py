"""The criteria's shared types: what a criterion may read (`ScoreContext`), what it chooses
(`Selection`), the `Criterion` base class and the registry."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..catalog import CRITERIA as CATALOG
from ..errors import GradPrunerError
from ..removal import lowest_scored


@dataclass(frozen=True)
class ScoreContext:
    """What a criterion may use: the model, its tokenizer, task examples, the probe's IGIA, a seed.

    `examples` are training examples (criteria compute their statistics on the first ones);
    `heldout` are examples kept apart from training, on which cuts are judged (`auto`).
    """

    model: object = None
    tokenizer: object = None
    examples: list = field(default_factory=list)
    igia: object = None
    seed: int = 0
    heldout: list = field(default_factory=list)


@dataclass
class Selection:
    """A criterion's choice: the layers to remove, the layer scores behind it (None when the
    criterion ranks no single layers), and for criteria that fold as they remove (LaCo) the
    merge steps, in order. `report` is what the criterion found on the way, for the sidecar."""

    removed: list[int]
    scores: list[float] | None
    merges: list[tuple[int, list[int]]] | None = None
    report: dict = field(default_factory=dict)


@dataclass
class Found:
    """A cut as `Criterion.search` found it: the selection, and where held-out examples judged
    the cuts (`auto`), the judge and the merge trials the budget leaves for the merge search."""

    selection: Selection
    judge: object = None
    merge_trials: int | None = None


class Criterion:
    """Base class: `name`, the paper it comes from, what its layer score measures (`score`) and
    how the cut follows from it (`rule`, for plots), `layer_scores(ctx)`, `select(ctx, count)`,
    and `search(ctx, count, budget, merge_search)`, which a searching criterion overrides."""

    name: str = ""
    paper: str = ""
    score: str = "importance score"
    rule: str = "lower = removed first"
    needs_probe: bool = False
    needs_data: bool = False  # scores layers or judges cuts on task examples

    def layer_scores(self, ctx: ScoreContext) -> list[float]:
        raise NotImplementedError

    def select(self, ctx: ScoreContext, count: int) -> Selection:
        """The `count` lowest-scored layers."""
        scores = self.layer_scores(ctx)
        return Selection(lowest_scored(scores, count), scores)

    def search(self, ctx: ScoreContext, count: int, budget=None, merge_search: bool = False) -> Found:
        """`select`'s cut; a criterion that judges candidate cuts does so within the selection
        `budget` (`search.budget.SelectionBudget`), knowing whether a merge search follows."""
        return Found(self.select(ctx, count))


CRITERIA: dict[str, type[Criterion]] = {}


def register(cls: type[Criterion]) -> type[Criterion]:
    """Class decorator adding a criterion to the registry under its `name`, which the catalog
    (`catalog.CRITERIA`) lists with what the criterion needs."""
    info = CATALOG.get(cls.name)
    if info is None or (info.needs_probe, info.needs_data) != (cls.needs_probe, cls.needs_data):
        raise TypeError(f"criterion {cls.name!r} is not in catalog.CRITERIA as it is defined")
    CRITERIA[cls.name] = cls
    return cls


def get_criterion(name: str, settings: object | None = None) -> Criterion:
    """The criterion registered as `name` (with its settings dataclass, or its defaults); an
    unknown name is a clear error."""
    if name not in CRITERIA:
        raise GradPrunerError(f"unknown criterion {name!r}; known: {', '.join(sorted(CRITERIA))}")
    cls = CRITERIA[name]
    return cls(settings) if settings is not None else cls()
