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

With `--heal-steps N`, each cut model is then fine-tuned for N LoRA steps (batch 8, lr 2e-4) in
the same process, and the selection's parts are printed in those steps: the issue's budget is
10 % of the healing fine-tune. On the default model; the probe is not counted (its steps are
fine-tuning steps). With `--selection-budget F` as well, `auto` runs as `prune` does when a
fine-tune of `--heal-steps` steps follows: within F of its time, timed by the probe's steps; the
heal is then measured over at most 20 steps (a step's seconds are what matter).
"""

from __future__ import annotations

import argparse
import time

import torch

import gradpruner.search.judge as judge_module
from gradpruner.criteria import ScoreContext
from gradpruner.search.budget import SelectionBudget, heal_budget, skipped_parts
from gradpruner.models import load_model
from gradpruner.pipeline import resolve_task
from gradpruner.prune import prune_model
from gradpruner.selection import removal_count
from gradpruner.train import TrainConfig, finetune, probe


def select(model, tokenizer, task, igia, ratio: float,
           budget: SelectionBudget) -> tuple[dict, float]:
    """`auto` with the merge search on `model`: the record and its seconds."""
    context = ScoreContext(model=model, tokenizer=tokenizer, examples=task.train_examples(),
                           igia=igia, seed=0, budget=budget)
    start = time.perf_counter()
    record = prune_model(model, igia, criterion="auto", ratio=ratio, merge="auto", context=context)
    return record, time.perf_counter() - start


def parts(record: dict, seconds: float) -> dict[str, float]:
    """Seconds of each part of one selection, from its record."""
    found, merge = record["auto"], record["merge_search"]
    judge = found["judge"] or {"measure": "not run", "seconds": 0.0, "first_pass_seconds": 0.0}
    greedy = found.get("greedy_judge", {"seconds": 0.0, "first_pass_seconds": 0.0})
    return {"candidate criteria (IGIA scores; one pass for the others)": found["criteria_seconds"],
            "greedy search (answer loss, its first pass included)":
                greedy["seconds"] + greedy["first_pass_seconds"],
            f"judging the candidates ({judge['measure']}, its first pass included)":
                judge["seconds"] + judge["first_pass_seconds"],
            "merge search (deltas and trials)": merge["seconds"],
            "the rest (surgery)": seconds - found["seconds"] - merge["seconds"],
            "selection in all": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", default="arc_easy")
    parser.add_argument("--ratios", default="0.25,0.4")
    parser.add_argument("--probe-steps", type=int, default=20)
    parser.add_argument("--judges", default="shortcut")
    parser.add_argument("--heal-steps", type=int, default=0, help="0: no healing steps measured")
    parser.add_argument("--selection-budget", type=float, default=None,
                        help="auto within this share of a --heal-steps fine-tune (default: no budget)")
    args = parser.parse_args()
    task = resolve_task(args.task, None)
    model, tokenizer, _ = load_model(None, "float32", "cpu")
    config = TrainConfig(steps=20, lr=2e-4, progress=False, logging_steps=10_000)
    igia, probed = probe(model, tokenizer, task.train_examples(), config, args.probe_steps)
    total = model.config.num_hidden_layers
    original = model.state_dict()
    print(f"{args.task}, default model, {torch.get_num_threads()} threads\n")
    print("| ratio | judge | chosen | removed | merge | selection s | judge s | forward batches "
          "| layer passes |")
    print("|---|---|---|---|---|---|---|---|---|")
    costs, skipped = [], {}
    for ratio in (float(r) for r in args.ratios.split(",")):
        records = {}
        for name in args.judges.split(","):
            net, _, _ = load_model(None, "float32", "cpu")
            net.load_state_dict(original)
            stored = judge_module.INPUTS_BYTES
            judge_module.INPUTS_BYTES = stored if name == "shortcut" else 1  # 1: layer 0's input only
            try:
                budget = heal_budget(args.selection_budget, args.heal_steps or None, total,
                                     removal_count(total, ratio), probed)
                record, seconds = select(net, tokenizer, task, igia, ratio, budget)
            finally:
                judge_module.INPUTS_BYTES = stored
            records[name] = record
            judge = record["merge_search"].get("judge") or {"seconds": 0, "forward_batches": 0,
                                                            "layer_passes": 0}
            chosen = record["merge_search"]["chosen"]
            merge = f"{chosen['plan']} x {chosen['scale']}" if chosen["plan"] else "none"
            print(f"| {ratio} | {name} | {record['auto']['chosen']} | {record['removed_layers']} | "
                  f"{merge} | {seconds:.0f} | {judge['seconds']:.0f} | "
                  f"{judge['forward_batches']} | {judge['layer_passes']} |", flush=True)
            if args.heal_steps and name == "shortcut":
                steps = min(args.heal_steps, 20) if args.selection_budget is not None else args.heal_steps
                heal = TrainConfig(steps=steps, lr=2e-4, progress=False, logging_steps=10_000)
                _, stats = finetune(net, tokenizer, task.train_examples(), heal)
                costs.append((ratio, parts(record, seconds), stats["seconds_per_step"]))
                skipped[ratio] = "; ".join(skipped_parts(record))
        if len(records) < 2:
            continue
        a, b = (records[k]["auto"]["candidates"] for k in ("shortcut", "full passes"))
        worst = max(abs(x["loss"] - y["loss"]) for x, y in zip(a, b))
        same = records["shortcut"]["removed_layers"] == records["full passes"]["removed_layers"]
        print(f"|  | same cut: {same}; largest candidate-loss difference {worst:.1e} | | | | | | | |")
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
