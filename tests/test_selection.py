import math

import pytest

from gradpruner.errors import GradPrunerError
from gradpruner.removal import parse_layer_list, removal_count, select_layers


def test_ratio_count_and_explicit_list():
    scores = [5.0, 1.0, 4.0, 0.5, 3.0, 2.0, 6.0, 7.0, 8.0, 9.0]
    assert select_layers(scores, ratio=0.3) == [1, 3, 5]
    assert select_layers(scores, count=2) == [1, 3]
    assert select_layers(scores, remove=[9, 2]) == [2, 9]


def test_ties_remove_the_later_layer_first():
    assert select_layers([1.0, 1.0, 1.0, 2.0], count=1) == [2]


@pytest.mark.parametrize("ratio", [0, 1, -0.1, 1.5, math.nan, math.inf])
def test_bad_ratios_are_refused(ratio):
    with pytest.raises(GradPrunerError, match="ratio"):
        removal_count(10, ratio=ratio)


def test_too_small_ratio_and_too_many_layers():
    with pytest.raises(GradPrunerError, match="removes no layer"):
        removal_count(10, ratio=0.01)
    with pytest.raises(GradPrunerError, match="at least one layer must stay"):
        removal_count(10, count=10)


@pytest.mark.parametrize("remove,message", [
    ([1, 1], "more than once"), ([10], "out of range"), ([-1], "out of range"),
    (list(range(10)), "all 10 layers"), ([1.5], "must be integers"), ([], "empty"),
])
def test_bad_removal_lists(remove, message):
    with pytest.raises(GradPrunerError, match=message):
        select_layers([0.0] * 10, remove=remove)


def test_parse_layer_list():
    assert parse_layer_list("3,4, 5") == [3, 4, 5]
    assert parse_layer_list("20-23,1") == [20, 21, 22, 23, 1]
    with pytest.raises(GradPrunerError):
        parse_layer_list("3,x")


def test_nan_scores_are_refused():
    with pytest.raises(GradPrunerError, match="NaN"):
        select_layers([1.0, math.nan, 2.0], count=1)
