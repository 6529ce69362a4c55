"""Layer-importance criteria behind one registry: a criterion maps a model and data to one
score per decoder layer, higher meaning more important, and chooses the layers to remove
(`Criterion.select`: by default the lowest-scored).

Each criterion is one small class registered under a name, its settings a dataclass beside it.
GradPruner's own criteria read the probe's IGIA; baselines compute their scores from the model and
task data. Criteria only read: the model they are given is as it was when they return.
"""

from . import baselines, gradpruner, laco  # noqa: E402,F401  (registers the built-in criteria)
from .base import CRITERIA, Criterion, Found, ScoreContext, Selection, get_criterion, register

__all__ = ["CRITERIA", "Criterion", "Found", "ScoreContext", "Selection", "get_criterion", "register"]
