"""`--warm-start` against a cold start: accuracy after fine-tuning and fine-tuning time.

    python benchmarks/bench_warm_start.py --tasks arc_easy,sst2 --ratio 0.25 --steps 20

Per task, the recipe that `run` runs (`gradpruner.workflows.recipe`): the training examples split
(`split_heldout`), one probe (its LoRA adapters kept), one cut (the `--criterion`, default
`auto`, merge `auto`, within `--selection-budget` of the fine-tune), then the same cut model
healed twice (`heal`), once with the adapters of the kept layers starting from the probe's
(`warm_start`) and once from PEFT's fresh initialisation, with the same data, steps and seed;
both evaluated (`evaluate`) on the same items. Writes nothing but `--json`; prints a Markdown
table.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

from gradpruner.config import RecipeConfig
from gradpruner.model.loading import load_model, resolve_device, resolve_dtype
from gradpruner.tasks import resolve_task
from gradpruner.workflows.recipe import Healing, cut, evaluate, heal, probe, split_heldout
from gradpruner.training.trainer import TrainConfig


def fraction_or_none(text: str) -> float | None:
    return None if text.lower() == "none" else float(text)


def one_task(task_name: str, args) -> dict:
    """Probe, cut, then cold and warm heals of the same cut model, evaluated."""
    train_cfg = TrainConfig(steps=args.steps, batch_size=8, lr=args.lr, seed=args.seed,
                            logging_steps=10_000)
    cfg = RecipeConfig(model=args.model, task=None if args.data else task_name, data=args.data,
                       criterion=args.criterion, ratio=args.ratio,
                       merge="auto" if args.criterion == "auto" else None,
                       selection_budget=args.selection_budget, probe_steps=args.probe_steps,
                       heldout=args.heldout, eval_limit=args.limit, device=args.device, train=train_cfg)
    cfg.validate()
    task = resolve_task(cfg.task, cfg.data)
    train, held = split_heldout(task.train_examples(), cfg.heldout)
    master, tokenizer, _ = load_model(cfg.model, "float32", cfg.device)
    dtype = resolve_dtype(cfg.dtype, resolve_device(cfg.device))
    probed = probe(copy.deepcopy(master).to(dtype), tokenizer, train, cfg.train, cfg.probe_steps,
                   cfg.train.planned_steps(len(train)))
    done = cut(copy.deepcopy(master), tokenizer, train, held, probed, cfg.cut_settings(len(train)))
    record = done.record
    out = {"removed_layers": record.removed_layers, "merged": record.merged}
    for arm, warm in (("cold", False), ("warm", True)):
        healing = Healing(cfg.train, cfg.heal, dtype, warm_start=warm and cfg.warm_starts)
        tuned, stats = heal(copy.deepcopy(done.model), tokenizer, train, probed, healing,
                            record.kept_layers)
        metrics = evaluate(tuned, tokenizer, task, cfg.eval_limit)
        out[arm] = {"accuracy": metrics["acc"], "train_seconds": stats["train_seconds"],
                    "train_loss": stats["train_loss"],
                    "warm_started_matrices": stats["warm_started_matrices"]}
        del tuned
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="model id or folder (default: the offline default)")
    parser.add_argument("--tasks", default="arc_easy,sst2")
    parser.add_argument("--data", default=None, help="a JSONL task instead of --tasks")
    parser.add_argument("--ratio", type=float, default=0.25)
    parser.add_argument("--criterion", default="auto")
    parser.add_argument("--selection-budget", type=fraction_or_none, default=0.1,
                        help="share of the fine-tune auto may take ('none': no limit)")
    parser.add_argument("--probe-steps", type=int, default=20)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--heldout", type=int, default=32)
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    results = {}
    for task_name in ([Path(args.data).stem] if args.data else args.tasks.split(",")):
        results[task_name] = one_task(task_name, args)
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
