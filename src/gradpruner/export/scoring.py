"""A task through llama.cpp: `gradpruner eval --model FILE.gguf`.

The same items, prompts, token ids and metrics as the Hugging Face path (`evaluation.scoring`, with
the tokenizer the export copied beside the file); only the logits and the greedy tokens come from
llama.cpp. Multiple choice by log-likelihood runs the pairs in item order, each on the cache of the
longest prefix it shares with the sequence before it, so a question's context runs once for all its
choices; generation (ROUGE-L, or the answer letter) stops at the end-of-sequence token or the same
token limit as the Hugging Face path.
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path

import numpy as np

from ..tasks.examples import MCExample
from ..errors import GradPrunerError
from ..evaluation.scoring import (PROTOCOLS, choice_pairs, mc_accuracy, score_generations,
                                  score_letter_answers)
from ..progress import Progress
from .check import open_gguf

MAX_LENGTH = 1024  # tokens of a pair or prompt, as the Hugging Face path cuts them
GENERATED_TOKENS = 128  # the most a generation adds (`scoring.score_generations`)


def gguf_file(path: str) -> Path:
    """`path` as a Path, refused in one line when it is no file."""
    if not Path(path).is_file():
        raise GradPrunerError(f"GGUF file not found: {path}")
    return Path(path)


def gguf_tokenizer(path: Path):
    """The Hugging Face tokenizer the export wrote beside the GGUF file."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path.parent)
    except (OSError, ValueError):
        raise GradPrunerError(f"no tokenizer beside {path}: evaluate a file in a folder written by "
                              "`gradpruner export`, which copies the model's tokenizer there") from None


def choice_logprobs(llm, examples: list[MCExample], pairs: list[tuple[int, int, dict]]
                    ) -> list[list[float]]:
    """Per example, the summed log-probability (from llama.cpp's logits) of each choice's
    continuation given its context; `pairs` are `evaluate.choice_pairs` of the examples."""
    pairs = sorted(pairs, key=lambda pair: pair[:2])
    scores = [[0.0] * len(ex.contexts) for ex in examples]
    llm.reset()
    with Progress(len(pairs), "choices scored") as done:
        for i, j, features in pairs:
            scores[i][j] = _pair_logprob(llm, features["input_ids"], features["labels"])
            done.update(1)
    return scores


def _pair_logprob(llm, ids: list[int], labels: list[int]) -> float:
    """Summed log-probability of the labelled tokens of one sequence, run on the cache of the
    longest prefix it shares with the sequence run before."""
    cached = llm.input_ids[:llm.n_tokens].tolist()
    shared = next((k for k, (a, b) in enumerate(zip(cached, ids)) if a != b), min(len(cached), len(ids)))
    llm.n_tokens = min(shared, len(ids) - 1)  # at least one token runs, so the cache is cut there
    llm.eval(ids[llm.n_tokens:])
    rows = [t for t in range(1, len(ids)) if labels[t] != -100]
    picked = np.asarray(llm.scores[[t - 1 for t in rows]], dtype=np.float64)  # predicting rows
    top = picked.max(axis=1, keepdims=True)
    log_norm = top[:, 0] + np.log(np.exp(picked - top).sum(axis=1))
    return float((picked[np.arange(len(rows)), [ids[t] for t in rows]] - log_norm).sum())


def generate_gguf(llm, tokenizer, prompt_ids: list[list[int]], max_new_tokens: int) -> list[str]:
    """Greedy continuations by llama.cpp of already tokenised prompts, decoded as the Hugging
    Face path decodes them (without special tokens)."""
    stops = _eos_ids(tokenizer)  # where the Hugging Face path stops
    texts = []
    with Progress(len(prompt_ids), "generated") as done:
        for ids in prompt_ids:
            tokens: list[int] = []
            for token in llm.generate(ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, reset=True):
                if token in stops:
                    break
                tokens.append(token)
                if len(tokens) >= max_new_tokens:
                    break
            texts.append(tokenizer.decode(tokens, skip_special_tokens=True).strip())
            done.update(1)
    return texts


def _eos_ids(tokenizer) -> set[int]:
    eos = tokenizer.eos_token_id
    return set(eos) if isinstance(eos, list) else ({eos} if eos is not None else set())


def evaluate_gguf(path: str, examples: list, kind: str, protocol: str = "loglik") -> dict:
    """The metrics of the GGUF at `path` on `examples` of a task of `kind` ("mc" or "gen"), as
    `evaluation.scoring.evaluate_examples` gives them for a Hugging Face model, with
    "eval_seconds" and "items_per_second"."""
    if protocol not in PROTOCOLS:
        raise GradPrunerError(f"unknown protocol {protocol!r}; known: {', '.join(PROTOCOLS)}")
    file = gguf_file(path)
    tokenizer = gguf_tokenizer(file)
    start = time.perf_counter()
    if kind == "mc" and protocol == "loglik":
        metrics = _loglik_accuracy(file, tokenizer, examples)
    else:
        llm = open_gguf(file, MAX_LENGTH + GENERATED_TOKENS)
        try:
            generate = partial(generate_gguf, llm, tokenizer)
            metrics = (score_generations(tokenizer, examples, generate) if kind == "gen"
                       else score_letter_answers(tokenizer, examples, generate))
        finally:
            llm.close()
    seconds = time.perf_counter() - start
    return {**metrics, "eval_seconds": seconds, "items_per_second": len(examples) / seconds}


def _loglik_accuracy(file: Path, tokenizer, examples: list[MCExample]) -> dict:
    """`mc_accuracy` of the choices' log-likelihoods by llama.cpp."""
    pairs = choice_pairs(tokenizer, examples, MAX_LENGTH)
    llm = open_gguf(file, max(len(f["input_ids"]) for _, _, f in pairs) + 1)
    try:
        return mc_accuracy(examples, choice_logprobs(llm, examples, pairs))
    finally:
        llm.close()
