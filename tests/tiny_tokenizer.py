"""A tiny BPE tokenizer (vocabulary 128) trained in milliseconds, to pair with tiny models."""

from __future__ import annotations

import string
from functools import lru_cache

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

SPECIAL = ["<pad>", "<s>", "</s>", "<unk>"]
CORPUS = [
    "Question: What color is the sky? Answer: blue",
    "Question: Which animal barks? Answer: a dog",
    "Goal: open a jar. Answer: twist the lid",
    "the quick brown fox jumps over the lazy dog 0123456789",
] * 4


@lru_cache(maxsize=1)
def _trained() -> str:
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    alphabet = list(string.ascii_letters + string.digits + string.punctuation)
    trainer = trainers.BpeTrainer(vocab_size=128, special_tokens=SPECIAL, initial_alphabet=alphabet,
                                  show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    return tok.to_str()


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A fast tokenizer with ids below 128; pad 0, bos 1, eos 2, unk 3."""
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_trained()),
        pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>",
    )
