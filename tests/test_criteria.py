"""Importance criteria: one score per layer, valid removal sets, exact baselines."""

import random

import pytest
import torch

from gradpruner.criteria import CRITERIA, ScoreContext, get_criterion
from gradpruner.tasks.examples import MCExample
from gradpruner.errors import GradPrunerError
from gradpruner.removal import select_layers
from tiny_models import tiny_model
from tiny_tokenizer import tiny_tokenizer

EXAMPLES = [MCExample.from_question(f"Question: color {i}? Answer:", ["blue", "green"], i % 2)
            for i in range(12)]


def context(model, seed=0):
    return ScoreContext(model=model, tokenizer=tiny_tokenizer(), examples=EXAMPLES, seed=seed)


@pytest.mark.parametrize("name", ["tail", "random", "block_influence", "ppl", "taylor", "angular"])
def test_one_score_per_layer_and_a_valid_removal_set(name):
    scores = get_criterion(name).layer_scores(context(tiny_model("qwen2")))
    assert len(scores) == 6
    removed = select_layers(scores, count=2)
    assert len(removed) == 2 and all(0 <= i < 6 for i in removed)


def test_tail_removes_the_last_layers_before_the_final_one():
    scores = get_criterion("tail").layer_scores(context(tiny_model("llama")))
    assert select_layers(scores, count=1) == [4]
    assert select_layers(scores, count=3) == [2, 3, 4]


def test_random_is_seeded_and_exact():
    model = tiny_model("llama")
    a = get_criterion("random").layer_scores(context(model, seed=3))
    b = get_criterion("random").layer_scores(context(model, seed=3))
    assert a == b == [float(s) for s in random.Random(3).sample(range(6), 6)]
    assert a != get_criterion("random").layer_scores(context(model, seed=4))


def test_block_influence_is_zero_for_identity_layers_and_matches_direct_computation():
    model = tiny_model("llama")
    with torch.no_grad():
        for i in (1, 3):  # residual branches off: the layer passes its input through
            model.model.layers[i].self_attn.o_proj.weight.zero_()
            model.model.layers[i].mlp.down_proj.weight.zero_()
    scores = get_criterion("block_influence").layer_scores(context(model))
    assert scores[1] == pytest.approx(0, abs=1e-9) and scores[3] == pytest.approx(0, abs=1e-9)
    assert min(scores[0], scores[2], scores[4]) > 1e-4
    assert select_layers(scores, count=2) == [1, 3]

    # direct computation from output_hidden_states (input of layer i, output = input of i + 1)
    tok = tiny_tokenizer()
    sums, count = torch.zeros(5, dtype=torch.float64), 0
    for ex in EXAMPLES:
        context_text, continuation = ex.training_pair()
        ids = tok(context_text)["input_ids"] + tok(continuation, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            hidden = model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
        for i in range(5):
            sums[i] += torch.nn.functional.cosine_similarity(
                hidden[i][0].double(), hidden[i + 1][0].double(), dim=-1).sum()
        count += len(ids)
    assert scores[:5] == pytest.approx((1 - sums / count).tolist(), abs=1e-6)


def test_ppl_equals_the_loss_change_of_actually_removing_each_layer():
    import copy

    from gradpruner.evaluation.judge import task_batches, task_loss
    from gradpruner.model.surgery import cut_layers

    model = tiny_model("llama")
    with torch.no_grad():
        model.model.layers[1].self_attn.o_proj.weight.zero_()
        model.model.layers[1].mlp.down_proj.weight.zero_()
    ctx = context(model)
    scores = get_criterion("ppl").layer_scores(ctx)
    assert scores[1] == pytest.approx(0, abs=1e-6)  # an identity layer costs nothing to skip
    batches = task_batches(ctx.tokenizer, ctx.examples[:64], 8, "ppl")
    base = task_loss(model, batches)
    for i in range(6):
        cut = copy.deepcopy(model)
        cut_layers(cut, [i])
        assert scores[i] == pytest.approx(task_loss(cut, batches) - base, abs=1e-5)
    assert any(abs(s) > 1e-4 for s in scores)


def test_taylor_matches_a_direct_weight_times_gradient_sum():
    from gradpruner.evaluation.judge import task_batches

    model = tiny_model("mistral")
    ctx = context(model)
    scores = get_criterion("taylor").layer_scores(ctx)
    assert all(p.grad is None for p in model.parameters())  # no gradients left behind
    model.zero_grad()
    batches = task_batches(ctx.tokenizer, ctx.examples[:64], 8, "taylor")
    for batch in batches:
        (model(**batch).loss / len(batches)).backward()
    expected = [sum(float((p * p.grad).abs().sum()) for p in layer.parameters())
                for layer in model.model.layers]
    assert scores == pytest.approx(expected, rel=1e-5)
    assert min(scores) > 0


def test_angular_removes_the_contiguous_block_that_changes_nothing():
    from gradpruner.workflows.recipe import prune_model

    model = tiny_model("llama")
    with torch.no_grad():
        for i in (2, 3):
            model.model.layers[i].self_attn.o_proj.weight.zero_()
            model.model.layers[i].mlp.down_proj.weight.zero_()
    crit = get_criterion("angular")
    assert crit.select(context(model), 2).removed == [2, 3]
    scores = crit.layer_scores(context(model))
    assert len(scores) == 6 and scores[2] == pytest.approx(0, abs=1e-6)
    ctx = context(model)
    record = prune_model(model, tokenizer=ctx.tokenizer, examples=ctx.examples, criterion="angular",
                         count=2, merge=None)
    assert record.removed_layers == [2, 3] and record.to_json()["removed_layers"] == [2, 3]


def test_registry_lists_the_criteria_and_rejects_unknown_names():
    assert {"gradpruner", "gradpruner_unsquared", "tail", "random", "block_influence"} <= set(CRITERIA)
    with pytest.raises(GradPrunerError, match="unknown criterion 'nope'"):
        get_criterion("nope")
    with pytest.raises(GradPrunerError, match="needs the probe"):
        get_criterion("gradpruner").layer_scores(ScoreContext(model=tiny_model("llama")))
