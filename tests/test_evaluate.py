"""Scoring: log-likelihood of choices, batching, acc vs acc_norm, ROUGE-L, generation, dispatch."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, processors
from transformers import PreTrainedTokenizerFast

from gradpruner.tasks.examples import GenExample, MCExample
from gradpruner.errors import GradPrunerError
from gradpruner.evaluation.scoring import (_cache_keyword, _choice_logprobs_full, _shared_contexts,
                                 choice_logprobs, choice_pairs, evaluate_examples,
                                 evaluate_exact_match, evaluate_generation, evaluate_mc,
                                 generate_texts, mc_accuracy, predicted_choice, rouge_l)
from gradpruner.tasks.packaged import winogrande_from_doc
from tiny_models import ARCHS, tiny_model

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
    assert long < short and long / len(ex.choices[0]) > short / len(ex.choices[1])
    assert evaluate_mc(model, tokenizer, [ex]) == {"acc": 0.0, "acc_norm": 1.0, "n": 1}


def test_acc_norm_divides_by_the_choice_without_the_joining_space():
    """Hand-computed: choice 0 " ab" scores -2.9, choice 1 " abcd" -5.0. Per character of the
    choice ("ab": 2, "abcd": 4) choice 1 wins (-1.45 < -1.25); per character of the continuation
    with its space (3, 5) choice 0 would (-0.967 > -1.0). A choice that brings its own leading
    space keeps it: " xy" is 3 characters, as lm-eval counts it."""
    ex = MCExample.from_question("Q:", ["ab", "abcd"], gold=1)
    assert ex.continuations == (" ab", " abcd") and ex.norm_lengths() == [2, 4]
    assert mc_accuracy([ex], [[-2.9, -5.0]]) == {"acc": 0.0, "acc_norm": 1.0, "n": 1}
    spaced = MCExample.from_question("Q:", [" xy", "abcd"], gold=0)
    assert spaced.continuations == (" xy", " abcd") and spaced.norm_lengths() == [3, 4]
    # -2.0 / 3 = -0.667 beats -3.0 / 4 = -0.75 (stripped of its space, " xy" would lose: -1.0)
    assert mc_accuracy([spaced], [[-2.0, -3.0]])["acc_norm"] == 1.0
    # no space joins a prompt that ends in one: the continuation is the choice
    assert MCExample.from_question("Q: ", ["ab"], 0).norm_lengths() == [2]


def lm_eval_process_results(choices: list[str], gold: int, logprobs: list[float],
                            multiple_input: bool = False) -> dict:
    """lm-eval 0.4.13's own `ConfigurableTask.process_results` for a multiple-choice doc whose
    `doc_to_choice` is `choices`, on the given log-likelihoods."""
    task_module = pytest.importorskip("lm_eval.api.task")
    task = SimpleNamespace(
        config=SimpleNamespace(process_results=None), OUTPUT_TYPE="multiple_choice",
        _metric_fn_list={"acc": None, "acc_norm": None}, multiple_input=multiple_input,
        multiple_target=False, doc_to_choice=lambda doc: choices,
        doc_to_target=lambda doc: gold, doc_to_text=lambda doc: gold)
    return task_module.ConfigurableTask.process_results(
        task, {}, [(lp, False) for lp in logprobs])


@pytest.mark.parametrize("choices", [
    ["ab", "abcd", "a longer answer"],         # no leading space: lm-eval puts " " before each
    [" ab", " abcd", " a longer answer"],      # every choice brings its own space
    [" ab", "abcd", "  a longer answer"],      # mixed
])
def test_acc_norm_equals_lm_eval_process_results(choices):
    rng = random.Random(0)
    for trial in range(200):
        logprobs = [-rng.uniform(0.5, 12.0) for _ in choices]
        gold = trial % len(choices)
        ours = mc_accuracy([MCExample.from_question("Question: q?\nAnswer:", choices, gold)],
                           [logprobs])
        theirs = lm_eval_process_results(choices, gold, logprobs)
        assert (ours["acc"], ours["acc_norm"]) == (theirs["acc"], theirs["acc_norm"])


def test_winogrande_acc_norm_equals_lm_eval_process_results():
    """Partial scoring: lm-eval's WinoGrande names the filled contexts as its choices."""
    winogrande = pytest.importorskip("lm_eval.tasks.winogrande.preprocess_winogrande")
    doc = {"sentence": "Anna gave Bob the book because _ was done with it.",
           "option1": "Anna", "option2": "Bobby-Jo", "answer": "2"}
    ex = winogrande_from_doc(doc)
    assert list(ex.choices) == winogrande.doc_to_choice(doc)
    assert ex.continuations == (" " + winogrande.doc_to_target(doc),) * 2
    rng = random.Random(1)
    for _ in range(100):
        logprobs = [-rng.uniform(5.0, 6.0), -rng.uniform(5.0, 6.0)]
        ours = mc_accuracy([ex], [logprobs])
        theirs = lm_eval_process_results(winogrande.doc_to_choice(doc),
                                         winogrande.doc_to_text(doc), logprobs, multiple_input=True)
        assert (ours["acc"], ours["acc_norm"]) == (theirs["acc"], theirs["acc_norm"])


