"""Fine-tuning settings (`TrainConfig`), in a module of their own that imports no torch, so that
the CLI checks them before any model library is loaded."""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass

from ..errors import GradPrunerError


@dataclass(frozen=True)
class Checkpoints:
    """Where a fine-tune keeps its checkpoints: every `every` steps into `folder`, and with
    `resume` it continues from the last complete one there. How a run is kept safe, not what it
    computes: no record or fingerprint holds it."""

    folder: str
    every: int | None = None
    resume: bool = False

    def validate(self) -> None:
        if self.every is not None and self.every < 1:
            raise GradPrunerError(f"--save-every must be at least 1, got {self.every}")


@dataclass
class TrainConfig:
    """Fine-tuning settings; defaults are the paper's LoRA recipe, except the learning rate: 3e-4
    (the paper: 1e-4), chosen on held-out training examples of the default model's short runs, where
    it trained both the dense and the pruned models better (docs/RESULTS.md)."""

    steps: int | None = 100
    epochs: float | None = None
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 3e-4
    lora_rank: int = 8
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    full: bool = False
    warmup_ratio: float = 0.03
    scheduler: str = "cosine"
    max_grad_norm: float = 1.0
    max_length: int = 256
    seed: int = 0
    bf16: bool = False
    gradient_checkpointing: bool = False
    logging_steps: int = 10
    load_in_bits: int | None = None  # QLoRA: 4 or 8-bit base weights (bitsandbytes)

    def planned_steps(self, examples: int) -> int:
        """Optimizer steps of the run: `steps`, or `epochs` (default one) over `examples`."""
        if self.steps is not None:
            return self.steps
        return math.ceil((self.epochs or 1.0) * examples / (self.batch_size * self.grad_accum))

    def validate(self) -> None:
        if self.steps is not None and self.steps < 1:
            raise GradPrunerError(f"--steps must be at least 1, got {self.steps}")
        if self.epochs is not None and not self.epochs > 0:
            raise GradPrunerError(f"--epochs must be positive, got {self.epochs}")
        if self.batch_size < 1 or self.grad_accum < 1:
            raise GradPrunerError("--batch-size and --grad-accum must be at least 1")
        if not math.isfinite(self.lr) or self.lr <= 0:
            raise GradPrunerError(f"--lr must be a positive number, got {self.lr}")
        if not self.full and self.lora_rank < 1:
            raise GradPrunerError(f"--lora-rank must be at least 1, got {self.lora_rank}")
        self._validate_quantization()

    def check_heal(self, method: str) -> None:
        """A quantized base heals by LoRA only (`heal.HealConfig.method`)."""
        if self.load_in_bits is not None and method != "lora":
            raise GradPrunerError(f"--load-in-{self.load_in_bits}bit trains LoRA adapters on a "
                                  f"quantized base: not with --heal {method}")

    def _validate_quantization(self) -> None:
        """A quantized base (`load_in_bits`) trains LoRA adapters only and needs bitsandbytes."""
        if self.load_in_bits is None:
            return
        if self.load_in_bits not in (4, 8):
            raise GradPrunerError(f"load_in_bits must be 4 or 8, got {self.load_in_bits!r}")
        flag = f"--load-in-{self.load_in_bits}bit"
        if self.full:
            raise GradPrunerError(f"{flag} trains LoRA adapters on a quantized base: not with --full")
        if importlib.util.find_spec("bitsandbytes") is None:
            raise GradPrunerError(f"{flag} needs bitsandbytes: pip install bitsandbytes")
