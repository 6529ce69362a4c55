"""A tiny SentencePiece tokenizer (BPE, byte fallback, vocabulary 384) trained in well under a
second: the smallest tokenizer llama.cpp's converter takes without knowing it in advance (it reads
`tokenizer.model`; a `tokenizer.json`-only BPE must be one whose pre-tokenizer it recognises)."""

from __future__ import annotations

import io
import json
import tempfile
from functools import lru_cache
from pathlib import Path

from tiny_tokenizer import CORPUS

VOCAB_SIZE = 384  # 256 byte pieces, the characters of the corpus, a few merges
TEXTS = [*CORPUS, "The capital of France is Paris. 1, 2, 3, 4, 5, 6, 7, 8, 9",
         "The river bends twice before it reaches the old mill, where the water slows.",
         "def add(a, b):\n    return a + b\n\nprint(add(2, 3)) Name three colours of the rainbow."]


@lru_cache(maxsize=2)
def _model(dummy_prefix: bool) -> bytes:
    import sentencepiece as spm

    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(TEXTS), model_writer=buffer, vocab_size=VOCAB_SIZE, model_type="bpe",
        byte_fallback=True, character_coverage=1.0, pad_id=0, bos_id=1, eos_id=2, unk_id=3,
        pad_piece="<pad>", bos_piece="<s>", eos_piece="</s>", unk_piece="<unk>",
        control_symbols=["<|endoftext|>"],  # llama.cpp looks it up in models named Phi-3
        add_dummy_prefix=dummy_prefix, normalization_rule_name="identity",
        remove_extra_whitespaces=False, hard_vocab_limit=False, minloglevel=2)
    return buffer.getvalue()


def save_spm_tokenizer(folder, gemma: bool = False) -> None:
    """Write `tokenizer.model` and, converted from it by transformers, the fast tokenizer files
    (BOS added, pad 0) into `folder`: Llama-style (a space before the text), or Gemma-style (none,
    as llama.cpp's Gemma conversions assume). Converted apart from the model's config, whose
    model type would otherwise choose the tokenizer class."""
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "tokenizer.model").write_bytes(_model(not gemma))
        (Path(tmp) / "tokenizer_config.json").write_text(json.dumps({
            "tokenizer_class": "GemmaTokenizer" if gemma else "LlamaTokenizer",
            "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>",
            "add_bos_token": True, "add_eos_token": False}))
        tokenizer = AutoTokenizer.from_pretrained(tmp)
    tokenizer.save_pretrained(folder)
    (Path(folder) / "tokenizer.model").write_bytes(_model(not gemma))
