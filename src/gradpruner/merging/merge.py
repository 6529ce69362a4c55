"""Sparsify and merge: fold the best parts of some removed layers into the kept ones.

Of the removed layers, the k with the highest scores are donors. Each donor matrix keeps only its
top-p entries by its own IGIA matrix F_W (ties: the lower flat index first). A kept entry is added
to the same matrix of the receiver (the nearest preceding kept layer, the next kept layer when none
precedes) where the receiver's original weight and the donor's weight have the same strict sign.
Raw donor weights are added (times `scale`, 1 in the paper). Norms and other 1-D parameters are
not merged. Everything is computed in fp32 from the original weights, before any is changed.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Collection, Sequence

import torch

from ..catalog import DEFAULT_DENSITY
from ..errors import GradPrunerError


def receiver_of(donor: int, kept: Sequence[int]) -> int:
    """The nearest kept layer before `donor`, or the next kept layer when none precedes it."""
    kept = sorted(kept)
    pos = bisect.bisect_left(kept, donor)
    return kept[pos - 1] if pos > 0 else kept[pos]


def plan_merge(
    removed: Sequence[int], kept: Sequence[int], scores: Sequence[float], donors: int | str | None
) -> dict[int, list[int]]:
    """Receiver -> donor layers for the `donors` highest-scoring removed layers ("all", or None)."""
    if not donors or not removed:
        return {}
    ranked = sorted(removed, key=lambda i: (-scores[i], i))
    chosen = ranked if donors == "all" else ranked[: int(donors)]
    plan: dict[int, list[int]] = {}
    for donor in sorted(chosen):
        plan.setdefault(receiver_of(donor, kept), []).append(donor)
    return plan


def top_p_mask(importance: torch.Tensor, density: float) -> torch.Tensor:
    """Boolean mask of the round(density * n) entries with the largest importance.

    Ties are broken by position (lower flat index first), so the mask is deterministic.
    """
    if not 0 < density <= 1:
        raise GradPrunerError(f"density must be in (0, 1], got {density}")
    flat = importance.reshape(-1).float()
    keep = round(density * flat.numel())
    mask = torch.zeros(flat.numel(), dtype=torch.bool)
    if keep:
        order = torch.argsort(flat.cpu(), descending=True, stable=True)
        mask[order[:keep]] = True
    return mask.reshape(importance.shape)


def merged_delta(
    receiver: torch.Tensor, donor: torch.Tensor, importance: torch.Tensor, density: float,
    scale: float = 1.0,
) -> torch.Tensor:
    """fp32 amount to add to `receiver`: donor entries in its top-p mask, with the receiver's sign."""
    receiver, donor = receiver.detach().float().cpu(), donor.detach().float().cpu()
    mask = top_p_mask(importance, density) & (receiver * donor > 0)
    return torch.where(mask, donor, torch.zeros_like(donor)) * scale


def merge_layers(
    model: torch.nn.Module,
    plan: dict[int, list[int]],
    importance: Callable[[str], torch.Tensor],
    layer_prefix: str,
    density: float = DEFAULT_DENSITY,
    scale: float = 1.0,
    mergeable: Collection[str] | None = None,
) -> dict[str, int]:
    """Apply `plan` to `model` in place; returns merged entries per receiver weight name.

    `importance(name)` gives F_W of a donor weight (base-model name); only weights in `mergeable`
    (default: every 2-D weight of the layer) are merged. All deltas are computed from
    the original weights first and only then added, so a layer that is both receiver and
    reference is never read half-changed.
    """
    deltas: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    for per_donor in plan_deltas(model, plan, importance, layer_prefix, density, mergeable).values():
        for name, delta in per_donor.items():
            deltas[name] = deltas.get(name, 0) + delta
            counts[name] = counts.get(name, 0) + int((delta != 0).sum())
    add_deltas(model, deltas, scale)
    return counts


def plan_deltas(
    model: torch.nn.Module, plan: dict[int, list[int]], importance: Callable[[str], torch.Tensor],
    layer_prefix: str, density: float = DEFAULT_DENSITY, mergeable: Collection[str] | None = None,
) -> dict[int, dict[str, torch.Tensor]]:
    """Donor -> {receiver weight name: fp32 amount at scale 1}, all from the current weights."""
    return {donor: _donor_deltas(model, donor, receiver, importance, layer_prefix, density, mergeable)
            for receiver, donors in plan.items() for donor in donors}


def _donor_deltas(
    model: torch.nn.Module, donor: int, receiver: int, importance: Callable[[str], torch.Tensor],
    layer_prefix: str, density: float = DEFAULT_DENSITY, mergeable: Collection[str] | None = None,
) -> dict[str, torch.Tensor]:
    """Receiver weight name -> fp32 amount (scale 1) that folding `donor` into `receiver` adds."""
    params = dict(model.named_parameters())
    return {
        recv_name: merged_delta(params[recv_name], params[donor_name], importance(donor_name), density)
        for donor_name, recv_name in _matrix_pairs(params, layer_prefix, donor, receiver, mergeable)
    }


def add_deltas(model: torch.nn.Module, deltas: dict[str, torch.Tensor], scale: float = 1.0) -> None:
    """Add `scale` times each fp32 delta to the parameter of that name, in its own dtype."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, delta in deltas.items():
            param = params[name]
            param.copy_((param.float() + scale * delta.to(param.device)).to(param.dtype))


def _matrix_pairs(params: dict, prefix: str, donor: int, receiver: int,
                  mergeable: Collection[str] | None) -> list[tuple[str, str]]:
    """(donor name, receiver name) of every mergeable 2-D weight of the donor layer that the
    receiver has too (an MoE donor's router has no counterpart in a dense receiver)."""
    head = f"{prefix}.{donor}."
    pairs = []
    for name, param in params.items():
        if name.startswith(head) and param.dim() == 2 and (mergeable is None or name in mergeable):
            recv_name = f"{prefix}.{receiver}." + name[len(head):]
            if recv_name not in params:
                continue
            if params[recv_name].shape != param.shape:
                raise GradPrunerError(f"cannot merge {name}: {recv_name} is of another shape")
            pairs.append((name, recv_name))
    return pairs
