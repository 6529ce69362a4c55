"""Which held-out measure, taken before healing, predicts the accuracy after healing best?

    python benchmarks/check_proxy.py runs/cmp/arc_easy runs/cmp/sst2 runs/cmp/piqa [--examples 128]

The model is the one each comparison's settings name (`--model` to override), in fp32.

For every cell of `gradpruner compare` runs but `auto`'s (chosen by one of these measures), the
cut (and merged) model is rebuilt from the cell's sidecar by the library's `apply` (its `plan`:
the removed layers, the paper's merge with its scale, or LaCo's collapse steps), checked against
the held-out answer loss the cell recorded, and measured on the examples `compare` holds out (the
last training examples) and, with `--examples N`, on the last N:

- answer loss: mean loss of the gold answer's tokens (what `compare` records);
- choice loss: mean -log softmax over the choices of each choice's summed log-probability, at
  the gold choice (a smooth held-out accuracy); "judge" is the one `auto` uses, on the held-out
  examples with at most 64 (example, choice) rows;
- held-out accuracy (with `--examples`).

Printed: per task, the Spearman rank correlation (ties share their mean rank) of each measure
(losses negated) with the accuracy after healing, over all cells of both ratios.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import torch

from gradpruner.merging import apply
from gradpruner.reports.compare_report import spearman
from gradpruner.criteria import ScoreContext
from gradpruner.evaluation.scoring import choice_logprobs
from gradpruner.training.igia import IGIA
from gradpruner.model.loading import load_model
from gradpruner.tasks import resolve_task
from gradpruner.plan import PrunePlan
from gradpruner.workflows.recipe import split_heldout
from gradpruner.search.auto import AutoSettings, heldout_scoring
from gradpruner.evaluation.judge import choice_loss, task_batches, task_loss


def rebuild(dense, sidecar: dict, folder: Path, seed: int = 0) -> torch.nn.Module:
    """The cell's model before healing: its plan (merge and cut; LaCo's collapse included)
    replayed on a copy of the dense model by the library's `apply`, with the cell's probe."""
    plan = PrunePlan.from_json(sidecar["plan"])
    igia = IGIA.load(folder / f"probe-s{seed}") if plan.merge_rule == "gradpruner" else None
    net, _ = apply(copy.deepcopy(dense), plan, igia)
    return net


def measures(net, tokenizer, examples: list, held: int, more: int, settings: AutoSettings) -> dict:
    """The answer and the judge's choice loss on the last `held` examples; answer loss, choice
    loss and accuracy on the last `more` (none when 0)."""
    _, heldout = split_heldout(examples, held)
    judge = heldout_scoring(ScoreContext(model=net, tokenizer=tokenizer, heldout=heldout), settings)
    found = {f"answer loss {held}": task_loss(net, task_batches(tokenizer, heldout, 8, "check")),
             "choice loss (judge)": judge.evaluate(net)}
    if not more:
        return found
    wide = examples[-more:]
    scores = choice_logprobs(net, tokenizer, wide)
    gold = [ex.gold for ex in wide]
    right = [max(range(len(row)), key=row.__getitem__) == g for row, g in zip(scores, gold)]
    return {**found,
            f"answer loss {more}": task_loss(net, task_batches(tokenizer, wide, 8, "check")),
            f"choice loss {more}": choice_loss(scores, gold),
            f"accuracy {more}": sum(right) / len(right)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--examples", type=int, default=0)
    parser.add_argument("--model", default=None,
                        help="the compared model (default: the one each comparison's settings name)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    table, dense_models = {}, {}
    for folder in args.folders:
        settings = json.loads((folder / "settings.json").read_text())
        name = args.model or settings.get("model")
        if name not in dense_models:  # the cut is applied in fp32, as `compare` does
            dense_models[name] = load_model(name, "float32", args.device)[:2]
        dense, tokenizer = dense_models[name]
        task = resolve_task(settings.get("task"), settings.get("data"), settings.get("eval_data"))
        examples = task.train_examples()
        held = settings["heldout"]
        auto_settings = AutoSettings(**(settings.get("settings") or {}).get("auto", {}))
        rows = []
        for path in sorted((folder / "cells").glob("*-r*-s0.json")):
            if path.name.startswith("auto-"):  # its cut was chosen by one of these measures
                continue
            cell = json.loads(path.read_text())
            net = rebuild(dense, cell["prune"], folder, cell.get("seed", 0))
            found = measures(net, tokenizer, examples, held, args.examples, auto_settings)
            drift = abs(found[f"answer loss {held}"] - cell["heldout_loss"])
            rows.append({"cell": path.stem, "ratio": cell["ratio"], "after": cell["after"]["acc"],
                         "before": cell["before"]["acc"], "drift": drift, **found})
            print(json.dumps(rows[-1]), flush=True)
            del net
        table[task.name] = rows
    keys = [k for k in table[next(iter(table))][0] if k.startswith(("answer", "choice", "accuracy"))]
    keys.append("before")
    print("\n| task | cells | " + " | ".join(keys) + " |")
    print("|---|---|" + "---|" * len(keys))
    for task, rows in table.items():
        cols = []
        for key in keys:
            sign = -1.0 if "loss" in key else 1.0
            values = [sign * r[key] for r in rows]
            rho = spearman(values, [r["after"] for r in rows])
            cols.append("-" if rho is None else f"{rho:.2f}")
        print(f"| {task} | {len(rows)} | " + " | ".join(cols) + " |")
    print("\nlargest difference from the recorded answer loss:",
          f"{max(r['drift'] for rows in table.values() for r in rows):.1e}")


if __name__ == "__main__":
    main()
