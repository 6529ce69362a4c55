"""Examples (multiple choice, prompt/completion, conversations), what records mean, and
tokenisation for training.

A multiple-choice example scores each choice as a (context, continuation) pair, so both ordinary
questions (one context, several answers) and partial scoring (WinoGrande: several contexts, one
shared continuation) fit the same type. Training uses the gold pair; the loss covers only the
continuation. A conversation (`ChatExample`) is rendered by the tokenizer's chat template and
trained on its assistant turns (`chat.chat_features`).

Record formats (TRL's, and ours for multiple choice), told apart by their fields:
    {"messages": [{"role", "content"}, ...]}                   conversation, loss on assistant turns
    {"prompt": [messages], "completion": [messages]}           conversation, loss on the completion
    {"prompt": "...", "completion": "..."}                     plain text
    {"prompt": "...", "choices": [...], "answer": i or text}   multiple choice
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Union

from ..errors import GradPrunerError
from .chat import ROLES, Turn, chat_features, check_mode, prompt_ids
from .records import Record, read_file


@dataclass(frozen=True)
class MCExample:
    """One multiple-choice item: choice i is the text `contexts[i] + continuations[i]`.

    `choices` are the choice texts as the item names them (lm-evaluation-harness's
    `doc_to_choice`): `acc_norm` divides each choice's log-likelihood by the length of its text
    there, without the space put between context and answer. Left empty, the continuations.
    With `chat`, each context is the user's turn of the chat template and each continuation the
    start of the assistant's answer.
    """

    contexts: tuple[str, ...]
    continuations: tuple[str, ...]
    gold: int
    choices: tuple[str, ...] = ()
    chat: bool = False

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


@dataclass(frozen=True)
class ChatExample:
    """A conversation: trained on its `trained` turns; evaluated by generating the last trained
    turn from the turns before it. `where` names its record for errors."""

    turns: tuple[Turn, ...]
    where: str = field(default="", compare=False)

    def _last_trained(self) -> int:
        return max(i for i, turn in enumerate(self.turns) if turn.trained)

    def prompt_turns(self) -> tuple[Turn, ...]:
        """The turns before the last trained one: the prompt of the evaluation."""
        return self.turns[:self._last_trained()]

    def reference(self) -> str:
        """The last trained turn's text: what the evaluation compares a generation with."""
        return self.turns[self._last_trained()].content


Example = Union[MCExample, GenExample, ChatExample]


def join_space(prompt: str, text: str) -> str:
    """The continuation of `prompt` by `text`, with a separating space unless one is there."""
    if not prompt or prompt[-1].isspace() or (text and text[0].isspace()):
        return text
    return " " + text


def with_chat_template(example: Example, mode: str) -> Example:
    """`example` as the chat-template mode has it: "auto" renders conversations with the template
    and plain-text records as they are (as TRL does); "on" makes plain records a user turn and an
    assistant answer too; "off" takes plain records only."""
    check_mode(mode)
    if isinstance(example, ChatExample):
        if mode == "off":
            raise GradPrunerError(f"{example.where}: a conversation needs the chat template; "
                                  "--chat-template off takes prompt/completion and multiple-choice "
                                  "records only")
        return example
    if mode != "on":
        return example
    if isinstance(example, MCExample):
        return replace(example, chat=True)
    return ChatExample((Turn("user", example.prompt), Turn("assistant", example.completion.strip(), True)))


def parse_record(record: object, where: str) -> Example:
    """One record as an example (the formats are in the module's docstring); raises
    GradPrunerError naming `where` when malformed. Fields other than these are ignored."""
    if not isinstance(record, dict):
        raise GradPrunerError(f"{where}: expected a JSON object, got {type(record).__name__}")
    fields = {k: v for k, v in record.items() if v is not None}
    if "messages" in fields:
        turns = _turns(fields["messages"], where, "messages")
        return _conversation(tuple(replace(t, trained=t.role == "assistant") for t in turns), where)
    prompt = fields.get("prompt")
    if isinstance(prompt, list):
        return _conversational_completion(prompt, fields.get("completion"), where)
    if not isinstance(prompt, str) or not prompt.strip():
        raise GradPrunerError(f"{where}: needs 'messages', or a non-empty 'prompt' with "
                              "'completion' or 'choices' and 'answer'")
    if "choices" in fields:
        return _parse_choice_record(fields, prompt, where)
    completion = fields.get("completion")
    if isinstance(completion, list):
        raise GradPrunerError(f"{where}: 'prompt' is text but 'completion' is a list of messages; "
                              "give both as text or both as messages")
    if not isinstance(completion, str) or not completion.strip():
        raise GradPrunerError(
            f"{where}: needs a non-empty 'completion' (or 'choices' and 'answer')"
        )
    return GenExample(prompt, completion)


