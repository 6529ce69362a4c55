"""A `run`'s work folder and its journal, so that `run --resume` continues a killed run.

A run writes into `OUT.partial/` beside its output folder: each stage's files (written
atomically), the fine-tunes' checkpoints, and `journal.json`, the stages finished so far with
their results and the settings they were made with. A finished run removes the journal and the
checkpoints and renames the folder to `OUT`. Nothing here imports torch (the CLI reads the
journal to say what an interrupted run kept).
"""

from __future__ import annotations

import copy
import json
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import changed_settings
from ..errors import GradPrunerError
from ..outputs import move_into_place, plain_json, write_json

JOURNAL = "journal.json"


def work_folder(out: str | Path) -> Path:
    """The folder a run to `out` works in until it is complete: `OUT.partial` beside it."""
    out = Path(out)
    return out.with_name(f"{out.name}.partial")


@dataclass
class Journal:
    """The finished stages of a run, each with its (plain JSON) result, saved after every stage;
    `seconds`: the run's wall time up to the last finished stage, over all its sessions."""

    folder: Path
    settings: dict
    stages: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def done(self, stage: str) -> bool:
        return stage in self.stages

    def stage(self, name: str, compute: Callable[[], Any], elapsed: Callable[[], float],
              on_main: Callable[[Callable[[], Any]], Any] | None = None,
              everywhere: bool = False) -> Any:
        """The result of stage `name`: the journal's when a resumed run finished it, else
        `compute()`'s, recorded with the run's `elapsed()` seconds. Under several processes
        `on_main` runs work on the main process only and hands its result to every process:
        `compute` then runs there alone unless it trains (`everywhere`); every process keeps the
        result in its copy of the journal, which only the main process saves."""
        if self.done(name):
            return copy.deepcopy(self.stages[name])
        main = on_main or (lambda work: work())
        result = compute() if everywhere else main(compute)
        seconds = elapsed()
        self.stages[name] = main(lambda: self.finish(name, result, seconds))
        return copy.deepcopy(self.stages[name])

    def finish(self, stage: str, result: Any, seconds: float) -> Any:
        """Record `stage` as finished with `result` at `seconds` of the run; returns the result as
        a resumed run reads it back."""
        self.stages[stage] = plain_json(result)
        self.seconds = seconds
        self.save()
        return self.stages[stage]

    def save(self) -> None:
        write_json(self.folder / JOURNAL, {"settings": self.settings, "stages": self.stages,
                                           "seconds": self.seconds})

    def promote(self, out: str | Path) -> None:
        """Make the finished run's folder `out` (replacing an `out` the run may overwrite),
        without the journal."""
        (self.folder / JOURNAL).unlink()
        move_into_place(self.folder, Path(out).resolve())


def read_journal(out: str | Path) -> Journal | None:
    """The journal of an interrupted run to `out`, or None when there is none."""
    folder = work_folder(out)
    try:
        data = json.loads((folder / JOURNAL).read_text())
    except (OSError, ValueError):
        return None
    return Journal(folder, data["settings"], data["stages"], data["seconds"])


def open_journal(out: str | Path, settings: dict, resume: bool, overwrite: bool) -> Journal:
    """The journal of a run to `out` with `settings`: the interrupted run's when `resume` (its
    settings must be these), else a new one in an empty work folder (an interrupted run's work
    folder is replaced only with `overwrite`)."""
    folder = work_folder(out)
    previous = read_journal(out)
    if resume and previous is not None:
        changed = changed_settings(previous.settings, settings)
        if changed:
            raise GradPrunerError(f"{folder} holds an interrupted run with other settings "
                                  f"({', '.join(changed)}): resume it with its own settings, or "
                                  "pass --overwrite without --resume to start again")
        return previous
    if resume:
        print(f"gradpruner: no interrupted run in {folder}: starting from the first stage",
              file=sys.stderr)
    if folder.exists() and not overwrite:
        if previous is not None:
            raise GradPrunerError(f"{folder} holds an interrupted run: pass --resume to continue "
                                  "it, or --overwrite to start again")
        if any(folder.iterdir()):
            raise GradPrunerError(f"{folder} holds no run's journal: remove it or choose another --out")
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    journal = Journal(folder, settings)
    journal.save()
    return journal
