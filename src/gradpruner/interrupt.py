"""Ctrl-C and SIGTERM: a command stops within seconds, its temporary folders removed, and says
in one line what it kept and how to go on.

SIGTERM raises `Terminated` (a KeyboardInterrupt) once the CLI installs `sigterm_raises`, so both
signals unwind through the same clean-up (`outputs.atomic_output_dir` removes its temporary
folders on any exception). Nothing here imports torch.
"""

from __future__ import annotations

import shlex
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .outputs import last_complete_checkpoint
from .workflows.journal import read_journal, work_folder


class Terminated(KeyboardInterrupt):
    """The process received SIGTERM."""


@contextmanager
def sigterm_raises() -> Iterator[None]:
    """Within the block, SIGTERM raises `Terminated` (the handler before it is restored after);
    only the main thread can receive signals, elsewhere it changes nothing."""
    def handler(signum, frame):
        raise Terminated()

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def exit_code(interrupt: KeyboardInterrupt) -> int:
    """128 + the signal's number, as a shell reports a process the signal stopped."""
    return 128 + (signal.SIGTERM if isinstance(interrupt, Terminated) else signal.SIGINT)


def close_progress_bars() -> None:
    """Close the progress bars (tqdm's) that the interrupted stage left open, so that the line
    printed after them starts a line of its own and stays the last one."""
    tqdm = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", ())):
        bar.close()


def interrupted_message(command: str | None, out: str | None, argv: list[str],
                        interrupt: KeyboardInterrupt) -> str:
    """The line an interrupted command prints: what stopped it, what it kept and how to go on."""
    name = "SIGTERM" if isinstance(interrupt, Terminated) else "Ctrl-C"
    again = "gradpruner " + shlex.join(argv)
    resume = again if "--resume" in argv else f"{again} --resume"
    if command == "run" and out:
        kept = _run_kept(out)
        how = f"resume with: {resume}" if kept else f"run it again: {again}"
        return f"gradpruner: stopped by {name}; {kept or 'nothing kept'}; {how}"
    if command == "finetune" and out:
        checkpoint = last_complete_checkpoint(f"{out}.checkpoints")
        if checkpoint:
            return f"gradpruner: stopped by {name}; kept {checkpoint}; resume with: {resume}"
        return (f"gradpruner: stopped by {name}; nothing kept (--save-every N keeps checkpoints); "
                f"run it again: {again}")
    if command == "compare" and out:
        cells = len(list((Path(out) / "cells").glob("*.json")))
        return (f"gradpruner: stopped by {name}; kept {cells} finished cell(s) in {out}/cells; "
                f"the same command resumes: {again}")
    if command in ("probe", "prune", "eval"):
        return f"gradpruner: stopped by {name}; nothing written; run it again: {again}"
    return f"gradpruner: stopped by {name}"


def _run_kept(out: str) -> str | None:
    """What an interrupted run kept in its work folder: its finished stages and the last
    checkpoint of the fine-tune it was in (None when it has no work folder yet)."""
    journal = read_journal(out)
    if journal is None:
        return None
    kept = [f"finished stages {', '.join(journal.stages)}" if journal.stages else "no finished stage"]
    for folder in sorted(journal.folder.glob("*.checkpoints")):
        checkpoint = last_complete_checkpoint(str(folder))
        fine_tune = folder.name.removesuffix(".checkpoints")
        kept += [f"the {fine_tune} fine-tune's checkpoint {checkpoint}"] if checkpoint else []
    return f"kept in {work_folder(out)}: {'; '.join(kept)}"
