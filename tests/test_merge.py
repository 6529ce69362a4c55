"""Sparsify-and-merge checked entry by entry against hand computations on small tensors."""

import pytest
import torch

from gradpruner.config import parse_merge_count
from gradpruner.errors import GradPrunerError
from gradpruner.merging.merge import (
    merge_layers,
    merged_delta,
    plan_merge,
    receiver_of,
    top_p_mask,
)


def test_receiver_is_nearest_preceding_kept_layer_or_next_when_none_precedes():
    kept = [2, 3, 7]
    assert receiver_of(4, kept) == 3
    assert receiver_of(6, kept) == 3
    assert receiver_of(8, kept) == 7
    assert receiver_of(0, kept) == 2  # a donor before the first kept layer goes forward
    assert receiver_of(1, kept) == 2


def test_plan_takes_the_k_highest_scoring_removed_layers():
    scores = [9, 1, 5, 8, 2, 7, 3]
    removed, kept = [1, 2, 4, 5, 6], [0, 3]
    assert plan_merge(removed, kept, scores, 2) == {3: [5], 0: [2]}
    assert plan_merge(removed, kept, scores, "all") == {0: [1, 2], 3: [4, 5, 6]}
    assert plan_merge(removed, kept, scores, None) == {}


def test_top_p_mask_keeps_exact_count_and_breaks_ties_by_position():
    importance = torch.tensor([[1.0, 5.0, 5.0], [5.0, 0.0, 2.0]])
    mask = top_p_mask(importance, 0.34)  # round(0.34 * 6) = 2 entries; three tie at 5
    assert mask.tolist() == [[False, True, True], [False, False, False]]
    assert top_p_mask(importance, 1.0).all()
    with pytest.raises(GradPrunerError):
        top_p_mask(importance, 0.0)


def test_delta_applies_mask_and_strict_sign_rule():
    receiver = torch.tensor([[1.0, -2.0, 3.0], [0.0, 4.0, -1.0]])
    donor = torch.tensor([[0.5, 0.7, -0.2], [0.9, 0.3, -0.6]])
    importance = torch.tensor([[6.0, 5.0, 4.0], [3.0, 2.0, 1.0]])
    # top 4 of 6 by importance: (0,0) (0,1) (0,2) (1,0)
    # same strict sign: (0,0) yes, (0,1) no, (0,2) no, (1,0) no (receiver 0 -> product 0)
    delta = merged_delta(receiver, donor, importance, density=4 / 6)
    assert delta.tolist() == [[0.5, 0.0, 0.0], [0.0, 0.0, 0.0]]
    # all entries kept: (1,1) and (1,2) agree in sign too
    delta = merged_delta(receiver, donor, importance, density=1.0, scale=0.5)
    torch.testing.assert_close(delta, torch.tensor([[0.25, 0.0, 0.0], [0.0, 0.15, -0.3]]))


class Stack(torch.nn.Module):
    """Four 'layers', each with one 2x2 linear and a 1-D norm weight."""

    def __init__(self, weights):
        super().__init__()
        self.layers = torch.nn.ModuleList()
        for w in weights:
            layer = torch.nn.Module()
            layer.proj = torch.nn.Linear(2, 2, bias=False)
            layer.proj.weight.data = torch.tensor(w)
            layer.norm = torch.nn.Parameter(torch.ones(2))
            self.layers.append(layer)


def test_merge_layers_into_receivers_from_original_weights():
    model = Stack([
        [[1.0, 1.0], [1.0, 1.0]],      # 0: donor before the first kept layer
        [[2.0, -2.0], [2.0, -2.0]],    # 1: kept, receives 0 and 2
        [[0.5, 0.5], [-0.5, 3.0]],     # 2: donor
        [[1.0, 1.0], [1.0, 1.0]],      # 3: kept
    ])
    importance = {
        "layers.0.proj.weight": torch.tensor([[4.0, 3.0], [2.0, 1.0]]),
        "layers.2.proj.weight": torch.tensor([[1.0, 1.0], [9.0, 1.0]]),
    }
    plan = plan_merge([0, 2], [1, 3], [10.0, 0.0, 5.0, 0.0], "all")
    assert plan == {1: [0, 2]}
    counts = merge_layers(model, plan, importance.__getitem__, "layers", density=0.5)
    # donor 0 top-2: (0,0)=1 (sign ok: 2*1>0), (0,1)=1 (receiver -2: no)
    # donor 2 top-2 with position tie-break: (1,0)=-0.5 (receiver 2: no), (0,0)=0.5 (yes)
    assert model.layers[1].proj.weight.tolist() == [[3.5, -2.0], [2.0, -2.0]]
    assert counts == {"layers.1.proj.weight": 2}
    assert model.layers[3].proj.weight.tolist() == [[1.0, 1.0], [1.0, 1.0]]
    assert model.layers[1].norm.tolist() == [1.0, 1.0]  # 1-D parameters are never merged


def test_merge_keeps_dtype_and_computes_in_fp32():
    model = Stack([[[1.0, 1.0], [1.0, 1.0]], [[1.0, 1.0], [1.0, 1.0]]]).to(torch.bfloat16)
    merge_layers(model, {0: [1]}, lambda n: torch.ones(2, 2), "layers", density=1.0)
    assert model.layers[0].proj.weight.dtype == torch.bfloat16
    assert model.layers[0].proj.weight.float().tolist() == [[2.0, 2.0], [2.0, 2.0]]


def test_parse_merge_count():
    assert parse_merge_count("3") == 3
    assert parse_merge_count("all") == "all"
    assert parse_merge_count("none") is None
    assert parse_merge_count("0") is None
    with pytest.raises(GradPrunerError):
        parse_merge_count("lots")
    with pytest.raises(GradPrunerError):
        parse_merge_count("-1")
