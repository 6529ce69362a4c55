"""The loss of held-out task examples with some decoder layers skipped.

Two measures (`Scoring`): the answer loss, the mean loss of the gold answers' tokens; and, for
multiple choice, the choice loss, the mean -log softmax over an example's choices (each choice
scored by its summed log-probability, as accuracy is) at the gold one. The answer loss also
counts how likely the answer's wording is, which a few healing steps fix; the choice loss counts
only whether the right choice wins, a smooth held-out accuracy.

`skipping` makes layers pass their input through without computing anything; `Judge` gives the
loss of any removal set, starting each pass from the dense model's stored input to the first
layer that differs. `auto` judges cuts and merges with it, `ppl` the removal of single layers.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ..errors import GradPrunerError
from ..model.surgery import decoder_layers, skipping
from ..tasks.examples import MCExample, PadCollator, pad_id, training_features
from .scoring import choice_pairs, continuation_logprobs

INPUTS_BYTES = 2**30  # the judge's store of the dense model's layer inputs


def task_batches(tokenizer, examples: list, batch_size: int, name: str) -> list[dict]:
    """Padded batches of the examples' gold answers (labels on the answers only), longest first
    so that a batch holds similar lengths; `name` is who needs them, for the error without data."""
    if not examples or tokenizer is None:
        raise GradPrunerError(f"{name} needs task data: pass --task NAME (see `gradpruner tasks`) or "
                              "--data FILE (library: the training examples)")
    feats = training_features(tokenizer, examples)
    feats.sort(key=lambda f: len(f["input_ids"]), reverse=True)
    collate = PadCollator(pad_id(tokenizer))
    return [collate(feats[i:i + batch_size]) for i in range(0, len(feats), batch_size)]


@dataclass
class Scoring:
    """Padded batches and how their rows' summed answer log-probabilities make one loss.

    Without `rows`, each row is an example's gold answer and the loss is the mean answer-token
    loss. With `rows` (each row's example and choice, in batch order) and `gold`, the loss is
    the mean over examples of -log softmax over the example's choices at the gold choice.
    """

    batches: list[dict]
    rows: list[tuple[int, int]] = field(default_factory=list)
    gold: list[int] = field(default_factory=list)

    @property
    def measure(self) -> str:
        return "choice loss" if self.rows else "answer loss"

    @property
    def examples(self) -> int:
        return len(self.gold) if self.rows else sum(len(b["input_ids"]) for b in self.batches)

    def loss(self, sums: Sequence[float]) -> float:
        values = torch.tensor(sums, dtype=torch.float64)
        if not self.rows:
            tokens = sum(int((b["labels"] != -100).sum()) for b in self.batches)
            return -float(values.sum()) / max(tokens, 1)
        choices = Counter(i for i, _ in self.rows)
        scores = [[0.0] * choices[i] for i in range(len(self.gold))]
        for (i, j), value in zip(self.rows, values.tolist()):
            scores[i][j] = value
        return choice_loss(scores, self.gold)

    def evaluate(self, model) -> float:
        """The loss of `model` as it is, every layer run."""
        with torch.inference_mode():
            return self.loss([s for batch in self.batches for s in continuation_logprobs(model, batch)])


def choice_loss(scores: Sequence[Sequence[float]], gold: Sequence[int]) -> float:
    """Mean over examples of -log softmax over the example's choice scores at its gold choice
    (examples may have different numbers of choices)."""
    table = torch.full((len(scores), max(map(len, scores))), -torch.inf, dtype=torch.float64)
    for i, row in enumerate(scores):
        table[i, :len(row)] = torch.tensor(row, dtype=torch.float64)
    picked = torch.log_softmax(table, dim=1)[torch.arange(len(scores)), torch.tensor(list(gold))]
    return -float(picked.mean())


def task_loss(model, batches: list[dict]) -> float:
    """Mean answer-token loss over `batches` (the LM head runs only from the first answer on)."""
    return Scoring(batches).evaluate(model)


def choice_scoring(tokenizer, examples: list[MCExample], batch_size: int = 8,
                   max_length: int = 256) -> Scoring:
    """The choice loss of multiple-choice `examples`: every (context, continuation) pair a row
    (`choice_pairs`: longest first)."""
    pairs = choice_pairs(tokenizer, examples, max_length)
    collate = PadCollator(pad_id(tokenizer))
    batches = [collate([f for _, _, f in pairs[i:i + batch_size]]) for i in range(0, len(pairs), batch_size)]
    return Scoring(batches, [(i, j) for i, j, _ in pairs], [ex.gold for ex in examples])


class Judge:
    """The scoring's loss of the model with some layers skipped; counts passes and seconds (those
of the first, dense pass apart).

    The dense model's input to every layer is kept from one first pass, so judging a cut runs only
    the layers after its first removed (or changed) one, and skipped layers do no work.
    """

    def __init__(self, model, scoring: Scoring):
        self.model, self.scoring = model, scoring
        self.calls, self.passes, self.seconds, self.layer_passes = 0, 0, 0.0, 0
        self._cache: dict[frozenset[int], float] = {}
        self._stride = self._input_stride()
        started = time.perf_counter()
        self._inputs, self._tuple_output = self._dense_inputs()
        self.first_pass_seconds = time.perf_counter() - started

    @property
    def batches(self) -> list[dict]:
        return self.scoring.batches

    def loss(self, removed, cached: bool = True, changed_from: int | None = None) -> float:
        """Loss with `removed` skipped; `changed_from`: first layer whose weights differ from
        the dense pass's (a merge receiver; such losses are not cached)."""
        key = frozenset(removed)
        if cached and key in self._cache:
            return self._cache[key]
        n = len(decoder_layers(self.model))
        first_change = min([*key, n - 1 if changed_from is None else changed_from])
        start_layer = first_change - first_change % self._stride  # the nearest kept dense input
        started = time.perf_counter()
        value = self._loss(sorted(key), start_layer)
        self.seconds += time.perf_counter() - started
        self.calls += 1
        self.passes += len(self.batches)
        self.layer_passes += len(self.batches) * (n - start_layer - sum(i >= start_layer for i in key))
        if cached:
            self._cache[key] = value
        return value

    def _loss(self, removed: list[int], start_layer: int) -> float:
        """The scoring's loss, the layers from `start_layer` on fed the dense input."""
        layers = decoder_layers(self.model)
        skipped = sorted({*range(start_layer), *removed})
        sums: list[float] = []
        for batch, inputs in zip(self.batches, self._inputs):
            def dense_input(module, args, kwargs, hidden=inputs[start_layer // self._stride]):
                return (hidden, *args[1:]), kwargs

            handle = layers[start_layer].register_forward_pre_hook(dense_input, with_kwargs=True)
            try:
                with skipping(self.model, skipped, self._tuple_output), torch.inference_mode():
                    sums += continuation_logprobs(self.model, batch)
            finally:
                handle.remove()
        return self.scoring.loss(sums)

    def _dense_inputs(self) -> tuple[list[list[torch.Tensor]], bool]:
        """Every `stride`-th layer's input for every batch in the dense model, and whether
        layers return tuples."""
        layers = decoder_layers(self.model)
        inputs: list[list[torch.Tensor]] = []
        outputs: list[object] = []

        def keep(module, args, kwargs):
            inputs[-1].append(args[0] if args else kwargs["hidden_states"])

        handles = [layer.register_forward_pre_hook(keep, with_kwargs=True)
                   for layer in layers[::self._stride]]
        handles.append(layers[0].register_forward_hook(lambda m, a, o: outputs.append(o)))
        try:
            for batch in self.batches:
                inputs.append([])
                with torch.inference_mode():
                    continuation_logprobs(self.model, batch)
        finally:
            for handle in handles:
                handle.remove()
        return inputs, isinstance(outputs[0], tuple)

    def _input_stride(self) -> int:
        """Keep the dense input of every `stride`-th layer, so all of them fit in `INPUTS_BYTES`."""
        config = self.model.config
        tokens = sum(batch["input_ids"].numel() for batch in self.batches)
        width = next(self.model.parameters()).element_size()
        total = config.num_hidden_layers * tokens * config.hidden_size * width
        return max(1, math.ceil(total / INPUTS_BYTES))

    def mean_seconds(self) -> float:
        """Seconds of one judged removal set so far (the dense pass's before any)."""
        return self.seconds / self.calls if self.calls else self.first_pass_seconds

    def cost(self) -> dict:
        return {"measure": self.scoring.measure, "examples": self.scoring.examples,
                "first_pass_seconds": round(self.first_pass_seconds, 2), "forward_batches": self.passes,
                "layer_passes": self.layer_passes, "seconds": round(self.seconds, 2)}
