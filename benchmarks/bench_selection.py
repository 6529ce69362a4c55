"""The cost of `auto`'s selection and merge search, in seconds and in healing steps.

    python benchmarks/bench_selection.py --task arc_easy --ratios 0.25,0.4 --heal-steps 10
    python benchmarks/bench_selection.py --task arc_easy --ratios 0.25 --judges shortcut,full passes
    python benchmarks/bench_selection.py --task arc_easy --ratios 0.25,0.4 --heal-steps 250 --selection-budget 0.1

`auto` judges each candidate cut and merge by a held-out loss (the choice loss on multiple-choice
tasks). The judge keeps the dense model's input to every layer and runs only the layers after a
cut's first removed (or merged-into) layer, with skipped layers doing no work. "full passes" is
the same search with only the first layer's input kept, so that every candidate runs from the
embeddings through every kept layer; both must choose the same cut and merge with the same
losses, which the script checks.

Every step is the recipe's (`gradpruner.workflows.recipe`, what `run` and `compare` run): the training
examples are split (`split_heldout`: the last `--heldout` judge the cuts), the probe runs on the
rest, `cut` selects and applies the plan in fp32, and `heal` fine-tunes the cut model. Each
selection's sidecar is replayed on a fresh copy of the dense model by the library's `apply`
(`PrunePlan.from_json(sidecar["plan"])`), which must give the cut model's weights exactly.

With `--heal-steps N`, each cut model is then healed for N LoRA steps (batch 8, lr 2e-4) in the
same process, and the selection's parts are printed in those steps: the issue's budget is 10 % of
the healing fine-tune. On the default model unless `--model`; the probe is not counted (its
steps are fine-tuning steps). With `--selection-budget F` as well, `auto` runs as `run` does
before a fine-tune of `--heal-steps` steps: within F of its time, timed by the probe's steps;
the heal is then measured over at most 20 steps (a step's seconds are what matter).
"""

from __future__ import annotations

import argparse
import copy
from dataclasses import replace

import torch

import gradpruner.evaluation.judge as judge_module
from gradpruner.merging import apply
from gradpruner.config import RecipeConfig
from gradpruner.model.loading import load_model, resolve_device, resolve_dtype
from gradpruner.tasks import resolve_task
from gradpruner.plan import PrunePlan
from gradpruner.workflows.recipe import Healing, ProbeResult, cut, heal, probe, split_heldout
from gradpruner.reports.run_report import skipped_parts
from gradpruner.training.trainer import TrainConfig

NOT_JUDGED = {"measure": "not run", "seconds": 0.0, "first_pass_seconds": 0.0,
              "forward_batches": 0, "layer_passes": 0}


def recipe(args, ratio: float | None = None) -> RecipeConfig:
    """The recipe's settings: `auto` with the merge search, within `--selection-budget` of a
    `--heal-steps` fine-tune (no limit without either)."""
    heal_steps = args.heal_steps or 20  # also the probe's learning-rate schedule, as in `run`
    train = TrainConfig(steps=heal_steps, batch_size=8, lr=2e-4, logging_steps=10_000)
    budget = args.selection_budget if args.heal_steps else None
    return RecipeConfig(model=args.model, task=args.task, data=args.data, criterion="auto",
                        ratio=ratio, merge="auto", selection_budget=budget,
                        probe_steps=args.probe_steps, heldout=args.heldout, device=args.device,
                        train=train)


def replays(master, sidecar: dict, probed: ProbeResult, cut_model) -> bool:
    """Whether the sidecar's plan, applied to a fresh copy of the dense model, gives the cut
    model's weights exactly."""
    replayed, _ = apply(copy.deepcopy(master), PrunePlan.from_json(sidecar["plan"]), probed.igia)
    mine, theirs = cut_model.state_dict(), replayed.state_dict()
    return mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)


