"""`auto` and the merge search within a share of the healing fine-tune (`SelectionBudget`),
planned up front (`plan_search`)."""

import math
from dataclasses import replace

import pytest

import gradpruner.search.auto as auto_module
from gradpruner.criteria import ScoreContext
from gradpruner.search.auto import AutoSettings, heldout_scoring
from gradpruner.search.budget import (FORWARD_SHARE, SearchSize, SelectionBudget, SkippedPart,
                                      heal_budget, plan_search)
from gradpruner.evaluation.judge import task_batches
from gradpruner.errors import GradPrunerError
from gradpruner.workflows.recipe import prune_model
import test_auto
from tiny_models import tiny_model
from tiny_tokenizer import tiny_tokenizer

EXAMPLES = test_auto.EXAMPLES
igia = test_auto.igia  # the same module-scoped probe fixture


def pruned(igia, budget: SelectionBudget, merge="auto") -> dict:
    model = tiny_model("llama")
    return prune_model(model, igia, tiny_tokenizer(), EXAMPLES, criterion="auto", count=2,
                       merge=merge, budget=budget).to_json()


def sizes() -> tuple[int, int, int]:
    """Batches of auto's statistics pass, held-out judge and greedy search on the tiny task."""
    s = AutoSettings()
    ctx = ScoreContext(model=tiny_model("llama"), tokenizer=tiny_tokenizer(), examples=EXAMPLES)
    statistics = len(task_batches(ctx.tokenizer, EXAMPLES[:s.scoring_examples], 8, "t"))
    return (statistics, len(heldout_scoring(ctx, s).batches),
            len(heldout_scoring(ctx, s, "answer", s.greedy_examples).batches))


def seconds(budget: float) -> SelectionBudget:
    """A budget of `budget` seconds at 1 s a training step."""
    return SelectionBudget(1.0, 1, budget, step_seconds=1.0)


def skipped(plan: dict) -> list[SkippedPart]:
    return [SkippedPart(**part) for part in plan["skipped"]]


def test_heal_budget_is_the_share_of_the_heal_timed_by_the_probe():
    budget = heal_budget(0.1, 200, 30, 6, 1.5)
    assert budget.seconds == pytest.approx(0.1 * 200 * 1.5 * 24 / 30)  # the probe's step time
    assert budget.limited and budget.kept_share == pytest.approx(24 / 30)
    assert heal_budget(0.1, None, 30, 6).seconds == math.inf
    assert heal_budget(None, 200, 30, 6).seconds == math.inf
    assert not heal_budget(None, 200, 30, 6, 1.5).limited
    untimed = heal_budget(0.1, 200, 30, 6)
    assert untimed.limited and untimed.step_seconds is None  # no probe: timed by the first pass
    with pytest.raises(GradPrunerError, match="seconds of a training step"):
        untimed.seconds  # an untimed budget has no seconds yet (the search times a batch first)
    with pytest.raises(GradPrunerError, match="selection-budget"):
        heal_budget(-0.1, 200, 30, 6)
    with pytest.raises(GradPrunerError, match="heal-steps"):
        heal_budget(0.1, 0, 30, 6)


def test_a_budget_too_small_to_judge_keeps_block_influence_unjudged_and_no_merge(igia):
    record = too_small(igia)
    auto = record["selection"]["auto"]
    names = [c["name"] for c in auto["candidates"]]
    assert "taylor" not in names and "greedy" not in names  # no backward pass, no greedy search
    assert auto.get("judge") is None and all(c["loss"] is None for c in auto["candidates"])
    assert "greedy_judge" not in auto
    assert auto["chosen"] == "block_influence" == names[0]
    assert record["removed_layers"] == auto["candidates"][0]["removed"]
    assert record["merged"] == {} and record["selection"]["merge_search"]["trials"] == []
    plan = auto["plan"]
    assert plan["judged"] == [] and plan["taylor"] is False and plan["greedy"] is False
    assert plan["merge_trials"] == 0
    parts = {p.part: p for p in skipped(plan)}
    assert {"judging the candidates", "the merge search"} <= set(parts)
    for part in parts.values():  # each did not fit in what was left
        assert part.estimate_seconds > part.left_seconds


def too_small(igia) -> dict:
    return pruned(igia, SelectionBudget(0.1, 1, 0.5, step_seconds=1.0))  # 0.05 s in all


def test_a_budget_too_small_to_judge_records_that_taylor_was_skipped(igia):
    record = too_small(igia)
    assert "taylor" not in [c["name"] for c in record["selection"]["auto"]["candidates"]]
    parts = [p.part for p in skipped(record["selection"]["auto"]["plan"])]
    assert "Taylor's backward pass and judging" in parts


