"""`auto` selection, the held-out merge search, LaCo's collapse and the relative IGIA score."""

import copy
from dataclasses import replace

import pytest
import torch

from gradpruner.criteria import ScoreContext, get_criterion
from gradpruner.search.auto import Auto, AutoSettings, greedy_removal, heldout_scoring
from gradpruner.evaluation.judge import Judge, choice_scoring, task_batches, task_loss
from gradpruner.merging.collapse import collapse_into
from gradpruner.tasks.examples import MCExample
from gradpruner.workflows.recipe import prune_model
from gradpruner.training.trainer import TrainConfig, probe_gradients as probe
from tiny_models import ARCHS, tiny_model
from tiny_tokenizer import tiny_tokenizer

EXAMPLES = [MCExample.from_question(f"Question: color {i}? Answer:", ["blue", "green"], i % 2)
            for i in range(24)]


def identities(model, layers):
    """Make `layers` pass their input through (residual branches off)."""
    with torch.no_grad():
        for i in layers:
            model.model.layers[i].self_attn.o_proj.weight.zero_()
            model.model.layers[i].mlp.down_proj.weight.zero_()
    return model


def context(model, igia=None):
    return ScoreContext(model=model, tokenizer=tiny_tokenizer(), examples=EXAMPLES, igia=igia)


def heldout_judge(ctx: ScoreContext, measure: str = "choice") -> Judge:
    """The judge `auto` builds: `heldout_scoring` with the default settings."""
    return Judge(ctx.model, heldout_scoring(ctx, AutoSettings(), measure))


def pruned(model, igia=None, **kwargs) -> dict:
    """The sidecar of `prune_model` on the tiny task's examples."""
    return prune_model(model, igia, tiny_tokenizer(), EXAMPLES, **kwargs).to_json()


@pytest.fixture(scope="module")
def igia():
    model = tiny_model("llama")
    result, _ = probe(model, tiny_tokenizer(), EXAMPLES, TrainConfig(steps=3, batch_size=4, lr=1e-4), 3)
    return result


def test_auto_picks_the_planted_best_candidate_and_records_every_candidate(igia, monkeypatch):
    model = identities(tiny_model("llama"), (1, 3))  # block influence ranks 1 and 3 lowest
    planted = lambda judge, removed, start: 0.5 if removed == [1, 3] else 3.0 + len(removed)
    monkeypatch.setattr(Judge, "_loss", planted)
    record = pruned(model, igia, criterion="auto", count=2, merge=None)
    assert record["removed_layers"] == [1, 3]
    auto = record["selection"]["auto"]
    found = {c["name"]: c for c in auto["candidates"]}
    assert {"gradpruner", "gradpruner_unsquared", "gradpruner_relative", "block_influence",
            "angular", "taylor", "tail", "greedy"} == set(found)
    assert found[auto["chosen"]]["loss"] == 0.5
    assert found["tail"]["removed"] == [3, 4] and found["tail"]["loss"] == 5.0
    assert auto["judge"]["forward_batches"] > 0
    assert auto["judge"]["examples"] == 24 and auto["greedy_judge"]["examples"] == 16
    assert record["selection"]["criterion"] == "auto" and record["selection"]["merge_search"] is None


def test_the_candidates_share_one_pass_and_match_their_criteria(igia, monkeypatch):
    import gradpruner.search.auto as auto_module

    model = tiny_model("llama")
    ctx = context(model, igia)
    calls = []
    one_pass = auto_module.layer_statistics
    monkeypatch.setattr(auto_module, "layer_statistics", lambda *a: calls.append(a) or one_pass(*a))
    settings = AutoSettings()
    criteria = auto_module.candidate_criteria(ctx, settings)
    sets, scores = auto_module.candidate_sets(ctx, 2, settings, criteria, gradients=True)
    assert len(calls) == 1 and calls[0][2] is True  # one forward and backward for all of them
    assert list(sets) == list(settings.candidates)  # every candidate, in order (with a probe)
    alone = ScoreContext(model=model, tokenizer=ctx.tokenizer, examples=EXAMPLES[:settings.scoring_examples])
    for name in ("block_influence", "taylor"):
        assert scores[name] == pytest.approx(get_criterion(name).layer_scores(alone), rel=1e-6)
    assert sets["angular"] == get_criterion("angular").select(alone, 2).removed


