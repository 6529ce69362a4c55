"""GradPruner's criterion (Huang, Cheng, Wang, ICLR 2026): a layer's IGIA score.

The paper's form sums ||G_B G_A||_F^2 over probe steps and the layer's linear modules; the
authors' script sums the unsquared norms. Both read the probe's IGIA.
"""

from __future__ import annotations

from ..errors import GradPrunerError
from ..model.surgery import base_model
from .base import Criterion, ScoreContext, register


def _igia(ctx: ScoreContext):
    if ctx.igia is None:
        raise GradPrunerError("the gradpruner criterion needs the probe's output: run `gradpruner "
                              "probe` and pass --scores PROBE_DIR, or use --criterion auto")
    return ctx.igia


@register
class GradPrunerScore(Criterion):
    """Sum over probe steps and modules of ||S_i||_F^2 (the paper's form)."""

    name = "gradpruner"
    paper = "GradPruner, ICLR 2026, arXiv 2601.19503"
    score = "IGIA: sum of squared LoRA-gradient products"
    needs_probe = True

    def layer_scores(self, ctx: ScoreContext) -> list[float]:
        return _igia(ctx).scores("squared")


@register
class GradPrunerUnsquared(GradPrunerScore):
    """Sum over probe steps and modules of ||S_i||_F (the authors' released script)."""

    name = "gradpruner_unsquared"
    score = "IGIA, unsquared norms"

    def layer_scores(self, ctx: ScoreContext) -> list[float]:
        return _igia(ctx).scores("unsquared")


@register
class GradPrunerRelative(GradPrunerScore):
    """Sum over probe steps and modules of ||S_i||_F / ||W||_F: the IGIA relative to each
    module's weight, so that a depth-dependent gradient scale does not decide alone."""

    name = "gradpruner_relative"
    score = "IGIA relative to the weights' norms"

    def layer_scores(self, ctx: ScoreContext) -> list[float]:
        igia = _igia(ctx)
        if ctx.model is None:
            raise GradPrunerError("gradpruner_relative needs the model's weights")
        params = dict(base_model(ctx.model).named_parameters())
        norms = igia.sq_norms.sqrt().sum(dim=0)
        out = [0.0] * igia.num_layers
        for name, layer, value in zip(igia.module_names, igia.module_layers, norms.tolist()):
            if name in params:  # fused MoE experts have no weight of that name: left out
                out[layer] += value / max(float(params[name].detach().float().norm()), 1e-12)
        return out
