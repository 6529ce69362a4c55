"""GradPruner's criterion (Huang, Cheng, Wang, ICLR 2026): a layer's IGIA score.

The paper's form sums ||G_B G_A||_F^2 over probe steps and the layer's linear modules; the
authors' script sums the unsquared norms. Both read the probe's IGIA.
"""

from __future__ import annotations

from ..errors import GradPrunerError
from . import Criterion, ScoreContext, register


def _igia(ctx: ScoreContext):
    if ctx.igia is None:
        raise GradPrunerError("the gradpruner criterion needs the probe's output (--scores DIR)")
    return ctx.igia


@register
class GradPrunerScore(Criterion):
    """Sum over probe steps and modules of ||S_i||_F^2 (the paper's form)."""

    name = "gradpruner"
    paper = "GradPruner, ICLR 2026, arXiv 2601.19503"
    needs_probe = True

    def layer_scores(self, ctx: ScoreContext) -> list[float]:
        return _igia(ctx).scores("squared")


@register
class GradPrunerUnsquared(GradPrunerScore):
    """Sum over probe steps and modules of ||S_i||_F (the authors' released script)."""

    name = "gradpruner_unsquared"

    def layer_scores(self, ctx: ScoreContext) -> list[float]:
        return _igia(ctx).scores("unsquared")
