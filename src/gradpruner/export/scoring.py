"""Multiple choice by log-likelihood through llama.cpp: `gradpruner eval --model FILE.gguf`.

The same items, prompts and token ids as the Hugging Face path (`evaluate.choice_pairs`, with the
tokenizer the export copied beside the file) and the same accuracy (`evaluate.mc_accuracy`); only
the logits come from llama.cpp. Pairs run in item order, each on the cache of the longest prefix it
shares with the sequence before it, so a question's context runs once for all its choices.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..tasks.examples import MCExample
from ..errors import GradPrunerError
from ..evaluation.scoring import choice_pairs, mc_accuracy
from ..progress import Progress
from .check import open_gguf

MAX_LENGTH = 1024  # tokens of a pair, as `evaluate.choice_logprobs` cuts them


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


def evaluate_gguf(path: str, examples: list, kind: str, protocol: str = "loglik") -> dict:
    """{"acc", "acc_norm", "n", "eval_seconds", "items_per_second"} of the GGUF at `path` on
    multiple-choice `examples`, scored by log-likelihood through llama.cpp."""
    if kind != "mc" or protocol != "loglik":
        raise GradPrunerError("a GGUF file is evaluated on multiple-choice tasks by log-likelihood "
                              "(--protocol loglik); for generation, evaluate the model folder")
    file = gguf_file(path)
    tokenizer = gguf_tokenizer(file)
    start = time.perf_counter()
    pairs = choice_pairs(tokenizer, examples, MAX_LENGTH)
    llm = open_gguf(file, max(len(f["input_ids"]) for _, _, f in pairs) + 1)
    try:
        metrics = mc_accuracy(examples, choice_logprobs(llm, examples, pairs))
    finally:
        llm.close()
    seconds = time.perf_counter() - start
    return {**metrics, "eval_seconds": seconds, "items_per_second": len(examples) / seconds}
