"""`gradpruner export` and `eval --model FILE.gguf` on bad input: one line on stderr, a non-zero
exit, nothing written. These need no llama.cpp (the checks run before any work)."""

from __future__ import annotations

import importlib.util

import pytest
from tiny_models import save_tiny_model, write_color_questions

from gradpruner.cli import main
from gradpruner.errors import GradPrunerError
from gradpruner.config import parse_gguf_types
from gradpruner.export import llamacpp

HAS_SERVE = all(importlib.util.find_spec(m) for m in ("llama_cpp", "sentencepiece"))


def one_line_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("gradpruner: error: "), err
    return err


def test_unknown_quant_type(capsys, tmp_path):
    err = one_line_error(capsys, ["export", "--out", str(tmp_path / "x"), "--quant", "f16,q9_k"])
    assert "unknown GGUF type q9_k" in err and "q4_k_m" in err
    assert not (tmp_path / "x").exists()


def test_existing_output_folder_needs_overwrite(capsys, tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("mine")
    err = one_line_error(capsys, ["export", "--out", str(tmp_path / "x")])
    assert "--overwrite" in err
    assert (tmp_path / "x" / "keep.txt").read_text() == "mine"


def test_missing_model_folder(capsys, tmp_path):
    err = one_line_error(capsys, ["export", "--model", str(tmp_path / "missing"), "--out",
                                  str(tmp_path / "x")])
    assert ("model not found" in err) if HAS_SERVE else ("pip install 'gradpruner[serve]'" in err)
    assert not (tmp_path / "x").exists()


def test_missing_serve_extra_is_named_before_any_work(monkeypatch, tmp_path):
    """What a user without llama-cpp-python sees (the module lookup made to fail)."""
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llama_cpp" else real(name, *a))
    with pytest.raises(GradPrunerError, match=r"need llama-cpp-python.*: pip install 'gradpruner\[serve\]'"):
        llamacpp.require_runtime()


def test_checkout_without_converter_is_refused(tmp_path):
    with pytest.raises(GradPrunerError, match="not a llama.cpp checkout"):
        llamacpp.converter(tmp_path)


def test_gguf_eval_of_missing_file(capsys, tmp_path):
    save_tiny_model(tmp_path / "model")
    write_color_questions(tmp_path / "d.jsonl", 8)
    (tmp_path / "e.jsonl").write_text((tmp_path / "d.jsonl").read_text().replace("color", "colour"))
    capsys.readouterr()
    err = one_line_error(capsys, ["eval", "--model", str(tmp_path / "none.gguf"), "--data",
                                  str(tmp_path / "d.jsonl"), "--eval-data", str(tmp_path / "e.jsonl")])
    assert ("GGUF file not found" in err) if HAS_SERVE else ("gradpruner[serve]" in err)


def test_parse_types_keeps_order_and_drops_repeats():
    assert parse_gguf_types("Q8_0, f16,q8_0") == ["q8_0", "f16"]
