"""Wall time of the CLI's instant paths (`--help`, a settings error, `tasks`) beside a bare
interpreter and `import torch`.

    PYTHONPATH=src python benchmarks/bench_cli_startup.py --runs 7 [--before /work/main/src]

Each command is a fresh process of this interpreter (`gradpruner` is the console script beside
it, importing the package from PYTHONPATH first; `--before SRC` adds its two commands once more
with SRC, another checkout's `src`, in front). The commands take turns, run after run, so a change
in the machine's load touches them alike. Prints the median and the range of each.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

SCRIPT = str(Path(sys.executable).parent / "gradpruner")  # the installed console script
BASE = {
    "python -c pass": ["-c", "pass"],
    "python -c 'import torch'": ["-c", "import torch"],
}
CLI = {
    "gradpruner --help": [SCRIPT, "--help"],
    "gradpruner run --ratio 40": [SCRIPT, "run", "--ratio", "40"],
    "gradpruner tasks": [SCRIPT, "tasks"],
}


def wall_time(args: list[str], env: dict[str, str]) -> float:
    """Seconds one fresh interpreter takes to run `args` (its output discarded)."""
    start = time.perf_counter()
    subprocess.run([sys.executable, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env=env, check=False)
    return time.perf_counter() - start


def commands(before: str | None) -> dict[str, tuple[list[str], dict[str, str]]]:
    """Name -> (arguments, environment) of every timed command."""
    out = {name: (args, dict(os.environ)) for name, args in {**BASE, **CLI}.items()}
    if before:
        env = {**os.environ, "PYTHONPATH": before}
        out.update({f"{name} (before)": (args, env) for name, args in CLI.items()})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=7, help="runs of each command (default 7)")
    parser.add_argument("--before", metavar="SRC",
                        help="also time the CLI with this src folder on PYTHONPATH (default: not)")
    options = parser.parse_args()
    timed = commands(options.before)
    for args, env in timed.values():  # one untimed run each: the file cache warm for all
        wall_time(args, env)
    times: dict[str, list[float]] = {name: [] for name in timed}
    for _ in range(options.runs):
        for name, (args, env) in timed.items():
            times[name].append(wall_time(args, env))
    print(f"{'command':<38}{'median s':>10}{'min s':>8}{'max s':>8}   ({options.runs} runs each)")
    for name, seconds in times.items():
        print(f"{name:<38}{statistics.median(seconds):>10.3f}{min(seconds):>8.3f}{max(seconds):>8.3f}")


if __name__ == "__main__":
    main()
