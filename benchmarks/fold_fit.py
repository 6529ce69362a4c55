"""What repairs a cut before any healing, side by side: each removed block dropped, folded by the
linear fold's two fits (least squares, cosine distance), or replaced by the trained replacement
layer, scored on the comparison protocol's held-out training examples and test items.

    python benchmarks/fold_fit.py --task arc_easy --remove 12-17,25,26 --remove 3-5,12-18,25,26 \
        [--variants none,lstsq,cosine,replace]

The cuts are given (docs/RESULTS.md: `auto`'s cuts of the default model at 25 % and 40 %), so
that every variant repairs the same blocks. Prints one Markdown row per cut and variant, and the
time of its fit or training.
"""

from __future__ import annotations

import argparse
import copy
import time

from gradpruner.evaluation.scoring import evaluate_examples
from gradpruner.merging.fold import FoldSettings
from gradpruner.model.loading import load_model
from gradpruner.removal import parse_layer_list
from gradpruner.tasks import get_task
from gradpruner.workflows.recipe import prune_model, split_heldout


VARIANTS = {"none": (None, None), "lstsq": ("fold", "lstsq"), "cosine": ("fold", "cosine"),
            "replace": ("replace", None)}  # variant -> (--merge, the fold's fit)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", default="arc_easy")
    parser.add_argument("--remove", action="append", required=True, help="a cut, e.g. 12-17,25,26")
    parser.add_argument("--heldout", type=int, default=128)
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--variants", default="none,lstsq,cosine,replace")
    args = parser.parse_args()
    master, tokenizer, _ = load_model(None, "float32", "cpu")
    task = get_task(args.task)
    train, held = split_heldout(task.train_examples(), args.heldout)
    test = task.eval_examples()[:args.limit]
    print("| task | cut | repair | held-out acc | test acc | fit seconds |")
    print("|---|---|---|---|---|---|")
    for text in args.remove:
        for variant in args.variants.split(","):
            merge, fit = VARIANTS[variant]
            model = copy.deepcopy(master)
            start = time.perf_counter()
            settings = {"fold": FoldSettings(fit=fit)} if fit else {}
            prune_model(model, None, tokenizer, train, remove=parse_layer_list(text), merge=merge,
                        settings=settings)
            seconds = time.perf_counter() - start
            scores = [evaluate_examples(model, tokenizer, items, task.kind)["acc"] for items in (held, test)]
            print(f"| {args.task} | {text} | {variant} | {scores[0]:.3f} | "
                  f"{scores[1]:.3f} | {seconds:.0f} |", flush=True)


if __name__ == "__main__":
    main()
