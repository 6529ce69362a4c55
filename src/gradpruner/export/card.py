"""The model card (README.md) of an export folder: the GGUF files with their checks against
transformers, how to serve them (llama.cpp's server, llama-cpp-python's, Ollama), then the source
folder's own card (what was removed and how it was healed), when it has one."""

from __future__ import annotations

import re
from pathlib import Path

import yaml


def export_card(sidecar: dict) -> str:
    """The card of an export folder whose `gradpruner.json` is `sidecar`."""
    export = sidecar["export"]
    source = Path(export["source_model"])
    files = export["files"]
    meta = {"tags": ["gguf", "llama.cpp", "gradpruner"], "library_name": "gguf",
            "pipeline_tag": "text-generation"}
    lines = [f"---\n{yaml.safe_dump(meta, sort_keys=False).strip()}\n---", "",
             f"# {source.name} in GGUF", "",
             f"GGUF files of `{source}`, written by `gradpruner export` with llama.cpp's own "
             f"converter ({export['converter']}) and quantizer, and each loaded in llama.cpp "
             f"(llama-cpp-python {export['llama_cpp_python']}) and compared with the Hugging Face "
             "model before it was kept.", "", *_pattern_lines(export), *_check_table(files),
             *_serve_section(files[0]["file"]), *_source_card(source)]
    return "\n".join(lines) + "\n"


def _pattern_lines(export: dict) -> list[str]:
    pattern = export.get("sliding_window_pattern")
    if pattern is None:
        return []
    local = [i for i, sliding in enumerate(pattern) if sliding]
    full = [i for i, sliding in enumerate(pattern) if not sliding]
    return [f"The files carry the per-layer attention pattern (`<arch>.attention.sliding_window_"
            f"pattern`): sliding-window layers {local or 'none'}, global layers {full or 'none'}, "
            "instead of the fixed pattern llama.cpp would otherwise assume.", ""]


def _check_table(files: list[dict]) -> list[str]:
    lines = ["## Files and their check against transformers", "",
             "Teacher-forced on fixed prompts (one longer than the sliding window): same "
             "tokenization, share of positions with the same top-1 token, largest |logit "
             "difference|. Float files must agree; quantized files are reported.", "",
             "| file | size | tokenization | top-1 agreement | max \\|dlogit\\| | logit scale | verdict |",
             "|---|---|---|---|---|---|---|"]
    for entry in files:
        check = entry["check"]
        verdict = {True: "passed", False: "failed", None: "reported"}[check["passed"]]
        lines.append(f"| `{entry['file']}` | {entry['bytes'] / 2**20:.1f} MiB | "
                     f"{'equal' if check['tokens_equal'] else 'different'} | "
                     f"{check['top1_agreement']:.1%} | {check['max_abs_logit_diff']:.4g} | "
                     f"{check['logit_scale']:.3g} | {verdict} |")
    return [*lines, ""]


def _serve_section(example: str) -> list[str]:
    name = example.removesuffix(".gguf").lower()
    return ["## How to serve", "",
            "llama.cpp's server (OpenAI-compatible API on port 8080):", "", "```sh",
            f"llama-server -m {example} --host 127.0.0.1 --port 8080", "```", "",
            "llama-cpp-python's server (`pip install 'gradpruner[serve]'` installs it):", "", "```sh",
            f"python -m llama_cpp.server --model {example} --host 127.0.0.1 --port 8000", "```", "",
            "Ollama: a `Modelfile` beside the file, then `ollama create` and `ollama run`:", "",
            "```sh", f"echo 'FROM ./{example}' > Modelfile", f"ollama create {name} -f Modelfile",
            f"ollama run {name}", "```", "",
            "Accuracy of a file on a task, scored as the Hugging Face model is:", "", "```sh",
            f"gradpruner eval --model {example} --task arc_easy", "```", ""]


def _source_card(source: Path) -> list[str]:
    """The source folder's README.md without its front matter, under a heading, if it has one."""
    readme = source / "README.md"
    if not readme.is_file():
        return []
    body = re.sub(r"^---\r?\n.*?\r?\n---[ \t]*\r?\n", "", readme.read_text(encoding="utf-8"), flags=re.S)
    body = re.sub(r"^#", "##", body.strip(), flags=re.M)  # one level below this card's title
    return ["## The source model", "", body, ""]
