"""Seconds per healing step of each healing option beside the dense model's LoRA step, measured
side by side in one process (the variants interleaved, `--repeats` times; the median of each).

    python benchmarks/bench_heal_speed.py --remove 12-17,25,26 --steps 8 --repeats 2

The cut is the one `auto` chose on ARC-Easy at 25 % (8 of 30 layers); the teacher is the dense
model; `distill_all`, `distill_align` and `full_distill_align` are `compare`'s healing variants
of those names (the KL on every token, then the hidden-state alignment). Prints one Markdown row
per variant: steady seconds per step (after the first; for the
two-epoch variants, all seconds over all steps, the teacher's first epoch included) and the ratio
to the dense LoRA step.
"""

from __future__ import annotations

import argparse
import copy
import statistics

import torch

from gradpruner.catalog import HEALS
from gradpruner.merging import apply
from gradpruner.training.healing import HealConfig
from gradpruner.model.loading import load_model
from gradpruner.plan import PrunePlan
from gradpruner.workflows.recipe import Healing, heal
from gradpruner.removal import parse_layer_list
from gradpruner.tasks import get_task
from gradpruner.training.trainer import TrainConfig

VARIANTS = {
    "pruned, LoRA": HealConfig(),
    "pruned, LoRA + distillation": HealConfig(distill=0.5),
    "pruned, partial (last 4 layers)": HealConfig(method="partial"),
    "pruned, partial + distillation": HealConfig(method="partial", distill=0.5),
    "pruned, full": HealConfig(method="full"),
    **{f"pruned, `{name}`": HealConfig(**HEALS[name])
       for name in ("distill_all", "distill_align", "full_distill_align")},
}
# the same steps over half as many examples (two epochs), the teacher run on every batch or cached
REVISITING = {
    "pruned, LoRA + distillation, 2 epochs, teacher on every batch":
        HealConfig(distill=0.5, teacher_cache="off"),
    "pruned, LoRA + distillation, 2 epochs, teacher cached (top 64)":
        HealConfig(distill=0.5, teacher_cache="on"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--remove", default="12-17,25,26")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--task", default="arc_easy")
    args = parser.parse_args()
    master, tokenizer, _ = load_model(None, "float32", "cpu")
    examples = get_task(args.task).train_examples()[:-32]
    train = TrainConfig(steps=args.steps, logging_steps=1000)
    plan = PrunePlan(master.config.num_hidden_layers, tuple(parse_layer_list(args.remove)))
    pruned, _ = apply(copy.deepcopy(master), plan)
    times: dict[str, list[float]] = {"dense, LoRA": [], **{name: [] for name in VARIANTS},
                                     **{name: [] for name in REVISITING}}
    half = examples[:args.steps * train.batch_size // 2]
    for _ in range(args.repeats):
        _, stats = heal(copy.deepcopy(master), tokenizer, examples, None,
                        Healing(train, HealConfig(), torch.float32), list(range(plan.num_layers)))
        times["dense, LoRA"].append(stats["step_seconds"])
        for name, variant, revisits in [*((n, v, False) for n, v in VARIANTS.items()),
                                        *((n, v, True) for n, v in REVISITING.items())]:
            teacher = copy.deepcopy(master) if variant.distils else None
            healing = Healing(train, variant, torch.float32, teacher,
                              "dense+probe adapters" if teacher is not None else None)
            _, stats = heal(copy.deepcopy(pruned), tokenizer, half if revisits else examples, None,
                            healing, plan.kept)
            times[name].append(stats["train_seconds"] / stats["steps"] if revisits
                               else stats["step_seconds"])
    dense = statistics.median(times["dense, LoRA"])
    print(f"| healing ({args.steps} steps, batch {train.batch_size}, {args.repeats} interleaved repeats) "
          "| s / step | / dense LoRA step |")
    print("|---|---|---|")
    for name, values in times.items():
        value = statistics.median(values)
        print(f"| {name} | {value:.3f} | {value / dense:.2f} |")


if __name__ == "__main__":
    main()
