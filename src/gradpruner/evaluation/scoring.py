"""Evaluation: multiple choice by log-likelihood, generation by ROUGE-L, and multiple choice by
a generated answer letter.

Log-likelihood scoring follows lm-evaluation-harness: each choice is a (context, continuation)
pair scored by the summed log-probability of the continuation; `acc` takes the best sum,
`acc_norm` the best sum per character of the choice's own text (`MCExample.norm_lengths`: without
the space that joins it to the context; for partial scoring, lm-eval's choices are the contexts
the options complete). Token ids come from
`data.tokenize_pair`, so a pair is tokenised exactly as in training.
"""

from __future__ import annotations

import copy
import inspect
import re
import string
from contextlib import contextmanager
from functools import partial
from typing import Callable, Iterator

import torch

from ..errors import GradPrunerError
from ..progress import Progress
from ..tasks.examples import (ChatExample, Example, GenExample, MCExample, PadCollator,
                              generation_prompt, pad_id, reference_text, tokenize_pair)

PROTOCOLS = ("loglik", "generate")
LETTERS = string.ascii_uppercase


@contextmanager
def _eval_mode(model) -> Iterator[None]:
    """Run in eval mode, then put back the train/eval mode the model had."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _mean(values: list[float]) -> float:
    if not values:
        raise GradPrunerError("no examples to evaluate")
    return sum(values) / len(values)


def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=values.__getitem__)


# ---------------------------------------------------------------- log-likelihood scoring


def continuation_logprobs(model, batch: dict[str, torch.Tensor]) -> list[float]:
    """Summed log-probability of the labelled (continuation) tokens of each row of `batch`.

    Only the positions from the earliest continuation on go through the LM head.
    """
    device = _device(model)
    ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
    labels = batch["labels"].to(device)
    first_label = int((labels != -100).int().argmax(dim=1).min())
    start = max(first_label - 1, 0)  # position whose logits predict the first label
    logits = model(input_ids=ids, attention_mask=mask, use_cache=False,
                   logits_to_keep=ids.shape[1] - start).logits[:, :-1]
    targets = labels[:, start + 1:]
    scored = targets != -100
    logprobs = torch.log_softmax(logits[scored].float(), dim=-1)
    token_logprobs = logprobs.gather(-1, targets[scored].unsqueeze(-1)).squeeze(-1)
    rows = scored.nonzero()[:, 0]
    sums = torch.zeros(len(ids), dtype=torch.float64, device=device)
    return sums.index_add_(0, rows, token_logprobs.double()).tolist()


def choice_pairs(tokenizer, examples: list[MCExample], max_length: int) -> list[tuple[int, int, dict]]:
    """(example, choice, features) of every (context, continuation) pair, longest first so that
    consecutive pairs batch with little padding."""
    pairs = [
        (i, j, tokenize_pair(tokenizer, context, continuation, max_length, ex.chat))
        for i, ex in enumerate(examples)
        for j, (context, continuation) in enumerate(zip(ex.contexts, ex.continuations))
    ]
    pairs.sort(key=lambda pair: len(pair[2]["input_ids"]), reverse=True)
    return pairs


def choice_logprobs(model, tokenizer, examples: list[MCExample], batch_size: int = 16,
                    max_length: int = 1024) -> list[list[float]]:
    """Per example, the summed log-probability of each choice's continuation given its context.

    Pairs whose token ids start with the same context ids (the choices of an ordinary question)
    run that context once: the contexts go through the model with a KV cache, then their
    continuations on that cache (`_score_shared`); `batch_size` contexts a pass, and as many
    continuations a pass. The other pairs (WinoGrande-style items, a context cut differently by
    truncation) and every pair of a model that cannot continue a cache the same way
    (`_cache_keyword`) are scored as whole sequences (`_score_full`), as lm-evaluation-harness
    does. Both give the same sums.
    """
    pairs = choice_pairs(tokenizer, examples, max_length)
    scores = [[0.0] * len(ex.contexts) for ex in examples]
    keyword = _cache_keyword(model)
    groups, single = _shared_contexts(pairs) if keyword else ([], pairs)
    with _eval_mode(model), torch.inference_mode(), Progress(len(pairs), "choices scored") as done:
        if groups:
            _score_shared(model, keyword, groups, pad_id(tokenizer), batch_size, scores, done)
        _score_full(model, single, pad_id(tokenizer), batch_size, scores, done)
    return scores


def _choice_logprobs_full(model, tokenizer, examples: list[MCExample], batch_size: int = 16,
                          max_length: int = 1024) -> list[list[float]]:
    """`choice_logprobs` with every pair scored as a whole sequence (the reference)."""
    pairs = choice_pairs(tokenizer, examples, max_length)
    scores = [[0.0] * len(ex.contexts) for ex in examples]
    with _eval_mode(model), torch.inference_mode(), Progress(len(pairs), "choices scored") as done:
        _score_full(model, pairs, pad_id(tokenizer), batch_size, scores, done)
    return scores


def _score_full(model, pairs: list[tuple[int, int, dict]], pad: int, batch_size: int,
                scores: list[list[float]], done: Progress) -> None:
    """Score each pair as one right-padded sequence, `batch_size` pairs a batch, into `scores`,
    counting the pairs in `done`."""
    collate = PadCollator(pad)
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        sums = continuation_logprobs(model, collate([pair[2] for pair in chunk]))
        for (i, j, _), value in zip(chunk, sums):
            scores[i][j] = value
        done.update(len(chunk))


# Sequence-length dependent RoPE (the frequencies follow the longest position of the forward
# pass): a context run alone would be rotated differently from the same context in its pair.
_LENGTH_DEPENDENT_ROPE = frozenset({"dynamic", "longrope"})
_CACHEABLE_LAYERS = frozenset({"full_attention", "sliding_attention"})


def _rope_types(value) -> set[str]:
    """Every `rope_type` named in a config's rope parameters (nested per layer type or not)."""
    if isinstance(value, dict):
        found = {value["rope_type"]} if isinstance(value.get("rope_type"), str) else set()
        return found.union(*(_rope_types(v) for v in value.values() if isinstance(v, dict)))
    return set()


