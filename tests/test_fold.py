"""The linear fold: the least-squares and cosine solvers, planted blocks, the plan, replay and the
merge search."""

import copy

import pytest
import torch

from gradpruner.merging import apply
from gradpruner.merging.fold import (Calibration, FoldSettings, block_sums, block_states,
                                     cosine_distance, cosine_map, fit_map, fold_blocks, fold_steps,
                                     least_squares_map)
from gradpruner.errors import GradPrunerError
from gradpruner.plan import MergeStep, PrunePlan
from gradpruner.search.select import select
from gradpruner.model.surgery import decoder_layers, skipping
from gradpruner.tasks.examples import MCExample
from tiny_models import tiny_model
from tiny_tokenizer import tiny_tokenizer


def _examples(n=24):
    colors = ["blue", "green", "red", "black"]
    return [MCExample.from_question(f"Question: color {i} and {i * 7 % 11}? Answer:", colors, i % 4)
            for i in range(n)]


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


def _ids(tokenizer):
    return tokenizer(["Question: color 3 and 9? Answer: red", "Question: red or blue?"],
                     return_tensors="pt", padding=True)


def test_fold_steps_are_the_runs_of_removed_layers_after_a_kept_one():
    assert fold_steps([2, 3, 5, 9], 10) == (MergeStep(1, (2, 3)), MergeStep(4, (5,)), MergeStep(8, (9,)))
    assert fold_steps([0, 1, 4], 6) == (MergeStep(3, (4,)),)  # a block at layer 0 has no receiver


def test_least_squares_map_recovers_a_planted_map():
    torch.manual_seed(0)
    x = torch.randn(500, 16, dtype=torch.float64)
    planted = torch.randn(16, 16, dtype=torch.float64)
    found = least_squares_map(x.T @ x, x.T @ (x @ planted), ridge=0.0)
    torch.testing.assert_close(found, planted, rtol=1e-9, atol=1e-9)
    shrunk = least_squares_map(x.T @ x, x.T @ (x @ planted), ridge=10.0)
    assert shrunk.norm() < found.norm()  # the ridge shrinks the map


def _make_identity(layer) -> None:
    """A decoder layer that adds nothing to the residual stream: an identity block."""
    with torch.no_grad():
        layer.self_attn.o_proj.weight.zero_()
        layer.mlp.down_proj.weight.zero_()


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_an_identity_block_folds_to_the_identity_and_keeps_the_output(arch, tokenizer):
    model = tiny_model(arch)
    for i in (3, 4):
        _make_identity(decoder_layers(model)[i])
    batch = _ids(tokenizer)
    with torch.inference_mode():
        before = model(**batch).logits
    steps = fold_steps([3, 4], 6)
    gram, cross = block_sums(model, steps[0], Calibration(tokenizer, _examples()).batches(), [])
    torch.testing.assert_close(least_squares_map(gram, cross, 0.0),
                               torch.eye(gram.shape[0], dtype=torch.float64), atol=1e-6, rtol=1e-6)
    plan = PrunePlan(6, (3, 4), steps, "fold", ridge=0.0, calibration=24)
    apply(model, plan, calibration=Calibration(tokenizer, _examples()))
    with torch.inference_mode():
        after = model(**batch).logits
    assert len(decoder_layers(model)) == 4
    torch.testing.assert_close(after, before, atol=1e-4, rtol=1e-4)


def test_a_single_identity_layer_folds_with_no_change_of_output(tokenizer):
    model = tiny_model("llama", seed=3)
    _make_identity(decoder_layers(model)[3])
    dense = copy.deepcopy(model)
    apply(model, PrunePlan(6, (3,), fold_steps([3], 6), "fold", ridge=0.0, calibration=24),
          calibration=Calibration(tokenizer, _examples()))
    batch = _ids(tokenizer)
    with torch.inference_mode():
        torch.testing.assert_close(model(**batch).logits, dense(**batch).logits, atol=1e-4, rtol=1e-4)


