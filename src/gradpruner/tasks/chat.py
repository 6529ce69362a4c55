"""Conversations through the tokenizer's chat template: the prompt of a generation, and training
features whose labels cover exactly the tokens of the trained (assistant) turns.

A trained turn's tokens are found by rendering the conversation up to the turn with the
generation prompt and up to the end of the turn: what the second adds to the first is the turn,
its end-of-turn marker included (so the model learns to stop). That needs a template that renders
each turn as a prefix of the whole conversation; one that does not (e.g. one that rewrites earlier
turns) is refused with a clear error rather than trained on the wrong tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import GradPrunerError

ROLES = ("system", "developer", "user", "assistant", "tool")
CHAT_MODES = ("auto", "on", "off")  # --chat-template: `data.with_chat_template`


@dataclass(frozen=True)
class Turn:
    """One message of a conversation; `trained` turns carry the loss."""

    role: str
    content: str
    trained: bool = False


def check_mode(mode: str) -> None:
    """Raise unless `mode` is one of --chat-template's values."""
    if mode not in CHAT_MODES:
        raise GradPrunerError(f"--chat-template must be one of {', '.join(CHAT_MODES)}, got {mode!r}")


def require_template(tokenizer) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise GradPrunerError(
            "the tokenizer has no chat template: conversational records and --chat-template on "
            "need one; give prompt/completion or multiple-choice records with --chat-template "
            "auto or off")


def render(tokenizer, turns: tuple[Turn, ...], generation_prompt: bool) -> str:
    """The text of `turns` in the chat template, optionally ending with the assistant's prompt."""
    require_template(tokenizer)
    messages = [{"role": turn.role, "content": turn.content} for turn in turns]
    return tokenizer.apply_chat_template(messages, tokenize=False,
                                         add_generation_prompt=generation_prompt)


def prompt_ids(tokenizer, turns: tuple[Turn, ...]) -> list[int]:
    """Token ids of `turns` in the chat template followed by the assistant's generation prompt
    (the template writes its own special tokens, so the tokenizer adds none)."""
    return tokenizer(render(tokenizer, turns, True), add_special_tokens=False)["input_ids"]


def chat_features(tokenizer, turns: tuple[Turn, ...], max_length: int, where: str = "") -> dict:
    """Token ids of the conversation, labels on the trained turns only (-100 elsewhere).

    Longer conversations keep their first `max_length` tokens (as TRL truncates); one with no
    trained token left is an error naming `where`.
    """
    text = render(tokenizer, turns, False)
    spans = [_turn_span(tokenizer, turns, k, text, where)
             for k, turn in enumerate(turns) if turn.trained]
    ids, labels = _labelled_ids(tokenizer, text, spans)
    ids, labels = ids[:max_length], labels[:max_length]
    if all(label == -100 for label in labels):
        raise GradPrunerError(f"{where}: nothing left to train on after truncation to "
                              f"--max-length {max_length} (the prompt alone is longer)")
    return {"input_ids": ids, "labels": labels}


def _turn_span(tokenizer, turns: tuple[Turn, ...], k: int, text: str, where: str) -> tuple[int, int]:
    """The characters of `text` that turn `k` adds after the generation prompt before it."""
    before = render(tokenizer, turns[:k], True)
    upto = render(tokenizer, turns[:k + 1], False)
    if not (upto.startswith(before) and text.startswith(upto)):
        raise GradPrunerError(f"{where}: the tokenizer's chat template does not render the "
                              "conversation turn by turn (an earlier part changes when a turn is "
                              "added), so the assistant's tokens cannot be found")
    return len(before), len(upto)


def _labelled_ids(tokenizer, text: str, spans: list[tuple[int, int]]) -> tuple[list[int], list[int]]:
    """Token ids of `text`, labelled where a token starts inside one of `spans`."""
    if getattr(tokenizer, "is_fast", False):
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = encoded["input_ids"]
        inside = [any(start <= begin < end for start, end in spans)
                  for begin, _ in encoded["offset_mapping"]]
        return ids, [i if keep else -100 for i, keep in zip(ids, inside)]
    ids: list[int] = []
    labels: list[int] = []
    edges = [0, *(edge for span in spans for edge in span), len(text)]
    for n, (start, end) in enumerate(zip(edges, edges[1:])):  # odd pieces are the spans
        piece = tokenizer(text[start:end], add_special_tokens=False)["input_ids"] if end > start else []
        ids += piece
        labels += piece if n % 2 else [-100] * len(piece)
    return ids, labels
