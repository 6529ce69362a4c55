"""The distillation teacher's own accuracy: the dense model with a comparison's probe adapters
merged in (what `--distill` learns from by default), on the first `--limit` test items and on the
comparison's held-out training examples.

    python benchmarks/teacher_accuracy.py /work/heal/arc_easy /work/heal/sst2 /work/heal/piqa
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from gradpruner.evaluation.scoring import evaluate_examples
from gradpruner.training.healing import HealConfig
from gradpruner.model.loading import load_model
from gradpruner.workflows.recipe import ProbeResult, split_heldout, teacher_model
from gradpruner.tasks import get_task
from gradpruner.training.trainer import TrainConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folders", nargs="+")
    parser.add_argument("--limit", type=int, default=200)
    args = parser.parse_args()
    master, tokenizer, _ = load_model(None, "float32", "cpu")
    print("| task | teacher test acc | teacher held-out acc | probe steps |")
    print("|---|---|---|---|")
    for folder in map(Path, args.folders):
        settings = json.loads((folder / "settings.json").read_text())
        task = get_task(settings["task"])
        probed = ProbeResult.load(folder / "probe-s0")
        teacher = teacher_model(master, probed, HealConfig(distill=0.5),
                                TrainConfig(**settings["train"]), torch.float32)
        _, held = split_heldout(task.train_examples(), settings["heldout"])
        test = evaluate_examples(teacher, tokenizer, task.eval_examples()[:args.limit], task.kind)
        heldout = evaluate_examples(teacher, tokenizer, held, task.kind)
        print(f"| {task.name} | {test['acc']:.3f} | {heldout['acc']:.3f} | {probed.stats['steps']} |")


if __name__ == "__main__":
    main()
