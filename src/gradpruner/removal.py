"""Which decoder layers to remove: the count a ratio asks for, the lowest-scored layers, and an
explicit list parsed and checked. Nothing here imports torch (the CLI checks lists with it)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Integral

from .errors import GradPrunerError


def removal_count(num_layers: int, ratio: float | None = None, count: int | None = None) -> int:
    """How many layers `ratio` (fraction of decoder layers, rounded) or `count` asks to remove."""
    if (ratio is None) == (count is None):
        raise GradPrunerError("give exactly one of a ratio or a number of layers to remove")
    if ratio is not None:
        if not isinstance(ratio, (int, float)) or not math.isfinite(ratio) or not 0 < ratio < 1:
            raise GradPrunerError(f"ratio must be a number strictly between 0 and 1, got {ratio}")
        count = round(ratio * num_layers)
        if count < 1:
            raise GradPrunerError(
                f"ratio {ratio} removes no layer of {num_layers}; the smallest useful ratio is "
                f"{0.5 / num_layers:.3f}"
            )
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise GradPrunerError(f"the number of layers to remove must be a positive integer, got {count}")
    if count >= num_layers:
        raise GradPrunerError(
            f"cannot remove {count} of {num_layers} layers: at least one layer must stay"
        )
    return count


def kept_indices(remove: Sequence[int], n_layers: int) -> list[int]:
    """The indices kept when `remove` is cut from `n_layers` layers; GradPrunerError for a bad `remove`."""
    if isinstance(remove, (str, bytes)) or not isinstance(remove, Sequence):
        raise GradPrunerError(f"layers to remove must be a list of integers, got {remove!r}")
    bad = [i for i in remove if isinstance(i, bool) or not isinstance(i, Integral)]
    if bad:
        raise GradPrunerError(f"layer indices must be integers, got {bad}")
    out_of_range = sorted({int(i) for i in remove if not 0 <= i < n_layers})
    if out_of_range:
        raise GradPrunerError(f"layer indices {out_of_range} out of range: the model has layers 0..{n_layers - 1}")
    duplicates = sorted({int(i) for i in remove if list(remove).count(i) > 1})
    if duplicates:
        raise GradPrunerError(f"layer indices {duplicates} listed more than once")
    if len(remove) == n_layers:
        raise GradPrunerError(f"cannot remove all {n_layers} layers")
    removed = set(remove)
    return [i for i in range(n_layers) if i not in removed]


def lowest_scored(scores: Sequence[float], count: int) -> list[int]:
    """The `count` layers with the lowest scores (ties: the later layer goes first), sorted."""
    if any(not math.isfinite(s) for s in scores):
        raise GradPrunerError("layer scores contain NaN or infinite values")
    order = sorted(range(len(scores)), key=lambda i: (scores[i], -i))
    return sorted(order[:count])


def validate_removal(remove: Sequence[object], num_layers: int) -> list[int]:
    """An explicit removal list checked (integers, unique, in range, not every layer), sorted."""
    if not remove:
        raise GradPrunerError("the removal list is empty: give layer indices, e.g. --remove 3,4 or 20-27")
    kept = kept_indices(list(remove), num_layers)
    return sorted(set(range(num_layers)) - set(kept))


def parse_layer_list(text: str) -> list[int]:
    """'3,4,5' or '3-5,9' as a list of integers (not yet validated against a model)."""
    out: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        try:
            if sep and lo:
                out.extend(range(int(lo), int(hi) + 1))
            else:
                out.append(int(part))
        except ValueError:
            raise GradPrunerError(f"not a layer index or range: {part!r}") from None
    return out


def select_layers(
    scores: Sequence[float],
    ratio: float | None = None,
    count: int | None = None,
    remove: Sequence[int] | None = None,
) -> list[int]:
    """Layers to remove: an explicit list, or the lowest-scored `count` / `ratio` of them."""
    if remove is not None:
        if ratio is not None or count is not None:
            raise GradPrunerError("give either an explicit removal list or a ratio/count, not both")
        return validate_removal(remove, len(scores))
    return lowest_scored(scores, removal_count(len(scores), ratio, count))


def matched_teacher_layers(kept: Sequence[int], num_layers: int) -> list[int]:
    """For each kept layer (original indices, in order), the dense model's layer whose output it
    stands for: the last layer before the next kept one (the whole removed span after it), the
    dense model's last layer for the last kept layer. The mapping depends only on which layers
    are kept, so merges and folds, which change weights, and rounds, whose records give the
    original indices, all map this way."""
    kept = sorted(kept)
    if not kept or kept[0] < 0 or kept[-1] >= num_layers:
        raise GradPrunerError(f"kept layers {list(kept)} do not fit a model of {num_layers} layers")
    return [following - 1 for following in kept[1:]] + [num_layers - 1]
