"""`gradpruner export --format gguf`: a model folder to GGUF files made by llama.cpp's own converter
and quantizer, each checked against the Hugging Face model before the output folder appears.

The output folder holds one `<name>-<type>.gguf` per asked type, the tokenizer (so that
`gradpruner eval --model FILE.gguf` tokenizes as the Hugging Face path does), `gradpruner.json`
(the source's sidecar, if any, plus an "export" entry with every check's numbers) and a model card.
It appears whole or not at all: a float file that fails its check stops the export and nothing is
left behind.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..catalog import GGUF_FLOAT_TYPES, GGUF_QUANT_TYPES
from ..config import parse_gguf_types
from ..errors import GradPrunerError
from ..model.loading import load_config, load_model, resolve_model
from ..outputs import SIDECAR_NAME, atomic_output_dir, check_output_dir, write_json
from ..progress import stage
from . import llamacpp
from .card import export_card
from .check import ExportCheck, check_gguf, check_prompts, reference_logits
from .layers import refusal, swa_pattern


TOKENIZER_FILES = ("tokenizer", "special_tokens_map", "added_tokens", "chat_template")


@dataclass(frozen=True)
class ExportedFile:
    """One GGUF file of an export: its type, its name in the output folder, its size in bytes,
    and its check against the Hugging Face model."""

    file_type: str
    name: str
    bytes: int
    check: ExportCheck

    def to_json(self) -> dict:
        return {"file_type": self.file_type, "file": self.name, "bytes": self.bytes,
                "check": self.check.to_json()}


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote, where from, with which llama.cpp, and the per-layer attention
    pattern it wrote into the files (None where the converter's own metadata suffices)."""

    out: Path
    source: str
    files: tuple[ExportedFile, ...]
    swa_pattern: list[bool] | None
    converter: str
    runtime: str

    def to_json(self) -> dict:
        return {"format": "gguf", "source_model": self.source, "converter": self.converter,
                "llama_cpp_python": self.runtime, "sliding_window_pattern": self.swa_pattern,
                "files": [f.to_json() for f in self.files]}


@dataclass(frozen=True)
class _Plan:
    """An export checked and ready to run: the model folder, its config, the converter, and
    the per-layer attention array to write."""

    source: Path
    config: object
    converter: llamacpp.Converter
    runtime: str
    swa_pattern: list[bool] | None


def export_gguf(model: str | None, out: str, file_types: list[str] | tuple[str, ...] = ("f16",),
                overwrite: bool = False, llama_cpp: str | None = None,
                swa_fix: bool = True, source_name: str | None = None) -> ExportResult:
    """Export `model` (a folder; None: the default model) as GGUF files of `file_types` into
    the folder `out`, each checked (`check.check_gguf`). `swa_fix=False` leaves out the
    per-layer attention array (to show what the check catches without it); `source_name`: what
    the record calls the source (default its path; `run` names the folder the run becomes)."""
    file_types = parse_gguf_types(",".join(file_types))
    plan = _plan(model, out, overwrite, llama_cpp, swa_fix)
    with atomic_output_dir(out, overwrite, plan.source) as tmp:
        paths = _convert_all(plan, tmp, file_types)
        checks = _check_all(plan, paths)
        files = tuple(ExportedFile(t, paths[t].name, paths[t].stat().st_size, checks[t])
                      for t in file_types)
        result = ExportResult(Path(out), source_name or str(plan.source), files, plan.swa_pattern,
                              plan.converter.origin, plan.runtime)
        _copy_tokenizer(plan.source, tmp)
        sidecar = {**_source_sidecar(plan.source), "export": result.to_json()}
        write_json(tmp / SIDECAR_NAME, sidecar)
        (tmp / "README.md").write_text(export_card(sidecar), encoding="utf-8")
    return result


