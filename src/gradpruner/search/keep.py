"""`run --keep S`: the largest cut whose healed model keeps at least the share S of the dense
fine-tuned model's accuracy on the held-out training examples.

Each candidate size is a whole one-shot cut of the dense model (the criterion, the merge), healed
for `steps` steps and scored on the held-out examples; the share is its accuracy over the dense
fine-tuned model's on the same items. The sizes are searched by bisection over 1 .. layers - 1,
taking the share to fall as the cut grows: about log2(layers) candidates (5 for 30 layers).
By default each candidate is healed as long as the final cut will be, so its share predicts the
final model's; shorter candidate heals (`--keep-steps`) are cheaper but score a cut below what
the full heal gives it, so the choice then errs towards keeping layers. Each share comes with
its standard error (binomial, the two accuracies taken as independent: a bound, as both models
answer the same items), and the choice with how sure it is: the normal probability that the
share is at least S. When the candidates are healed as long as the final cut, the run delivers
the chosen candidate itself rather than cutting and healing it again.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

from ..errors import GradPrunerError


@dataclass(frozen=True)
class KeepPoint:
    """One candidate cut: how many layers it removes, which, its held-out accuracy (of `items`
    items) and its share of the dense model's with the share's standard error."""

    removed: int
    removed_layers: list[int]
    accuracy: float
    items: int
    share: float
    share_se: float

    def keeps(self, keep: float) -> bool:
        """Whether this cut keeps the share `keep` of the dense model's accuracy."""
        return self.share >= keep

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class KeepSearch:
    """The search's outcome: the share asked for, the dense model's held-out accuracy, the
    healing steps each candidate got, every candidate scored (by size), the chosen size (0: no
    cut keeps the share), the probability that its share is at least the one asked for, and
    whether the run delivers the chosen candidate itself (`delivered`) rather than a new cut
    healed again."""

    keep: float
    dense_accuracy: float
    items: int
    steps: int
    points: list[KeepPoint]
    chosen: int
    confidence: float | None
    delivered: bool = False

    @property
    def chosen_point(self) -> KeepPoint | None:
        """The chosen candidate (None when no cut keeps the share)."""
        return next((p for p in self.points if p.removed == self.chosen), None)

    def to_json(self) -> dict:
        return {"keep": self.keep, "dense_accuracy": self.dense_accuracy, "items": self.items,
                "steps": self.steps,
                "points": [p.to_json() for p in sorted(self.points, key=lambda p: p.removed)],
                "chosen": self.chosen, "confidence": self.confidence, "delivered": self.delivered}

    @classmethod
    def from_json(cls, data: dict) -> "KeepSearch":
        return cls(data["keep"], data["dense_accuracy"], data["items"], data.get("steps", 0),
                   [KeepPoint(**p) for p in data["points"]], data["chosen"], data["confidence"],
                   data.get("delivered", False))


def share_of(accuracy: float, dense: float, items: int) -> tuple[float, float]:
    """The share `accuracy` / `dense` of two accuracies on `items` items, and its standard error
    (delta method, each accuracy binomial)."""
    if dense <= 0:
        raise GradPrunerError("the dense fine-tuned model answers no held-out item: no share to keep")
    share = accuracy / dense
    relative = [math.sqrt(a * (1 - a) / items) / a for a in (accuracy, dense) if a > 0]
    return share, share * math.sqrt(sum(r * r for r in relative)) if accuracy > 0 else 0.0


def search_cut_size(score: Callable[[int], KeepPoint], total: int, keep: float) -> tuple[int, list[KeepPoint]]:
    """The largest number of layers to remove (0 .. total - 1) whose candidate `score`s a share
    of at least `keep`, by bisection; and every point scored."""
    points: dict[int, KeepPoint] = {}
    low, high = 0, total  # low keeps the share (0: the dense model); high does not, or is out of range
    while high - low > 1:
        middle = (low + high) // 2
        points[middle] = score(middle)
        if points[middle].keeps(keep):
            low = middle
        else:
            high = middle
    return low, [points[n] for n in sorted(points)]


def confidence(point: KeepPoint, keep: float) -> float:
    """The normal probability that the share of `point` is at least `keep`."""
    if point.share_se == 0:
        return 1.0 if point.keeps(keep) else 0.0
    return 0.5 * (1 + math.erf((point.share - keep) / (point.share_se * math.sqrt(2))))


def keep_search(score: Callable[[int], KeepPoint], total: int, keep: float, dense_accuracy: float,
                items: int, steps: int, delivered: bool = False) -> KeepSearch:
    """`search_cut_size` as a `KeepSearch` record (`steps`: each candidate's healing steps;
    `delivered`: whether the run delivers the chosen candidate)."""
    chosen, points = search_cut_size(score, total, keep)
    found = KeepSearch(keep, dense_accuracy, items, steps, points, chosen, None, delivered)
    picked = found.chosen_point
    return replace(found, confidence=confidence(picked, keep) if picked else None)
