"""Pruning in the paper's order: score layers, select, merge donors into receivers, cut."""

from __future__ import annotations

from .criteria import ScoreContext, get_criterion
from .criteria.auto import search_merge
from .errors import GradPrunerError
from .merge import merge_layers, plan_merge
from .selection import removal_count, select_layers
from .surgery import base_model, count_parameters, cut_layers, layer_prefix, num_layers


def check_igia_matches(igia, model_or_config) -> None:
    """Refuse a probe output that was made on another model."""
    config = getattr(base_model(model_or_config), "config", model_or_config)
    info = igia.model_info or {}
    expected = {"num_hidden_layers": config.num_hidden_layers, "hidden_size": config.hidden_size,
                "model_type": config.model_type}
    if igia.num_layers != config.num_hidden_layers:
        raise GradPrunerError(
            f"the scores are for a model with {igia.num_layers} layers, this one has "
            f"{config.num_hidden_layers}: probe this model first"
        )
    for key, value in expected.items():
        if key in info and info[key] != value:
            raise GradPrunerError(
                f"the scores come from another model ({key} {info[key]!r}, this model {value!r})"
            )


def prune_model(
    model,
    igia=None,
    *,
    criterion: str = "gradpruner",
    ratio: float | None = None,
    count: int | None = None,
    remove: list[int] | None = None,
    merge: int | str | None = 3,
    density: float = 0.2,
    merge_scale: float = 1.0,
    context: ScoreContext | None = None,
) -> dict:
    """Prune `model` in place and return the record that goes into `gradpruner.json`.

    Scores come from `criterion` (GradPruner's IGIA score by default); the lowest-scored layers
    (or the explicit `remove` list) go; the `merge` highest-scoring removed layers are sparsified
    to `density` by their IGIA and folded into the nearest preceding kept layer.
    """
    total = num_layers(model)
    if igia is not None:
        check_igia_matches(igia, model)
    ctx = context or ScoreContext(model=model, igia=igia)
    ctx.igia = ctx.igia or igia
    ctx.model = model
    chosen = get_criterion(criterion)
    params_before = count_parameters(model)
    merge_rule, scale, entries = "gradpruner", merge_scale, {}
    if remove is None and hasattr(chosen, "collapse"):  # LaCo: the criterion merges as it removes
        plan = chosen.collapse(ctx, removal_count(total, ratio, count))
        removed = sorted(d for donors in plan.values() for d in donors)
        scores, merge_rule = chosen.layer_scores(ctx), criterion
    else:
        removed, scores = _removal(chosen, ctx, total, ratio, count, remove, merge)
        kept = [i for i in range(total) if i not in removed]
        plan, scale = _merge_plan(ctx, removed, kept, scores or [0.0] * total, merge, density,
                                  merge_scale)
        if plan:
            entries = merge_layers(model, plan, ctx.igia.matrix, layer_prefix(model), density,
                                   scale, mergeable=set(ctx.igia.module_names))
    kept = [i for i in range(total) if i not in removed]
    cut_layers(model, removed)
    params_after = count_parameters(model)
    return {
        "method": criterion if not plan else f"{criterion}+merge",
        "criterion": criterion,
        "layer_scores": scores,
        "removed_layers": removed,
        "kept_layers": kept,
        "merged": {str(r): d for r, d in plan.items()},
        "merge_rule": merge_rule if plan else None,
        "merged_entries": entries,
        "merge_donors": merge,
        "density": density if plan and merge_rule == "gradpruner" else None,
        "merge_scale": scale if plan and merge_rule == "gradpruner" else None,
        "num_layers_before": total,
        "num_layers_after": len(kept),
        "params_before": params_before,
        "params_after": params_after,
        "param_fraction_removed": 1 - params_after / params_before,
        **ctx.notes,
    }


def _removal(chosen, ctx: ScoreContext, total: int, ratio, count, remove,
             merge) -> tuple[list[int], list[float] | None]:
    """The layers to remove (an explicit list, a criterion's own choice, or the lowest-scored)
    and the criterion's layer scores (None for an explicit list without a merge)."""
    if remove is not None:
        scores = chosen.layer_scores(ctx) if merge else None
        return select_layers([0.0] * total, remove=remove), scores
    if hasattr(chosen, "removal"):  # criteria that choose the set themselves
        return chosen.removal(ctx, removal_count(total, ratio, count)), chosen.layer_scores(ctx)
    scores = chosen.layer_scores(ctx)
    return select_layers(scores, ratio=ratio, count=count), scores


def _merge_plan(ctx: ScoreContext, removed: list[int], kept: list[int], scores: list[float],
                merge: int | str | None, density: float,
                scale: float) -> tuple[dict[int, list[int]], float]:
    """(receiver -> donors, scale): the paper's rule for a fixed count, or the held-out search
    over counts and scales ("auto")."""
    if merge == "auto":
        if ctx.igia is None:
            ctx.notes["merge_search"] = {"skipped": "no probe output to merge by"}
            return {}, scale
        plan, scale, _ = search_merge(ctx, removed, kept, scores, density)
        ctx.notes["merge_search"]["chosen"] = {"plan": {str(r): d for r, d in plan.items()},
                                               "scale": scale}
        return plan, scale
    plan = plan_merge(removed, kept, scores, merge)
    if plan and ctx.igia is None:
        raise GradPrunerError("merging needs the probe's IGIA (--scores DIR), or use --merge none")
    return plan, scale
