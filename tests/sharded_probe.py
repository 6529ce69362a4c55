"""The probe's gradient reading driven as the Trainer drives it (on_train_begin, then per step
on_pre_optimizer_step, the optimizer step, on_step_end) on a tiny LoRA model, in one process or
sharded with FSDP2 across the processes of `torchrun` (gloo, CPU): each rank trains on its share
of the same global batches.

Run by torchrun: `sharded_probe.py MODEL OUT` shards the model, probes, writes every rank's
sq_norms to OUT/rank<r>.pt and rank 0's IGIA to OUT/probe.
"""

from __future__ import annotations

import sys
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import torch
from transformers import AutoModelForCausalLM, TrainerControl, TrainerState

from gradpruner.distributed import main_process_output
from gradpruner.training.igia import IGIA, IGIACallback
from gradpruner.outputs import atomic_output_dir
from gradpruner.model.surgery import base_model

STEPS, GLOBAL_BATCH, LENGTH, LR = 3, 4, 12, 0.05


def lora_model(folder: str | Path):
    """The tiny model with LoRA on every linear module; B is nonzero from the start, so the
    first step's S = G_B G_A is nonzero too."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    generator = torch.Generator().manual_seed(1)
    for name, param in model.named_parameters():
        if "lora_B" in name:
            param.data.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    return model


def batches(vocab: int) -> list[torch.Tensor]:
    """The global batches, identical in every process."""
    generator = torch.Generator().manual_seed(2)
    return [torch.randint(3, vocab, (GLOBAL_BATCH, LENGTH), generator=generator) for _ in range(STEPS)]


def trainer_args(world: int) -> SimpleNamespace:
    """What the callback reads of a Trainer's arguments."""
    return SimpleNamespace(max_steps=STEPS, per_device_train_batch_size=GLOBAL_BATCH // world,
                           gradient_accumulation_steps=1, world_size=world, learning_rate=LR)


def probe(model, rank: int = 0, world: int = 1) -> IGIACallback:
    """Train `STEPS` steps on this rank's rows of each global batch, the callback reading the
    gradients before each optimizer step."""
    args = trainer_args(world)
    state, control = TrainerState(max_steps=STEPS), TrainerControl()
    callback = IGIACallback(max_steps=STEPS)
    callback.on_train_begin(args, state, control, model=model)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=LR)
    share = GLOBAL_BATCH // world
    for ids in batches(base_model(model).config.vocab_size):
        rows = ids[rank * share:(rank + 1) * share]
        optimizer.zero_grad()
        model(input_ids=rows, labels=rows).loss.backward()
        callback.on_pre_optimizer_step(args, state, control)
        optimizer.step()
        callback.on_step_end(args, state, control)
    return callback


def shard(model) -> None:
    """FSDP2: each decoder layer, then the root."""
    from torch.distributed.fsdp import fully_shard

    for layer in base_model(model).model.layers:
        fully_shard(layer)
    fully_shard(model)


def main(model_dir: str, out: str) -> None:
    torch.distributed.init_process_group("gloo")
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    model = lora_model(model_dir)
    shard(model)
    igia = probe(model, rank, world).result()
    torch.save({"sq_norms": igia.sq_norms, "module_names": igia.module_names},
               Path(out) / f"rank{rank}.pt")
    with main_process_output(partial(atomic_output_dir, Path(out) / "probe")) as tmp:
        if tmp is not None:
            igia.save(tmp)
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:3])
