"""Run llama.cpp's `convert_hf_to_gguf.py` with the kept layers' sliding-window pattern.

    python _converter.py LLAMA_CPP_ROOT PATTERN MODEL_DIR [converter arguments...]

PATTERN is "" or one 0/1 per layer (1: sliding-window attention). A script of its own, run in a
subprocess: the converter imports the `gguf` package vendored beside it, which must not replace
the one gradpruner and transformers have already imported.

With a PATTERN, the converter's model class for the architecture is subclassed at run time so
that its `set_gguf_parameters` also writes the array under `<arch>.attention.sliding_window_pattern`
(the key and writer method llama.cpp's own Gemma 3n and OLMo conversions use, which its loader
reads before falling back to its fixed every-Nth-layer pattern), and the config's scalar
`sliding_window_pattern` (stale after a cut) is dropped from the hyperparameters it reads. This
hook rather than rewriting the converter's output: the metadata goes in during the converter's
one write pass, so the tensors are written once, exactly as the converter writes them, and no
second copy of a multi-gigabyte file is made.
"""

from __future__ import annotations

import sys
from pathlib import Path

STALE_KEYS = ("sliding_window_pattern", "_sliding_window_pattern")


def with_pattern(model_class: type, pattern: list[bool]) -> type:
    """`model_class` whose GGUF also carries `pattern` as the per-layer sliding-window array."""

    class WithPattern(model_class):
        model_arch = model_class.model_arch  # the converter requires every class to name its own

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            if len(pattern) != self.block_count:
                raise ValueError(f"sliding-window pattern of {len(pattern)} layers for a model of "
                                 f"{self.block_count}")
            for key in STALE_KEYS:
                self.hparams.pop(key, None)

        def set_gguf_parameters(self):
            super().set_gguf_parameters()
            self.gguf_writer.add_sliding_window_pattern(pattern)

    WithPattern.__name__ = WithPattern.__qualname__ = f"{model_class.__name__}WithPattern"
    return WithPattern


def main() -> None:
    root, pattern_arg, *converter_args = sys.argv[1:]
    sys.path[:0] = [root, str(Path(root) / "gguf-py")]
    import convert_hf_to_gguf

    if pattern_arg:
        pattern = [flag == "1" for flag in pattern_arg.split(",")]
        find_class = convert_hf_to_gguf.get_model_class
        convert_hf_to_gguf.get_model_class = lambda *a, **k: with_pattern(find_class(*a, **k), pattern)
    sys.argv = [str(Path(root) / "convert_hf_to_gguf.py"), *converter_args]
    convert_hf_to_gguf.main()


if __name__ == "__main__":
    main()
