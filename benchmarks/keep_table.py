"""The `run --keep` table of docs/RESULTS.md: for each run folder (or its report.json), the share
asked for, the candidates' healing steps, the cut chosen, the held-out share predicted for it (with
its standard error and how sure the choice was), the held-out and test shares the healed cut got,
and the run's wall time.

    python benchmarks/keep_table.py runs/keep/sst2-90 runs/keep/arc_easy-90
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from gradpruner.reports.run_report import primary_metric
from gradpruner.search.keep import KeepSearch


def row(report: dict) -> str:
    """One table row of a `run --keep` report."""
    found = KeepSearch.from_json(report["keep"])
    chosen = found.chosen_point
    steps = found.steps or report["config"].get("keep_steps") or "-"
    held = primary_metric(report["pruned_heldout"]) / found.dense_accuracy
    test = primary_metric(report["pruned_finetuned"]) / primary_metric(report["dense_finetuned"])
    return (f"| {report['task']} | {found.keep:g} | {steps} | {found.chosen} "
            f"({chosen.removed_layers}) | {chosen.share:.3f} ± {chosen.share_se:.3f} "
            f"({found.confidence:.0%}) | {held:.3f} | {test:.3f} | "
            f"{report['total_seconds'] / 60:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run folders or their report.json files")
    args = parser.parse_args()
    print("| task | keep | candidate heal steps | layers removed | predicted held-out share "
          "(sure) | held-out share after the heal | test share | wall minutes |")
    print("|---|---|---|---|---|---|---|---|")
    for run in args.runs:
        path = Path(run)
        print(row(json.loads((path / "report.json" if path.is_dir() else path).read_text())))


if __name__ == "__main__":
    main()
