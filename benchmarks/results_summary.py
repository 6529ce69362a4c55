"""Summarise `gradpruner compare` folders for docs/RESULTS.md.

Copies each task's plots next to the document and prints Markdown: each task's tables, `auto`
against the best single criterion and the paper's rule in every cell, the cost of `auto`'s
selection in healing steps of the same cell, and the rank correlation of held-out loss before
healing with accuracy after it, per task and pooled. Where the docs folder already holds a task's
results.csv, or `--before` names a folder that does (an earlier run of the grid), it first prints
which cells moved: the cut and the accuracy after healing, then and now.

    python benchmarks/results_summary.py runs/cmp/arc_easy runs/cmp/piqa runs/cmp/sst2 --docs docs/results
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
from pathlib import Path

from gradpruner.reports.compare_report import rows, spearman, write_comparison

SINGLE = ("gradpruner", "gradpruner_nomerge", "gradpruner_unsquared", "tail", "random",
          "block_influence", "angular", "taylor", "ppl", "laco")


def cell_summary(results: dict) -> list[str]:
    """Per ratio: dense, paper's rule, best single criterion, auto, and auto's selection cost."""
    table = rows(results)
    dense = [r["acc_after"] for r in table if r["method"] == "dense"][0]
    lines = []
    for ratio in sorted({r["ratio"] for r in table if r["method"] != "dense"}):
        cell = {r["method"]: r for r in table if r["ratio"] == ratio}
        singles = {m: cell[m] for m in SINGLE if m in cell}
        best = max(singles, key=lambda m: singles[m]["acc_after"]) if singles else None
        auto = cell.get("auto")
        raw = [c for c in results["cells"] if c["method"] == "auto" and c["ratio"] == ratio]
        cost = "-"
        if raw:
            selection = raw[0]["prune"]["selection"]
            found = selection["auto"]
            merge = (selection.get("merge_search") or {}).get("judge") or found.get("judge") or {}
            batches = merge.get("forward_batches", 0) + found.get("greedy_judge", {}).get("forward_batches", 0)
            steps = raw[0]["select_seconds"] / raw[0]["finetune"]["seconds_per_step"]
            how = f"by {merge['measure']}" if merge else "unjudged (budget)"
            cost = (f"{raw[0]['select_seconds']:.1f} s = {steps:.1f} of its healing steps, 10 % of a "
                    f"{10 * steps:.0f}-step heal ({batches} held-out batches); chose {found['chosen']} {how}")
        lines.append(
            f"| {results['task']} | {ratio} | {dense:.2f} | "
            f"{cell['gradpruner']['acc_after']:.2f} | " if "gradpruner" in cell else
            f"| {results['task']} | {ratio} | {dense:.2f} | - | ")
        lines[-1] += (f"{best} {singles[best]['acc_after']:.2f} | " if best else "- | ")
        lines[-1] += (f"**{auto['acc_after']:.2f}** | {cost} |" if auto else "- | - |")
    return lines


def moved_cells(before_csv: Path, table: list[dict]) -> list[str]:
    """Markdown rows, one per cell in both runs: cut and accuracy after healing, before and now."""
    if not before_csv.is_file():
        return []
    with before_csv.open() as f:
        before = {(r["method"], float(r["ratio"]), int(r["seed"])): r for r in csv.DictReader(f)}
    lines = []
    for row in table:
        old = before.get((row["method"], float(row["ratio"]), int(row["seed"])))
        if old is None:
            continue
        same_cut = "same" if old["layers_removed"] == row["layers_removed"] else old["layers_removed"]
        delta = row["acc_after"] - float(old["acc_after"])
        lines.append(f"| {row['method']} | {row['ratio']} | {row['layers_removed'] or '-'} | "
                     f"{same_cut or '-'} | {float(old['acc_after']):.2f} | {row['acc_after']:.2f} | "
                     f"{delta:+.2f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folders", nargs="+")
    parser.add_argument("--docs", default="docs/results", help="where the plots are copied")
    parser.add_argument("--before", help="where an earlier run's TASK/results.csv are (default: --docs)")
    parser.add_argument("--page", default="docs/RESULTS.md",
                        help="the Markdown file the output goes into (plot links are relative to it)")
    args = parser.parse_args()
    docs = Path(args.docs)
    link = Path(os.path.relpath(docs, Path(args.page).parent)).as_posix()
    before = Path(args.before or args.docs)
    everything, summary, tables, moved = [], [], [], []
    for folder in map(Path, args.folders):
        if not (folder / "results.json").is_file():
            print(f"<!-- {folder}: no results.json yet -->")
            continue
        results = json.loads((folder / "results.json").read_text())
        write_comparison(results, folder)  # tables and plots drawn by this version
        task = results["task"]
        (docs / task).mkdir(parents=True, exist_ok=True)
        table = rows(results)
        moved += [f"| {task} " + line for line in moved_cells(before / task / "results.csv", table)]
        for plot in folder.glob("*.png"):
            shutil.copy(plot, docs / task / plot.name)
        shutil.copy(folder / "results.csv", docs / task / "results.csv")
        everything += [r for r in table if r["method"] != "dense"]
        summary += cell_summary(results)
        text = (folder / "results.md").read_text().split("\n", 1)[1]
        tables.append(f"### {task}\n{text}\n![accuracy]({link}/{task}/accuracy.png)\n")
        for plot in sorted(folder.glob("layers-*.png")):
            tables.append(f"![layers]({link}/{task}/{plot.name})\n")
    if moved:
        print("| task | method | ratio | cut now | cut in the earlier grid | accuracy, earlier grid | accuracy now | moved |")
        print("|---|---|---|---|---|---|---|---|")
        print("\n".join(moved) + "\n")
    print("| task | ratio | dense FT | paper's rule | best single criterion | auto | auto's selection cost |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(summary))
    pooled = spearman([-r["heldout_loss"] for r in everything], [r["acc_after"] for r in everything])
    if pooled is not None:
        print(f"\nPooled over {len(everything)} pruned cells: Spearman(-held-out answer loss, accuracy after "
              f"healing) = {pooled:.2f}.\n")
    print("\n".join(tables))


if __name__ == "__main__":
    main()
