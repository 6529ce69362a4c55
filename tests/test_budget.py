"""`auto` and the merge search within a share of the healing fine-tune (`SelectionBudget`)."""

import math

import pytest

import gradpruner.criteria.auto as auto_module
from gradpruner.criteria import ScoreContext
from gradpruner.criteria.budget import SelectionBudget, heal_budget
from gradpruner.errors import GradPrunerError
from gradpruner.prune import prune_model
import test_auto
from tiny_models import tiny_model
from tiny_tokenizer import tiny_tokenizer

EXAMPLES = test_auto.EXAMPLES
igia = test_auto.igia  # the same module-scoped probe fixture


def pruned(igia, budget: SelectionBudget) -> dict:
    model = tiny_model("llama")
    ctx = ScoreContext(model=model, tokenizer=tiny_tokenizer(), examples=EXAMPLES, igia=igia,
                       budget=budget)
    return prune_model(model, igia, criterion="auto", count=2, merge="auto", context=ctx)


def test_heal_budget_is_the_share_of_the_heal_timed_by_the_probe():
    budget = heal_budget(0.1, 200, 30, 6, {"steps": 20, "probe_seconds": 40.0, "step_seconds": 1.5})
    assert budget.seconds == pytest.approx(0.1 * 200 * 1.5 * 24 / 30)  # the steady step time
    older = heal_budget(0.1, 200, 30, 6, {"steps": 20, "probe_seconds": 40.0})
    assert older.seconds == pytest.approx(0.1 * 200 * 2.0 * 24 / 30)  # or the probe's mean step
    assert heal_budget(0.1, None, 30, 6).seconds == math.inf
    assert heal_budget(None, 200, 30, 6).seconds == math.inf
    assert heal_budget(0.1, 200, 30, 6).step_seconds is None  # no probe: timed by the first pass
    with pytest.raises(GradPrunerError, match="selection-budget"):
        heal_budget(-0.1, 200, 30, 6)
    with pytest.raises(GradPrunerError, match="heal-steps"):
        heal_budget(0.1, 0, 30, 6)


def test_a_budget_too_small_to_judge_keeps_block_influence_unjudged_and_no_merge(igia):
    record = pruned(igia, SelectionBudget(0.1, 1, 0.5, step_seconds=1.0))  # 0.05 s in all
    auto = record["auto"]
    names = [c["name"] for c in auto["candidates"]]
    assert "taylor" not in names and "greedy" not in names  # no backward pass, no greedy search
    assert auto["judge"] is None and all(c["loss"] is None for c in auto["candidates"])
    assert auto["chosen"] == "block_influence" == names[0]
    assert record["removed_layers"] == auto["candidates"][0]["removed"]
    assert record["merged"] == {} and record["merge_search"]["trials"] == []
    skipped = " ".join(auto["budget"]["skipped"] + record["merge_search"]["budget"]["skipped"])
    assert "Taylor" in skipped and "judging the candidates" in skipped and "merge search" in skipped


def test_an_ample_budget_runs_the_whole_search(igia):
    record = pruned(igia, SelectionBudget(0.1, 10**7, 1.0, step_seconds=1.0))
    unlimited = pruned(igia, SelectionBudget())
    assert record["auto"]["budget"]["skipped"] == [] and record["auto"]["budget"]["seconds"] == 10**6
    assert record["auto"]["candidates"] == unlimited["auto"]["candidates"]
    assert "greedy" in {c["name"] for c in record["auto"]["candidates"]}
    assert len(record["merge_search"]["trials"]) == len(unlimited["merge_search"]["trials"]) > 1


def test_the_greedy_search_is_skipped_first(igia, monkeypatch):
    monkeypatch.setattr(auto_module, "greedy_seconds", lambda judge, guide, count: 1e9)
    record = pruned(igia, SelectionBudget(0.1, 10**7, 1.0, step_seconds=1.0))
    auto = record["auto"]
    assert "greedy" not in {c["name"] for c in auto["candidates"]} and "greedy_judge" not in auto
    assert all(c["loss"] is not None for c in auto["candidates"])
    assert auto["chosen"] == min(auto["candidates"], key=lambda c: c["loss"])["name"]
    assert [s.split(" (")[0] for s in auto["budget"]["skipped"]] == ["the greedy search"]
    assert len(record["merge_search"]["trials"]) > 1  # the merge search still ran


def test_without_a_probe_timing_the_first_pass_sets_the_step_time(igia):
    budget = SelectionBudget(0.1, 10**7, 1.0)
    assert budget.seconds == math.inf
    pruned(igia, budget)
    assert 0 < budget.step_seconds < 60 and math.isfinite(budget.seconds)


def test_the_report_says_what_the_budget_skipped(igia):
    from gradpruner.report import _auto_section

    record = pruned(igia, SelectionBudget(0.1, 1, 0.5, step_seconds=1.0))
    text = "\n".join(_auto_section(record, {"seconds_per_step": 1.0, "train_seconds": 1.0, "steps": 1}))
    assert "kept block_influence's cut unjudged" in text
    assert "Budget: 10% of a 1-step fine-tune" in text
    assert text.count("Taylor's backward pass") == 1  # auto's and the merge search's lists, once
    assert "the merge search (about" in text and "--selection-budget none" in text


def test_taylor_needs_room_for_its_backward_pass_and_the_judging_after_it(igia):
    from gradpruner.criteria import get_criterion

    ctx = ScoreContext(model=tiny_model("llama"), tokenizer=tiny_tokenizer(), examples=EXAMPLES)
    backward = len(get_criterion("taylor").batches(ctx))  # seconds at 1 s a training step
    judging = 2 * len(auto_module.heldout_scoring(ctx).batches) / 3
    record = pruned(igia, SelectionBudget(1.0, 1, judging + backward / 2, step_seconds=1.0))
    names = {c["name"] for c in record["auto"]["candidates"]}
    assert "taylor" not in names  # its backward pass alone would have fitted
    assert record["auto"]["judge"] is not None and record["auto"]["candidates"][0]["loss"] is not None
