"""gradpruner: prune decoder layers of an LLM while fine-tuning it (GradPruner, ICLR 2026).

The library, step by step (each returns a typed result):

    probed = probe(model, tokenizer, train, TrainConfig(steps=100), steps=40)   # ProbeResult
    plan, report = select(model, tokenizer, train, heldout=held, igia=probed.igia, ratio=0.25)
    model, merged_entries = apply(model, plan, probed.igia, Calibration(tokenizer, train))
    tuned, stats = finetune(model, tokenizer, train, TrainConfig(steps=500),
                            distill=Distillation(teacher, weight=0.5))   # optional teacher
    metrics = evaluate(tuned, tokenizer, get_task("arc_easy"), limit=300)
"""

import importlib

from .provenance import __version__

# each public name -> the module that defines it, imported on first use (PEP 562), so that
# `import gradpruner` (and the CLI's parsing and checks) imports no torch
_SOURCES = {
    "apply": ".merging", "Calibration": ".merging.fold", "CompareConfig": ".config",
    "RunConfig": ".config", "GradPrunerError": ".errors", "HealConfig": ".training.healing",
    "Distillation": ".training.distill", "IGIA": ".training.igia", "IGIACallback": ".training.igia",
    "PrunePlan": ".plan", "PruneRecord": ".plan", "prune_model": ".workflows.recipe",
    "ProbeResult": ".workflows.recipe", "evaluate": ".workflows.recipe", "heal": ".workflows.recipe",
    "probe": ".workflows.recipe", "split_heldout": ".workflows.recipe",
    "teacher_model": ".workflows.recipe", "SelectionBudget": ".search.budget",
    "SelectionReport": ".search.select", "select": ".search.select", "get_task": ".tasks",
    "TrainConfig": ".training.train_config", "finetune": ".training.trainer",
    "load_model": ".model.loading",
}

__all__ = ["IGIA", "IGIACallback", "Calibration", "Distillation", "GradPrunerError", "HealConfig",
           "PrunePlan", "PruneRecord", "ProbeResult", "RunConfig", "CompareConfig",
           "SelectionBudget", "SelectionReport", "TrainConfig", "apply", "evaluate", "finetune",
           "get_task", "heal", "load_model", "probe", "prune_model", "select", "split_heldout",
           "teacher_model", "__version__"]


def __getattr__(name: str):
    """The public name `name`, imported from its module on first use."""
    if name not in _SOURCES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_SOURCES[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_SOURCES))