def _cache_keyword(model) -> str | None:
    """The keyword of the base model's forward that takes a KV cache ("cache", or
    "past_key_values" in older transformers) when a context run with a cache and then continued
    gives the scores of the whole sequence; None when it may not, so pairs are scored whole.

    That needs causal attention over full or sliding-window layers only, kept in a
    `DynamicCache` of plain attention layers (no linear or recurrent state, no KV sharing,
    no chunked attention, whose chunks move with left padding), RoPE that does not depend on
    the sequence length, and no PEFT prompt learning (virtual tokens before the input).
    """
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

    peft_config = getattr(model, "active_peft_config", None)
    if peft_config is not None and getattr(peft_config, "is_prompt_learning", False):
        return None
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "config", None)
    if config is None or not hasattr(config, "get_text_config"):
        return None
    text = config.get_text_config(decoder=True)
    if (not getattr(text, "is_causal", True) or getattr(text, "use_bidirectional_attention", False)
            or getattr(text, "attention_chunk_size", None) is not None):
        return None
    layer_types = getattr(text, "layer_types", None)
    if layer_types is not None and not set(layer_types) <= _CACHEABLE_LAYERS:
        return None
    rope = _rope_types(getattr(text, "rope_parameters", None)) | _rope_types(
        getattr(text, "rope_scaling", None))
    if rope & _LENGTH_DEPENDENT_ROPE:
        return None
    layers = DynamicCache(config=config).layers
    plain = (DynamicLayer, DynamicSlidingWindowLayer)
    if (len(layers) != getattr(text, "num_hidden_layers", -1)
            or any(type(layer) not in plain for layer in layers)):
        return None
    parameters = inspect.signature(base.forward).parameters
    return next((name for name in ("cache", "past_key_values") if name in parameters), None)


def _shared_contexts(pairs: list[tuple[int, int, dict]]
                     ) -> tuple[list[tuple[list[int], list[tuple[int, int, list[int]]]]],
                                list[tuple[int, int, dict]]]:
    """Split pairs into groups that share their context ids and the pairs scored whole.

    A pair's context is its token ids before the first labelled one, read from the pair itself:
    so a context cut by truncation only groups with pairs cut the same way. A pair whose labels
    are not exactly its ids after the context, one without a context token, and a context that
    only one pair has (WinoGrande-style items) are scored whole. Groups come as
    (context ids, [(example, choice, continuation ids)]), longest context first.
    """
    grouped: dict[tuple[int, ...], list[tuple[int, int, dict]]] = {}
    single = []
    for pair in pairs:
        ids, labels = pair[2]["input_ids"], pair[2]["labels"]
        n_context = next((k for k, label in enumerate(labels) if label != -100), len(labels))
        if n_context == 0 or labels[n_context:] != ids[n_context:]:
            single.append(pair)
        else:
            grouped.setdefault(tuple(ids[:n_context]), []).append(pair)
    groups = []
    for context, members in grouped.items():
        if len(members) == 1:
            single.extend(members)
        else:
            groups.append((list(context), [(i, j, f["input_ids"][len(context):])
                                           for i, j, f in members]))
    single.sort(key=lambda pair: len(pair[2]["input_ids"]), reverse=True)
    groups.sort(key=lambda group: len(group[0]), reverse=True)
    return groups, single


