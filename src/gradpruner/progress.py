"""What a long stage says while it runs: a tqdm bar on a terminal; when stderr is not a terminal
(a log file), a line at least every $GRADPRUNER_PROGRESS_SECONDS (default 30) seconds with the
stage, how far its loop is and the time left. Every stage ends with one line of what it produced.

    with stage("pruning") as st:
        for batch in track(batches, unit="batches"):   # counted: "12/40 batches, ... left"
            ...
        st.result = "removed layers 13-15, 17; merged none"
    # [gradpruner] pruning done: removed layers 13-15, 17; merged none (5 s)

All "[gradpruner]" messages go through `say`. Nothing here imports torch.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from .errors import GradPrunerError

PREFIX = "[gradpruner]"
INTERVAL_ENV = "GRADPRUNER_PROGRESS_SECONDS"
DEFAULT_INTERVAL = 30.0


def say(message: str) -> None:
    """Print one "[gradpruner] ..." line to stderr."""
    print(f"{PREFIX} {message}", file=sys.stderr, flush=True)


def on_terminal() -> bool:
    """Whether stderr is a terminal (bars) rather than a file or pipe (periodic lines)."""
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty())


def interval_seconds() -> float:
    """Seconds between progress lines off a terminal ($GRADPRUNER_PROGRESS_SECONDS, default 30)."""
    raw = os.environ.get(INTERVAL_ENV, "")
    if not raw:
        return DEFAULT_INTERVAL
    try:
        value = float(raw)
    except ValueError:
        raise GradPrunerError(f"{INTERVAL_ENV} must be a number of seconds, got {raw!r}") from None
    if value <= 0:
        raise GradPrunerError(f"{INTERVAL_ENV} must be more than 0 seconds, got {raw!r}")
    return value


def duration(seconds: float) -> str:
    """"42 s", "3 min 5 s", "2 h 10 min"."""
    seconds = round(max(seconds, 0.0))
    if seconds < 60:
        return f"{seconds} s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def layer_ranges(layers: Iterable[int]) -> str:
    """Layer indices as runs: [13, 14, 15, 17] -> "13-15, 17"; "none" when empty."""
    runs: list[list[int]] = []
    for i in sorted(set(layers)):
        if runs and i == runs[-1][-1] + 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    return ", ".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else str(r[0]) for r in runs) or "none"


@dataclass(eq=False)
class Count:
    """How far one loop of a stage is: `done` of `total` `unit`, and a note (e.g. the loss)."""

    unit: str
    total: int | None
    done: int = 0
    note: str = ""
    started: float = field(default_factory=time.perf_counter)

    def describe(self) -> str:
        """"120/300 choices, loss 1.2, 40 s so far, 1 min 40 s left"."""
        elapsed = time.perf_counter() - self.started
        parts = [f"{self.done}/{self.total} {self.unit}" if self.total else f"{self.done} {self.unit}"]
        if self.note:
            parts.append(self.note)
        parts.append(f"{duration(elapsed)} so far")
        if self.total:
            left = elapsed / self.done * (self.total - self.done) if self.done else None
            parts.append(f"{duration(left)} left" if left is not None else "time left not known yet")
        return ", ".join(parts)


@dataclass
class Stage:
    """A running stage: its label, the loops counting inside it and, once known, its `result`;
    off a terminal it reports every `interval` seconds (None: on a terminal, bars instead)."""

    label: str
    interval: float | None
    result: str = ""
    counts: list[Count] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)
    reported: float = field(default_factory=time.perf_counter)  # when the last line was printed

    def status(self) -> str:
        """The stage's progress line: its innermost loop's count, else how long it has run."""
        if self.counts:
            return f"{self.label}: {self.counts[-1].describe()}"
        return f"{self.label}: running, {duration(time.perf_counter() - self.started)} so far"

    def wait(self) -> float:
        """Seconds until the next line is due."""
        return self.reported + self.interval - time.perf_counter()

    def report_if_due(self) -> None:
        """Print the status line when `interval` seconds have passed since the last one."""
        if self.interval is not None and self.wait() <= 0:
            self.reported = time.perf_counter()
            say(self.status())


_STAGES: list[Stage] = []


def _report_while(current: Stage, stop: threading.Event) -> None:
    """Print the stage's status at least every `interval` seconds (at most 10 times a second)
    until `stop` is set; a loop that counts prints it too, as soon as it is due."""
    while not stop.wait(max(current.wait(), 0.1)):
        current.report_if_due()


@contextmanager
def stage(label: str, detail: str = "") -> Iterator[Stage]:
    """Announce a stage ("label: detail"), report its progress off a terminal every
    `interval_seconds`, and when it finishes say "label done: result (seconds)"."""
    current = Stage(label, None if on_terminal() else interval_seconds())
    say(f"{label}: {detail}" if detail else label)
    _STAGES.append(current)
    stop = threading.Event()
    reporter = None
    if current.interval is not None:
        reporter = threading.Thread(target=_report_while, args=(current, stop), daemon=True)
        reporter.start()
    try:
        yield current
    finally:
        stop.set()
        if reporter is not None:
            reporter.join()
        _STAGES.remove(current)
    took = duration(time.perf_counter() - current.started)
    say(f"{label} done: {current.result} ({took})" if current.result else f"{label} done ({took})")


class Progress:
    """Counts one loop (`total` `unit`, None when not known): a tqdm bar on a terminal; off a
    terminal the enclosing `stage` reports the count in its periodic line (outside any stage,
    nothing is shown)."""

    def __init__(self, total: int | None, unit: str):
        self.count = Count(unit, total)
        self._bar = None

    def __enter__(self) -> "Progress":
        if on_terminal():
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.count.total, unit=self.count.unit, leave=False,
                             desc=_STAGES[-1].label if _STAGES else None)
        if _STAGES:
            _STAGES[-1].counts.append(self.count)
        return self

    def update(self, n: int = 1) -> None:
        self.count.done += n
        if self._bar is not None:
            self._bar.update(n)
        elif _STAGES:
            _STAGES[-1].report_if_due()

    def note(self, text: str) -> None:
        """Show `text` beside the count (e.g. "loss 1.23")."""
        self.count.note = text
        if self._bar is not None:
            self._bar.set_postfix_str(text, refresh=False)

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.close()
        for running in _STAGES:
            if self.count in running.counts:
                running.counts.remove(self.count)


def track(items: Iterable, unit: str, total: int | None = None,
          weight: Callable[[object], int] | None = None) -> Iterator:
    """`items`, counted by `Progress`: each item counts 1, or `weight(item)` (e.g. the choices
    in a batch, with `total` the choices in all)."""
    items = list(items) if total is None and not hasattr(items, "__len__") else items
    total = len(items) if total is None else total
    with Progress(total, unit) as progress:
        for item in items:
            yield item
            progress.update(weight(item) if weight else 1)