def test_the_merge_search_records_typed_skipped_parts(igia):
    record = too_small(igia)  # auto planned no merge trials
    for part in record["selection"]["merge_search"]["skipped"]:
        assert isinstance(part, dict) and set(part) == {"part", "estimate_seconds", "left_seconds"}
    model = tiny_model("llama")  # the merge search planning its own trials
    alone = prune_model(model, igia, tiny_tokenizer(), EXAMPLES, criterion="gradpruner", count=2,
                        merge="auto", budget=SelectionBudget(0.1, 1, 0.5, step_seconds=1.0)).to_json()
    parts = alone["selection"]["merge_search"]["skipped"]
    assert parts and all(isinstance(p, dict) for p in parts)
    assert [SkippedPart(**p).part for p in parts] == ["the merge search"]


def test_an_ample_budget_runs_the_whole_search(igia):
    record = pruned(igia, SelectionBudget(0.1, 10**7, 1.0, step_seconds=1.0))
    unlimited = pruned(igia, SelectionBudget())
    auto, whole = record["selection"]["auto"], unlimited["selection"]["auto"]
    assert auto["plan"]["skipped"] == [] and auto["plan"]["seconds"] == 10**6
    assert 0 < auto["plan"]["estimate_seconds"] < 10**6
    assert whole["plan"] == {"limit": None, "judged": list(AutoSettings().candidates), "taylor": True,
                             "merge_trials": AutoSettings().merge_trials, "greedy": True,
                             "estimate_seconds": 0.0, "skipped": []}
    assert auto["plan"]["judged"] == whole["plan"]["judged"] and auto["plan"]["greedy"]
    assert auto["candidates"] == whole["candidates"]
    assert "greedy" in {c["name"] for c in auto["candidates"]}
    assert len(record["selection"]["merge_search"]["trials"]) == \
        len(unlimited["selection"]["merge_search"]["trials"]) > 1


def test_the_greedy_search_is_skipped_first(igia, monkeypatch):
    real = auto_module.SearchSize  # the greedy search estimated far over the budget
    monkeypatch.setattr(auto_module, "SearchSize",
                        lambda *a, **k: replace(real(*a, **k), greedy_batches=10**9))
    record = pruned(igia, SelectionBudget(0.1, 10**7, 1.0, step_seconds=1.0))
    auto = record["selection"]["auto"]
    assert "greedy" not in {c["name"] for c in auto["candidates"]} and "greedy_judge" not in auto
    assert all(c["loss"] is not None for c in auto["candidates"])
    assert auto["chosen"] == min(auto["candidates"], key=lambda c: c["loss"])["name"]
    assert [p.part for p in skipped(auto["plan"])] == ["the greedy search"]
    assert auto["plan"]["greedy"] is False and auto["plan"]["merge_trials"] == AutoSettings().merge_trials
    assert len(record["selection"]["merge_search"]["trials"]) > 1  # the merge search still ran


def test_without_a_probe_timing_a_first_timed_batch_sets_the_step_time(igia):
    budget = SelectionBudget(0.1, 10**7, 1.0)  # heal steps given, no probe timing
    plan = pruned(igia, budget)["selection"]["auto"]["plan"]
    assert 0 < plan["step_seconds"] < 60 and math.isfinite(plan["seconds"])
    # the sidecar rounds the step time to 4 decimals
    assert plan["seconds"] == pytest.approx(0.1 * 10**7 * plan["step_seconds"], abs=0.1 * 10**7 * 5e-5)
    assert budget.step_seconds is None  # the caller's budget is left as it was
    tiny = pruned(igia, SelectionBudget(0.1, 1, 0.5))["selection"]["auto"]  # still checked
    assert 0 < tiny["plan"]["step_seconds"] < 60 and tiny["plan"]["judged"] == []
    assert tiny.get("judge") is None and all(c["loss"] is None for c in tiny["candidates"])
    assert "judging the candidates" in [p.part for p in skipped(tiny["plan"])]


