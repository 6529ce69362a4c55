"""Reading the user's data: records (one dict each) from files, `datasets` folders or Hub ids.

    JSONL / JSON (an array of records, or JSON Lines) / parquet / CSV files   read here
    a folder saved with `datasets` (`save_to_disk`)                            datasets.load_from_disk
    another folder of data files, or a Hub dataset id                          datasets.load_dataset

Every record comes with where it was found (`file:line`, `file: record N`, `name [split] row N`),
so a malformed one is named in the error. What the records mean is `data.parse_record`'s business.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import GradPrunerError

FILE_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")
EVAL_SPLITS = ("test", "validation", "valid", "eval")
# CSV cells hold text: these fields may carry a JSON array (a conversation, the choices)
_JSON_CELLS = ("messages", "prompt", "completion", "choices")


@dataclass(frozen=True)
class Record:
    """One raw record and where it was found."""

    where: str
    value: object


@dataclass(frozen=True)
class Source:
    """The records of a data source: its training records, and its evaluation split when the
    source has one (a `datasets` folder or Hub dataset with a test or validation split)."""

    name: str
    train: list[Record]
    eval: list[Record] | None = None


def read_source(path: str) -> Source:
    """The records of `path`: a data file, a `datasets` folder, or a Hub dataset id."""
    local = Path(path)
    if local.is_file():
        return Source(local.stem, read_file(local))
    if local.is_dir():
        return _read_dataset(path, local.name)
    check_source(path)
    return _read_dataset(path, path.replace("/", "_"))


def check_source(path: str) -> None:
    """Raise unless `path` is a data file, a folder, or may be a Hub dataset id (checked without
    reading it, before any model loads)."""
    local = Path(path)
    if not local.exists() and (local.suffix.lower() in FILE_SUFFIXES or _path_like(path)):
        raise GradPrunerError(f"data file not found: {path}")


def _path_like(path: str) -> bool:
    """Whether `path` names a local place rather than a Hub id ("name" or "owner/name")."""
    return path.startswith((".", "/", "~")) or path.count("/") > 1 or "\\" in path


def read_file(path: Path) -> list[Record]:
    """The records of one data file, by its suffix."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return _read_table(path, "parquet")
    if suffix == ".csv":
        return _read_table(path, "csv")
    text = _utf8(path)
    if suffix == ".json" and text.lstrip().startswith("["):
        return _read_json_array(path, text)
    return _read_json_lines(path, text)


def _utf8(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise GradPrunerError(f"{path}: not UTF-8 text (byte {err.start})") from None


def _read_json_lines(path: Path, text: str) -> list[Record]:
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            records.append(Record(where, json.loads(line)))
        except json.JSONDecodeError as err:
            raise GradPrunerError(f"{where}: invalid JSON ({err.msg})") from None
    return records


def _read_json_array(path: Path, text: str) -> list[Record]:
    try:
        values = json.loads(text)
    except json.JSONDecodeError as err:
        raise GradPrunerError(f"{path}: invalid JSON ({err.msg}, line {err.lineno})") from None
    if not isinstance(values, list):
        raise GradPrunerError(f"{path}: expected an array of records or JSON Lines")
    return [Record(f"{path}: record {i}", value) for i, value in enumerate(values, start=1)]


def _read_table(path: Path, kind: str) -> list[Record]:
    """The rows of a parquet or CSV file (read by pyarrow); a CSV cell that holds a JSON array in
    a conversation or choices column is decoded."""
    import pyarrow as pa

    try:
        if kind == "parquet":
            import pyarrow.parquet as pq

            rows = pq.read_table(path).to_pylist()
        else:
            import pyarrow.csv as pcsv

            rows = [_decode_cells(row) for row in pcsv.read_csv(path).to_pylist()]
    except (pa.ArrowException, OSError) as err:
        raise GradPrunerError(f"{path}: cannot read it as {kind} ({str(err).splitlines()[0]})") from None
    return [Record(f"{path}: row {i}", row) for i, row in enumerate(rows, start=1)]


def _decode_cells(row: dict) -> dict:
    out = dict(row)
    for key in _JSON_CELLS:
        cell = out.get(key)
        if isinstance(cell, str) and cell.lstrip().startswith("["):
            try:
                out[key] = json.loads(cell)
            except json.JSONDecodeError:
                pass  # plain text that starts with a bracket
    return out


def _read_dataset(path: str, name: str) -> Source:
    """A `datasets` folder (`load_from_disk`), a folder of data files or a Hub id
    (`load_dataset`): the train split (or the only one), and a test or validation split."""
    try:
        import datasets
    except ImportError:
        raise GradPrunerError(f"reading {path} needs the `datasets` package: pip install datasets "
                              "(or give a JSONL, JSON, parquet or CSV file)") from None
    saved = Path(path).is_dir() and any(
        (Path(path) / marker).is_file() for marker in ("dataset_dict.json", "state.json"))
    try:
        loaded = datasets.load_from_disk(path) if saved else datasets.load_dataset(path)
    except Exception as err:  # datasets raises many types (FileNotFoundError, ConnectionError, ...)
        detail = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise GradPrunerError(f"cannot load the dataset {path!r} ({detail})") from None
    if isinstance(loaded, datasets.Dataset):
        return Source(name, _rows(loaded, path, None))
    splits = list(loaded)
    train = "train" if "train" in splits else splits[0] if len(splits) == 1 else None
    if train is None:
        raise GradPrunerError(f"{path}: no 'train' split among {', '.join(splits)}")
    held = next((s for s in EVAL_SPLITS if s in splits and s != train), None)
    return Source(name, _rows(loaded[train], path, train),
                  _rows(loaded[held], path, held) if held else None)


def _rows(dataset, path: str, split: str | None) -> list[Record]:
    label = f"{path} [{split}]" if split else path
    return [Record(f"{label} row {i}", row) for i, row in enumerate(dataset, start=1)]
