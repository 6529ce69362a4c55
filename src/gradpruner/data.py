"""Examples (multiple choice and prompt/completion), the JSONL reader, and tokenisation for training.

A multiple-choice example scores each choice as a (context, continuation) pair, so both ordinary
questions (one context, several answers) and partial scoring (WinoGrande: several contexts, one
shared continuation) fit the same type. Training uses the gold pair; the loss covers only the
continuation.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Union

from .errors import GradPrunerError


@dataclass(frozen=True)
class MCExample:
    """One multiple-choice item: choice i is the text `contexts[i] + continuations[i]`.

    `choices` are the choice texts as the item names them (lm-evaluation-harness's
    `doc_to_choice`): `acc_norm` divides each choice's log-likelihood by the length of its text
    there, without the space put between context and answer. Left empty, the continuations.
    """

    contexts: tuple[str, ...]
    continuations: tuple[str, ...]
    gold: int
    choices: tuple[str, ...] = ()

    @classmethod
    def from_question(cls, prompt: str, choices: list[str], gold: int) -> "MCExample":
        """One shared prompt and several answers, joined by a space when neither side has one."""
        return cls((prompt,) * len(choices), tuple(join_space(prompt, c) for c in choices), gold,
                   tuple(choices))

    def norm_lengths(self) -> list[int]:
        """The character length of each choice that `acc_norm` divides by (at least 1)."""
        return [max(len(text), 1) for text in self.choices or self.continuations]

    def training_pair(self) -> tuple[str, str]:
        return self.contexts[self.gold], self.continuations[self.gold]


@dataclass(frozen=True)
class GenExample:
    """One prompt/completion item: trained on the completion, scored by comparing generations."""

    prompt: str
    completion: str

    def training_pair(self) -> tuple[str, str]:
        return self.prompt, join_space(self.prompt, self.completion)


Example = Union[MCExample, GenExample]


def join_space(prompt: str, text: str) -> str:
    """The continuation of `prompt` by `text`, with a separating space unless one is there."""
    if not prompt or prompt[-1].isspace() or (text and text[0].isspace()):
        return text
    return " " + text


def parse_record(record: object, where: str) -> Example:
    """One JSON record as an example; raises GradPrunerError naming `where` when malformed."""
    if not isinstance(record, dict):
        raise GradPrunerError(f"{where}: expected a JSON object, got {type(record).__name__}")
    prompt = record.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise GradPrunerError(f"{where}: missing or empty string field 'prompt'")
    if "choices" in record:
        return _parse_choice_record(record, prompt, where)
    completion = record.get("completion")
    if not isinstance(completion, str) or not completion.strip():
        raise GradPrunerError(
            f"{where}: needs a non-empty 'completion' (or 'choices' and 'answer')"
        )
    return GenExample(prompt, completion)


def _parse_choice_record(record: dict, prompt: str, where: str) -> MCExample:
    choices = record["choices"]
    if (
        not isinstance(choices, list)
        or len(choices) < 2
        or not all(isinstance(c, str) and c.strip() for c in choices)
    ):
        raise GradPrunerError(f"{where}: 'choices' must be a list of at least 2 non-empty strings")
    answer = record.get("answer")
    if isinstance(answer, bool) or answer is None:
        raise GradPrunerError(f"{where}: missing 'answer' (an index or one of the choices)")
    if isinstance(answer, str):
        if answer not in choices:
            raise GradPrunerError(f"{where}: answer {answer!r} is not one of the choices")
        gold = choices.index(answer)
    elif isinstance(answer, (int, float)) and not (isinstance(answer, float) and not math.isfinite(answer)) and int(answer) == answer:
        gold = int(answer)
        if not 0 <= gold < len(choices):
            raise GradPrunerError(
                f"{where}: answer index {gold} is outside the {len(choices)} choices"
            )
    else:
        raise GradPrunerError(f"{where}: 'answer' must be an index or one of the choices")
    return MCExample.from_question(prompt, choices, gold)


def read_jsonl(path: str | Path) -> list[Example]:
    """Read a JSONL file of {"prompt", "completion"} or {"prompt", "choices", "answer"} records."""
    path = Path(path)
    if not path.is_file():
        raise GradPrunerError(f"data file not found: {path}")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise GradPrunerError(f"{path}: not UTF-8 text (byte {err.start})") from None
    examples: list[Example] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise GradPrunerError(f"{where}: invalid JSON ({err.msg})") from None
        examples.append(parse_record(record, where))
    if not examples:
        raise GradPrunerError(f"{path}: no examples (the file is empty)")
    return examples


def tokenize_pair(tokenizer, context: str, continuation: str, max_length: int) -> dict:
    """Token ids of context+continuation with labels on the continuation only (-100 elsewhere).

    The context is cut from the left when the pair is longer than `max_length`, so the
    continuation survives whole where possible.
    """
    ctx = tokenizer(context, add_special_tokens=True)["input_ids"] if context else []
    cont = tokenizer(continuation, add_special_tokens=False)["input_ids"]
    if not ctx and tokenizer.bos_token_id is not None:
        ctx = [tokenizer.bos_token_id]
    cont = cont[:max_length - 1] if len(cont) >= max_length else cont
    ctx = ctx[-(max_length - len(cont)):] if len(ctx) + len(cont) > max_length else ctx
    return {"input_ids": ctx + cont, "labels": [-100] * len(ctx) + cont}


def training_features(tokenizer, examples: list[Example], max_length: int = 256) -> list[dict]:
    """Tokenised training features (gold pair of each example), labels masked to the answer."""
    feats = []
    for ex in examples:
        context, continuation = ex.training_pair()
        feats.append(tokenize_pair(tokenizer, context, continuation, max_length))
    return feats


def pad_id(tokenizer) -> int:
    """The id used for padding: the pad token, else end-of-sequence, else 0 (always masked)."""
    for token_id in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return token_id
    return 0


class PadCollator:
    """Right-pads `input_ids` / `labels` of a batch and builds the attention mask.

    With `answer_logits`, the batch also says which positions need logits: `logits_to_keep` (the
    positions, shared by the rows, whose next token is labelled in some row) and `shift_labels`
    (the labels those positions predict). The model then runs its LM head and loss on those
    positions only: the same loss, without the vocabulary projection of every prompt token.
    """

    def __init__(self, pad_token_id: int, answer_logits: bool = False):
        self.pad_token_id = pad_token_id
        self.answer_logits = answer_logits

    def __call__(self, features: list[dict]) -> dict:
        import torch

        width = max(len(f["input_ids"]) for f in features)
        ids, labels, mask = [], [], []
        for f in features:
            pad = width - len(f["input_ids"])
            ids.append(f["input_ids"] + [self.pad_token_id] * pad)
            labels.append(f["labels"] + [-100] * pad)
            mask.append([1] * len(f["input_ids"]) + [0] * pad)
        batch = {
            "input_ids": torch.tensor(ids),
            "labels": torch.tensor(labels),
            "attention_mask": torch.tensor(mask),
        }
        return answer_positions(batch) if self.answer_logits else batch


def answer_positions(batch: dict) -> dict:
    """Add `logits_to_keep` / `shift_labels` to a padded batch: only positions that predict a label."""
    labels = batch["labels"]
    predicts = (labels[:, 1:] != -100).any(dim=0).nonzero().squeeze(1)
    return {**batch, "logits_to_keep": predicts, "shift_labels": labels[:, predicts + 1]}
