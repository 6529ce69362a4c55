"""What llama.cpp assumes about each layer, and what the export must tell it after a cut.

Read in llama.cpp's loaders (`src/models/*.cpp`, `llama_hparams::set_swa_pattern`): Gemma 2
takes every second layer as global, Gemma 3 every sixth, Cohere 2 and OLMo 2/3 every fourth,
unless the GGUF carries a per-layer array under `<arch>.attention.sliding_window_pattern`. The
converter writes that array for OLMo 2/3 (from `layer_types`), Gemma 3n and Gemma 4, but only the
window size for Gemma 2, Gemma 3 and Cohere 2: there the export writes the kept layers' array.

Two things no GGUF key can say, so a model that needs them is refused: SmolLM3's layers without
RoPE (llama.cpp hard-codes every fourth) and a Qwen3-MoE with dense-MLP layers (llama.cpp's
qwen3moe expects a router in every layer).
"""

from __future__ import annotations

# model_type -> the every-Nth-layer-global pattern llama.cpp guesses when the array is missing
GUESSED_SWA_PERIOD = {"gemma2": 2, "gemma3": 6, "gemma3_text": 6, "cohere2": 4}
SMOLLM3_NO_ROPE_PERIOD = 4


def swa_pattern(config) -> list[bool] | None:
    """The per-layer sliding-window array (True: sliding) the export writes, from transformers'
    `layer_types`; None where the converter already writes it or llama.cpp reads none."""
    text = config.get_text_config(decoder=True)
    layer_types = getattr(text, "layer_types", None)
    if text.model_type not in GUESSED_SWA_PERIOD or not layer_types:
        return None
    return [kind == "sliding_attention" for kind in layer_types]


def refusal(config) -> str | None:
    """Why llama.cpp cannot run this model as transformers does, or None."""
    text = config.get_text_config(decoder=True)
    n = text.num_hidden_layers
    if text.model_type == "smollm3":
        uses_rope = [bool(flag) for flag in (getattr(text, "no_rope_layers", None) or [1] * n)]
        assumed = [(i + 1) % SMOLLM3_NO_ROPE_PERIOD != 0 for i in range(n)]
        if uses_rope != assumed:
            skipped = [i for i, rope in enumerate(uses_rope) if not rope]
            return (f"llama.cpp runs SmolLM3 without RoPE in every {SMOLLM3_NO_ROPE_PERIOD}th layer "
                    f"(layers {_every_nth(n)}), and no GGUF key says otherwise; this model skips "
                    f"RoPE in layers {skipped or 'none'}")
    if text.model_type == "qwen3_moe":
        dense = [i for i in range(n) if i in (text.mlp_only_layers or [])
                 or (i + 1) % text.decoder_sparse_step != 0]
        if dense:
            return (f"llama.cpp's qwen3moe expects an MoE block in every layer; layers {dense} of "
                    "this model have a dense MLP")
    return None


def _every_nth(n: int) -> list[int]:
    return [i for i in range(n) if (i + 1) % SMOLLM3_NO_ROPE_PERIOD == 0]