def test_the_fold_carries_a_real_block_better_than_dropping_it(tokenizer):
    """On the calibration tokens, the last hidden state with layers 2-3 folded into 1 is closer to
    the dense model's than with 2-3 simply skipped."""
    model = tiny_model("llama", seed=1)
    examples = _examples()
    batches = Calibration(tokenizer, examples).batches()
    dense = copy.deepcopy(model)
    folded = copy.deepcopy(model)
    fold_blocks(folded, fold_steps([2, 3], 6), Calibration(tokenizer, examples), ridge=1e-6)
    def final_state_error(m):
        total = 0.0
        for batch in batches:
            with torch.inference_mode():
                want = dense.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
                with skipping(m, [2, 3]):
                    got = m.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
            total += float(((got - want)[batch["attention_mask"].bool()] ** 2).mean())
        return total

    assert final_state_error(folded) < final_state_error(model)


def test_gemma2_is_refused_before_any_change(tokenizer):
    model = tiny_model("gemma2")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(GradPrunerError, match="normalises the MLP output .*; use --merge none or a number of donors"):
        fold_blocks(model, fold_steps([3], 6), Calibration(tokenizer, _examples()))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_merge_fold_plans_and_replays(tokenizer):
    model = tiny_model("llama", seed=2)
    examples = _examples()
    plan, report = select(model, tokenizer, examples, remove=[2, 3, 5], merge="fold",
                          settings={"fold": FoldSettings(examples=16, ridge=1e-3)})
    assert plan.merge_rule == "fold" and plan.calibration == 16 and plan.ridge == 1e-3
    assert plan.merges == (MergeStep(1, (2, 3)), MergeStep(4, (5,)))
    assert PrunePlan.from_json(plan.to_json()) == plan
    first, second = copy.deepcopy(model), copy.deepcopy(model)
    _, entries = apply(first, plan, calibration=Calibration(tokenizer, examples))
    apply(second, PrunePlan.from_json(plan.to_json()), calibration=Calibration(tokenizer, examples))
    assert set(entries) == {"model.layers.1.mlp.down_proj.weight", "model.layers.4.mlp.down_proj.weight"}
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values()):
        assert torch.equal(a, b), name
    with pytest.raises(GradPrunerError, match="calibration"):
        apply(copy.deepcopy(model), plan)


def test_the_merge_search_tries_the_fold_and_keeps_the_lowest_loss(tokenizer):
    model = tiny_model("llama", seed=2)
    examples = _examples(40)
    plan, report = select(model, tokenizer, examples[:32], heldout=examples[32:], remove=[2, 3],
                          merge="auto")
    trials = report.merge_search["trials"]
    assert any(t.get("fold") for t in trials)
    best = min(trials, key=lambda t: t["loss"])
    assert (plan.merge_rule == "fold") == bool(best.get("fold"))
    assert all(torch.isfinite(torch.tensor(t["loss"])) for t in trials)


def test_the_cosine_distance_equals_a_hand_computation():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    before = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    end = torch.tensor([[1.0, 1.0], [2.0, 0.0]])
    # h' + M T with T = I: [1, 1] (along its target: 0) and [1, 1] against [2, 0] (1 - 1/sqrt 2)
    found = cosine_distance(x, before, end, torch.eye(2))
    assert float(found) == pytest.approx((1 - 2 ** -0.5) / 2, rel=1e-6)


def test_the_cosine_fit_lowers_the_cosine_distance_of_the_least_squares_map(tokenizer):
    """On a real block, starting from the least-squares map, the cosine fit ends closer in
    direction to the block's output on the calibration tokens, and the fold replays exactly."""
    model = tiny_model("llama", seed=1)
    step = fold_steps([2, 3], 6)[0]
    batches = Calibration(tokenizer, _examples()).batches()
    x, out, end = (torch.cat(t).float() for t in zip(*block_states(model, step, batches, [])))
    before = out - x
    lstsq = fit_map(model, step, batches, [], 1e-4)
    cosine = fit_map(model, step, batches, [], 1e-4, "cosine")
    torch.testing.assert_close(lstsq, least_squares_map(*block_sums(model, step, batches, []), 1e-4))
    assert float(cosine_distance(x, before, end, cosine.float())) < \
        float(cosine_distance(x, before, end, lstsq.float()))
    assert not torch.equal(cosine, lstsq)
    torch.testing.assert_close(cosine_map(x, before, end, lstsq, steps=0), lstsq, rtol=1e-6, atol=1e-6)
    plan = PrunePlan(6, (2, 3), (step,), "fold", ridge=1e-4, calibration=24, fit="cosine")
    assert PrunePlan.from_json(plan.to_json()) == plan
    first, second = copy.deepcopy(model), copy.deepcopy(model)
    apply(first, plan, calibration=Calibration(tokenizer, _examples()))
    apply(second, PrunePlan.from_json(plan.to_json()), calibration=Calibration(tokenizer, _examples()))
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values()):
        assert torch.equal(a, b), name
    with pytest.raises(GradPrunerError, match="fit"):
        FoldSettings(fit="svd")