def _score_shared(model, keyword: str, groups: list, pad: int, batch_size: int,
                  scores: list[list[float]], done: Progress) -> None:
    """Score the groups of `_shared_contexts` into `scores`: `batch_size` contexts a pass, their
    continuations `batch_size` a pass; the pairs are counted in `done`."""
    batches = [groups[k:k + batch_size] for k in range(0, len(groups), batch_size)]
    for batch in batches:
        sums = _shared_context_logprobs(model, keyword, batch, pad, batch_size)
        for (i, j, _), value in zip((m for _, members in batch for m in members), sums):
            scores[i][j] = value
        done.update(len(sums))


def _shared_context_logprobs(model, keyword: str, groups: list, pad: int,
                             rows_per_pass: int) -> list[float]:
    """Summed log-probabilities of the continuations of `groups` (context ids, members), in order.

    1. The contexts, left-padded (every last context token at the end; positions count real
       tokens only, so a row is rotated as when alone), run once with a fresh `DynamicCache`;
       the logits of their last position predict the first continuation token.
    2. The continuations, longest first, `rows_per_pass` at a time, right-padded, run on a copy
       of the cache with one row per continuation (`_cache_rows`), with the attention mask of
       context + continuation and positions that go on from each context's length. Left padding
       keeps the distances between real tokens, so sliding windows see what they see in the
       whole sequence. Continuations of one token need no second pass.
    """
    from transformers import DynamicCache

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    device = _device(model)
    contexts = [context for context, _ in groups]
    width = max(len(context) for context in contexts)
    ids = torch.tensor([[pad] * (width - len(c)) + c for c in contexts], dtype=torch.long,
                       device=device)
    lengths = torch.tensor([len(c) for c in contexts], device=device)
    mask = (torch.arange(width, device=device) >= (width - lengths)[:, None]).long()
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    cache = DynamicCache(config=base.config)
    first = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                  logits_to_keep=1, **{keyword: cache}).logits[:, -1]

    members = [(g, cont) for g, (_, conts) in enumerate(groups) for _, _, cont in conts]
    order = sorted(range(len(members)), key=lambda r: len(members[r][1]), reverse=True)
    sums = torch.zeros(len(members), dtype=torch.float64, device=device)
    for start in range(0, len(order), rows_per_pass):
        chunk = order[start:start + rows_per_pass]
        rows = torch.tensor(chunk, device=device)
        row_group = torch.tensor([members[r][0] for r in chunk], device=device)
        steps = max(1, len(members[chunk[0]][1]))
        conts = torch.tensor([members[r][1] + [pad] * (steps - len(members[r][1])) for r in chunk],
                             dtype=torch.long, device=device)
        n_tokens = torch.tensor([len(members[r][1]) for r in chunk], device=device)
        scored = torch.arange(steps, device=device) < n_tokens[:, None]  # (rows, steps)
        # predicted[r, t] predicts conts[r, t]: the context's last logits, then continuation logits
        predicted = [first.index_select(0, row_group)[:, None]]
        if steps > 1:
            attention = torch.cat([mask.index_select(0, row_group), scored.long()], dim=1)
            cont_positions = lengths.index_select(0, row_group)[:, None] + torch.arange(
                steps, device=device)
            keep = torch.arange(steps - 1, device=device)  # the last position predicts nothing
            predicted.append(model(input_ids=conts, attention_mask=attention,
                                   position_ids=cont_positions, use_cache=True,
                                   logits_to_keep=keep,
                                   **{keyword: _cache_rows(cache, row_group)}).logits)
        logits = torch.cat(predicted, dim=1)
        logprobs = torch.log_softmax(logits[scored].float(), dim=-1)
        token_logprobs = logprobs.gather(-1, conts[scored].unsqueeze(-1)).squeeze(-1)
        sums.index_add_(0, rows[scored.nonzero()[:, 0]], token_logprobs.double())
    return sums.tolist()


