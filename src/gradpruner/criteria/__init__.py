"""Layer-importance criteria behind one registry: a criterion maps a model and data to one
score per decoder layer, higher meaning more important, and chooses the layers to remove
(`Criterion.select`: by default the lowest-scored).

Each criterion is one small class registered under a name, its settings a dataclass beside it.
GradPruner's own criteria read the probe's IGIA; baselines compute their scores from the model and
task data. Criteria only read: the model they are given is as it was when they return.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import GradPrunerError
from ..selection import lowest_scored


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


class Criterion:
    """Base class: `name`, the paper it comes from, what its layer score measures (`score`) and
    how the cut follows from it (`rule`, for plots), `layer_scores(ctx)`, and `select(ctx, count)`."""

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


CRITERIA: dict[str, type[Criterion]] = {}


def register(cls: type[Criterion]) -> type[Criterion]:
    """Class decorator adding a criterion to the registry under its `name`."""
    CRITERIA[cls.name] = cls
    return cls


def get_criterion(name: str, settings: object | None = None) -> Criterion:
    """The criterion registered as `name` (with its settings dataclass, or its defaults); an
    unknown name is a clear error."""
    if name not in CRITERIA:
        raise GradPrunerError(f"unknown criterion {name!r}; known: {', '.join(sorted(CRITERIA))}")
    cls = CRITERIA[name]
    return cls(settings) if settings is not None else cls()


from . import baselines, gradpruner, laco  # noqa: E402,F401  (registers the built-in criteria)
from ..search import auto  # noqa: E402,F401  (registers `auto`)
