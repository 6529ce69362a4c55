"""LaCo's Reserving-Differences-while-Seeking-Common merge (Yang et al. 2024): layers fold into a
receiver as theta_r + sum_k (theta_k - theta_r), every parameter of the layer included."""

from __future__ import annotations

import torch

from ..model.surgery import decoder_layers


def collapse_into(model, receiver: int, donors: list[int]) -> None:
    """RDSC merge in place: receiver += sum over donors of (donor - receiver), all parameters."""
    layers = decoder_layers(model)
    with torch.no_grad():
        target = dict(layers[receiver].named_parameters())
        original = {name: p.detach().float().clone() for name, p in target.items()}
        for donor in donors:
            for name, p in layers[donor].named_parameters():
                target[name].add_((p.detach().float() - original[name]).to(p.dtype))
