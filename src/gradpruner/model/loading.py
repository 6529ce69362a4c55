"""Finding and loading a model: the offline default, a local folder, or a Hub id."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

from ..assets import DEFAULT_MODEL, default_model_dir
from ..errors import GradPrunerError

DTYPES = {"auto": None, "float32": torch.float32, "fp32": torch.float32,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def resolve_model(name: str | None) -> str:
    """A loadable path or Hub id for `name` (None or the default alias -> the default model)."""
    if not name or name == DEFAULT_MODEL:
        return str(default_model_dir())
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise GradPrunerError(f"{name}: not a Hugging Face model folder (no config.json): give the "
                                  "folder save_pretrained wrote")
        return str(path)
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise GradPrunerError(f"model not found: {name} (give a model folder or a Hub id, or leave "
                              "--model out for the default model)")
    return name


def resolve_device(device: str | None) -> torch.device:
    """`auto` -> CUDA when present, else CPU."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise GradPrunerError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise GradPrunerError("--device cuda was asked for, but no CUDA device is available: use "
                              "--device cpu (or auto)")
    return resolved


def resolve_dtype(dtype: str | None, device: torch.device) -> torch.dtype:
    """`auto` -> bf16 on a CUDA device that supports it, fp32 elsewhere."""
    if dtype not in DTYPES:
        raise GradPrunerError(f"unknown dtype {dtype!r} (use one of {', '.join(DTYPES)})")
    if DTYPES[dtype] is not None:
        return DTYPES[dtype]
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def _first_line(err: Exception) -> str:
    """The first line of an exception's message (library errors can be paragraphs)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def load_config(source: str):
    """The model's config, with a clear error for a missing model or an unsupported one."""
    from transformers import AutoConfig

    from .surgery import get_adapter

    try:
        config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError, json.JSONDecodeError) as err:
        raise GradPrunerError(f"cannot load model {source}: {_first_line(err)}") from None
    get_adapter(config)
    return config


def quantization_config(bits: int, dtype: torch.dtype, device: torch.device):
    """transformers' `BitsAndBytesConfig` for `bits`-bit base weights (4: NF4 with double
    quantization, computing in `dtype`; 8: LLM.int8), refused where bitsandbytes is missing or
    does not support `device`."""
    try:
        import bitsandbytes
    except ImportError:
        raise GradPrunerError(f"--load-in-{bits}bit needs bitsandbytes: pip install bitsandbytes") from None
    from transformers import BitsAndBytesConfig

    supported = sorted(getattr(bitsandbytes, "supported_torch_devices", ("cuda",)))
    if device.type not in supported:
        raise GradPrunerError(f"--load-in-{bits}bit: bitsandbytes {bitsandbytes.__version__} does not "
                              f"support {device.type} (it supports {', '.join(supported)})")
    if bits == 4:
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                  bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype)
    return BitsAndBytesConfig(load_in_8bit=True)


def is_quantized(model) -> bool:
    """Whether `model`'s base weights were loaded in 4 or 8 bits (bitsandbytes)."""
    return bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False))


def quantized_copy(model, bits: int):
    """A copy of the in-memory `model` whose decoder-layer weights are `bits`-bit (bitsandbytes),
    on its device and computing in its dtype: saved to a temporary folder and loaded back, as
    transformers quantizes while it loads."""
    from transformers import AutoModelForCausalLM

    param = next(model.parameters())
    config = quantization_config(bits, param.dtype, param.device)
    with tempfile.TemporaryDirectory(prefix="gradpruner-quantize-") as tmp:
        model.save_pretrained(tmp)
        return AutoModelForCausalLM.from_pretrained(tmp, dtype=param.dtype, quantization_config=config,
                                                    device_map={"": str(param.device)})


def load_model(name: str | None = None, dtype: str = "auto", device: str = "auto",
               device_map: str | None = None, load_in_bits: int | None = None):
    """Load a causal LM and its tokenizer; returns (model, tokenizer, source path or id).

    `device_map="auto"` lets accelerate spread the layers over every GPU (and the CPU) for a
    model that does not fit on one device; `device` is then ignored. `load_in_bits` (4 or 8)
    quantizes the linear weights of the decoder layers with bitsandbytes (`dtype` is then the
    dtype of the other weights and of the computation).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = resolve_model(name)
    load_config(source)
    target = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, target)
    placement = {"device_map": device_map} if device_map else {}
    if load_in_bits:  # a quantized model cannot be moved after loading: placed as it loads
        placement = {"device_map": device_map or {"": str(target)},
                     "quantization_config": quantization_config(load_in_bits, torch_dtype, target)}
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype, **placement)
    except (OSError, ValueError) as err:
        raise GradPrunerError(f"cannot load model {source}: {_first_line(err)}") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not device_map and not load_in_bits:
        model = model.to(target)
    return model.eval(), tokenizer, source