def _turns(messages: object, where: str, name: str) -> tuple[Turn, ...]:
    """The messages of a conversation field, checked: known roles, non-empty text contents."""
    if not isinstance(messages, list) or not messages:
        raise GradPrunerError(f"{where}: '{name}' must be a non-empty list of messages")
    turns = []
    for i, message in enumerate(messages, start=1):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise GradPrunerError(f"{where}: {name}[{i}] must be an object with 'role' and 'content'")
        role, content = message["role"], message["content"]
        if role not in ROLES:
            raise GradPrunerError(f"{where}: {name}[{i}] has unknown role {role!r} "
                                  f"(known: {', '.join(ROLES)})")
        if not isinstance(content, str) or not content.strip():
            raise GradPrunerError(f"{where}: {name}[{i}] ({role}) has empty or non-text content")
        turns.append(Turn(role, content))
    return tuple(turns)


def _conversational_completion(prompt: list, completion: object, where: str) -> ChatExample:
    """TRL's conversational prompt/completion: trained on the completion's assistant turns."""
    if not isinstance(completion, list):
        raise GradPrunerError(f"{where}: 'prompt' is a list of messages, so 'completion' must be "
                              "one too")
    prompt_turns = _turns(prompt, where, "prompt")
    answer = tuple(replace(t, trained=t.role == "assistant")
                   for t in _turns(completion, where, "completion"))
    return _conversation(prompt_turns + answer, where)


def _conversation(turns: tuple[Turn, ...], where: str) -> ChatExample:
    trained = [i for i, turn in enumerate(turns) if turn.trained]
    if not trained:
        raise GradPrunerError(f"{where}: no assistant turn to train on")
    if trained[0] == 0:
        raise GradPrunerError(f"{where}: the conversation starts with the assistant; it needs a "
                              "system or user turn first")
    return ChatExample(turns, where)


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


def read_examples(path: str | Path) -> list[Example]:
    """The examples of a data file (JSONL, JSON, parquet or CSV; `records.read_file`)."""
    path = Path(path)
    if not path.is_file():
        raise GradPrunerError(f"data file not found: {path}")
    return parse_records(read_file(path), str(path))


def parse_records(records: list[Record], name: str) -> list[Example]:
    """The examples of the records of source `name`; an error when there are none."""
    if not records:
        raise GradPrunerError(f"{name}: no examples (it is empty)")
    return [parse_record(record.value, record.where) for record in records]


def tokenize_pair(tokenizer, context: str, continuation: str, max_length: int,
                  chat: bool = False) -> dict:
    """Token ids of context+continuation with labels on the continuation only (-100 elsewhere).

    With `chat`, the context is the user's turn of the chat template, ending with the
    assistant's generation prompt, and the continuation is the start of the answer. The context
    is cut from the left when the pair is longer than `max_length`, so the continuation survives
    whole where possible.
    """
    if chat:
        ctx = prompt_ids(tokenizer, (Turn("user", context),))
        continuation = continuation.lstrip()
    else:
        ctx = tokenizer(context, add_special_tokens=True)["input_ids"] if context else []
    cont = tokenizer(continuation, add_special_tokens=False)["input_ids"]
    if not ctx and tokenizer.bos_token_id is not None:
        ctx = [tokenizer.bos_token_id]
    cont = cont[:max_length - 1] if len(cont) >= max_length else cont
    ctx = ctx[-(max_length - len(cont)):] if len(ctx) + len(cont) > max_length else ctx
    return {"input_ids": ctx + cont, "labels": [-100] * len(ctx) + cont}


def training_features(tokenizer, examples: list[Example], max_length: int = 256) -> list[dict]:
    """Tokenised training features, labels on what is trained: the gold answer of a question or
    prompt, the trained turns of a conversation."""
    feats = []
    for ex in examples:
        if isinstance(ex, ChatExample):
            feats.append(chat_features(tokenizer, ex.turns, max_length, ex.where))
        else:
            context, continuation = ex.training_pair()
            chat = isinstance(ex, MCExample) and ex.chat
            feats.append(tokenize_pair(tokenizer, context, continuation, max_length, chat))
    return feats


def generation_prompt(tokenizer, example: GenExample | ChatExample, max_tokens: int) -> list[int]:
    """Token ids of what a generation continues (cut from the left to `max_tokens`): the plain
    prompt, or a conversation's turns before its last trained one with the generation prompt."""
    if isinstance(example, ChatExample):
        ids = prompt_ids(tokenizer, example.prompt_turns())
    else:
        ids = tokenizer(example.prompt)["input_ids"]
    return ids[-max_tokens:]


def reference_text(example: GenExample | ChatExample) -> str:
    """What a generation is compared with."""
    return example.reference() if isinstance(example, ChatExample) else example.completion


def pad_id(tokenizer) -> int:
    """The id used for padding: the pad token, else end-of-sequence, else 0 (always masked)."""
    for token_id in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return token_id
    return 0


class PadCollator:
    """Right-pads `input_ids` / `labels` of a batch and builds the attention mask; features with
    an `example_index` keep it.

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
        if "example_index" in features[0]:  # which examples these are (a cached teacher's key)
            batch["example_index"] = torch.tensor([f["example_index"] for f in features])
        return answer_positions(batch) if self.answer_logits else batch


def answer_positions(batch: dict) -> dict:
    """Add `logits_to_keep` / `shift_labels` to a padded batch: only positions that predict a label."""
    labels = batch["labels"]
    predicts = (labels[:, 1:] != -100).any(dim=0).nonzero().squeeze(1)
    return {**batch, "logits_to_keep": predicts, "shift_labels": labels[:, predicts + 1]}