@pytest.mark.parametrize("arch", ARCHS)
def test_the_judge_loss_is_the_loss_of_the_model_with_those_layers_cut(arch):
    from gradpruner.model.surgery import cut_layers

    model = tiny_model(arch)
    judge = heldout_judge(context(model))
    for removed in ([1], [0, 4], [2, 3, 5]):
        cut = copy.deepcopy(model)
        cut_layers(cut, removed)
        assert judge.loss(removed) == pytest.approx(judge.scoring.evaluate(cut), abs=1e-5)
    # each cut runs from its first removed layer's dense input: layers 2-5; 1-3, 5; 4
    assert judge.cost()["layer_passes"] == len(judge.batches) * (4 + 4 + 1)


def test_the_choice_loss_is_minus_log_softmax_of_the_choice_scores_at_the_gold_choice():
    from gradpruner.evaluation.scoring import choice_logprobs

    model = tiny_model("qwen3")
    examples = [MCExample.from_question(f"Q{i}: pick", ["a", "b b", "c c c", "d"][: 2 + i % 3], i % 2)
                for i in range(40)]  # 2, 3 or 4 choices: 120 rows, over the judge's cap
    judge = heldout_judge(ScoreContext(model=model, tokenizer=tiny_tokenizer(), examples=examples))
    assert judge.scoring.measure == "choice loss" and judge.scoring.examples == 21  # 63 rows
    kept = examples[-21:]
    padded = torch.full((21, 4), -torch.inf, dtype=torch.float64)
    for i, row in enumerate(choice_logprobs(model, tiny_tokenizer(), kept)):
        padded[i, :len(row)] = torch.tensor(row)
    expected = -torch.log_softmax(padded, 1)[torch.arange(21), torch.tensor([ex.gold for ex in kept])]
    assert judge.loss([]) == pytest.approx(float(expected.mean()), abs=1e-5)
    answer = heldout_judge(ScoreContext(model=model, tokenizer=tiny_tokenizer(), examples=examples), "answer")
    assert answer.scoring.measure == "answer loss" and answer.scoring.examples == 32
    assert answer.loss([]) == pytest.approx(task_loss(model, answer.batches), abs=1e-6)


def test_generation_examples_are_judged_by_the_answer_loss():
    from gradpruner.tasks.examples import GenExample

    model = tiny_model("gemma")
    examples = [GenExample(f"Say color {i}:", ["blue", "green"][i % 2]) for i in range(12)]
    ctx = ScoreContext(model=model, tokenizer=tiny_tokenizer(), examples=examples)
    scoring = heldout_scoring(ctx, AutoSettings())
    assert scoring.measure == "answer loss" and scoring.examples == 12
    assert Judge(model, scoring).loss([]) == pytest.approx(task_loss(model, scoring.batches), abs=1e-6)


@pytest.mark.parametrize("arch", ARCHS)
def test_skipped_layers_give_the_cut_model_and_are_put_back(arch):
    from gradpruner.model.surgery import skipping
    from gradpruner.model.surgery import cut_layers

    model = tiny_model(arch)
    batches = task_batches(tiny_tokenizer(), EXAMPLES[:16], 8, "t")
    dense = task_loss(model, batches)
    placed = model.model.layers[3].forward  # a forward set on the layer, as accelerate's hooks do
    model.model.layers[3].forward = placed
    cut = copy.deepcopy(model)
    cut_layers(cut, [1, 3])
    with skipping(model, [1, 3]):
        assert task_loss(model, batches) == pytest.approx(task_loss(cut, batches), abs=1e-5)
    assert model.model.layers[3].__dict__["forward"] is placed
    assert "forward" not in model.model.layers[1].__dict__
    assert task_loss(model, batches) == pytest.approx(dense, abs=1e-6)


@pytest.mark.parametrize("budget", [2**30, 1])  # every layer's dense input kept; only layer 0's
def test_the_judge_starts_at_a_changed_layer(budget, monkeypatch):
    """A merge changes a kept layer before the cut: the judge reruns from that layer on."""
    import gradpruner.evaluation.judge as judge_module
    from gradpruner.model.surgery import cut_layers

    monkeypatch.setattr(judge_module, "INPUTS_BYTES", budget)
    model = tiny_model("qwen3")
    judge = heldout_judge(context(model))
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight.mul_(3.0)
    cut = copy.deepcopy(model)
    cut_layers(cut, [3, 4])
    expected = judge.scoring.evaluate(cut)
    assert judge.loss([3, 4], cached=False, changed_from=1) == pytest.approx(expected, abs=1e-5)
    if budget > 1:  # with layer 3's dense input kept, not saying what changed gives a stale loss
        assert judge.loss([3, 4], cached=False) != pytest.approx(expected, abs=1e-3)


