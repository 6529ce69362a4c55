"""Pruning in the paper's order: score layers, select, merge donors into receivers, cut."""

from __future__ import annotations

from .criteria import ScoreContext, get_criterion
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
    if ctx.igia is None:
        ctx.igia = igia
    chosen = get_criterion(criterion)
    scores = chosen.layer_scores(ctx) if remove is None or merge else None
    if remove is None and hasattr(chosen, "removal"):  # criteria that pick a block as a whole
        removed = chosen.removal(ctx, removal_count(total, ratio, count))
    else:
        removed = select_layers(scores or [0.0] * total, ratio=ratio, count=count, remove=remove)
    kept = [i for i in range(total) if i not in removed]
    plan = plan_merge(removed, kept, scores or [0.0] * total, merge)
    if plan and igia is None:
        raise GradPrunerError("merging needs the probe's IGIA (--scores DIR), or use --merge none")
    params_before = count_parameters(model)
    entries = {}
    if plan:
        entries = merge_layers(model, plan, igia.matrix, layer_prefix(model), density, merge_scale,
                               mergeable=set(igia.module_names))
    cut_layers(model, removed)
    params_after = count_parameters(model)
    return {
        "method": criterion if not plan else f"{criterion}+merge",
        "criterion": criterion,
        "layer_scores": scores,
        "removed_layers": removed,
        "kept_layers": kept,
        "merged": {str(r): d for r, d in plan.items()},
        "merged_entries": entries,
        "merge_donors": merge,
        "density": density if plan else None,
        "merge_scale": merge_scale if plan else None,
        "num_layers_before": total,
        "num_layers_after": len(kept),
        "params_before": params_before,
        "params_after": params_after,
        "param_fraction_removed": 1 - params_after / params_before,
    }
