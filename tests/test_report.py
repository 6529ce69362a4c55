"""The report's layer-score plot shows the scores of the criterion that chose the cut and, for
`auto`, the candidate cuts it judged with their held-out losses."""

import matplotlib.axes
import pytest

from gradpruner.reports.run_report import ScorePlot, _plot_lines, plot_layer_scores
from gradpruner.evaluation.judge import Judge
from test_auto import identities, igia, pruned  # noqa: F401  (igia: the module's probe fixture)
from tiny_models import tiny_model

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def drawn(monkeypatch) -> list[list[float]]:
    """The heights of every bar chart drawn."""
    heights, bar = [], matplotlib.axes.Axes.bar

    def spy(self, x, height, *args, **kwargs):
        heights.append([float(h) for h in height])
        return bar(self, x, height, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "bar", spy)
    return heights


def test_an_auto_cut_is_plotted_with_the_chosen_criterions_scores(igia, monkeypatch, tmp_path, drawn):
    model = identities(tiny_model("llama"), (1, 3))  # block influence ranks 1 and 3 lowest
    planted = lambda judge, removed, start: 0.5 if removed == [1, 3] else 3.0 + len(removed)
    monkeypatch.setattr(Judge, "_loss", planted)
    record = pruned(model, igia, criterion="auto", count=2, merge=None)
    auto = record["selection"]["auto"]
    assert auto["chosen"] == "block_influence" and record["removed_layers"] == [1, 3]
    found = {c["name"]: c for c in auto["candidates"]}
    plot = ScorePlot.of(record)
    assert plot.criterion == "block_influence" and plot.chosen == "block_influence"
    assert plot.scores == found["block_influence"]["scores"] != record["layer_scores"]  # not IGIA's
    assert plot.measure == "choice loss" and len(plot.candidates) == len(found)

    path = tmp_path / "layer_scores.png"
    plot_layer_scores(plot, record["removed_layers"], record["merged"], path)
    assert drawn == [pytest.approx(found["block_influence"]["scores"])]
    assert path.read_bytes().startswith(PNG) and path.stat().st_size > 10_000

    text = "\n".join(_plot_lines(record))
    assert ("The plot shows the layer scores of `block_influence` (block influence: 1 - cos(input, "
            "output); lower = removed first): auto chose block_influence's cut: lowest held-out "
            "loss.") in text
    assert "every candidate cut `auto` weighed, with its held-out loss" in text


def test_a_greedy_cut_is_plotted_with_the_block_influence_that_guided_it(igia, monkeypatch):
    model = tiny_model("llama")
    record = pruned(model, igia, criterion="auto", count=2, merge=None)
    auto = record["selection"]["auto"]
    found = {c["name"]: c for c in auto["candidates"]}
    auto["chosen"] = "greedy"
    plot = ScorePlot.of(record)
    assert plot.criterion == "block_influence" and plot.chosen == "greedy"
    assert plot.scores == found["block_influence"]["scores"]
    assert "greedy removed layers one at a time" in plot.why


def test_another_criterions_cut_is_plotted_with_its_own_scores(tmp_path, drawn):
    record = pruned(tiny_model("llama"), None, criterion="tail", count=2, merge=None)
    plot = ScorePlot.of(record)
    assert (plot.criterion, plot.candidates, plot.chosen) == ("tail", [], None)
    plot_layer_scores(plot, record["removed_layers"], record["merged"], tmp_path / "p.png")
    assert drawn == [pytest.approx(record["layer_scores"])]
    assert "layer scores of `tail` (reverse position (the last layer kept); lower = removed " \
           "first): tail chose the cut." in _plot_lines(record)[0]