def test_auto_needs_no_probe_and_then_skips_the_igia_candidates():
    model = tiny_model("qwen2")
    record = pruned(model, None, criterion="auto", count=2, merge="auto")
    assert len(record["removed_layers"]) == 2
    assert not any(c["name"].startswith("gradpruner") for c in record["selection"]["auto"]["candidates"])
    # without a probe the merge search can only try the linear fold (no paper's merge trials)
    trials = record["selection"]["merge_search"]["trials"]
    assert [bool(t.get("fold")) for t in trials] == [False, True] and trials[0]["donors"] == 0
    assert (record["plan"]["merge_rule"] == "fold") == (trials[1]["loss"] < trials[0]["loss"])


def test_one_set_of_inputs_serves_two_prunes_each_judged_on_its_own_model(igia):
    """Selection writes nothing into the caller's objects: after `auto` on one model, the paper's
    rule with the merge search on a second model judges the second model, as a fresh call does."""
    import json

    tokenizer, train, held = tiny_tokenizer(), EXAMPLES[:16], EXAMPLES[16:]
    inputs = dict(tokenizer=tokenizer, examples=train, heldout=held)
    first = prune_model(tiny_model("llama"), igia, **inputs, criterion="auto", count=2,
                        merge=None).to_json()
    assert "auto" in first["selection"] and first["selection"]["merge_search"] is None
    second = prune_model(tiny_model("llama", seed=1), igia, **inputs, criterion="gradpruner",
                         count=2, merge="auto").to_json()
    fresh = prune_model(tiny_model("llama", seed=1), igia, tiny_tokenizer(), EXAMPLES[:16],
                        heldout=EXAMPLES[16:], criterion="gradpruner", count=2,
                        merge="auto").to_json()
    trials = second["selection"]["merge_search"]["trials"]
    losses = [t["loss"] for t in trials]
    assert len(trials) > 1 and len(set(losses)) == len(losses)  # each merge changed the judged model
    assert [(t["donors"], t["scale"]) for t in trials] == \
        [(t["donors"], t["scale"]) for t in fresh["selection"]["merge_search"]["trials"]]
    assert losses == pytest.approx([t["loss"] for t in fresh["selection"]["merge_search"]["trials"]],
                                   abs=1e-6)
    assert second["selection"]["merge_search"]["chosen"] == fresh["selection"]["merge_search"]["chosen"]
    assert second["selection"]["merge_search"]["judge"]["examples"] == len(held)
    assert second["removed_layers"] == fresh["removed_layers"] and second["merged"] == fresh["merged"]
    # the first call's report is nowhere in the second's record
    assert second["selection"]["criterion"] == "gradpruner" and "auto" not in second["selection"]
    assert "candidates" not in json.dumps(second) and "greedy" not in json.dumps(second)
    assert inputs["examples"] == EXAMPLES[:16] and inputs["heldout"] == EXAMPLES[16:]


def test_a_score_context_is_only_read_so_one_serves_repeated_searches(igia):
    import dataclasses

    model = tiny_model("llama")
    ctx = context(model, igia)
    before = copy.deepcopy(model.state_dict())
    first, again = Auto().search(ctx, 2), Auto().search(ctx, 2)
    assert first.selection.removed == again.selection.removed
    assert [c["loss"] for c in first.selection.report["candidates"]] == \
        pytest.approx([c["loss"] for c in again.selection.report["candidates"]], abs=1e-9)
    assert ctx.examples == EXAMPLES and ctx.heldout == [] and ctx.igia is igia and ctx.model is model
    assert all(torch.equal(value, before[name]) for name, value in model.state_dict().items())
    with pytest.raises(dataclasses.FrozenInstanceError):
        ctx.model = None


