"""gradpruner: prune decoder layers of an LLM while fine-tuning it (GradPruner, ICLR 2026).

The library, step by step (each returns a typed result):

    probed = probe(model, tokenizer, train, TrainConfig(steps=100), steps=40)   # ProbeResult
    plan, report = select(model, tokenizer, train, heldout=held, igia=probed.igia, ratio=0.25)
    model, merged_entries = apply(model, plan, probed.igia, Calibration(tokenizer, train))
    tuned, stats = finetune(model, tokenizer, train, TrainConfig(steps=500),
                            distill=Distillation(teacher, weight=0.5))   # optional teacher
    metrics = evaluate(tuned, tokenizer, get_task("arc_easy"), limit=300)
"""

__version__ = "0.1.0"

import importlib
import sys
import types

# each public name -> the module that defines it, imported on first use (PEP 562), so that
# `import gradpruner` (and the CLI's parsing and checks) imports no torch
_SOURCES = {
    "apply": ".apply", "Calibration": ".apply.fold", "CompareConfig": ".config",
    "RunConfig": ".config", "GradPrunerError": ".errors", "HealConfig": ".heal",
    "Distillation": ".heal.distill", "IGIA": ".igia", "IGIACallback": ".igia",
    "PrunePlan": ".plan", "PruneRecord": ".plan", "prune_model": ".prune",
    "ProbeResult": ".recipe", "evaluate": ".recipe", "heal": ".recipe", "probe": ".recipe",
    "split_heldout": ".recipe", "teacher_model": ".recipe", "SelectionBudget": ".search.budget",
    "SelectionReport": ".search.select", "select": ".search.select", "get_task": ".tasks",
    "TrainConfig": ".train", "finetune": ".train",
}

__all__ = ["IGIA", "IGIACallback", "Calibration", "Distillation", "GradPrunerError", "HealConfig",
           "PrunePlan", "PruneRecord", "ProbeResult", "RunConfig", "CompareConfig",
           "SelectionBudget", "SelectionReport", "TrainConfig", "apply", "evaluate", "finetune",
           "get_task", "heal", "probe", "prune_model", "select", "split_heldout", "teacher_model",
           "__version__"]


def __getattr__(name: str):
    """The public name `name`, imported from its module on first use."""
    if name not in _SOURCES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_SOURCES[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_SOURCES))


class _Package(types.ModuleType):
    """This package, whose public functions `apply`, `evaluate` and `heal` keep their names when
    the import system binds the same-named submodules on it (as the eager imports did)."""

    def __setattr__(self, name: str, value) -> None:
        if name in _SOURCES and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
