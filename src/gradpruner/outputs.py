"""Output folders that appear whole or not at all, and never replace the user's input; cache
entries that are written once, also by processes that start together."""

from __future__ import annotations

import fcntl
import glob
import json
import os
import shutil
import socket
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import GradPrunerError

SIDECAR_NAME = "gradpruner.json"


def _is_within(path: Path, folder: Path) -> bool:
    """Whether `path` is `folder` or lies inside it (both already resolved)."""
    return path == folder or folder in path.parents


def check_output_dir(
    out: str | os.PathLike, overwrite: bool = False, source: str | os.PathLike | None = None
) -> None:
    """Raise GradPrunerError unless `out` may be (re)written; call it early, before long work."""
    out_path = Path(out).resolve()
    if out_path.exists() and not out_path.is_dir():
        raise GradPrunerError(f"output path {out} exists and is not a folder: choose another output folder")
    if source is not None:
        source_path = Path(source).resolve()
        if _is_within(out_path, source_path):
            raise GradPrunerError(
                f"refusing to write {out} into the input model's folder {source}; choose another output folder"
            )
        if _is_within(source_path, out_path):
            raise GradPrunerError(f"refusing to write {out}: it contains the input model {source}; choose "
                                  "another output folder")
    if out_path.is_dir() and any(out_path.iterdir()) and not overwrite:
        raise GradPrunerError(f"output folder {out} exists and is not empty: pass --overwrite "
                              "(overwrite=True) to replace it, or choose another output folder")


def move_into_place(tmp: Path, out: Path) -> None:
    """Rename `tmp` to `out`, replacing an existing `out` only once `tmp` is complete."""
    if not out.exists():
        tmp.rename(out)
        return
    backup = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
    out.rename(backup)
    try:
        tmp.rename(out)
    except BaseException:
        backup.rename(out)
        raise
    shutil.rmtree(backup, ignore_errors=True)


@contextmanager
def atomic_output_dir(
    out: str | os.PathLike, overwrite: bool = False, source: str | os.PathLike | None = None
) -> Iterator[Path]:
    """Yield a temporary sibling folder of `out`; on success it becomes `out`, on any error it is removed.

    A previous `out` (allowed only with `overwrite`) stays untouched until the new folder is complete.
    `source` is the input model's folder: `out` may be neither inside it nor contain it.
    """
    check_output_dir(out, overwrite, source)
    out_path = Path(out).resolve()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_temporary(out_path)
    try:
        yield tmp
        move_into_place(tmp, out_path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def produce_once(target: Path, produce: Callable[[Path], None]) -> Path:
    """Return `target`, a cache entry (file or folder) that `produce(path)` writes at `path` once.

    Safe when several processes ask for it at once: they take turns on an exclusive lock on a file
    beside `target` and check again, under the lock, whether it exists, so one process produces
    it and the others use its result. `produce` writes into a temporary sibling that is renamed
    onto `target` once complete, so an entry that exists is complete; a failed `produce` leaves
    no entry and no temporary (only the lock file), and the temporary siblings of killed processes
    are removed by the next producer.
    """
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    lock = target.with_name(f".{target.name}.lock")
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        if not target.exists():
            _produce_into_place(target, produce)
        # Every process that holds a lock file once the entry exists removes it: nobody needs
        # the lock any more, and a late process that recreates it removes it again here.
        lock.unlink(missing_ok=True)
    return target


def _produce_into_place(target: Path, produce: Callable[[Path], None]) -> None:
    """Run `produce` on a path in a temporary sibling of `target`, then rename it onto `target`."""
    tmp = _new_temporary(target)
    try:
        produce(tmp / target.name)
        try:
            os.replace(tmp / target.name, target)
        except OSError:
            if not target.exists():  # a writer that takes no lock finished first: use its entry
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _new_temporary(out: Path) -> Path:
    """A new temporary sibling folder of `out`, after removing those of killed processes."""
    _remove_stale_temporaries(out)
    return Path(tempfile.mkdtemp(prefix=f"{_temporary_prefix(out)}{os.getpid()}-", dir=out.parent))


def _temporary_prefix(out: Path) -> str:
    """The start of this host's temporary siblings of `out`; the process id and a random part follow."""
    return f".{out.name}.tmp-{socket.gethostname()}-"


def _remove_stale_temporaries(out: Path) -> None:
    """Remove temporary siblings of `out` left by a process of this host that was killed."""
    mine = _temporary_prefix(out)
    for tmp in out.parent.glob(f"{glob.escape(mine)}*-*"):
        pid = tmp.name[len(mine):].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def plain_json(value: Any) -> Any:
    """`value` as plain JSON types (what JSON cannot hold, as its `str`), as a reader gets it back."""
    return json.loads(json.dumps(value, default=str))


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write `data` as indented JSON with a final newline, atomically: a temporary sibling
    renamed into place, so a reader never sees a half-written file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)


def last_complete_checkpoint(folder: str) -> str | None:
    """The newest `checkpoint-N` in `folder` whose trainer state was written whole (the Trainer
    writes it last), so a run killed while saving resumes from the checkpoint before."""
    found = []
    for path in Path(folder).glob("checkpoint-*"):
        try:
            json.loads((path / "trainer_state.json").read_text())
            found.append((int(path.name.rsplit("-", 1)[1]), str(path)))
        except (OSError, ValueError):
            continue
    return max(found)[1] if found else None