def parts(record: dict, seconds: float) -> dict[str, float]:
    """Seconds of each part of one selection, from its sidecar."""
    found = record["selection"]["auto"]
    merge = record["selection"].get("merge_search") or {}
    judge = found.get("judge") or NOT_JUDGED
    greedy = found.get("greedy_judge", {"seconds": 0.0, "first_pass_seconds": 0.0})
    return {"candidate criteria (IGIA scores; one pass for the others)": found["criteria_seconds"],
            "greedy search (answer loss, its first pass included)":
                greedy["seconds"] + greedy["first_pass_seconds"],
            f"judging the candidates ({judge['measure']}, its first pass included)":
                judge["seconds"] + judge["first_pass_seconds"],
            "merge search (deltas and trials)": merge.get("seconds", 0.0),
            "the rest (surgery)": seconds - found["seconds"] - merge.get("seconds", 0.0),
            "selection in all": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="model id or folder (default: the offline default)")
    parser.add_argument("--task", default="arc_easy")
    parser.add_argument("--data", default=None, help="a JSONL task instead of --task")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--ratios", default="0.25,0.4")
    parser.add_argument("--probe-steps", type=int, default=20)
    parser.add_argument("--heldout", type=int, default=32, help="training examples held out to judge cuts")
    parser.add_argument("--judges", default="shortcut")
    parser.add_argument("--heal-steps", type=int, default=0, help="0: no healing steps measured")
    parser.add_argument("--selection-budget", type=float, default=None,
                        help="auto within this share of a --heal-steps fine-tune (default: no budget)")
    args = parser.parse_args()
    base = recipe(args)
    task = resolve_task(base.task, base.data)
    master, tokenizer, source = load_model(base.model, "float32", base.device)
    dtype = resolve_dtype(base.dtype, resolve_device(base.device))
    train, held = split_heldout(task.train_examples(), base.heldout)
    probed = probe(copy.deepcopy(master).to(dtype), tokenizer, train, base.train, base.probe_steps,
                   base.train.planned_steps(len(train)))
    print(f"{task.name}, {source}, {torch.get_num_threads()} threads; {len(train)} training "
          f"examples, {len(held)} held out; probe step {probed.stats.get('step_seconds') or 0:.3f} s\n")
    print("| ratio | judge | chosen | removed | merge | selection s | judge s | forward batches "
          "| layer passes | sidecar replays |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    costs, skipped = [], {}
    for ratio in (float(r) for r in args.ratios.split(",")):
        cfg = recipe(args, ratio)
        records = {}
        for name in args.judges.split(","):
            stored = judge_module.INPUTS_BYTES
            judge_module.INPUTS_BYTES = stored if name == "shortcut" else 1  # 1: layer 0's input only
            try:
                done = cut(copy.deepcopy(master), tokenizer, train, held, probed,
                           cfg.cut_settings(len(train)))
            finally:
                judge_module.INPUTS_BYTES = stored
            record, seconds = done.record.to_json(), done.select_seconds
            records[name] = record
            search = record["selection"].get("merge_search") or {}
            judge = search.get("judge") or NOT_JUDGED
            merge = f"{record['merged']} x {record['plan']['scale']}" if record["merged"] else "none"
            print(f"| {ratio} | {name} | {record['selection']['auto']['chosen']} | "
                  f"{record['removed_layers']} | {merge} | {seconds:.0f} | {judge['seconds']:.0f} | "
                  f"{judge['forward_batches']} | {judge['layer_passes']} | "
                  f"{replays(master, record, probed, done.model)} |", flush=True)
            if args.heal_steps and name == "shortcut":
                steps = min(args.heal_steps, 20) if args.selection_budget is not None else args.heal_steps
                healing = Healing(replace(cfg.train, steps=steps), cfg.heal, dtype,
                                  warm_start=cfg.warm_starts)
                _, stats = heal(done.model, tokenizer, train, probed, healing, done.record.kept_layers)
                costs.append((ratio, parts(record, seconds), stats["seconds_per_step"]))
                skipped[ratio] = "; ".join(skipped_parts(record))
            del done
        if len(records) < 2:
            continue
        a, b = (records[k]["selection"]["auto"]["candidates"] for k in ("shortcut", "full passes"))
        losses = [(x["loss"], y["loss"]) for x, y in zip(a, b) if x["loss"] is not None or y["loss"] is not None]
        worst = max((abs(x - y) if x is not None and y is not None else float("inf") for x, y in losses),
                    default=0.0)
        same = records["shortcut"]["plan"] == records["full passes"]["plan"]
        print(f"|  | same plan: {same}; largest candidate-loss difference {worst:.1e} | | | | | | | | |")
    for ratio, seconds, step in costs:
        print(f"\nratio {ratio}: one healing step of the cut model {step:.2f} s "
              f"(mean of {min(args.heal_steps, 20) if args.selection_budget is not None else args.heal_steps})"
              f"\n\n| part | seconds | healing steps |\n|---|---|---|")
        for part, value in seconds.items():
            print(f"| {part} | {value:.1f} | {value / step:.1f} |")
        print(f"\nSelection = {seconds['selection in all'] / step:.1f} healing steps: 10 % of a "
              f"{10 * seconds['selection in all'] / step:.0f}-step heal.", flush=True)
        if args.selection_budget is not None:
            print(f"Budget: {args.selection_budget:.0%} of {args.heal_steps} steps; selection = "
                  f"{seconds['selection in all'] / step / args.heal_steps:.1%} of that heal; "
                  f"skipped: {skipped[ratio] or 'nothing'}.", flush=True)


if __name__ == "__main__":
    main()
