"""Atomic output folders: whole or nothing, never over the input."""

from __future__ import annotations

import pytest

from gradpruner.errors import GradPrunerError
from gradpruner.outputs import atomic_output_dir, check_output_dir
import processes


def _names(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_folder_appears_when_done(tmp_path):
    with atomic_output_dir(tmp_path / "a" / "out") as tmp:
        (tmp / "f.txt").write_text("x")
        assert not (tmp_path / "a" / "out").exists()
    assert _names(tmp_path / "a") == ["out"]
    assert (tmp_path / "a" / "out" / "f.txt").read_text() == "x"


def test_overwrite_replaces_previous_folder(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with atomic_output_dir(out, overwrite=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert _names(out) == ["new.txt"]
    assert _names(tmp_path) == ["out"]


def test_empty_existing_folder_is_reused(tmp_path):
    (tmp_path / "out").mkdir()
    with atomic_output_dir(tmp_path / "out") as tmp:
        (tmp / "f.txt").write_text("x")
    assert _names(tmp_path / "out") == ["f.txt"]


def test_error_inside_leaves_previous_folder_and_no_temp(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(ValueError):
        with atomic_output_dir(out, overwrite=True) as tmp:
            (tmp / "half.txt").write_text("half")
            raise ValueError("boom")
    assert _names(tmp_path) == ["out"]
    assert _names(out) == ["old.txt"]


@pytest.mark.parametrize(
    ("out", "source", "message"),
    [
        ("model", "model", "input model's folder"),
        ("model/pruned", "model", "input model's folder"),
        (".", "model", "contains the input model .*; choose another output folder"),
    ],
)
def test_never_writes_over_the_input_model(tmp_path, out, source, message):
    (tmp_path / "model").mkdir()
    with pytest.raises(GradPrunerError, match=message):
        check_output_dir(tmp_path / out, overwrite=True, source=tmp_path / source)


def test_refuses_non_empty_folder_and_file(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "f.txt").write_text("x")
    with pytest.raises(GradPrunerError, match="not empty: pass --overwrite .* to replace it, or choose another output folder"):
        check_output_dir(tmp_path / "out")
    with pytest.raises(GradPrunerError, match="not a folder: choose another output folder"):
        check_output_dir(tmp_path / "out" / "f.txt", overwrite=True)


def test_a_killed_runs_temporary_folder_is_removed_by_the_next_run(tmp_path):
    import os
    import socket

    dead = processes.dead_pid()
    host = socket.gethostname()
    stale = tmp_path / f".out.tmp-{host}-{dead}-abc"
    live = tmp_path / f".out.tmp-{host}-{os.getppid()}-def"  # a running process's: kept
    other = tmp_path / f".other.tmp-{host}-{dead}-ghi"  # another output's: kept
    for folder in (stale, live, other):
        folder.mkdir()
    with atomic_output_dir(tmp_path / "out") as tmp:
        (tmp / "f.txt").write_text("x")
    assert _names(tmp_path) == sorted([live.name, other.name, "out"])
