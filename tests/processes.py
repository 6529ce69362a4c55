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
    return subprocess.run(torchrun_command(*target, processes=processes), env=cpu_env(),
                          capture_output=True, text=True, timeout=600)


def start_torchrun(*target: str, processes: int = 2) -> subprocess.Popen:
    """`torchrun` as above, started, its output discarded."""
    return subprocess.Popen(torchrun_command(*target, processes=processes), env=cpu_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def kill_torchrun(launcher: subprocess.Popen) -> None:
    """SIGKILL the workers of a `start_torchrun` launcher (each by its pid), then the launcher."""
    import psutil

    workers = psutil.Process(launcher.pid).children(recursive=True)
    for worker in workers:
        worker.kill()
    psutil.wait_procs(workers, timeout=30)
    launcher.kill()
    launcher.wait()


def cpu_env() -> dict:
    return {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}


def torchrun_command(*target: str, processes: int = 2) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
            "--master_addr", "127.0.0.1", "--master_port", str(free_port()), *map(str, target)]


def dead_pid() -> str:
    """The pid of a process that has ended."""
    return subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