def _cache_rows(cache, index: torch.Tensor):
    """A copy of a `DynamicCache` holding rows `index` of every layer; `cache` stays as it is.

    The copy's layers are shallow copies whose tensors `reorder_cache` replaces (index_select);
    a dynamic layer's `update` concatenates into new tensors too, so a pass on the copy leaves
    the shared context cache for the next continuations.
    """
    rows = copy.copy(cache)
    rows.layers = [copy.copy(layer) for layer in cache.layers]
    rows.reorder_cache(index)
    return rows


def evaluate_mc(model, tokenizer, examples: list[MCExample], batch_size: int = 16) -> dict:
    """Accuracy of multiple choice by log-likelihood: {"acc", "acc_norm", "n"}."""
    return mc_accuracy(examples, choice_logprobs(model, tokenizer, examples, batch_size))


def mc_accuracy(examples: list[MCExample], scores: list[list[float]]) -> dict:
    """{"acc", "acc_norm", "n"} of per-choice summed log-probabilities (`choice_logprobs`)."""
    hits, hits_norm = [], []
    for ex, logprobs in zip(examples, scores):
        per_char = [lp / n for lp, n in zip(logprobs, ex.norm_lengths())]
        hits.append(float(_argmax(logprobs) == ex.gold))
        hits_norm.append(float(_argmax(per_char) == ex.gold))
    return {"acc": _mean(hits), "acc_norm": _mean(hits_norm), "n": len(examples)}


# ---------------------------------------------------------------- generation


def _left_pad(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ids and attention mask, so every row's last prompt token is at the end."""
    width = max(len(row) for row in rows)
    ids = [[pad] * (width - len(row)) + row for row in rows]
    mask = [[0] * (width - len(row)) + [1] * len(row) for row in rows]
    return torch.tensor(ids), torch.tensor(mask)


def generate_texts(model, tokenizer, prompt_ids: list[list[int]], max_new_tokens: int = 128,
                   batch_size: int = 8) -> list[str]:
    """Greedy continuations of already tokenised prompts, decoded without special tokens."""
    from transformers import GenerationConfig

    pad = pad_id(tokenizer)
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False,
                              pad_token_id=pad, eos_token_id=tokenizer.eos_token_id)
    order = sorted(range(len(prompt_ids)), key=lambda k: len(prompt_ids[k]), reverse=True)
    texts = [""] * len(prompt_ids)
    device = _device(model)
    starts = range(0, len(order), batch_size)
    with _eval_mode(model), torch.inference_mode(), Progress(len(order), "generated") as progress:
        for start in starts:
            chunk = order[start:start + batch_size]
            ids, mask = _left_pad([prompt_ids[k] for k in chunk], pad)
            out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                 generation_config=config)
            for k, row in zip(chunk, out[:, ids.shape[1]:]):
                texts[k] = tokenizer.decode(row, skip_special_tokens=True).strip()
            progress.update(len(chunk))
    return texts