def test_without_a_merge_search_following_greedy_keeps_the_merge_trials_reserve(igia):
    statistics, judge, greedy = sizes()
    size = SearchSize(statistics, judge, greedy, AutoSettings().candidates, 2,
                      AutoSettings().greedy_width, 0)
    alone = plan_search(seconds(1e9), size).estimate_seconds  # judging everything and greedy
    with_merge = plan_search(seconds(1e9), replace(size, merge_trials=AutoSettings().merge_trials))
    # everything but the last part planned (the greedy search after the merge trials) fits
    budget = with_merge.estimate_seconds * (1 - 1e-6)
    assert alone < budget < with_merge.estimate_seconds

    record = pruned(igia, seconds(budget), merge=None)
    auto = record["selection"]["auto"]
    assert auto["plan"]["greedy"] is True and auto["plan"]["merge_trials"] == 0
    assert auto["plan"]["skipped"] == [] and "greedy" in {c["name"] for c in auto["candidates"]}
    assert auto["plan"]["estimate_seconds"] == pytest.approx(alone, abs=1e-3)
    assert record["selection"]["merge_search"] is None

    merged = pruned(igia, seconds(budget), merge="auto")
    auto = merged["selection"]["auto"]
    assert auto["plan"]["greedy"] is False and auto["plan"]["merge_trials"] == AutoSettings().merge_trials
    assert [p.part for p in skipped(auto["plan"])] == ["the greedy search"]
    assert "greedy" not in {c["name"] for c in auto["candidates"]}
    assert len(merged["selection"]["merge_search"]["trials"]) > 1


def test_skipped_parts_are_typed_with_their_estimate_and_what_was_left():
    statistics, judge, greedy = sizes()
    size = SearchSize(statistics, judge, greedy, AutoSettings().candidates, 2,
                      AutoSettings().greedy_width, AutoSettings().merge_trials)
    forward = lambda batches: batches * FORWARD_SHARE  # noqa: E731  (at 1 s a training step)
    plan = plan_search(seconds(0.5), size)  # less than the statistics pass
    assert plan.judged == [] and not plan.taylor and not plan.greedy and plan.merge_trials == 0
    assert all(isinstance(p, SkippedPart) for p in plan.skipped)
    left = 0.5 - forward(statistics)
    backward = statistics * (1 - FORWARD_SHARE)
    assert plan.skipped == [SkippedPart("judging the candidates", 2 * forward(judge), left),
                            SkippedPart("Taylor's backward pass and judging", backward + forward(judge), left),
                            SkippedPart("the merge search", size.merge_trials * forward(judge), left)]
    assert plan.to_json()["skipped"][0] == {"part": "judging the candidates",
                                            "estimate_seconds": 2 * forward(judge), "left_seconds": left}
    assert str(plan.skipped[0]).startswith("judging the candidates (about ")


def test_the_report_says_what_the_budget_skipped(igia):
    from gradpruner.reports.run_report import _auto_section, skipped_parts

    record = too_small(igia)
    text = "\n".join(_auto_section(record, {"seconds_per_step": 1.0, "train_seconds": 1.0, "steps": 1}))
    assert "kept block_influence's cut unjudged" in text
    assert "Budget: 10% of a 1-step fine-tune" in text
    assert "judging the candidates (about" in text
    assert "the merge search (about" in text and "--selection-budget none" in text
    parts = record["selection"]["auto"]["plan"]["skipped"]
    assert skipped_parts(record)[:len(parts)] == [str(SkippedPart(**p)) for p in parts]


def test_the_report_lists_each_skipped_part_once(igia):
    from gradpruner.reports.run_report import _auto_section, skipped_parts

    record = too_small(igia)
    text = "\n".join(_auto_section(record, {"seconds_per_step": 1.0, "train_seconds": 1.0, "steps": 1}))
    assert text.count("the merge search") == 1  # auto's and the merge search's lists, once
    parts = [p.split(" (")[0] for p in skipped_parts(record)]
    assert len(parts) == len(set(parts))


def test_the_report_says_taylor_was_skipped_once(igia):
    from gradpruner.reports.run_report import _auto_section

    record = too_small(igia)
    text = "\n".join(_auto_section(record, {"seconds_per_step": 1.0, "train_seconds": 1.0, "steps": 1}))
    assert text.count("Taylor's backward pass") == 1  # auto's and the merge search's lists, once


def test_taylor_needs_room_for_its_backward_pass_and_the_judging_after_it(igia):
    statistics, judge, _ = sizes()
    forward = lambda batches: batches * FORWARD_SHARE  # noqa: E731  (at 1 s a training step)
    backward = statistics * (1 - FORWARD_SHARE)
    judging = 2 * forward(judge)  # the dense pass and block influence's cut
    # the statistics pass, judging, and Taylor's backward pass alone fit; not with judging its cut
    record = pruned(igia, seconds(forward(statistics) + judging + backward + forward(judge) / 2))
    auto = record["selection"]["auto"]
    names = {c["name"] for c in auto["candidates"]}
    assert "taylor" not in names and auto["plan"]["taylor"] is False
    assert auto["judge"] is not None and auto["candidates"][0]["loss"] is not None
    taylor = next(p for p in skipped(auto["plan"]) if p.part == "Taylor's backward pass and judging")
    assert taylor.estimate_seconds == pytest.approx(backward + forward(judge), abs=1e-3)
    assert backward <= taylor.left_seconds < taylor.estimate_seconds  # its backward pass alone would have fitted
