"""The answer-token loss of task examples with some decoder layers skipped.

`task_batches` pads the gold answers of task examples; `skipping` makes layers pass their input
through without computing anything; `Judge` gives the loss of any removal set on fixed batches,
starting each pass from the dense model's stored input to the first layer that differs. `auto`
judges candidate cuts and merges with it, `ppl` the removal of each single layer.
"""

from __future__ import annotations

import math
import time
from collections.abc import Collection, Iterator
from contextlib import contextmanager

import torch

from ..data import PadCollator, pad_id, training_features
from ..errors import GradPrunerError
from ..evaluate import continuation_logprobs
from ..surgery import decoder_layers
from . import ScoreContext

INPUTS_BYTES = 2**30  # the judge's store of the dense model's layer inputs


def task_batches(ctx: ScoreContext, max_examples: int, batch_size: int, name: str) -> list[dict]:
    """Padded batches of the task's gold answers (labels on the answers only)."""
    if not ctx.examples or ctx.tokenizer is None:
        raise GradPrunerError(f"{name} needs task data (--task or --data)")
    feats = training_features(ctx.tokenizer, ctx.examples[:max_examples])
    collate = PadCollator(pad_id(ctx.tokenizer))
    return [collate(feats[i:i + batch_size]) for i in range(0, len(feats), batch_size)]


def task_loss(model, batches: list[dict]) -> float:
    """Mean answer-token loss over `batches`.

    The LM head runs only from the first answer position on (see `continuation_logprobs`).
    """
    total, tokens = 0.0, 0
    with torch.inference_mode():
        for batch in batches:
            total -= sum(continuation_logprobs(model, batch))
            tokens += int((batch["labels"] != -100).sum())
    return total / max(tokens, 1)


def returns_tuple(model) -> bool:
    """Whether the model's decoder layers return a tuple (hidden, ...) rather than the hidden
    states alone; found by a one-token forward pass."""
    outputs: list[object] = []
    handle = decoder_layers(model)[0].register_forward_hook(lambda m, a, o: outputs.append(o))
    device = next(model.parameters()).device
    try:
        with torch.inference_mode():
            model(input_ids=torch.zeros(1, 1, dtype=torch.long, device=device), use_cache=False)
    finally:
        handle.remove()
    return isinstance(outputs[0], tuple)


@contextmanager
def skipping(model, indices: Collection[int], as_tuple: bool | None = None) -> Iterator[None]:
    """Within the block, the `indices` layers return their input without computing anything.

    `as_tuple`: whether layers return tuples (`returns_tuple`); found when not given. A forward
    set on the layer before (accelerate's device hooks) is put back afterwards.
    """
    if not indices:
        yield
        return
    layers = decoder_layers(model)
    as_tuple = returns_tuple(model) if as_tuple is None else as_tuple
    saved = {i: layers[i].__dict__.get("forward") for i in indices}
    for i in indices:
        layers[i].forward = lambda hidden, *args, **kwargs: (hidden,) if as_tuple else hidden
    try:
        yield
    finally:
        for i, forward in saved.items():
            if forward is None:
                del layers[i].forward
            else:
                layers[i].forward = forward


class Judge:
    """Held-out answer loss of the model with some layers skipped; counts passes and seconds.

    The dense model's input to every layer is kept from one first pass, so judging a cut runs only
    the layers after its first removed (or changed) one, and skipped layers do no work.
    """

    def __init__(self, model, batches: list[dict]):
        self.model, self.batches = model, batches
        self.passes, self.seconds, self.layer_passes = 0, 0.0, 0
        self._cache: dict[frozenset[int], float] = {}
        self._stride = self._input_stride()
        self._inputs, self._tuple_output = self._dense_inputs()

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
        self.passes += len(self.batches)
        self.layer_passes += len(self.batches) * (n - start_layer - sum(i >= start_layer for i in key))
        if cached:
            self._cache[key] = value
        return value

    def _loss(self, removed: list[int], start_layer: int) -> float:
        """Mean answer loss over the batches, the layers from `start_layer` on fed the dense input."""
        layers = decoder_layers(self.model)
        skipped = sorted({*range(start_layer), *removed})
        total, tokens = 0.0, 0
        for batch, inputs in zip(self.batches, self._inputs):
            def dense_input(module, args, kwargs, hidden=inputs[start_layer // self._stride]):
                return (hidden, *args[1:]), kwargs

            handle = layers[start_layer].register_forward_pre_hook(dense_input, with_kwargs=True)
            try:
                with skipping(self.model, skipped, self._tuple_output), torch.inference_mode():
                    total -= sum(continuation_logprobs(self.model, batch))
            finally:
                handle.remove()
            tokens += int((batch["labels"] != -100).sum())
        return total / max(tokens, 1)

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

    def cost(self) -> dict:
        return {"forward_batches": self.passes, "layer_passes": self.layer_passes,
                "seconds": round(self.seconds, 2)}