def test_auto_layer_scores_are_the_same_whether_or_not_select_ran_first(igia):
    for probe_output in (igia, None):
        ctx = context(tiny_model("llama"), probe_output)
        fresh = Auto().layer_scores(ctx)
        auto = Auto()
        selection = auto.select(ctx, 2)
        assert selection.scores == pytest.approx(fresh, rel=1e-6)
        assert auto.layer_scores(ctx) == pytest.approx(fresh, rel=1e-6)
    if probe_output is None:  # block influence of that model's statistics pass
        assert fresh == pytest.approx(get_criterion("block_influence").layer_scores(
            replace(ctx, examples=EXAMPLES[:AutoSettings().scoring_examples])), rel=1e-6)
    other = context(tiny_model("llama", seed=1))  # after a selection on another model
    assert auto.layer_scores(other) == pytest.approx(Auto().layer_scores(other), rel=1e-6)
    assert auto.layer_scores(other) != pytest.approx(fresh, rel=1e-3)


def test_greedy_drops_the_layer_that_raises_the_loss_least():
    class Planted:  # loss of a removal set: layer 4 is free, layer 0 costs most
        tried: list = []

        def loss(self, removed):
            self.tried.append(sorted(removed))
            return sum({0: 3.0, 1: 2.0, 4: 0.1}.get(i, 1.0) for i in removed)

    guide = [0.0, 1.0, 2.0, 3.0, 0.5, 9.0]  # width 3 tries layers 0, 4, 1 first
    judge = Planted()
    assert greedy_removal(judge, 2, guide, width=3) == [2, 4]
    assert judge.tried == [[0], [4], [1], [0, 4], [1, 4], [2, 4]]
    assert greedy_removal(Planted(), 1, guide, width=1) == [0]  # only the lowest guide is tried


def test_merge_search_keeps_no_merge_when_every_merge_raises_the_loss(igia, monkeypatch):
    model = tiny_model("llama")
    before = copy.deepcopy(model.state_dict())

    def planted(judge, removed, start):  # any change of the weights raises the loss
        return 1.0 + sum(float((p.detach() - before[n]).abs().sum()) for n, p in judge.model.named_parameters())

    monkeypatch.setattr(Judge, "_loss", planted)
    record = pruned(model, igia, criterion="gradpruner", remove=[1, 3], merge="auto")
    trials = record["selection"]["merge_search"]["trials"]
    # none, the linear fold, then k = 1 at each scale; as no scale helped, no more donors are tried
    assert [("fold" if t.get("fold") else (t["donors"], t["scale"])) for t in trials] == \
        [(0, 0.0), "fold", (1, 1.0), (1, 0.5), (1, 0.25)]
    assert all(t["loss"] > trials[0]["loss"] for t in trials[1:])
    assert record["merged"] == {} and record["merged_entries"] == {}
    kept = [0, 2, 4, 5]
    for new, old in enumerate(kept):  # kept layers untouched: every trial was undone
        for name, value in model.model.layers[new].state_dict().items():
            assert torch.equal(value, before[f"model.layers.{old}.{name}"])


def test_merge_search_adds_donors_at_the_best_scale_only(igia, monkeypatch):
    model = tiny_model("llama")
    before = copy.deepcopy(model.state_dict())

    def planted(judge, removed, start):  # the more the weights change, the lower the loss
        return 1.0 / (1.0 + sum(float((p.detach() - before[n]).abs().sum())
                                for n, p in judge.model.named_parameters()))

    monkeypatch.setattr(Judge, "_loss", planted)
    paper_only = {"auto": AutoSettings(merge_fold=False)}  # the paper's merge trials alone
    record = pruned(model, igia, criterion="gradpruner", remove=[1, 3], merge="auto", settings=paper_only)
    trials = record["selection"]["merge_search"]["trials"]
    assert [(t["donors"], t["scale"]) for t in trials] == [(0, 0.0), (1, 1.0), (1, 0.5), (1, 0.25),
                                                           (2, 1.0)]
    assert record["selection"]["merge_search"]["chosen"] == {"rule": "gradpruner",
                                                             "plan": {"0": [1], "2": [3]}, "scale": 1.0}


