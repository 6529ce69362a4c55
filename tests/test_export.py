"""GGUF export with llama.cpp's own converter and quantizer, checked against transformers; GGUF
evaluation through llama.cpp. Needs the `serve` extra (llama-cpp-python, sentencepiece); CI
installs it. The first run fetches llama-cpp-python's source package (the converter) into the
cache."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("llama_cpp", reason="needs the serve extra: pip install '.[serve]'")
pytest.importorskip("sentencepiece", reason="needs the serve extra: pip install '.[serve]'")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from tiny_models import tiny_model, write_color_questions  # noqa: E402
from tiny_spm_tokenizer import VOCAB_SIZE, save_spm_tokenizer  # noqa: E402

from gradpruner.errors import GradPrunerError  # noqa: E402
from gradpruner.export.gguf import export_gguf  # noqa: E402
from gradpruner.model.surgery import cut_layers  # noqa: E402

# Sliding windows only where llama.cpp implements them for the architecture (Gemma 2/3); the
# real Llama, Mistral, Qwen2/3 and Phi-3 releases these stand for run full attention there too.
NO_WINDOW = {"mistral": {"sliding_window": None}, "qwen2": {"use_sliding_window": False},
             "qwen3": {"use_sliding_window": False}}
# As the released Gemmas (not transformers' default configs): the LM head tied to the embedding
# (llama.cpp's Gemma and Gemma 2 always tie it) and attention scaled by the head size (what
# llama.cpp's Gemma 2/3 assume)
GEMMA = {"tie_word_embeddings": True, "query_pre_attn_scalar": 8}
ARCH_FIXES = {**NO_WINDOW, "gemma": {"tie_word_embeddings": True}, "gemma2": GEMMA,
              "gemma3_text": GEMMA}
# Cuts that break llama.cpp's fixed pattern: Gemma 2 alternates (sliding, global), Gemma 3 has
# one global layer in six; removing layer 1 / 2 of 6 moves the global layers off the pattern.
CUTS = {"gemma2": [1], "gemma3_text": [2]}
# Qwen2 is left out: transformers loads a Qwen2 folder's tokenizer as Qwen2Tokenizer whatever its
# tokenizer_config names, which tokenizes the SentencePiece stand-in differently from llama.cpp;
# Qwen3 goes through the same converter class.
EXPORTABLE = ["llama", "mistral", "qwen3", "gemma", "gemma2", "gemma3_text", "phi3", "granite"]


def pruned_folder(tmp_path, arch: str, remove=None, **overrides):
    """A tiny random model of `arch` (larger weights than the default init, so that attention
    matters), cut by `remove` with gradpruner's surgery, saved with the tiny SentencePiece
    tokenizer."""
    kwargs = {"vocab_size": VOCAB_SIZE, "initializer_range": 0.2, **ARCH_FIXES.get(arch, {}), **overrides}
    model = tiny_model(arch, **kwargs)
    cut_layers(model, CUTS.get(arch, [3]) if remove is None else remove)
    folder = tmp_path / f"{arch}-pruned"
    model.save_pretrained(folder)
    save_spm_tokenizer(folder, gemma=arch.startswith("gemma"))
    return folder


def color_task(tmp_path, count: int) -> list:
    """The evaluation examples of a task of `count` colour questions."""
    from gradpruner.tasks import resolve_task

    write_color_questions(tmp_path / "train.jsonl", 8)
    write_color_questions(tmp_path / "eval.jsonl", count)
    (tmp_path / "train.jsonl").write_text((tmp_path / "train.jsonl").read_text().replace("color", "colour"))
    return resolve_task(None, str(tmp_path / "train.jsonl"), str(tmp_path / "eval.jsonl"),
                        "auto").eval_examples()


def gguf_fields(path) -> dict:
    """The GGUF file's metadata (tokenizer aside) as plain values."""
    from gguf import GGUFReader

    return {name: field.contents() for name, field in GGUFReader(path).fields.items()
            if not name.startswith("tokenizer.")}


@pytest.mark.parametrize("arch", EXPORTABLE)
def test_export_of_pruned_model_agrees_with_transformers(tmp_path, arch):
    folder = pruned_folder(tmp_path, arch)
    result = export_gguf(str(folder), str(tmp_path / "out"), ["f32"])
    check = result.files[0].check
    assert check.passed and check.tokens_equal
    assert check.top1_agreement >= 0.98  # random tiny models have near-ties
    assert check.max_abs_logit_diff <= check.tolerance
    long = next(p for p in check.prompts if p.name == "long")
    assert long.tokens > (16 if arch in ("gemma2", "gemma3_text") else 0)  # past the window
    fields = gguf_fields(tmp_path / "out" / result.files[0].name)
    arch_key = next(v for k, v in fields.items() if k == "general.architecture")
    assert fields[f"{arch_key}.block_count"] == 5
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(folder)
    if arch in CUTS:
        expected = [t == "sliding_attention" for t in config.layer_types]
        assert fields[f"{arch_key}.attention.sliding_window_pattern"] == expected
    sidecar = json.loads((tmp_path / "out" / "gradpruner.json").read_text())
    assert sidecar["export"]["files"][0]["check"]["passed"] is True
    print(arch, check.summary())


