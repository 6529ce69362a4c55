"""Pruning in the paper's order, as one call: select the plan, then apply it (merge and cut)."""

from __future__ import annotations

from .apply import apply
from .apply.fold import Calibration
from .errors import GradPrunerError
from .plan import PruneRecord
from .search.budget import SelectionBudget
from .search.select import DEFAULT_DENSITY, select
from .surgery import base_model, count_parameters


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
                f"the scores come from another model ({key} {info[key]!r}, this model {value!r}): "
                "pass the probed model with --model, or probe this model first"
            )


def prune_model(model, igia=None, tokenizer=None, examples: list | None = None, *,
                heldout: list | None = None, criterion: str = "auto", ratio: float | None = None,
                count: int | None = None, remove: list[int] | None = None,
                merge: int | str | None = "auto", density: float = DEFAULT_DENSITY,
                budget: SelectionBudget = SelectionBudget(), seed: int = 0,
                settings: dict[str, object] | None = None) -> PruneRecord:
    """Select a plan for `model` (see `search.select.select`) and apply it in place; the record
    is what goes into `gradpruner.json`."""
    if igia is not None:
        check_igia_matches(igia, model)
    params_before = count_parameters(model)
    plan, report = select(model, tokenizer, examples, heldout=heldout, igia=igia, criterion=criterion,
                          ratio=ratio, count=count, remove=remove, merge=merge, density=density,
                          budget=budget, seed=seed, settings=settings)
    _, entries = apply(model, plan, igia, Calibration(tokenizer, list(examples or [])))
    return PruneRecord(plan, criterion, report.layer_scores, params_before, count_parameters(model),
                       entries, report.to_json())
