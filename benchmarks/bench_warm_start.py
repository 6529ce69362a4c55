"""`--warm-start` against a cold start: accuracy after fine-tuning and fine-tuning time.

    python benchmarks/bench_warm_start.py --tasks arc_easy,sst2 --ratio 0.25 --steps 20

Per task: one probe (its LoRA adapters saved), one prune (the `--criterion`, default `auto`,
merge `auto`), then the same pruned model fine-tuned twice through the CLI's `finetune` stage,
once with the adapters of the kept layers starting from the probe's (`--warm-start`) and once
from PEFT's fresh initialisation, with the same data, steps and seed; both evaluated on the same
items. Writes nothing outside a temporary folder; prints a Markdown table and, with --json, the
numbers.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from gradpruner.pipeline import eval_stage, finetune_stage, probe_stage, prune_stage, resolve_task
from gradpruner.train import TrainConfig


def one_task(task_name: str, args, tmp: Path) -> dict:
    """Probe, prune, then cold and warm fine-tunes of the same pruned model, evaluated."""
    task = resolve_task(task_name, None)
    cfg = TrainConfig(steps=args.steps, batch_size=8, lr=args.lr, seed=args.seed, progress=False,
                      logging_steps=10_000)
    probe_stage(None, task, str(tmp / "probe"), cfg, args.probe_steps, args.steps)
    record = prune_stage(None, str(tmp / "probe"), str(tmp / "pruned"), criterion=args.criterion,
                         ratio=args.ratio, merge="auto" if args.criterion == "auto" else None,
                         task=task, seed=args.seed)
    out = {"removed_layers": record["removed_layers"], "merged": record.get("merged", {})}
    for arm, warm in (("cold", None), ("warm", str(tmp / "probe"))):
        tuned = finetune_stage(str(tmp / "pruned"), task, str(tmp / arm), cfg, warm_start=warm)
        metrics = eval_stage(str(tmp / arm), task, limit=args.limit)
        out[arm] = {"accuracy": metrics["acc"], "train_seconds": tuned["finetune"]["train_seconds"],
                    "train_loss": tuned["finetune"]["train_loss"],
                    "warm_started_matrices": tuned["finetune"]["warm_started_matrices"]}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", default="arc_easy,sst2")
    parser.add_argument("--ratio", type=float, default=0.25)
    parser.add_argument("--criterion", default="auto")
    parser.add_argument("--probe-steps", type=int, default=20)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    results = {}
    for task_name in args.tasks.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            results[task_name] = one_task(task_name, args, Path(tmp))
        r = results[task_name]
        print(f"[warm start] {task_name}: cold {r['cold']['accuracy']:.3f}, warm {r['warm']['accuracy']:.3f}",
              flush=True)
    print(f"\n{args.probe_steps}-step probe, {args.steps} fine-tune steps, ratio {args.ratio}, "
          f"criterion {args.criterion}, {args.limit} eval items, seed {args.seed}\n")
    print("| task | layers removed | cold: accuracy | warm: accuracy | cold: train loss | warm: train loss "
          "| cold: s | warm: s | matrices warm-started |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        cold, warm = r["cold"], r["warm"]
        print(f"| {name} | {r['removed_layers']} | {cold['accuracy']:.3f} | {warm['accuracy']:.3f} | "
              f"{cold['train_loss']:.3f} | {warm['train_loss']:.3f} | {cold['train_seconds']:.0f} | "
              f"{warm['train_seconds']:.0f} | {warm['warm_started_matrices']} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results}, indent=1))


if __name__ == "__main__":
    main()
