"""Two learning rates side by side: the accuracy after fine-tuning of the dense model and of every
cell that two sets of `gradpruner compare` folders share (same task, method, healing and ratio),
the first set run with one `--lr`, the second with another. The held-out columns (training
examples never trained on) choose; the test columns confirm.

    python benchmarks/lr_table.py --a runs/heal/arc_easy runs/heal/sst2 runs/heal/piqa \
        --b runs/heal3/arc_easy runs/heal3/sst2 runs/heal3/piqa
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from heal_table import load


def lr_of(folder: str) -> float:
    return json.loads((Path(folder) / "settings.json").read_text())["train"]["lr"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--a", nargs="+", required=True, help="folders run with the first --lr")
    parser.add_argument("--b", nargs="+", required=True, help="the same tasks run with the second")
    args = parser.parse_args()
    lr_a, lr_b = lr_of(args.a[0]), lr_of(args.b[0])
    print(f"| task | model | held-out, lr {lr_a:g} | held-out, lr {lr_b:g} | test, lr {lr_a:g} "
          f"| test, lr {lr_b:g} |")
    print("|---|---|---|---|---|---|")
    better = total = 0
    for folder_a, folder_b in zip(args.a, args.b):
        task, cells_a, dense_a = load(folder_a)
        _, cells_b, dense_b = load(folder_b)
        by_key = {(r["method"], r["ratio"]): r for r in cells_b}
        pairs = [("dense", dense_a, dense_b)] + [
            (f"{r['method']}, {r['ratio']:.0%} removed", r, by_key[(r["method"], r["ratio"])])
            for r in cells_a if (r["method"], r["ratio"]) in by_key]
        for name, a, b in pairs:
            better += b["heldout_acc_after"] > a["heldout_acc_after"]
            total += 1
            print(f"| {task} | {name} | {a['heldout_acc_after']:.3f} | {b['heldout_acc_after']:.3f} "
                  f"| {a['acc_after']:.3f} | {b['acc_after']:.3f} |")
    print(f"\nlr {lr_b:g} is ahead on the held-out examples in {better} of {total} pairs.")


if __name__ == "__main__":
    main()
