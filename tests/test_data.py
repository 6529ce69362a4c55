"""The JSONL reader and training tokenisation."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gradpruner.tasks.examples import GenExample, MCExample, PadCollator, read_examples, tokenize_pair
from gradpruner.errors import GradPrunerError
from tiny_tokenizer import tiny_tokenizer


def write(tmp_path, lines, name="d.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


def test_reads_both_record_kinds(tmp_path):
    path = write(tmp_path, [
        json.dumps({"prompt": "Q: sky?\nA:", "choices": ["blue", "green"], "answer": 0}),
        json.dumps({"prompt": "Q: grass?\nA:", "choices": ["blue", "green"], "answer": "green"}),
        "",
        json.dumps({"prompt": "Summarise: x", "completion": "y"}),
    ])
    a, b, c = read_examples(path)
    assert a == MCExample(("Q: sky?\nA:",) * 2, (" blue", " green"), 0, ("blue", "green"))
    assert b.gold == 1 and b.training_pair() == ("Q: grass?\nA:", " green")
    assert c == GenExample("Summarise: x", "y") and c.training_pair() == ("Summarise: x", " y")


@pytest.mark.parametrize("line,message", [
    ("{not json", "invalid JSON"),
    ("[1, 2]", "expected a JSON object"),
    (json.dumps({"completion": "x"}), "prompt"),
    (json.dumps({"prompt": "p"}), "completion"),
    (json.dumps({"prompt": "p", "choices": ["a"], "answer": 0}), "at least 2"),
    (json.dumps({"prompt": "p", "choices": ["a", "b"], "answer": 2}), "outside"),
    (json.dumps({"prompt": "p", "choices": ["a", "b"], "answer": "c"}), "not one of the choices"),
    (json.dumps({"prompt": "p", "choices": ["a", "b"]}), "missing 'answer'"),
    (json.dumps({"prompt": "p", "choices": ["a", "b"], "answer": True}), "missing 'answer'"),
])
def test_malformed_records_name_file_and_line(tmp_path, line, message):
    path = write(tmp_path, [json.dumps({"prompt": "ok", "completion": "fine"}), line])
    with pytest.raises(GradPrunerError, match=message) as err:
        read_examples(path)
    assert f"{path}:2" in str(err.value)


def test_empty_missing_and_non_utf8_files(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(GradPrunerError, match="empty"):
        read_examples(tmp_path / "empty.jsonl")
    with pytest.raises(GradPrunerError, match="not found"):
        read_examples(tmp_path / "missing.jsonl")
    (tmp_path / "latin1.jsonl").write_bytes('{"prompt": "caf\xe9", "completion": "x"}'.encode("latin-1"))
    with pytest.raises(GradPrunerError, match="UTF-8"):
        read_examples(tmp_path / "latin1.jsonl")


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=200))
def test_fuzzed_bytes_either_parse_or_raise_a_clear_error(tmp_path_factory, blob):
    path = tmp_path_factory.mktemp("fuzz") / "f.jsonl"
    path.write_bytes(blob)
    try:
        examples = read_examples(path)
    except GradPrunerError as err:
        assert "\n" not in str(err).strip()
    else:
        assert examples and all(isinstance(e, (MCExample, GenExample)) for e in examples)


def test_tokenize_pair_masks_the_context_and_keeps_the_answer():
    tok = tiny_tokenizer()
    feat = tokenize_pair(tok, "Question: sky? Answer:", " blue", max_length=64)
    n_answer = len(tok(" blue", add_special_tokens=False)["input_ids"])
    assert feat["labels"][-n_answer:] == feat["input_ids"][-n_answer:]
    assert set(feat["labels"][:-n_answer]) == {-100}
    short = tokenize_pair(tok, "Question: sky? Answer:" * 10, " blue", max_length=8)
    assert len(short["input_ids"]) == 8 and short["labels"][-n_answer:] == feat["input_ids"][-n_answer:]


def test_collator_pads_right_with_masked_labels():
    batch = PadCollator(0)([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]},
                            {"input_ids": [5], "labels": [5]}])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [5, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [5, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
