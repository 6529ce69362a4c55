"""The cost of `auto`'s selection and merge search, with the judge's shortcut and without it.

    python benchmarks/bench_selection.py --task arc_easy --ratios 0.25,0.4

`auto` judges each candidate cut by the held-out answer loss. The judge keeps the dense model's
input to every layer and runs only the layers after a cut's first removed (or merged-into)
layer, with skipped layers doing no work. "full passes" is the same search with only the first
layer's input kept, so that every candidate runs from the embeddings through every kept layer. Both must choose the same cut and merge with the same losses; the script checks
that and prints the seconds of each part, on the default model, probe included.
"""

from __future__ import annotations

import argparse
import time

import torch

import gradpruner.criteria.judge as judge_module
from gradpruner.criteria import ScoreContext
from gradpruner.models import load_model
from gradpruner.pipeline import resolve_task
from gradpruner.prune import prune_model
from gradpruner.train import TrainConfig, probe


def select(model, tokenizer, task, igia, ratio: float) -> tuple[dict, float]:
    """`auto` with the merge search on a fresh copy of the model: the record and its seconds."""
    context = ScoreContext(model=model, tokenizer=tokenizer, examples=task.train_examples(),
                           igia=igia, seed=0)
    start = time.perf_counter()
    record = prune_model(model, igia, criterion="auto", ratio=ratio, merge="auto", context=context)
    return record, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", default="arc_easy")
    parser.add_argument("--ratios", default="0.25,0.4")
    parser.add_argument("--probe-steps", type=int, default=20)
    parser.add_argument("--judges", default="shortcut,full passes")
    args = parser.parse_args()
    task = resolve_task(args.task, None)
    model, tokenizer, _ = load_model(None, "float32", "cpu")
    igia, _ = probe(model, tokenizer, task.train_examples(),
                    TrainConfig(steps=20, lr=2e-4, progress=False, logging_steps=10_000), args.probe_steps)
    original = model.state_dict()
    print(f"{args.task}, default model, {torch.get_num_threads()} threads\n")
    print("| ratio | judge | chosen | removed | merge | selection s | judge s | forward batches "
          "| layer passes |")
    print("|---|---|---|---|---|---|---|---|---|")
    for ratio in (float(r) for r in args.ratios.split(",")):
        records = {}
        for name in args.judges.split(","):
            net, _, _ = load_model(None, "float32", "cpu")
            net.load_state_dict(original)
            budget = judge_module.INPUTS_BYTES
            judge_module.INPUTS_BYTES = budget if name == "shortcut" else 1  # 1: layer 0's input only
            try:
                record, seconds = select(net, tokenizer, task, igia, ratio)
            finally:
                judge_module.INPUTS_BYTES = budget
            records[name] = record
            judge = record["merge_search"]["judge"]
            chosen = record["merge_search"]["chosen"]
            merge = f"{chosen['plan']} x {chosen['scale']}" if chosen["plan"] else "none"
            print(f"| {ratio} | {name} | {record['auto']['chosen']} | {record['removed_layers']} | "
                  f"{merge} | {seconds:.0f} | {judge['seconds']:.0f} | "
                  f"{judge['forward_batches']} | {judge['layer_passes']} |", flush=True)
        if len(records) < 2:
            continue
        a, b = (records[k]["auto"]["candidates"] for k in ("shortcut", "full passes"))
        worst = max(abs(x["loss"] - y["loss"]) for x, y in zip(a, b))
        same = records["shortcut"]["removed_layers"] == records["full passes"]["removed_layers"]
        print(f"|  | same cut: {same}; largest candidate-loss difference {worst:.1e} | | | | | | | |")


if __name__ == "__main__":
    main()