@pytest.mark.slow
def test_olmo2_with_the_default_models_tokenizer(tmp_path):
    """OLMo 2's conversion takes only tokenizers llama.cpp knows by their pre-tokenizer (no
    SentencePiece model): the default model's (SmolLM2, a known one), with the chat template."""
    from transformers import AutoTokenizer

    from gradpruner.assets import default_model_dir

    tokenizer = AutoTokenizer.from_pretrained(default_model_dir())
    model = tiny_model("olmo2", vocab_size=len(tokenizer), initializer_range=0.2,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    cut_layers(model, [3])
    model.save_pretrained(tmp_path / "olmo2")
    tokenizer.save_pretrained(tmp_path / "olmo2")
    check = export_gguf(str(tmp_path / "olmo2"), str(tmp_path / "out"), ["f32"]).files[0].check
    assert check.passed and [p.name for p in check.prompts][-2:] == ["chat", "long"]
    assert check.top1_agreement >= 0.98


def test_without_the_pattern_fix_the_check_refuses_gemma3(tmp_path):
    """The planted defect: llama.cpp left to guess Gemma 3's global layers after the cut."""
    folder = pruned_folder(tmp_path, "gemma3_text")
    with pytest.raises(GradPrunerError, match="disagrees with transformers"):
        export_gguf(str(folder), str(tmp_path / "out"), ["f32"], swa_fix=False)
    assert not (tmp_path / "out").exists()


def test_config_whose_layer_count_disagrees_with_the_weights_is_refused(tmp_path):
    folder = pruned_folder(tmp_path, "llama")
    config = json.loads((folder / "config.json").read_text())
    config["num_hidden_layers"] = 4  # the weights hold 5 layers
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(GradPrunerError):
        export_gguf(str(folder), str(tmp_path / "out"), ["f32"])
    assert not (tmp_path / "out").exists()


def test_window_llama_cpp_ignores_is_caught_by_the_long_prompt(tmp_path):
    """llama.cpp runs Mistral with full attention: with a window shorter than the long prompt
    the f32 file disagrees there, and is refused."""
    folder = pruned_folder(tmp_path, "mistral", sliding_window=16)
    with pytest.raises(GradPrunerError, match="disagrees"):
        export_gguf(str(folder), str(tmp_path / "out"), ["f32"])


@pytest.mark.parametrize("arch,reason", [("smollm3", "without RoPE"), ("qwen3_moe", "dense MLP")])
def test_what_llama_cpp_cannot_represent_is_refused_with_the_reason(tmp_path, arch, reason):
    folder = pruned_folder(tmp_path, arch)
    with pytest.raises(GradPrunerError, match=reason):
        export_gguf(str(folder), str(tmp_path / "out"), ["f16"])
    assert not (tmp_path / "out").exists()


def test_quantized_files_are_reported_with_card_and_sidecar(tmp_path):
    folder = pruned_folder(tmp_path, "llama", hidden_size=64, intermediate_size=128)
    out = tmp_path / "out"
    result = export_gguf(str(folder), str(out), ["f16", "q8_0", "q4_k_m"])
    assert [f.file_type for f in result.files] == ["f16", "q8_0", "q4_k_m"]
    assert sorted(p.name for p in out.glob("*.gguf")) == sorted(f.name for f in result.files)
    f16, q8, q4 = (f.check for f in result.files)
    assert f16.passed and q8.passed is None and q4.passed is None
    assert f16.max_abs_logit_diff < q8.max_abs_logit_diff < q4.max_abs_logit_diff
    assert result.files[2].bytes < result.files[1].bytes < result.files[0].bytes
    card = (out / "README.md").read_text()
    assert f"{q4.max_abs_logit_diff:.4g}" in card and "ollama create" in card
    assert (out / "tokenizer.model").is_file()


def test_gguf_evaluation_equals_the_hugging_face_evaluation(tmp_path):
    from gradpruner.evaluation.scoring import evaluate_mc
    from gradpruner.export.scoring import evaluate_gguf
    from gradpruner.model.loading import load_model
    folder = pruned_folder(tmp_path, "qwen3")
    export = export_gguf(str(folder), str(tmp_path / "out"), ["f32"])
    examples = color_task(tmp_path, 40)
    model, tokenizer, _ = load_model(str(folder), dtype="float32", device="cpu")
    hf = evaluate_mc(model, tokenizer, examples)
    served = evaluate_gguf(str(tmp_path / "out" / export.files[0].name), examples, "mc")
    assert served["n"] == hf["n"] == 40
    assert abs(served["acc"] - hf["acc"]) <= 0.005
    assert abs(served["acc_norm"] - hf["acc_norm"]) <= 0.005
    assert 0 < hf["acc"] < 1  # the items tell the choices apart


def test_gguf_choice_logprobs_equal_transformers(tmp_path):
    """Per choice, the summed log-probabilities agree, not only the accuracies."""
    from gradpruner.evaluation.scoring import _choice_logprobs_full, choice_pairs
    from gradpruner.export.check import open_gguf
    from gradpruner.export.scoring import choice_logprobs, gguf_tokenizer
    from gradpruner.model.loading import load_model
    folder = pruned_folder(tmp_path, "llama")
    export = export_gguf(str(folder), str(tmp_path / "out"), ["f32"])
    examples = color_task(tmp_path, 6)
    model, tokenizer, _ = load_model(str(folder), dtype="float32", device="cpu")
    with torch.inference_mode():
        hf = np.array(_choice_logprobs_full(model, tokenizer, examples))
    path = tmp_path / "out" / export.files[0].name
    pairs = choice_pairs(gguf_tokenizer(path), examples, 1024)
    llm = open_gguf(path, 128)
    served = np.array(choice_logprobs(llm, examples, pairs))
    llm.close()
    assert np.allclose(served, hf, atol=1e-3)


def test_gguf_generation_equals_the_hugging_face_generation(tmp_path):
    """Greedy generation through llama.cpp (f32) gives the Hugging Face path's texts, so the
    generation tasks' ROUGE-L and the answer-letter protocol score the same."""
    from gradpruner.evaluation.scoring import (evaluate_exact_match, evaluate_generation,
                                               generate_texts)
    from gradpruner.export.check import open_gguf
    from gradpruner.export.scoring import evaluate_gguf, generate_gguf, gguf_tokenizer
    from gradpruner.model.loading import load_model
    from gradpruner.tasks.examples import GenExample
    folder = pruned_folder(tmp_path, "llama")
    export = export_gguf(str(folder), str(tmp_path / "out"), ["f32"])
    path = tmp_path / "out" / export.files[0].name
    model, tokenizer, _ = load_model(str(folder), dtype="float32", device="cpu")
    prompts = [tokenizer(f"Question: color {i}? Answer:")["input_ids"] for i in range(6)]
    llm = open_gguf(path, 256)
    served = generate_gguf(llm, gguf_tokenizer(path), prompts, 12)
    llm.close()
    assert served == generate_texts(model, tokenizer, prompts, 12)
    assert len(set(served)) > 1 and all(served)  # the texts differ between prompts
    examples = [GenExample(f"Question: color {i}? Answer:", "blue green red") for i in range(6)]
    hf = evaluate_generation(model, tokenizer, examples)
    gguf = evaluate_gguf(str(path), examples, "gen")
    assert gguf["n"] == hf["n"] == 6 and abs(gguf["rouge_l"] - hf["rouge_l"]) <= 0.005
    questions = color_task(tmp_path, 8)
    letters = evaluate_gguf(str(path), questions, "mc", "generate")
    assert letters["exact_match"] == evaluate_exact_match(model, tokenizer, questions)["exact_match"]


def test_run_export_scores_every_file_beside_transformers(tmp_path):
    """`run --export gguf`: the healed model's files in OUT/gguf, each file of it and of the dense
    reference scored through llama.cpp; at f32 the accuracies equal the Hugging Face path's, and
    the report shows them side by side; the dense scratch files are gone."""
    from gradpruner.cli import main
    model = tiny_model("llama", vocab_size=VOCAB_SIZE, initializer_range=0.2)
    model.save_pretrained(tmp_path / "model")
    save_spm_tokenizer(tmp_path / "model")
    write_color_questions(tmp_path / "data.jsonl", 96, choices=3)
    out = tmp_path / "run"
    assert main(["run", "--model", str(tmp_path / "model"), "--data", str(tmp_path / "data.jsonl"),
                 "--out", str(out), "--probe-steps", "2", "--layers", "1", "--heldout", "8",
                 "--limit", "16", "--selection-budget", "none", "--steps", "4", "--batch-size", "4",
                 "--device", "cpu", "--dtype", "float32", "--export", "gguf",
                 "--quant", "f32,q8_0"]) == 0
    report = json.loads((out / "report.json").read_text())
    served = report["gguf"]
    for name in ("pruned", "dense"):
        f32 = served[name]["metrics"]["f32"]
        assert f32["n"] == report[f"{name}_finetuned"]["n"] >= 5
        assert abs(f32["acc"] - report[f"{name}_finetuned"]["acc"]) <= 0.005
        assert [f["file_type"] for f in served[name]["files"]] == ["f32", "q8_0"]
        assert all(f["check"]["passed"] is not False for f in served[name]["files"])
    assert sorted(p.name for p in (out / "gguf").glob("*.gguf")) == ["model-f32.gguf", "model-q8_0.gguf"]
    assert not (out / "dense").exists() and not (out / "dense.gguf").exists()
    assert (out / "model" / "tokenizer.model").is_file()  # the SentencePiece file, kept
    text = (out / "report.md").read_text()
    assert "| model | transformers | GGUF f32 | GGUF q8_0 |" in text
    assert f"| pruned, fine-tuned | {report['pruned_finetuned']['acc']:.3f}" in text
    sidecar = json.loads((out / "gguf" / "gradpruner.json").read_text())
    assert sidecar["removed_layers"] == report["prune"]["removed_layers"]
    assert sidecar["export"]["source_model"] == str(out / "model")  # the finished run's folder
