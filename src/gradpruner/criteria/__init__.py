"""Layer-importance criteria behind one registry: a criterion maps a model and data to one
score per decoder layer, higher meaning more important; selection removes the lowest.

Each criterion is one small class registered under a name. GradPruner's own criteria read the
probe's IGIA; baselines compute their scores from the model and task data.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import GradPrunerError
from .budget import SelectionBudget


@dataclass
class ScoreContext:
    """What a criterion may use: the model, its tokenizer, task examples, and the probe's IGIA.

    `heldout` are task examples kept apart for judging cuts by their loss (`auto`); `notes` is
    where a criterion leaves what it found for the sidecar; `judge` is `auto`'s held-out loss,
    shared with the merge search; `budget` is how long `auto` and the merge search may take.
    """

    model: object = None
    tokenizer: object = None
    examples: list = field(default_factory=list)
    igia: object = None
    seed: int = 0
    heldout: list = field(default_factory=list)
    notes: dict = field(default_factory=dict)
    judge: object = None
    budget: SelectionBudget = field(default_factory=SelectionBudget)


class Criterion:
    """Base class: `name`, the paper it comes from, and `layer_scores(ctx)`."""

    name: str = ""
    paper: str = ""
    needs_probe: bool = False

    def layer_scores(self, ctx: ScoreContext) -> list[float]:
        raise NotImplementedError


CRITERIA: dict[str, type[Criterion]] = {}


def register(cls: type[Criterion]) -> type[Criterion]:
    """Class decorator adding a criterion to the registry under its `name`."""
    CRITERIA[cls.name] = cls
    return cls


def get_criterion(name: str) -> Criterion:
    """The criterion registered as `name`; an unknown name is a clear error."""
    if name not in CRITERIA:
        raise GradPrunerError(f"unknown criterion {name!r}; known: {', '.join(sorted(CRITERIA))}")
    return CRITERIA[name]()


from . import auto, baselines, gradpruner, laco  # noqa: E402,F401  (registers the built-in criteria)
