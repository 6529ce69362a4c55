"""The `Task` type and the split helpers shared by built-in and user tasks."""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from typing import Callable, Hashable

from ..errors import GradPrunerError
from .chat import check_mode
from .examples import ChatExample, Example, GenExample, MCExample, with_chat_template

Loader = Callable[[], list[Example]]


@dataclass
class Task:
    """A named fine-tuning task: a training split, an evaluation split, and where they come from.

    The splits load on first use and stay cached in the process. Training items identical to an
    evaluation item (same scored texts) are dropped, so the two splits never overlap.
    """

    name: str
    kind: str  # "mc" (multiple choice, scored by log-likelihood) or "gen" (generation)
    description: str
    source: str  # where the data comes from, and its license
    note: str  # how the splits were made (in particular a train split the source lacks)
    load_train: Loader = field(repr=False)
    load_eval: Loader = field(repr=False)
    offline: bool = True  # False when the data must be supplied by the user
    datasets: tuple[str, ...] = ()  # Hugging Face Hub ids of the training data, for model cards
    sizes: tuple[int, int] | None = None  # (train, eval) items, where fixed by pinned packages
    _cache: dict[str, list[Example]] = field(default_factory=dict, init=False, repr=False,
                                              compare=False)

    def eval_examples(self) -> list[Example]:
        """The evaluation split."""
        if "eval" not in self._cache:
            self._cache["eval"] = self.load_eval()
        return list(self._cache["eval"])

    def train_examples(self) -> list[Example]:
        """The training split, without any item that also occurs in the evaluation split."""
        if "train" not in self._cache:
            self._cache["train"] = drop_overlap(self.load_train(), self.eval_examples())
        return list(self._cache["train"])

    def with_chat_template(self, mode: str) -> "Task":
        """This task with its examples as the chat-template mode has them
        (`data.with_chat_template`); "auto" changes nothing."""
        check_mode(mode)
        if mode == "auto":
            return self
        convert = lambda examples: [with_chat_template(ex, mode) for ex in examples]  # noqa: E731
        return replace(self, load_train=lambda: convert(self.train_examples()),
                       load_eval=lambda: convert(self.eval_examples()))

    def split_sizes(self) -> dict[str, int]:
        """Number of examples per split (loads both; `sizes` records them for built-in tasks)."""
        return {"train": len(self.train_examples()), "eval": len(self.eval_examples())}


def content_key(example: Example) -> Hashable:
    """What makes two examples the same item: the texts that are scored, not the label."""
    if isinstance(example, MCExample):
        return example.contexts, example.continuations
    if isinstance(example, ChatExample):
        return tuple((turn.role, turn.content) for turn in example.prompt_turns())
    return example.prompt


def drop_overlap(train: list[Example], evaluation: list[Example]) -> list[Example]:
    """`train` without the items whose content also occurs in `evaluation`."""
    seen = {content_key(ex) for ex in evaluation}
    return [ex for ex in train if content_key(ex) not in seen]


def split_examples(examples: list[Example], eval_fraction: float, seed: int
                   ) -> tuple[list[Example], list[Example]]:
    """A seeded, disjoint (train, eval) split; both keep the original order of the items."""
    if not 0 < eval_fraction < 1:
        raise GradPrunerError(f"eval fraction must be between 0 and 1, got {eval_fraction}")
    if len(examples) < 2:
        raise GradPrunerError(
            f"need at least 2 examples to split off an eval set, got {len(examples)}: give "
            "more data or --eval-data FILE"
        )
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_eval = min(max(round(len(examples) * eval_fraction), 1), len(examples) - 1)
    held_out = set(order[:n_eval])
    train = [ex for i, ex in enumerate(examples) if i not in held_out]
    evaluation = [ex for i, ex in enumerate(examples) if i in held_out]
    return train, evaluation


def infer_kind(examples: list[Example], where: str) -> str:
    """"mc" when all examples are multiple choice, "gen" when all are prompt/completion or
    conversations (both scored by generation)."""
    if all(isinstance(ex, MCExample) for ex in examples):
        return "mc"
    if all(isinstance(ex, (GenExample, ChatExample)) for ex in examples):
        return "gen"
    raise GradPrunerError(
        f"{where}: mixes multiple-choice records ('choices') with prompt/completion or "
        "conversation records; use one kind per file"
    )
