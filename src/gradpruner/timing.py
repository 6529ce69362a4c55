"""Measured speed of models side by side: runs alternate between the models and the median of
several repetitions is kept, so a shared, noisy machine affects all of them alike."""

from __future__ import annotations

import statistics
import time

import torch


def prefill_seconds(model, input_ids: torch.Tensor) -> float:
    """Wall time of one forward pass over `input_ids` (no cache), synchronised on CUDA."""
    device = next(model.parameters()).device
    ids = input_ids.to(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    with torch.inference_mode():
        model(input_ids=ids, use_cache=False)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def compare_prefill(models: dict[str, torch.nn.Module], batch: int = 8, seq_len: int = 128,
                    repeats: int = 5, vocab: int | None = None) -> dict[str, float]:
    """Median prefill seconds of each model on the same random batch, runs interleaved."""
    first = next(iter(models.values()))
    vocab = vocab or first.config.vocab_size
    ids = torch.randint(0, vocab, (batch, seq_len), generator=torch.Generator().manual_seed(0))
    for model in models.values():
        model.eval()
        prefill_seconds(model, ids)  # warm-up
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(repeats):
        for name, model in models.items():
            times[name].append(prefill_seconds(model, ids))
    return {name: statistics.median(values) for name, values in times.items()}
