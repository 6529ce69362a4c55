"""Scoring: log-likelihood of choices, batching, acc vs acc_norm, ROUGE-L, generation, dispatch."""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, processors
from transformers import PreTrainedTokenizerFast

from gradpruner.data import GenExample, MCExample
from gradpruner.errors import GradPrunerError
from gradpruner.evaluate import (choice_logprobs, evaluate_examples, evaluate_exact_match,
                                 evaluate_generation, evaluate_mc, generate_texts,
                                 predicted_choice, rouge_l)
from tiny_models import tiny_model

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]
CHARS = ["\n"] + [chr(i) for i in range(32, 127)]


def char_tokenizer(chat_template: str | None = None) -> PreTrainedTokenizerFast:
    """One token per character (100 ids, fits the tiny models' 128), BOS added to contexts."""
    vocab = {token: i for i, token in enumerate(SPECIALS + CHARS)}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    core.decoder = decoders.Fuse()
    core.post_processor = processors.TemplateProcessing(single="<s> $A",
                                                        special_tokens=[("<s>", 1)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>",
                                        pad_token="<pad>", unk_token="<unk>")
    tokenizer.chat_template = chat_template
    return tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return char_tokenizer()


def rigged_model(tokenizer, logits: dict[str, float]):
    """A tiny model whose next-token distribution is fixed: LM head = bias `logits` only."""
    model = tiny_model("llama")
    head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    for char, value in logits.items():
        head.bias.data[tokenizer.convert_tokens_to_ids(char)] = value
    model.lm_head = head
    return model


def expected_logprob(model, tokenizer, text: str) -> float:
    table = torch.log_softmax(model.lm_head.bias.detach().double(), dim=0)
    return sum(table[i].item() for i in tokenizer(text, add_special_tokens=False)["input_ids"])


def test_rigged_choice_wins_with_exact_logprobs(tokenizer):
    model = rigged_model(tokenizer, {"z": 8.0})
    examples = [
        MCExample.from_question("Pick:", ["zzz", "abc", "zqz"], gold=0),
        MCExample.from_question("A much longer context here:", ["ab", "zz"], gold=1),
    ]
    scores = choice_logprobs(model, tokenizer, examples, batch_size=2)
    for ex, row in zip(examples, scores):
        for continuation, value in zip(ex.continuations, row):
            expected = expected_logprob(model, tokenizer, continuation)
            assert value == pytest.approx(expected, abs=1e-4)
    assert evaluate_mc(model, tokenizer, examples) == {"acc": 1.0, "acc_norm": 1.0, "n": 2}


def test_batching_matches_one_by_one(tokenizer):
    model = tiny_model("llama", seed=1)
    examples = [
        MCExample.from_question("Question: two plus two?\nAnswer:", ["4", "five", "22 or so"], 0),
        MCExample.from_question("Hi", ["a long, long answer with many characters", "b"], 1),
        MCExample(("The cat sat on", "The dog lay on"), (" the mat.", " the mat."), 0),
        MCExample.from_question("x" * 60, ["y", "zz"], 1),
    ]
    one_by_one = [choice_logprobs(model, tokenizer, [ex], batch_size=1)[0] for ex in examples]
    for batch_size in (3, 64):
        batched = choice_logprobs(model, tokenizer, examples, batch_size=batch_size)
        for row, reference in zip(batched, one_by_one):
            assert row == pytest.approx(reference, abs=1e-4)


def test_acc_norm_differs_from_acc_on_lengths(tokenizer):
    """'z' is likely and every other character unlikely: a long run of 'z' has the lower sum
    but the higher log-probability per character."""
    model = rigged_model(tokenizer, {"z": 5.0})
    ex = MCExample.from_question("Q:", ["z" * 12, "q"], gold=0)
    long, short = (expected_logprob(model, tokenizer, c) for c in ex.continuations)
    assert long < short and long / len(ex.continuations[0]) > short / len(ex.continuations[1])
    assert evaluate_mc(model, tokenizer, [ex]) == {"acc": 0.0, "acc_norm": 1.0, "n": 1}


def test_rouge_l_known_values():
    assert rouge_l("The cat sat.", "the cat sat") == 1.0
    assert rouge_l("Hello, World!", "hello world") == 1.0
    assert rouge_l("alpha beta", "gamma delta") == 0.0
    assert rouge_l("", "anything") == 0.0
    # LCS "the cat on the mat" = 5 of 6 tokens on both sides
    assert rouge_l("the cat sat on the mat", "the cat is on the mat") == pytest.approx(5 / 6)
    # LCS "a c": precision 2/3, recall 2/4, F = 2PR / (P + R) = 4/7
    assert rouge_l("a b c", "a x c d") == pytest.approx(4 / 7)


def test_generation_is_greedy_and_scored(tokenizer):
    model = rigged_model(tokenizer, {"z": 8.0})
    prompts = [tokenizer(p)["input_ids"] for p in ["a", "a much longer prompt"]]
    assert generate_texts(model, tokenizer, prompts, max_new_tokens=3) == ["zzz", "zzz"]
    examples = [GenExample("Summarise:", "zzz"), GenExample("Summarise this:", "zzz yyy")]
    result = evaluate_generation(model, tokenizer, examples, max_new_tokens=3)
    assert result == {"rouge_l": pytest.approx((1 + 2 / 3) / 2), "n": 2}


def test_left_padded_generation_matches_one_by_one(tokenizer):
    model = tiny_model("llama", seed=2)
    prompts = [tokenizer(p)["input_ids"] for p in ["ab", "a longer prompt here", "medium one"]]
    single = [generate_texts(model, tokenizer, [p], max_new_tokens=6)[0] for p in prompts]
    assert generate_texts(model, tokenizer, prompts, max_new_tokens=6, batch_size=3) == single


def test_predicted_choice():
    options = ["A dog", "a cat", "a bird"]
    assert predicted_choice("B", options) == 1
    assert predicted_choice(" (C) a bird", options) == 2
    assert predicted_choice("A dog.", options) == 0
    assert predicted_choice("a cat", options) == 1
    assert predicted_choice("D", options) is None
    assert predicted_choice("BBB", options) is None


CHAT_TEMPLATE = "{% for m in messages %}U: {{ m['content'] }}\n{% endfor %}A:"


@pytest.mark.parametrize("template", [None, CHAT_TEMPLATE])
def test_exact_match_reads_the_answer_letter(template):
    tokenizer = char_tokenizer(template)
    model = rigged_model(tokenizer, {"B": 8.0})
    right = MCExample.from_question("Question: which?\nAnswer:", ["one", "two", "three"], gold=1)
    wrong = MCExample.from_question("Question: which?\nAnswer:", ["one", "two", "three"], gold=0)
    result = evaluate_exact_match(model, tokenizer, [right, wrong], max_new_tokens=1)
    assert result == {"exact_match": 0.5, "n": 2}


def test_evaluate_examples_dispatch_and_mode(tokenizer):
    model = rigged_model(tokenizer, {"z": 8.0}).train()
    examples = [MCExample.from_question("Q:", ["zz", "ab"], 0)] * 3
    assert evaluate_examples(model, tokenizer, examples, "mc", limit=2)["n"] == 2
    assert model.training
    assert "exact_match" in evaluate_examples(model, tokenizer, examples, "mc", protocol="generate")
    stops = rigged_model(tokenizer, {"</s>": 8.0})  # ends every generation at once
    result = evaluate_examples(stops, tokenizer, [GenExample("p", "zzz")], "gen")
    assert result == {"rouge_l": 0.0, "n": 1}
    with pytest.raises(GradPrunerError, match="unknown protocol"):
        evaluate_examples(model, tokenizer, examples, "mc", protocol="vibes")
    with pytest.raises(GradPrunerError, match="needs GenExample"):
        evaluate_examples(model, tokenizer, examples, "gen")
    with pytest.raises(GradPrunerError, match="no examples"):
        evaluate_examples(model, tokenizer, [], "mc")


@pytest.mark.slow
def test_default_model_beats_chance_on_arc_easy():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from gradpruner import assets
    from gradpruner.tasks import get_task

    folder = assets.default_model_dir()
    model = AutoModelForCausalLM.from_pretrained(folder)
    examples = get_task("arc_easy").eval_examples()[:32]
    result = evaluate_mc(model, AutoTokenizer.from_pretrained(folder), examples)
    assert result["acc"] > 0.33 and result["n"] == 32
