"""Several processes (torchrun / accelerate launch): who writes, how the probe reads a full
gradient, and which engines it refuses.

The probe and the fine-tune run on transformers' Trainer. Under DDP gradients are read after the
all-reduce, identical on every rank. Under FSDP2 (`fully_shard`) a gradient is a DTensor sharded
across ranks and `full_grad` gathers it, one parameter at a time. FSDP1 keeps gradients in flat
shards, and DeepSpeed (through accelerate) clips, applies and clears them inside backward, before
any Trainer callback runs, so the probe refuses both at start.

`run` under DDP trains in every process and does the rest on rank 0 (`on_main`); it refuses FSDP
and DeepSpeed, whose sharded models its cut and evaluations cannot read.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import torch
from torch.distributed.tensor import DTensor

from .errors import GradPrunerError

T = TypeVar("T")

_ALTERNATIVE = ("use FSDP2 (accelerate's fsdp_version: 2) or DDP (accelerate launch without "
                "FSDP/DeepSpeed, or torchrun) or one process; `gradpruner finetune` runs under all")
FSDP1_REFUSAL = ("the probe reads each module's full gradient, which FSDP1 keeps in flat shards "
                 f"across processes: {_ALTERNATIVE}")
DEEPSPEED_REFUSAL = ("the probe reads the gradients before the optimizer step, which DeepSpeed "
                     "under accelerate takes inside backward (the gradients are clipped, applied "
                     f"and cleared before any Trainer callback): {_ALTERNATIVE}")


def rank() -> int:
    """This process's global rank (0 outside a launcher), known before any process group exists."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    return rank() == 0


def _flag(variable: str) -> bool:
    return os.environ.get(variable, "").lower() in ("1", "true", "yes")


def refuse_sharded_probe() -> None:
    """At start, from what `accelerate launch` sets: FSDP1 and DeepSpeed are refused, FSDP2
    (`FSDP_VERSION=2`) is probed."""
    if _flag("ACCELERATE_USE_DEEPSPEED"):
        raise GradPrunerError(DEEPSPEED_REFUSAL)
    if _flag("ACCELERATE_USE_FSDP") and os.environ.get("FSDP_VERSION", "1") != "2":
        raise GradPrunerError(FSDP1_REFUSAL)


def refuse_sharded_training(args, model) -> None:
    """In a running trainer: DeepSpeed (launched, or in the Trainer's `deepspeed` argument) and a
    model wrapped by FSDP1 are refused."""
    if _flag("ACCELERATE_USE_DEEPSPEED") or getattr(args, "deepspeed", None):
        raise GradPrunerError(DEEPSPEED_REFUSAL)
    from torch.distributed.fsdp import FullyShardedDataParallel

    if any(isinstance(m, FullyShardedDataParallel) for m in model.modules()):
        raise GradPrunerError(FSDP1_REFUSAL)


def refuse_sharded_run() -> None:
    """At start of `run`, from what `accelerate launch` sets: FSDP and DeepSpeed are refused."""
    if _flag("ACCELERATE_USE_FSDP") or _flag("ACCELERATE_USE_DEEPSPEED"):
        raise GradPrunerError(
            "`run` keeps the whole model in every process for its cut and evaluations, which FSDP "
            "and DeepSpeed shard: launch `run` under DDP (torchrun, or accelerate launch without "
            "FSDP/DeepSpeed), or run its stages: `probe` (under FSDP2), `prune`, `finetune` "
            "(under FSDP or DeepSpeed), `eval`")


def world_size() -> int:
    """How many processes the launcher started (1 outside one)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def several_processes() -> bool:
    """Whether a launcher started this process among others (torchrun, accelerate launch)."""
    return world_size() > 1


def join_processes(device: torch.device) -> None:
    """Join the launcher's process group now (the Trainer would later, and uses it as it is), so
    that the processes can wait for rank 0: gloo on the CPU; on CUDA, NCCL for the tensors and
    gloo beside it for `on_main`'s objects and barriers. Nothing in a single process."""
    if not several_processes() or torch.distributed.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        torch.distributed.init_process_group("cuda:nccl,cpu:gloo")
    else:
        torch.distributed.init_process_group("gloo")


def on_main(work: Callable[[], T]) -> T:
    """`work()` on rank 0 while the other processes wait; every process returns rank 0's result
    (sent as a pickled object). When `work` fails on rank 0 the others stop with one line naming
    the failure. Every process must reach the same `on_main` calls in the same order."""
    if not (several_processes() and torch.distributed.is_initialized()):
        return work()
    outcome: list = [None]
    failure: BaseException | None = None
    if is_main_process():
        try:
            outcome[0] = (True, work())
        except BaseException as err:  # sent to the others, then raised here
            outcome[0], failure = (False, f"{type(err).__name__}: {err}"), err
    torch.distributed.broadcast_object_list(outcome, src=0)
    if failure is not None:
        raise failure
    done, value = outcome[0]
    if not done:
        raise GradPrunerError(f"rank 0 failed: {value}")
    return value


def full_grad(param: torch.nn.Parameter) -> torch.Tensor | None:
    """The whole gradient of `param` on this rank (None when it has none): a plain gradient (one
    process, DDP) as it is; an FSDP2 DTensor gathered from its shards. The gathering is a
    collective, so every rank must ask for the same parameters in the same order."""
    grad = param.grad
    return grad.full_tensor() if isinstance(grad, DTensor) else grad


@contextmanager
def main_process_output(make_output) -> Iterator:
    """`make_output()` (an atomic output folder) on the main process; None on the others."""
    if is_main_process():
        with make_output() as tmp:
            yield tmp
    else:
        yield None
