"""Helpers of the tests that start processes: torchrun on CPU (gloo) and a pid known to be dead."""

from __future__ import annotations

import os
import socket
import subprocess
import sys


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*target: str, processes: int = 2) -> subprocess.CompletedProcess:
    """`torchrun --nproc_per_node processes TARGET...` on the CPU (a script, or `-m module`
    followed by its arguments), its output captured."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
               "--master_addr", "127.0.0.1", "--master_port", str(free_port()), *map(str, target)]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


def dead_pid() -> str:
    """The pid of a process that has ended."""
    return subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