# ---------------------------------------------------------------- shared contexts

# Contexts longer than the tiny models' sliding window (16 tokens) batched with short ones (left
# padding), 2 to 5 choices, one-token and empty continuations.
SHARED = [
    MCExample.from_question("Question: which of these is a fruit, and why?\nAnswer:",
                            ["an apple", "a stone", "bread", "x"], 0),
    MCExample.from_question("Hi", ["a long, long answer with many characters", "b"], 1),
    MCExample.from_question("Pick one of five:", ["a", "bb", "ccc", "dddd", "eeeee"], 2),
    MCExample.from_question("x" * 60, ["y", "zz", "abc"], 1),
    MCExample(("Empty or not:",) * 2, ("", " e"), 1),
]
WINOGRANDE = [  # different contexts, one shared continuation: nothing to share
    MCExample(("The cat sat on", "The dog lay on"), (" the mat.", " the mat."), 0),
    MCExample(("Anna gave Bob the book because Anna", "Anna gave Bob the book because Bob"),
              (" was done with it.", " was done with it."), 1),
]


def assert_rows_close(rows, reference, tol=1e-4):
    assert [len(row) for row in rows] == [len(row) for row in reference]
    for row, expected in zip(rows, reference):
        assert row == pytest.approx(expected, abs=tol)


class ForwardLog:
    """The real (unpadded) token ids of every row of every fresh pass (no cache behind it)."""

    def __init__(self, model):
        self.fresh: list[tuple[int, ...]] = []
        self.cached_passes = 0
        model.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        ids, mask = kwargs["input_ids"], kwargs["attention_mask"]
        if mask.shape[1] > ids.shape[1]:
            self.cached_passes += 1
            return
        self.fresh += [tuple(row[keep.bool()].tolist()) for row, keep in zip(ids, mask)]


@pytest.mark.parametrize("arch", ARCHS)
def test_shared_contexts_match_whole_sequences_for_every_architecture(arch, tokenizer):
    model = tiny_model(arch, seed=3)
    assert _cache_keyword(model) is not None  # every tiny architecture takes the fast path
    examples = SHARED + WINOGRANDE
    reference = _choice_logprobs_full(model, tokenizer, examples)
    for batch_size in (1, 4, 64):
        assert_rows_close(choice_logprobs(model, tokenizer, examples, batch_size=batch_size),
                          reference)


def test_each_shared_context_runs_once(tokenizer):
    model = tiny_model("mistral", seed=3)
    log = ForwardLog(model)
    examples = SHARED + WINOGRANDE
    choice_logprobs(model, tokenizer, examples, batch_size=8)
    contexts = [tuple(tokenizer(ex.contexts[0])["input_ids"]) for ex in SHARED]
    whole = [tuple(f["input_ids"]) for i, _, f in choice_pairs(tokenizer, examples, 1024)
             if i >= len(SHARED)]
    # each shared context once, no pair of a shared context whole; WinoGrande pairs whole
    assert sorted(log.fresh) == sorted(contexts + whole)
    # the 5 contexts in one pass, their 16 continuations in two passes of 8 on copies of its cache
    assert log.cached_passes == 2


def test_one_token_continuations_need_only_the_context_pass(tokenizer):
    model = tiny_model("llama", seed=3)
    log = ForwardLog(model)
    examples = [MCExample(("Q: which? ",) * 3, ("a", "b", "c"), 1),
                MCExample(("Another one: ",) * 2, ("x", "y"), 0)]
    scores = choice_logprobs(model, tokenizer, examples)
    assert len(log.fresh) == 2 and log.cached_passes == 0
    assert_rows_close(scores, _choice_logprobs_full(model, tokenizer, examples))


