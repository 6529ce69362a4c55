"""How long `auto`'s selection may take: a share of the healing fine-tune that follows it.

The parts of the search are worth different amounts and cost different amounts, so `auto`
runs them in order of worth and asks the budget before each: the statistics pass every
candidate needs (forward only when the gradients Taylor needs do not fit), judging the
candidates on held-out examples, the merge search, and the greedy removal. A part is
estimated from what earlier parts measured, or, before any, from the seconds of one dense
training step (the probe's); a forward pass of a batch counts a third of a training step.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from ..errors import GradPrunerError

FORWARD_SHARE = 1 / 3  # a forward pass of a batch, as a share of a training step on it


@dataclass
class SelectionBudget:
    """`fraction` of `heal_steps` healing steps, each as long as `kept_share` of a dense
    training step of `step_seconds`; `heal_steps` None: no limit.

    `step_seconds` None (no probe timed one) is set by `calibrate` from the first timed pass.
    """

    fraction: float = 0.1
    heal_steps: int | None = None
    kept_share: float = 1.0
    step_seconds: float | None = None
    skipped: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)

    @property
    def limited(self) -> bool:
        return self.heal_steps is not None

    @property
    def seconds(self) -> float:
        """The whole budget; infinite without a limit or before a step has been timed."""
        if not self.limited or self.step_seconds is None:
            return math.inf
        return self.fraction * self.heal_steps * self.step_seconds * self.kept_share

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.started)

    def forward(self, batches: int) -> float:
        """Estimated seconds of forward passes over `batches` batches (0 when not yet timed)."""
        return batches * (self.step_seconds or 0.0) * FORWARD_SHARE

    def calibrate(self, step_seconds: float) -> None:
        """Take the seconds of a training step from a timed pass when no probe gave them."""
        if self.step_seconds is None:
            self.step_seconds = step_seconds

    def affords(self, part: str, estimate: float) -> bool:
        """Whether `part`, estimated at `estimate` seconds, fits in what is left; a part that
        does not is recorded as skipped."""
        left = self.left()
        if estimate <= left:
            return True
        self.skipped.append(f"{part} (about {estimate:.2g} s, {max(left, 0):.2g} s left)")
        return False

    def notes(self) -> dict:
        """What goes into the sidecar."""
        if not self.limited:
            return {"limit": None}
        return {"fraction": self.fraction, "heal_steps": self.heal_steps,
                "step_seconds": None if self.step_seconds is None else round(self.step_seconds, 3),
                "seconds": round(self.seconds, 2), "skipped": list(self.skipped)}


def skipped_parts(record: dict) -> list[str]:
    """The parts a pruning record's budget skipped: the merge search's list, which goes on from
    `auto`'s, or `auto`'s alone when no merge search ran under the budget."""
    merge = record.get("merge_search", {}).get("budget")
    return (merge or record["auto"].get("budget") or {}).get("skipped", [])


def check_fraction(fraction: float | None) -> None:
    """Refuse a budget share that is not a non-negative number (None: no limit)."""
    if fraction is not None and not (math.isfinite(fraction) and fraction >= 0):
        raise GradPrunerError(f"--selection-budget must be a non-negative number or 'none', got {fraction}")


def heal_budget(fraction: float | None, heal_steps: int | None, total_layers: int, removed: int,
                probe: dict | None = None) -> SelectionBudget:
    """The budget of a selection that `heal_steps` healing steps will follow: `fraction` of
    their time (None for either: no limit). `probe`: the probe's record (`step_seconds`, or
    `steps` and `probe_seconds`), which times a dense training step."""
    check_fraction(fraction)
    if heal_steps is not None and heal_steps < 1:
        raise GradPrunerError(f"--heal-steps must be at least 1, got {heal_steps}")
    if fraction is None or heal_steps is None:
        return SelectionBudget()
    step = None
    if probe and probe.get("steps"):  # steady steps when recorded (older probes: the mean)
        step = probe.get("step_seconds") or probe["probe_seconds"] / probe["steps"]
    return SelectionBudget(fraction, heal_steps, 1 - removed / total_layers, step)
