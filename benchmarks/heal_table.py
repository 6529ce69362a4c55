"""The healing table of docs/RESULTS.md: every healing and folding variant of `gradpruner compare`
folders, as a share of the dense fine-tuned accuracy, with its healing time beside the dense
fine-tune's, per task and ratio and as the mean over tasks.

Choosing a default reads the held-out columns only (training examples never trained on); the test
columns confirm it.

    python benchmarks/heal_table.py /work/heal/arc_easy /work/heal/sst2 /work/heal/piqa
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from gradpruner.reports.compare_report import rows


def load(folder: str) -> tuple[str, list[dict], dict]:
    """(task, the pruned rows, the dense row) of every finished cell in a comparison folder
    (results.json holds only the cells of the last `compare` call)."""
    cells = Path(folder) / "cells"
    read = lambda path: json.loads(path.read_text())  # noqa: E731
    results = {"task": read(Path(folder) / "settings.json")["task"],
               "zero_shot": read(cells / "dense-zero-shot.json"),
               "dense": [read(p) for p in sorted(cells.glob("dense-s*.json"))],
               "cells": [read(p) for p in sorted(cells.glob("*-r*-s*.json"))]}
    table = rows(results)
    dense = next(r for r in table if r["method"] == "dense")
    return results["task"], [r for r in table if r["method"] != "dense"], dense



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folders", nargs="+")
    args = parser.parse_args()
    tasks = [load(f) for f in args.folders]
    variants = list(dict.fromkeys(r["method"] for _, table, _ in tasks for r in table))
    ratios = sorted({r["ratio"] for _, table, _ in tasks for r in table})
    names = [name for name, _, _ in tasks]
    print("Dense fine-tuned accuracy (test / held-out): " + "; ".join(
        f"{name} {dense['acc_after']:.3f} / {dense['heldout_acc_after']:.3f}"
        for name, _, dense in tasks))
    for ratio in ratios:
        print(f"\n### {ratio:.0%} of the layers removed\n")
        print("| variant | " + " | ".join(f"{n} test | {n} held-out" for n in names) +
              " | mean test | mean held-out | healing time / dense (grid) |")
        print("|---" * (2 * len(names) + 4) + "|")
        for variant in variants:
            cells, test, held, time = [], [], [], []
            for name, table, dense in tasks:
                row = next((r for r in table if r["method"] == variant and r["ratio"] == ratio), None)
                if row is None:
                    cells += ["-", "-"]
                    continue
                share = row["acc_after"] / dense["acc_after"]
                held_share = row["heldout_acc_after"] / dense["heldout_acc_after"]
                test.append(share)
                held.append(held_share)
                time.append(row["finetune_vs_dense"])
                cells += [f"{row['acc_after']:.3f} ({share:.0%})", f"{row['heldout_acc_after']:.3f} ({held_share:.0%})"]
            if not test:
                continue
            complete = len(test) == len(tasks)
            mean = lambda xs: f"{statistics.fmean(xs):.1%}" if complete else "-"  # noqa: E731
            print(f"| {variant} | " + " | ".join(cells) +
                  f" | {mean(test)} | {mean(held)} | {statistics.fmean(time):.2f} |")


if __name__ == "__main__":
    main()
