"""Several processes (torchrun / accelerate launch): who writes, and what the probe refuses.

The probe and the fine-tune run on transformers' Trainer, so DDP needs nothing of ours beyond
writing outputs once: gradients are read after DDP's all-reduce, identical on every rank. FSDP and
DeepSpeed ZeRO shard gradients across ranks, so the probe refuses them at start.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from .errors import GradPrunerError

_SHARDED = {"ACCELERATE_USE_FSDP": "FSDP", "ACCELERATE_USE_DEEPSPEED": "DeepSpeed"}


def rank() -> int:
    """This process's global rank (0 outside a launcher), known before any process group exists."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    return rank() == 0


def refuse_sharded_probe() -> None:
    """The probe needs each rank's full gradients; FSDP and DeepSpeed ZeRO shard them."""
    for variable, engine in _SHARDED.items():
        if os.environ.get(variable, "").lower() in ("1", "true", "yes"):
            raise GradPrunerError(
                f"the probe reads full gradients, which {engine} shards across processes: run "
                "`gradpruner probe` with DDP (accelerate launch without FSDP/DeepSpeed, or "
                "torchrun) or in one process; `gradpruner finetune` runs under all three")


@contextmanager
def main_process_output(make_output) -> Iterator:
    """`make_output()` (an atomic output folder) on the main process; None on the others."""
    if is_main_process():
        with make_output() as tmp:
            yield tmp
    else:
        yield None