def _tokens(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def _lcs_length(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence (dynamic programming, one row at a time)."""
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure on lower-cased word tokens (punctuation and whitespace split)."""
    predicted, expected = _tokens(prediction), _tokens(reference)
    common = _lcs_length(predicted, expected)
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


Generate = Callable[[list[list[int]], int], list[str]]  # prompts' ids, max new tokens -> texts


def evaluate_generation(model, tokenizer, examples: list[GenExample | ChatExample],
                        max_new_tokens: int = 128, batch_size: int = 8) -> dict:
    """Mean ROUGE-L of the model's greedy generations against the reference completions:
    {"rouge_l", "n"} (`score_generations`)."""
    generate = partial(generate_texts, model, tokenizer, batch_size=batch_size)
    return score_generations(tokenizer, examples, generate, max_new_tokens)


def score_generations(tokenizer, examples: list[GenExample | ChatExample], generate: Generate,
                      max_new_tokens: int = 128, max_prompt_tokens: int = 1024) -> dict:
    """Mean ROUGE-L of `generate`'s greedy continuations against the reference completions:
    {"rouge_l", "n"}. Prompts are tokenised as in training (plain prompts with special tokens,
    conversations in the chat template up to their last assistant turn) and cut from the left
    to `max_prompt_tokens`."""
    prompts = [generation_prompt(tokenizer, ex, max_prompt_tokens) for ex in examples]
    predictions = generate(prompts, max_new_tokens)
    scores = [rouge_l(p, reference_text(ex)) for p, ex in zip(predictions, examples)]
    return {"rouge_l": _mean(scores), "n": len(examples)}


# ---------------------------------------------------------------- answer-letter protocol


def _question_and_options(example: MCExample) -> tuple[str, list[str]]:
    """The question text and the option texts of a multiple-choice example."""
    if len(set(example.contexts)) == 1:
        question = re.sub(r"\s*Answer:\s*$", "", example.contexts[0]).strip()
        return question, [c.strip() for c in example.continuations]
    options = [(ctx + cont).strip() for ctx, cont in zip(example.contexts, example.continuations)]
    return "Which of these is the most plausible?", options


def _letter_prompt(tokenizer, example: MCExample) -> list[int]:
    """Token ids of the question with lettered options, in the chat template when there is one."""
    question, options = _question_and_options(example)
    if len(options) > len(LETTERS):
        raise GradPrunerError(f"cannot letter {len(options)} options (at most {len(LETTERS)})")
    lines = [f"{letter}. {option}" for letter, option in zip(LETTERS, options)]
    text = "\n".join([question, *lines, "Answer with the letter of the correct option."])
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
        )
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    return tokenizer(text + "\nAnswer:")["input_ids"]


def _normalise(text: str) -> str:
    return " ".join(text.lower().strip().rstrip(".").split())


_LETTER = re.compile(r"\(?([A-Z])(?:[.):]|\s|$)")


def predicted_choice(response: str, options: list[str]) -> int | None:
    """The option a generated answer names: its exact text, else a leading letter ("B", "(B)",
    "B. ..."); None when it names none."""
    text = response.strip()
    normal = _normalise(text)
    for i, option in enumerate(options):
        if _normalise(option) == normal:
            return i
    match = _LETTER.match(text)
    if match and LETTERS.index(match.group(1)) < len(options):
        return LETTERS.index(match.group(1))
    return None


def evaluate_exact_match(model, tokenizer, examples: list[MCExample], batch_size: int = 16,
                         max_new_tokens: int = 8) -> dict:
    """Share of the model's greedy answers that name the gold option (`score_letter_answers`)."""
    generate = partial(generate_texts, model, tokenizer, batch_size=batch_size)
    return score_letter_answers(tokenizer, examples, generate, max_new_tokens)


def score_letter_answers(tokenizer, examples: list[MCExample], generate: Generate,
                         max_new_tokens: int = 8) -> dict:
    """Share of `generate`'s greedy answers to the lettered questions that name the gold option
    by letter or text: {"exact_match", "n"}."""
    prompts = [_letter_prompt(tokenizer, ex) for ex in examples]
    responses = generate(prompts, max_new_tokens)
    hits = [
        float(predicted_choice(response, _question_and_options(ex)[1]) == ex.gold)
        for response, ex in zip(responses, examples)
    ]
    return {"exact_match": _mean(hits), "n": len(examples)}


# ---------------------------------------------------------------- dispatch


def evaluate_examples(model, tokenizer, examples: list[Example], kind: str,
                      protocol: str = "loglik", limit: int | None = None,
                      batch_size: int = 16) -> dict:
    """Evaluate `examples` of a task of `kind` ("mc" or "gen"), the first `limit` only if given.

    Multiple choice: "loglik" scores choices by log-likelihood (`evaluate_mc`), "generate"
    asks for the answer letter (`evaluate_exact_match`). Generation tasks are always scored by
    ROUGE-L of greedy generations. The model is left in the train/eval mode it had.
    """
    if protocol not in PROTOCOLS:
        raise GradPrunerError(f"unknown protocol {protocol!r}; known: {', '.join(PROTOCOLS)}")
    expected = {"mc": (MCExample,), "gen": (GenExample, ChatExample)}.get(kind)
    if expected is None:
        raise GradPrunerError(f"unknown task kind {kind!r}; known: mc, gen")
    examples = examples[:limit] if limit is not None else examples
    if not all(isinstance(ex, expected) for ex in examples):
        names = " or ".join(cls.__name__ for cls in expected)
        raise GradPrunerError(f"a {kind!r} task needs {names} examples only")
    if kind == "gen":
        return evaluate_generation(model, tokenizer, examples, batch_size=batch_size)
    if protocol == "generate":
        return evaluate_exact_match(model, tokenizer, examples, batch_size=batch_size)
    return evaluate_mc(model, tokenizer, examples, batch_size=batch_size)
