"""llama.cpp's own pieces: its converter (`convert_hf_to_gguf.py` with its vendored `gguf-py`),
its quantizer and its runtime.

The runtime is llama-cpp-python (the `serve` extra), whose shared library also quantizes
(`llama_model_quantize`, what the `llama-quantize` tool calls), so one C++ build serves both.
The converter is plain Python that the runtime's wheel does not ship: it comes from a llama.cpp
checkout the user names (`--llama-cpp DIR` or $GRADPRUNER_LLAMA_CPP), else from llama-cpp-python's
source package of the installed version, fetched once into the cache with
`pip download --no-deps --no-binary :all:` and unpacked there (`outputs.produce_once`).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import os
import re
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..assets import cache_dir
from ..catalog import GGUF_QUANT_TYPES
from ..errors import GradPrunerError
from ..outputs import produce_once

PACKAGE = "llama-cpp-python"
PINNED_VERSION = "0.3.36"  # the version the export was written and tested against
CHECKOUT_ENV = "GRADPRUNER_LLAMA_CPP"
INSTALL_HINT = "pip install 'gradpruner[serve]' (builds llama.cpp once, about 10 minutes on 2 cores)"
_CONVERTER_FILES = ("convert_hf_to_gguf.py", "conversion", "gguf-py")


@dataclass(frozen=True)
class Converter:
    """A llama.cpp source tree holding the converter, and where it came from."""

    root: Path
    origin: str  # "llama-cpp-python X.Y.Z source package" or "checkout DIR"

    @property
    def script(self) -> Path:
        return self.root / "convert_hf_to_gguf.py"

    def supports(self, architecture: str) -> bool:
        """Whether the converter has a class for this `architectures[0]` of a config.json
        (read from its table of text models, without importing it)."""
        table = (self.root / "conversion" / "__init__.py").read_text(encoding="utf-8")
        return re.search(rf'^\s*"{re.escape(architecture)}"\s*:', table, re.M) is not None


def require_runtime() -> str:
    """The installed llama-cpp-python's version; one line saying how to get it (and
    sentencepiece, which the converter imports) when either is missing. Imports neither."""
    missing = [name for name, module in ((PACKAGE, "llama_cpp"), ("sentencepiece", "sentencepiece"))
               if importlib.util.find_spec(module) is None]
    if missing:
        raise GradPrunerError(f"GGUF export and serving need {' and '.join(missing)}: {INSTALL_HINT}")
    return importlib.metadata.version(PACKAGE)


def converter(checkout: str | os.PathLike | None = None, version: str | None = None) -> Converter:
    """llama.cpp's converter: from `checkout` (else $GRADPRUNER_LLAMA_CPP), else from the
    llama-cpp-python source package of `version` (default: the installed one), fetched once."""
    checkout = checkout or os.environ.get(CHECKOUT_ENV)
    if checkout:
        root = Path(checkout).expanduser()
        missing = [name for name in _CONVERTER_FILES if not (root / name).exists()]
        if missing:
            raise GradPrunerError(f"{checkout}: not a llama.cpp checkout (no {', '.join(missing)}); "
                                  f"name one that has convert_hf_to_gguf.py, or unset {CHECKOUT_ENV}")
        return Converter(root.resolve(), f"checkout {root.resolve()}")
    version = version or require_runtime()
    target = cache_dir() / "llama.cpp" / f"{PACKAGE}-{version}"
    root = produce_once(target, lambda path: _unpack_converter(_source_package(version), path))
    return Converter(root, f"{PACKAGE} {version} source package")


def _source_package(version: str) -> Path:
    """llama-cpp-python's source package (.tar.gz) of `version` in the cache, fetched once."""
    name = f"llama_cpp_python-{version}.tar.gz"

    def download(folder: Path) -> None:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               "--quiet", "-d", str(folder), f"{PACKAGE}=={version}"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0 or not (folder / name).is_file():
            reason = (done.stderr.strip().splitlines() or ["no source package"])[-1]
            raise GradPrunerError(f"could not fetch {PACKAGE}=={version}'s source package with pip "
                                  f"(for llama.cpp's converter): {reason}; or name a llama.cpp "
                                  f"checkout with --llama-cpp DIR or {CHECKOUT_ENV}")

    return produce_once(cache_dir() / "sdists" / f"{PACKAGE}-{version}", download) / name


def _unpack_converter(archive: Path, path: Path) -> None:
    """Unpack the converter's files of the source package's vendored llama.cpp into `path`."""
    prefix = f"{archive.name.removesuffix('.tar.gz')}/vendor/llama.cpp/"
    with tarfile.open(archive) as tar, tempfile.TemporaryDirectory(dir=path.parent) as unpacked:
        members = [m for m in tar.getmembers() if m.name.startswith(prefix)
                   and m.name[len(prefix):].split("/", 1)[0] in _CONVERTER_FILES]
        if not members:
            raise GradPrunerError(f"{archive.name} has no vendor/llama.cpp/convert_hf_to_gguf.py")
        tar.extractall(unpacked, members=members, filter="data")
        os.replace(Path(unpacked) / prefix, path)


# llama.cpp's file types (`enum llama_ftype` in llama.h): what `--quant` accepts. The float
# types are the converter's own output types; the others come from the quantizer.
def convert(conv: Converter, model_dir: Path, outfile: Path, outtype: str,
            swa_pattern: list[bool] | None) -> None:
    """Run llama.cpp's converter on `model_dir` in a subprocess (`_converter.py`), writing
    `outfile` of float type `outtype`, with `swa_pattern` as the per-layer sliding-window array."""
    driver = Path(__file__).with_name("_converter.py")
    pattern = "" if swa_pattern is None else ",".join("1" if s else "0" for s in swa_pattern)
    cmd = [sys.executable, str(driver), str(conv.root), pattern, str(model_dir),
           "--outtype", outtype, "--outfile", str(outfile)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0 or not outfile.is_file():
        lines = [ln for ln in done.stderr.strip().splitlines() if ln.strip()] or ["no output"]
        raise GradPrunerError(f"llama.cpp's converter ({conv.origin}) failed on {model_dir}: "
                              f"{lines[-1].strip()}")


def quantize(source: Path, outfile: Path, file_type: str, threads: int | None = None) -> None:
    """Quantize GGUF `source` (f32 or f16) to `file_type` with llama.cpp's quantizer, the
    library call the `llama-quantize` tool makes."""
    import ctypes

    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = GGUF_QUANT_TYPES[file_type]
    params.nthread = threads or os.cpu_count() or 1
    with quiet_llama_cpp():
        status = llama_cpp.llama_model_quantize(str(source).encode(), str(outfile).encode(),
                                                ctypes.byref(params))
    if status != 0 or not outfile.is_file():
        raise GradPrunerError(f"llama.cpp's quantizer failed ({status}) making {file_type} from {source.name}")


@contextmanager
def quiet_llama_cpp() -> Iterator[None]:
    """Keep llama.cpp's log to its errors meanwhile (llama-cpp-python prints it to stderr
    through the "llama-cpp-python" logger's level)."""
    log = logging.getLogger("llama-cpp-python")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)