def test_fold_fit_flag_sets_the_fold_setting_beside_a_config_files_others(tmp_path):
    from gradpruner.cli import build_parser, command_config
    config = tmp_path / "run.yaml"
    config.write_text("settings:\n  fold:\n    examples: 64\n")
    args = build_parser().parse_args(["run", "--config", str(config), "--fold-fit", "cosine"])
    assert command_config(args).criterion_settings()["fold"] == FoldSettings(examples=64, fit="cosine")
    args = build_parser().parse_args(["prune", "--model", "m", "--remove", "3", "--merge", "fold",
                                      "--fold-fit", "cosine", "--out", str(tmp_path / "o")])
    assert command_config(args, check=False).cut_settings().criterion_settings["fold"].fit == "cosine"


def test_a_replacement_of_an_identity_block_changes_nothing(tokenizer):
    """A block whose removed layers compute nothing is already reproduced by its first layer:
    the trained replacement keeps every weight and the cut model's output equals the dense one's."""
    from gradpruner.merging.replace import block_loss, block_pairs
    model = tiny_model("llama", seed=3)
    for i in (3, 4):
        _make_identity(decoder_layers(model)[i])
    dense = copy.deepcopy(model)
    step = fold_steps([3, 4], 6)[0]
    batches = Calibration(tokenizer, _examples()).batches()
    assert block_loss(decoder_layers(model)[2], block_pairs(model, step, batches, [])) < 1e-10
    plan = PrunePlan(6, (3, 4), (step,), "replace", calibration=24)
    apply(model, plan, calibration=Calibration(tokenizer, _examples()))
    batch = _ids(tokenizer)
    with torch.inference_mode():
        torch.testing.assert_close(model(**batch).logits, dense(**batch).logits, atol=1e-4, rtol=1e-4)


def test_the_replacement_trains_only_its_layer_and_carries_the_block(tokenizer):
    """On a real block (2-3 after layer 1), only layer 1 changes, its output comes closer to the
    block's, the plan replays to the same weights, and --merge replace plans it."""
    from gradpruner.merging.replace import block_loss, block_pairs
    model = tiny_model("llama", seed=1)
    examples = _examples()
    batches = Calibration(tokenizer, examples).batches()
    step = fold_steps([2, 3], 6)[0]
    pairs = block_pairs(model, step, batches, [])
    before = block_loss(decoder_layers(model)[1], pairs)
    plan, _ = select(model, tokenizer, examples, remove=[2, 3], merge="replace")
    assert plan.merge_rule == "replace" and plan.merges == (step,) and plan.calibration == 24
    assert PrunePlan.from_json(plan.to_json()) == plan
    first, second = copy.deepcopy(model), copy.deepcopy(model)
    _, entries = apply(first, plan, calibration=Calibration(tokenizer, examples))
    apply(second, PrunePlan.from_json(plan.to_json()), calibration=Calibration(tokenizer, examples))
    assert set(entries) == {f"model.layers.1.{name}" for name, _ in decoder_layers(model)[1].named_parameters()}
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values()):
        assert torch.equal(a, b), name  # replays exactly
    original = model.state_dict()
    for name, value in first.state_dict().items():
        if name.startswith("model.layers.1."):
            assert not torch.equal(value, original[name])  # the replacement trained
        elif name.startswith("model.layers."):
            index = int(name.split(".")[2])
            source = f"model.layers.{index if index < 2 else index + 2}.{name.split('.', 3)[3]}"
            assert torch.equal(value, original[source]), name
        else:
            assert torch.equal(value, original[name]), name
    trained = copy.deepcopy(model)
    replaced = decoder_layers(first)[1]
    decoder_layers(trained)[1].load_state_dict(replaced.state_dict())
    assert block_loss(decoder_layers(trained)[1], pairs) < 0.9 * before  # closer to the block
