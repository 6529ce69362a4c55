"""Which held-out measure, taken before healing, predicts the accuracy after healing best?

    python benchmarks/check_proxy.py runs/cmp/arc_easy runs/cmp/sst2 runs/cmp/piqa [--examples 128]

For every cell of `gradpruner compare` runs but `auto`'s (chosen by one of these measures), the
cut (and merged) model is rebuilt from the cell's record (the removed layers, the merge plan and
scale; LaCo's collapse rerun), checked against the held-out answer loss the cell recorded, and
measured on the examples `compare` holds out (the last training examples) and, with
`--examples N`, on the last N:

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

from gradpruner.compare_report import spearman
from gradpruner.criteria import ScoreContext
from gradpruner.search.auto import heldout_scoring
from gradpruner.search.judge import choice_loss, task_batches, task_loss
from gradpruner.evaluate import choice_logprobs
from gradpruner.igia import IGIA
from gradpruner.apply.merge import merge_layers
from gradpruner.models import load_model
from gradpruner.pipeline import resolve_task
from gradpruner.prune import prune_model
from gradpruner.surgery import cut_layers, layer_prefix


def rebuild(dense, tokenizer, record: dict, folder: Path, train: list) -> torch.nn.Module:
    """The cell's model before healing, from its pruning record."""
    net = copy.deepcopy(dense)
    if record.get("merge_rule") == "laco":
        ctx = ScoreContext(model=net, tokenizer=tokenizer, examples=train)
        prune_model(net, None, criterion="laco", count=len(record["removed_layers"]), merge=None,
                    context=ctx)
        return net
    if record.get("merged"):
        igia = IGIA.load(folder / "probe-s0")
        plan = {int(r): d for r, d in record["merged"].items()}
        merge_layers(net, plan, igia.matrix, layer_prefix(net), record["density"],
                     record["merge_scale"], mergeable=set(igia.module_names))
    cut_layers(net, record["removed_layers"])
    return net


def measures(net, tokenizer, examples: list, held: int, more: int) -> dict:
    """The answer and the judge's choice loss on the last `held` examples; answer loss, choice
    loss and accuracy on the last `more` (none when 0)."""
    ctx = lambda ex: ScoreContext(model=net, tokenizer=tokenizer, examples=ex)
    heldout = examples[-held:]
    found = {f"answer loss {held}": task_loss(net, task_batches(ctx(heldout), held, 8, "check")),
             "choice loss (judge)": heldout_scoring(ctx(heldout)).evaluate(net)}
    if not more:
        return found
    wide = examples[-more:]
    scores = choice_logprobs(net, tokenizer, wide)
    gold = [ex.gold for ex in wide]
    right = [max(range(len(row)), key=row.__getitem__) == g for row, g in zip(scores, gold)]
    return {**found,
            f"answer loss {more}": task_loss(net, task_batches(ctx(wide), more, 8, "check")),
            f"choice loss {more}": choice_loss(scores, gold),
            f"accuracy {more}": sum(right) / len(right)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--examples", type=int, default=0)
    args = parser.parse_args()
    dense, tokenizer, _ = load_model(None, "float32", "cpu")
    table = {}
    for folder in args.folders:
        settings = json.loads((folder / "settings.json").read_text())
        examples = resolve_task(settings["task"], None).train_examples()
        held = settings["heldout"]
        train = examples[:-held]
        rows = []
        for path in sorted((folder / "cells").glob("*-r*-s0.json")):
            if path.name.startswith("auto-"):  # its cut was chosen by one of these measures
                continue
            cell = json.loads(path.read_text())
            net = rebuild(dense, tokenizer, cell["prune"], folder, train)
            found = measures(net, tokenizer, examples, held, args.examples)
            drift = abs(found[f"answer loss {held}"] - cell["heldout_loss"])
            rows.append({"cell": path.stem, "ratio": cell["ratio"], "after": cell["after"]["acc"],
                         "before": cell["before"]["acc"], "drift": drift, **found})
            print(json.dumps(rows[-1]), flush=True)
        table[settings["task"]] = rows
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
