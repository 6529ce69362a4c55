"""Log-likelihood multiple-choice scoring: each pair as a whole sequence (the old path) against
each shared context run once for all its choices (`choice_logprobs`), side by side in one process.

    python benchmarks/bench_eval.py                        # default model, ARC-Easy, 300 items
    python benchmarks/bench_eval.py --task arc_challenge --limit 100 --batch-size 32 --repeats 3

Prints the wall and CPU seconds of each path (best of `--repeats`, the paths alternating), their
ratios, the largest difference of a choice's summed log-probability, and whether acc and acc_norm
(and every item's picks) are the same. Both paths first score a few items once, as warm-up.
"""

from __future__ import annotations

import argparse
import time

import torch

from gradpruner.evaluation.scoring import (_choice_logprobs_full, _shared_contexts, choice_logprobs,
                                 choice_pairs, mc_accuracy)
from gradpruner.model.loading import load_model
from gradpruner.tasks import get_task


def timed(score, model, tokenizer, examples, batch_size: int):
    """(wall seconds, CPU seconds of this process, scores) of one scoring run."""
    start, cpu = time.perf_counter(), time.process_time()
    scores = score(model, tokenizer, examples, batch_size=batch_size)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start, time.process_time() - cpu, scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None,
                        help="model id or folder (default: the offline default)")
    parser.add_argument("--task", default="arc_easy")
    parser.add_argument("--limit", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    model, tokenizer, source = load_model(args.model, args.dtype, args.device)
    examples = get_task(args.task).eval_examples()[:args.limit]
    pairs = choice_pairs(tokenizer, examples, 1024)
    groups, single = _shared_contexts(pairs)
    print(f"{source} on {next(model.parameters()).device} ({next(model.parameters()).dtype}), "
          f"{args.task}: {len(examples)} items, {len(pairs)} pairs, {len(groups)} shared contexts "
          f"({sum(len(m) for _, m in groups)} pairs), {len(single)} pairs scored whole; "
          f"batch size {args.batch_size}")
    print(f"tokens run: old {sum(len(f['input_ids']) for _, _, f in pairs)}, new "
          f"{sum(len(c) + sum(len(t) for *_, t in m) for c, m in groups)}"
          f" + {sum(len(f['input_ids']) for _, _, f in single)} whole")

    paths = {"old (whole sequences)": _choice_logprobs_full,
             "new (shared contexts)": choice_logprobs}
    for score in paths.values():  # warm-up
        score(model, tokenizer, examples[:4], batch_size=args.batch_size)
    seconds = {name: float("inf") for name in paths}
    cpu_seconds = {name: float("inf") for name in paths}
    scores = {}
    for _ in range(args.repeats):
        for name, score in paths.items():
            elapsed, cpu, scores[name] = timed(score, model, tokenizer, examples, args.batch_size)
            seconds[name] = min(seconds[name], elapsed)
            cpu_seconds[name] = min(cpu_seconds[name], cpu)

    for name in paths:
        metrics = mc_accuracy(examples, scores[name])
        print(f"{name:24s} {seconds[name]:8.2f} s (CPU {cpu_seconds[name]:7.2f} s)   "
              f"acc {metrics['acc']:.4f}   "
              f"acc_norm {metrics['acc_norm']:.4f}")
    old_name, new_name = paths
    old, new = scores[old_name], scores[new_name]
    diff = max(abs(a - b) for row_a, row_b in zip(old, new) for a, b in zip(row_a, row_b))
    same = mc_accuracy(examples, old) == mc_accuracy(examples, new)
    picks = [(argmax(row), argmax([lp / max(len(c), 1) for lp, c in zip(row, ex.continuations)]))
             for scored in (old, new) for row, ex in zip(scored, examples)]
    same_picks = picks[:len(examples)] == picks[len(examples):]
    print(f"speed-up {seconds[old_name] / seconds[new_name]:.2f}x (CPU time "
          f"{cpu_seconds[old_name] / cpu_seconds[new_name]:.2f}x); largest log-prob difference "
          f"{diff:.2e}; acc and acc_norm identical: {same}; every item's two picks identical: "
          f"{same_picks}")


def argmax(values: list[float]) -> int:
    return max(range(len(values)), key=values.__getitem__)


if __name__ == "__main__":
    main()