def _plan(model: str | None, out: str, overwrite: bool, llama_cpp: str | None,
          swa_fix: bool) -> _Plan:
    """Every check that needs no conversion: the input folder, the output folder, the serve
    extra, the converter, and whether llama.cpp can run this architecture as transformers does."""
    source = resolve_model(model)
    if not Path(source).is_dir():
        raise GradPrunerError(f"export needs a local model folder, got {model} (download it with "
                              "save_pretrained or huggingface-cli first)")
    check_output_dir(out, overwrite, source)
    config = load_config(source)
    runtime, conv = check_exportable(config, llama_cpp, model or source)
    return _Plan(Path(source).resolve(), config, conv, runtime,
                 swa_pattern(config) if swa_fix else None)


def check_exportable(config, llama_cpp: str | None, name: str) -> tuple[str, llamacpp.Converter]:
    """The llama-cpp-python version and the converter that export a model of `config` (named
    `name` in errors); one clear error when the serve extra or the converter is missing, or
    llama.cpp cannot run the architecture as transformers does. `run --export` checks its model
    here before any training."""
    runtime = llamacpp.require_runtime()
    conv = llamacpp.converter(llama_cpp)
    architecture = (getattr(config, "architectures", None) or ["?"])[0]
    if not conv.supports(architecture):
        raise GradPrunerError(f"llama.cpp's converter ({conv.origin}) cannot convert {architecture}")
    reason = refusal(config)
    if reason:
        raise GradPrunerError(f"cannot export {name} to GGUF: {reason}")
    return runtime, conv


def _convert_all(plan: _Plan, folder: Path, file_types: list[str]) -> dict[str, Path]:
    """Write every asked file into `folder`: float types by the converter, the others quantized
    from an f32 conversion (kept only when asked for)."""
    name = plan.source.name
    paths = {t: folder / f"{name}-{t}.gguf" for t in file_types}
    quantized = [t for t in file_types if t in GGUF_QUANT_TYPES]
    floats = [t for t in file_types if t in GGUF_FLOAT_TYPES]
    if quantized and "f32" not in floats:
        floats.insert(0, "f32")
        paths["f32"] = folder / f"{name}-f32.gguf"
    for file_type in floats:
        with stage("converting", f"{name} to {file_type} GGUF with llama.cpp's converter "
                                 f"({plan.converter.origin})") as st:
            llamacpp.convert(plan.converter, plan.source, paths[file_type], file_type, plan.swa_pattern)
            st.result = _size(paths[file_type])
    for file_type in quantized:
        with stage("quantizing", f"{file_type} with llama.cpp's quantizer") as st:
            llamacpp.quantize(paths["f32"], paths[file_type], file_type)
            st.result = _size(paths[file_type])
    if "f32" not in file_types and "f32" in paths:
        paths.pop("f32").unlink()
    return paths


def _check_all(plan: _Plan, paths: dict[str, Path]) -> dict[str, ExportCheck]:
    """Check every file against the Hugging Face model (fp32, CPU); a float file that fails
    stops the export."""
    model, tokenizer, _ = load_model(str(plan.source), dtype="float32", device="cpu")
    prompts = check_prompts(tokenizer, plan.config)
    references = reference_logits(model, prompts)
    del model
    checks = {}
    for file_type, path in paths.items():
        with stage("checking", f"{path.name} against transformers on {len(prompts)} prompts "
                               f"(up to {max(len(p.ids) for p in prompts)} tokens)") as st:
            checks[file_type] = check = check_gguf(path, file_type, prompts, references)
            st.result = check.summary()
        if check.passed is False:
            raise GradPrunerError(f"refusing {path.name}: llama.cpp disagrees with transformers "
                                  f"({check.summary()}); nothing was written")
    return checks


def _size(path: Path) -> str:
    return f"{path.name}, {path.stat().st_size / 2**20:.1f} MiB"


def _source_sidecar(source: Path) -> dict:
    """The source folder's gradpruner.json (what was cut and healed), {} when it has none."""
    path = source / SIDECAR_NAME
    return json.loads(path.read_text()) if path.is_file() else {}


def _copy_tokenizer(source: Path, folder: Path) -> None:
    """Copy the tokenizer files of model folder `source` into `folder`, as they are."""
    for path in source.iterdir():
        if path.is_file() and path.name.startswith(TOKENIZER_FILES):
            shutil.copy2(path, folder / path.name)
