"""The self-check of an exported GGUF: loaded in llama.cpp (llama-cpp-python) and compared with the
Hugging Face model it came from on fixed prompts, one of them longer than the model's sliding
window (a cut that breaks llama.cpp's assumed attention pattern shows there, and through Gemma 3's
two RoPE bases on short prompts too).

Per prompt: whether llama.cpp tokenizes the text as transformers does, and, on the same token ids
(transformers' own, so a tokenization difference does not hide the model's), the share of positions
whose top-1 next token agrees and the largest |logit difference|. Float files (f32, f16, bf16) pass
only with equal tokenizations and a largest difference within `TOLERANCE` of the logits' scale;
quantized files are measured and reported, never refused (rounding changes their logits by design).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .llamacpp import quiet_llama_cpp

# Largest |logit difference| a float file may show, as a fraction of the largest |logit| the
# Hugging Face model gives on the prompts (its scale). Measured on the tests' pruned tiny models
# (cache in f32): f32 files differ by 3e-6 of the scale (Llama, Mistral, Qwen3) to 1e-3 (Gemma's
# approximated GELU); without the per-layer pattern a pruned Gemma 3 differs by 0.48 of it and a
# Gemma 2 by 0.97.
TOLERANCE = {"f32": 0.005, "f16": 0.02, "bf16": 0.05}

PLAIN_PROMPTS = (
    ("capital", "The capital of France is"),
    ("question", "Question: Which animal barks? Answer: a dog"),
    ("code", "def add(a, b):\n    return a + b\n\nprint(add(2, 3))"),
    ("numbers", "1, 2, 3, 4, 5, 6, 7, 8,"),
)
CHAT_MESSAGE = "Name three colours of the rainbow."
LONG_TEXT = ("The river bends twice before it reaches the old mill, where the water slows and the "
             "children of the village learn to swim in the summer. ")
LONG_MIN_TOKENS = 96  # the long prompt's length without a sliding window


@dataclass(frozen=True)
class PromptCheck:
    """One prompt: its name, its length in tokens (transformers'), whether llama.cpp tokenizes it
    the same, the share of positions whose top-1 agrees, and the largest |logit difference|."""

    name: str
    tokens: int
    tokens_equal: bool
    top1_agreement: float
    max_abs_logit_diff: float


@dataclass(frozen=True)
class ExportCheck:
    """One GGUF file against the Hugging Face model: per prompt, and the verdict.

    `tolerance` is the largest allowed |logit difference| (None for quantized files, reported
    only); `passed` is None for those too."""

    file_type: str
    prompts: tuple[PromptCheck, ...]
    logit_scale: float
    tolerance: float | None

    @property
    def tokens_equal(self) -> bool:
        return all(p.tokens_equal for p in self.prompts)

    @property
    def top1_agreement(self) -> float:
        total = sum(p.tokens for p in self.prompts)
        return sum(p.top1_agreement * p.tokens for p in self.prompts) / total

    @property
    def max_abs_logit_diff(self) -> float:
        return max(p.max_abs_logit_diff for p in self.prompts)

    @property
    def passed(self) -> bool | None:
        if self.tolerance is None:
            return None
        return self.tokens_equal and self.max_abs_logit_diff <= self.tolerance

    def summary(self) -> str:
        """One line: the numbers and the verdict."""
        verdict = {True: "passed", False: "FAILED", None: "reported"}[self.passed]
        limit = f" (limit {self.tolerance:.3g})" if self.tolerance is not None else ""
        return (f"{self.file_type}: tokenization {'equal' if self.tokens_equal else 'DIFFERENT'}, "
                f"top-1 agreement {self.top1_agreement:.1%}, max |dlogit| "
                f"{self.max_abs_logit_diff:.4g}{limit} on logits up to {self.logit_scale:.3g}: {verdict}")

    def to_json(self) -> dict:
        return {"file_type": self.file_type, "passed": self.passed,
                "tokens_equal": self.tokens_equal, "top1_agreement": self.top1_agreement,
                "max_abs_logit_diff": self.max_abs_logit_diff, "logit_scale": self.logit_scale,
                "tolerance": self.tolerance, "prompts": [asdict(p) for p in self.prompts]}


@dataclass(frozen=True)
class Prompt:
    """A check prompt: its text, transformers' token ids for it, and how llama.cpp tokenizes it
    (`special`: a chat-template text whose special tokens are parsed, BOS already in the text)."""

    name: str
    text: str
    ids: list[int]
    special: bool = False


def check_prompts(tokenizer, config) -> list[Prompt]:
    """The fixed prompts: plain ones, one in the chat template (when the tokenizer has one), and
    one longer than the sliding window (at least `LONG_MIN_TOKENS`, within the context length)."""
    prompts = [Prompt(name, text, tokenizer(text)["input_ids"]) for name, text in PLAIN_PROMPTS]
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template([{"role": "user", "content": CHAT_MESSAGE}],
                                             tokenize=False, add_generation_prompt=True)
        prompts.append(Prompt("chat", text, tokenizer(text, add_special_tokens=False)["input_ids"],
                              special=True))
    prompts.append(_long_prompt(tokenizer, long_prompt_tokens(config)))
    return prompts


def long_prompt_tokens(config) -> int:
    """Tokens of the long prompt: past the sliding window (if any) by a quarter of it, at least
    `LONG_MIN_TOKENS`, and within the model's context length."""
    window = getattr(config, "sliding_window", None) or 0
    wanted = max(LONG_MIN_TOKENS, window + max(16, window // 4))
    return min(wanted, getattr(config, "max_position_embeddings", wanted) or wanted)


def _long_prompt(tokenizer, tokens: int) -> Prompt:
    """LONG_TEXT repeated until it tokenizes to at least `tokens` ids, cut back to whole words
    so that it stays within `tokens`."""
    words = []
    while len(tokenizer(" ".join(words))["input_ids"]) < tokens:
        words.extend(LONG_TEXT.split())
    while len(tokenizer(" ".join(words))["input_ids"]) > tokens:
        words.pop()
    text = " ".join(words)
    return Prompt("long", text, tokenizer(text)["input_ids"])


def reference_logits(model, prompts: list[Prompt]) -> list[np.ndarray]:
    """The Hugging Face model's logits (positions x vocabulary, fp32) on each prompt's ids."""
    import torch

    with torch.inference_mode():
        return [model(input_ids=torch.tensor([p.ids])).logits[0].float().numpy() for p in prompts]


def open_gguf(path: Path, n_ctx: int):
    """A llama-cpp-python model of the GGUF at `path` that keeps every position's logits, with
    the whole context in its cache (also on sliding-window layers), in f32 (llama.cpp's default
    f16 cache would add its own rounding to the file's)."""
    from llama_cpp import GGML_TYPE_F32, Llama

    # llama-cpp-python's default for generation, also for batches: one thread per physical core
    # (its default of every logical CPU for batches spins threads against each other on a busy
    # machine: 4-8 s instead of 0.3 s for 60 tokens of the default model, measured on 2 cores)
    threads = max(1, (os.cpu_count() or 2) // 2)
    with quiet_llama_cpp():
        return Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx,
                     logits_all=True, swa_full=True, type_k=GGML_TYPE_F32, type_v=GGML_TYPE_F32,
                     n_threads=threads, n_threads_batch=threads, verbose=False)


def gguf_logits(llm, ids: list[int]) -> np.ndarray:
    """llama.cpp's logits (positions x vocabulary) on `ids`, from an empty cache."""
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[:len(ids)], dtype=np.float32)


def check_gguf(path: Path, file_type: str, prompts: list[Prompt],
               references: list[np.ndarray]) -> ExportCheck:
    """Compare the GGUF at `path` with the Hugging Face logits `references` on `prompts`."""
    llm = open_gguf(path, max(len(p.ids) for p in prompts) + 8)
    try:
        results = tuple(_compare(llm, prompt, reference) for prompt, reference in zip(prompts, references))
    finally:
        llm.close()
    scale = max(float(np.abs(r).max()) for r in references)
    tolerance = TOLERANCE[file_type] * scale if file_type in TOLERANCE else None
    return ExportCheck(file_type, results, scale, tolerance)


def _compare(llm, prompt: Prompt, reference: np.ndarray) -> PromptCheck:
    """One prompt: tokenization, top-1 agreement and largest |logit difference|."""
    served = llm.tokenize(prompt.text.encode("utf-8"), add_bos=not prompt.special,
                          special=prompt.special)
    logits = gguf_logits(llm, prompt.ids)
    vocab = min(logits.shape[1], reference.shape[1])  # a padded embedding adds unused rows
    logits, reference = logits[:, :vocab], reference[:, :vocab]
    agree = float((logits.argmax(-1) == reference.argmax(-1)).mean())
    return PromptCheck(prompt.name, len(prompt.ids), list(served) == prompt.ids, agree,
                       float(np.abs(logits - reference).max()))