def test_merge_search_applies_the_best_trial(igia):
    model = tiny_model("llama")
    ctx = context(model, igia)
    record = pruned(model, igia, criterion="gradpruner", remove=[2, 4], merge="auto")
    trials = record["selection"]["merge_search"]["trials"]
    best = min(trials, key=lambda t: t["loss"])
    chosen = record["selection"]["merge_search"]["chosen"]
    if best.get("fold"):
        assert chosen["rule"] == "fold" and record["merged"] == {"1": [2], "3": [4]}
    else:
        assert chosen["scale"] == (best["scale"] or None)
        assert len(record["merged"]) == (0 if best["donors"] == 0 else
                                         len({1 if d == 2 else 3 for d in [2, 4][:best["donors"]]}))
    held = choice_scoring(ctx.tokenizer, EXAMPLES[-24:])  # the pruned model's choice loss
    assert held.evaluate(model) == pytest.approx(best["loss"], abs=1e-5)


def test_paper_rule_is_unchanged_by_the_search(igia):
    model = tiny_model("llama")
    record = pruned(model, igia, criterion="gradpruner", count=2, merge=3, density=0.2)
    scores = igia.scores("squared")
    assert record["removed_layers"] == sorted(sorted(range(6), key=lambda i: (scores[i], -i))[:2])
    assert record["plan"]["merge_rule"] == "gradpruner" and record["plan"]["scale"] == 1.0
    assert record["plan"]["density"] == 0.2 and record["merged"]
    assert record["selection"]["merge_search"] is None and "auto" not in record["selection"]


def test_laco_collapse_matches_the_rdsc_formula():
    model = tiny_model("mistral")
    layers = model.model.layers
    original = {i: copy.deepcopy(layers[i].state_dict()) for i in range(6)}
    collapse_into(model, 1, [2, 3])
    for name, value in layers[1].state_dict().items():
        expected = original[1][name] + (original[2][name] - original[1][name]) + \
            (original[3][name] - original[1][name])
        assert torch.allclose(value, expected, atol=1e-6), name
    assert all(torch.equal(layers[2].state_dict()[k], v) for k, v in original[2].items())


def test_laco_removes_the_asked_count_and_records_its_merges():
    model = tiny_model("llama")
    record = pruned(model, None, criterion="laco", count=3, merge=None)
    assert len(record["removed_layers"]) == 3 and 5 not in record["removed_layers"]
    donors = sorted(d for ds in record["merged"].values() for d in ds)
    assert donors == record["removed_layers"] and record["plan"]["merge_rule"] == "laco"
    for receiver, ds in record["merged"].items():
        assert all(d > int(receiver) for d in ds)  # layers fold into the layer below them
    assert record["selection"]["laco"]["trials"] and model.config.num_hidden_layers == 3


def test_laco_selects_without_changing_the_model_and_its_steps_replay_the_collapse():
    from gradpruner.merging import apply
    from gradpruner.plan import MergeStep, PrunePlan

    model = tiny_model("llama")
    before = copy.deepcopy(model.state_dict())
    selection = get_criterion("laco").select(context(model), 3)
    assert all(torch.equal(value, before[name]) for name, value in model.state_dict().items())
    assert selection.removed == sorted(d for _, ds in selection.merges for d in ds)
    plan = PrunePlan(6, tuple(selection.removed), tuple(MergeStep(r, tuple(d)) for r, d in selection.merges),
                     "laco")
    replayed, _ = apply(copy.deepcopy(model), plan)
    pruned_model = tiny_model("llama")
    pruned(pruned_model, None, criterion="laco", count=3, merge=None)
    expected = pruned_model.state_dict()
    assert all(torch.equal(value, expected[name]) for name, value in replayed.state_dict().items())


def test_relative_igia_divides_each_module_by_its_weight_norm(igia):
    model = tiny_model("llama")
    scores = get_criterion("gradpruner_relative").layer_scores(context(model, igia))
    params = dict(model.named_parameters())
    expected = [0.0] * 6
    for name, layer, value in zip(igia.module_names, igia.module_layers,
                                  igia.sq_norms.sqrt().sum(dim=0).tolist()):
        expected[layer] += value / float(params[name].norm())
    assert scores == pytest.approx(expected, rel=1e-6)
    with torch.no_grad():  # doubling one layer's weights halves its relative score
        for p in model.model.layers[2].parameters():
            if p.dim() == 2:
                p.mul_(2)
    doubled = get_criterion("gradpruner_relative").layer_scores(context(model, igia))
    assert doubled[2] == pytest.approx(expected[2] / 2, rel=1e-6)