def test_items_with_different_numbers_of_choices(tokenizer):
    model = tiny_model("qwen2", seed=4)
    examples = [MCExample.from_question(f"Item {n}: choose well.", [c * (k + 1) for k, c in
                                        enumerate("abcdefg"[:n])], 0) for n in (1, 2, 3, 5, 7)]
    scores = choice_logprobs(model, tokenizer, examples, batch_size=6)
    assert [len(row) for row in scores] == [1, 2, 3, 5, 7]
    one_by_one = [_choice_logprobs_full(model, tokenizer, [ex], batch_size=1)[0] for ex in examples]
    assert_rows_close(scores, one_by_one)


def test_shared_and_winogrande_items_mixed(tokenizer):
    model = tiny_model("gemma2", seed=5)
    examples = [WINOGRANDE[0], SHARED[0], WINOGRANDE[1], SHARED[3], SHARED[1], WINOGRANDE[0]]
    groups, single = _shared_contexts(choice_pairs(tokenizer, examples, 1024))
    # the repeated WinoGrande item shares its two contexts with itself
    assert len(groups) == 5 and len(single) == 2
    one_by_one = [_choice_logprobs_full(model, tokenizer, [ex], batch_size=1)[0] for ex in examples]
    for batch_size in (2, 5, 16):
        assert_rows_close(choice_logprobs(model, tokenizer, examples, batch_size=batch_size),
                          one_by_one)


@pytest.mark.parametrize("arch", ["llama", "mistral", "gemma3_text"])
def test_context_longer_than_max_length(arch, tokenizer):
    """The context is cut from the left to fit each pair in max_length: choices of one length
    keep the same context tokens (shared), a longer choice keeps fewer (scored whole)."""
    model = tiny_model(arch, seed=6)
    example = MCExample.from_question("A long context, " * 5 + "then the question:",
                                      ["ab", "cd", "efghij", "kl"], 2)
    pairs = choice_pairs(tokenizer, [example], 24)
    assert all(len(f["input_ids"]) == 24 for _, _, f in pairs)
    groups, single = _shared_contexts(pairs)
    assert [sorted(j for _, j, _ in members) for _, members in groups] == [[0, 1, 3]]
    assert [j for _, j, _ in single] == [2]
    reference = _choice_logprobs_full(model, tokenizer, [example], max_length=24)
    assert_rows_close(choice_logprobs(model, tokenizer, [example], max_length=24), reference)


def test_models_that_cannot_continue_a_cache_score_whole_sequences(tokenizer):
    bidirectional = tiny_model("gemma3_text", use_bidirectional_attention=True)
    dynamic_rope = tiny_model("llama", rope_parameters={"rope_type": "dynamic", "factor": 2.0,
                                                        "rope_theta": 10000.0})
    for model in (bidirectional, dynamic_rope):
        assert _cache_keyword(model) is None
        log = ForwardLog(model)
        scores = choice_logprobs(model, tokenizer, SHARED)
        assert log.cached_passes == 0
        assert_rows_close(scores, _choice_logprobs_full(model, tokenizer, SHARED))


def test_lora_model_takes_the_fast_path(tokenizer):
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    model = get_peft_model(tiny_model("llama", seed=7), lora)
    assert _cache_keyword(model) == _cache_keyword(model.get_base_model()) is not None
    reference = _choice_logprobs_full(model, tokenizer, SHARED + WINOGRANDE)
    assert_rows_close(choice_logprobs(model, tokenizer, SHARED + WINOGRANDE), reference)


@pytest.mark.parametrize("arch", ["llama", "mistral", "gemma2"])
def test_shared_contexts_in_bf16(arch, tokenizer):
    model = tiny_model(arch, seed=3).to(torch.bfloat16)
    reference = _choice_logprobs_full(model, tokenizer, SHARED + WINOGRANDE)
    assert_rows_close(choice_logprobs(model, tokenizer, SHARED + WINOGRANDE), reference, tol=2e-2)


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


@pytest.mark.slow
def test_default_model_shared_contexts_match_whole_sequences():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from gradpruner import assets
    from gradpruner.evaluation.scoring import mc_accuracy
    from gradpruner.tasks import get_task

    folder = assets.default_model_dir()
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    examples = get_task("arc_easy").eval_examples()[:32]
    assert _cache_keyword(model) is not None
    fast = choice_logprobs(model, tokenizer, examples)
    whole = _choice_logprobs_full(model, tokenizer, examples)
    assert_rows_close(fast, whole)
    assert mc_accuracy(examples, fast) == mc_accuracy(examples, whole)
