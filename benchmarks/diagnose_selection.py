"""Why does the IGIA score cut the wrong layers of the default model? (issue 7, item 2)

Probes the default model on a task with several settings (LoRA probes of other lengths and
learning rates, and the full-gradient IGIA), and for each score variant prints: how far apart the
layers' scores are (max / min, and the median of layers 21-28 over the median of the others),
the rank correlation with the full-gradient score, how the LoRA step norms grow over the probe,
the removal set at `--layers`, and the held-out answer loss of the model with that set skipped
(forward passes only; the comparison's results give accuracy after healing for the main sets).

    python benchmarks/diagnose_selection.py --task arc_easy --layers 8 --out docs/results/diagnosis.json
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from dataclasses import replace

import torch

from gradpruner.reports.compare_report import spearman
from gradpruner.criteria import ScoreContext, get_criterion
from gradpruner.model.loading import load_model
from gradpruner.workflows.recipe import probe, split_heldout
from gradpruner.search.auto import AutoSettings, heldout_scoring
from gradpruner.evaluation.judge import Judge
from gradpruner.removal import lowest_scored
from gradpruner.tasks import get_task
from gradpruner.training.trainer import TrainConfig

LATE = range(21, 29)


def spread(scores: list[float]) -> dict:
    """max / min of the layer scores and median(layers 21-28) / median(the rest)."""
    late = [scores[i] for i in LATE if i < len(scores)]
    rest = [s for i, s in enumerate(scores) if i not in LATE]
    return {"max_over_min": max(scores) / max(min(scores), 1e-300),
            "late_over_rest": statistics.median(late) / statistics.median(rest)}


def growth(sq_norms: torch.Tensor) -> float:
    """Median over modules of ||S||^2 at the last probe step over its first non-zero step (with
    LoRA, S is exactly 0 while B is still 0)."""
    ratios = []
    for column in sq_norms.T:
        nonzero = (column > 0).nonzero()
        if len(nonzero) and int(nonzero[0]) < len(column) - 1:
            ratios.append(float(column[-1] / column[int(nonzero[0])]))
    return statistics.median(ratios) if ratios else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", default="arc_easy")
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    model, tokenizer, _ = load_model(None, "float32", "cpu")
    task = get_task(args.task)
    examples = task.train_examples()
    train, held = split_heldout(examples, 32)
    ctx = ScoreContext(model=model, tokenizer=tokenizer, examples=train, heldout=held)
    judge = Judge(model, heldout_scoring(ctx, AutoSettings(), "answer"))
    probes = {  # name: (steps, lr, full)
        "lora t=5 lr=2e-4": (5, 2e-4, False),
        "lora t=20 lr=2e-4": (20, 2e-4, False),
        "lora t=40 lr=2e-4": (40, 2e-4, False),
        "lora t=20 lr=1e-3": (20, 1e-3, False),
        "full gradient t=5 lr=2e-5": (5, 2e-5, True),
    }
    rows, reference = [], None
    for name, (steps, lr, full) in probes.items():
        start = time.perf_counter()
        cfg = TrainConfig(steps=60, lr=lr, full=full, logging_steps=1000)
        igia = probe(copy.deepcopy(model), tokenizer, train, cfg, steps, 60).igia
        seconds = time.perf_counter() - start
        ctx = replace(ctx, igia=igia)
        variants = {"squared": igia.scores("squared"), "unsquared": igia.scores("unsquared"),
                    "relative (|S| / |W|)": get_criterion("gradpruner_relative").layer_scores(ctx)}
        if full and reference is None:
            reference = variants["squared"]
        for variant, scores in variants.items():
            removed = lowest_scored(scores, args.layers)
            rows.append({"probe": name, "variant": variant, "removed": removed,
                         "heldout_loss": judge.loss(removed), **spread(scores),
                         "step_growth": growth(igia.sq_norms), "probe_seconds": seconds,
                         "scores": scores})
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "scores"}), flush=True)
    for criterion in ("block_influence", "taylor", "tail"):
        scores = get_criterion(criterion).layer_scores(ctx)
        removed = lowest_scored(scores, args.layers)
        rows.append({"probe": "-", "variant": criterion, "removed": removed,
                     "heldout_loss": judge.loss(removed), **spread(scores), "scores": scores})
    for row in rows:
        row["rank_corr_with_full_gradient"] = spearman(row["scores"], reference) if reference else None
    result = {"task": args.task, "layers": args.layers, "dense_heldout_loss": judge.loss([]),
              "rows": rows}
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(result, handle, indent=2)
    print("| probe | variant | removed | held-out loss | max/min | late/rest | corr. with full grad |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        corr = r["rank_corr_with_full_gradient"]
        print(f"| {r['probe']} | {r['variant']} | {' '.join(map(str, r['removed']))} | "
              f"{r['heldout_loss']:.2f} | {r['max_over_min']:.3g} | {r['late_over_rest']:.3g} | "
              f"{'-' if corr is None else f'{corr:.2f}'} |")


if __name__ == "__main__":
    main()
