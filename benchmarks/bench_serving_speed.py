"""llama.cpp's prompt-processing and generation speed of two GGUF files, measured side by side.

    python benchmarks/bench_serving_speed.py DENSE.gguf PRUNED.gguf [--prompt 512] [--gen 128]

Both files stay loaded (llama-cpp-python: f16 cache, --threads threads, default one per physical
core, for prompts too: more spin against each other on a busy machine); each repeat
times one prompt of --prompt tokens in one batch, then --gen single-token steps on it, for one
file and then the other, so that a slower or faster moment of the machine hits both. Prints the
median tokens/s of each and the pruned / dense ratio, beside the ideal speed-up of the pruned
export folder's gradpruner.json (the FLOPs ratio of the cut) when it has one.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

from llama_cpp import Llama


def measure(llm: Llama, prompt: list[int], gen: int) -> tuple[float, float]:
    """(prompt tokens/s, generated tokens/s) of one prompt and `gen` steps from an empty cache."""
    llm.reset()
    start = time.perf_counter()
    llm.eval(prompt)
    prefill = time.perf_counter() - start
    start = time.perf_counter()
    for step in range(gen):
        llm.eval([prompt[step % len(prompt)]])
    decode = time.perf_counter() - start
    return len(prompt) / prefill, gen / decode


def ideal_speedup(gguf: Path) -> float | None:
    """The cut's ideal speed-up recorded in the export folder's gradpruner.json, if any."""
    sidecar = gguf.parent / "gradpruner.json"
    if not sidecar.is_file():
        return None
    return (json.loads(sidecar.read_text()).get("costs") or {}).get("ideal_speedup")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dense", type=Path)
    parser.add_argument("pruned", type=Path)
    parser.add_argument("--prompt", type=int, default=512, help="prompt tokens (default 512)")
    parser.add_argument("--gen", type=int, default=128, help="generated tokens (default 128)")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repeats (default 5)")
    parser.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 2) // 2),
                        help="threads (default: half the logical CPUs)")
    args = parser.parse_args()
    n_ctx = args.prompt + args.gen + 8
    models = {name: Llama(model_path=str(path), n_ctx=n_ctx, n_batch=args.prompt,
                          n_ubatch=args.prompt, n_threads=args.threads,
                          n_threads_batch=args.threads, verbose=False)
              for name, path in (("dense", args.dense), ("pruned", args.pruned))}
    prompt = [(17 * i + 100) % 1000 + 100 for i in range(args.prompt)]  # ordinary token ids
    for llm in models.values():
        measure(llm, prompt[:32], 4)  # warm-up
    runs = {name: [] for name in models}
    for _ in range(args.repeats):
        for name, llm in models.items():
            runs[name].append(measure(llm, prompt, args.gen))
    result = {name: {"prompt_tokens_per_s": statistics.median(r[0] for r in rs),
                     "gen_tokens_per_s": statistics.median(r[1] for r in rs)}
              for name, rs in runs.items()}
    result["ratio"] = {key: result["pruned"][key] / result["dense"][key] for key in result["dense"]}
    result["ideal_speedup"] = ideal_speedup(args.pruned)
    result["settings"] = {"prompt": args.prompt, "gen": args.gen, "repeats": args.repeats,
                          "threads": args.threads,
                          "dense": str(args.dense), "pruned": str(args.pruned)}
    print(json.dumps(result, indent=2))
    for llm in models.values():
        llm.close()


if __name__ == "__main__":
    main()
