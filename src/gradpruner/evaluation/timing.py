"""Measured speed of models side by side: runs alternate between the models and the median of
several repetitions is kept, so a shared, noisy machine affects all of them alike. `StepTimer`:
the steady seconds of a training step."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from transformers import TrainerCallback


def prefill_seconds(model, input_ids: torch.Tensor) -> float:
    """Wall time of a prefill over `input_ids`: the KV cache filled and the last position's
    logits, as `generate` asks; synchronised on CUDA."""
    device = next(model.parameters()).device
    ids = input_ids.to(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    with torch.inference_mode():
        model(input_ids=ids, use_cache=True, logits_to_keep=1)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def interleaved_medians(runs: dict[str, Callable[[], float]], repeats: int = 5,
                        warmup: int = 1) -> dict[str, float]:
    """Median of each run's returned measurement; the runs alternate, after `warmup` rounds."""
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for round_ in range(warmup + repeats):
        for name, run in runs.items():
            value = run()
            if round_ >= warmup:
                samples[name].append(value)
    return {name: statistics.median(values) for name, values in samples.items()}


def compare_prefill(models: dict[str, torch.nn.Module], batch: int = 8, seq_len: int = 128,
                    repeats: int = 5, vocab: int | None = None) -> dict[str, float]:
    """Median prefill seconds of each model on the same random batch, runs interleaved."""
    first = next(iter(models.values()))
    vocab = vocab or first.config.vocab_size
    ids = torch.randint(0, vocab, (batch, seq_len), generator=torch.Generator().manual_seed(0))
    for model in models.values():
        model.eval()
    return interleaved_medians({name: lambda m=model: prefill_seconds(m, ids) for name, model in models.items()},
                               repeats)


class StepTimer(TrainerCallback):
    """The end time of every optimizer step."""

    def __init__(self):
        self.ends: list[float] = []

    def on_step_end(self, args, state, control, **kwargs):
        self.ends.append(time.perf_counter())

    def steady_seconds(self) -> float | None:
        """Seconds per step after the first (which also pays for warm-up: CUDA kernels, caches)."""
        if len(self.ends) < 2:
            return None
        return (self.ends[-1] - self.ends[0]) / (len(self.ends) - 1)
