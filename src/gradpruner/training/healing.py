"""Healing the cut model: how it is fine-tuned after the cut, behind one registry.

    lora     the training config's: LoRA on every linear module, merged afterwards (default), or
             full fine-tuning under `--full`
    full     full fine-tuning of every weight
    partial  full fine-tuning of the last `layers` kept layers and the final norm (and with
             `lm_head` the LM head; where it is tied to the input embeddings, those too),
             everything else frozen (Lu et al. 2024, "Reassessing Layer Pruning in LLMs")

Any of them can distil from a teacher (`training.distill`): its token distributions (`distill` > 0)
on the answer positions or on every position (`distill_positions`), its layers' outputs (`align`
> 0), its logits on the fly or, with `teacher_cache`, its top-k cached per example. Iterative pruning (rounds with healing in
between) is the cut's schedule (`config.CutSettings`), not a way of healing.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..catalog import DISTILL_POSITIONS, HEALINGS, TEACHER_CACHES
from ..errors import GradPrunerError
from .train_config import TrainConfig


@dataclass
class HealConfig:
    """How the cut model is healed; `lr` None: the training config's learning rate;
    `teacher_cache`: auto | on | off, whether the teacher's `top_k` tokens per answer position are
    kept from each example's first visit (auto: when the healing visits its examples more than
    once) instead of running the teacher on every batch; `distill_positions`: answer | all, where
    the KL term compares the distributions; `align`: the weight of the kept layers' cosine
    distance to the teacher's matched layers (0: none)."""

    method: str = "lora"
    layers: int = 4
    lm_head: bool = False
    lr: float | None = None
    distill: float = 0.0
    temperature: float = 2.0
    teacher: str | None = None
    teacher_cache: str = "auto"
    top_k: int = 64
    distill_positions: str = "answer"
    align: float = 0.0

    def validate(self) -> None:
        if self.method not in HEALERS:
            raise GradPrunerError(f"unknown healing {self.method!r}; known: {', '.join(HEALERS)}")
        for name in ("layers", "top_k"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise GradPrunerError(f"heal {name} must be a positive integer, got {value!r}")
        if not (isinstance(self.distill, (int, float)) and 0 <= self.distill <= 1):
            raise GradPrunerError(f"--distill must be a weight in [0, 1], got {self.distill!r}")
        if not (isinstance(self.temperature, (int, float)) and self.temperature > 0):
            raise GradPrunerError(f"--temperature must be positive, got {self.temperature!r}")
        if self.distill_positions not in DISTILL_POSITIONS:
            raise GradPrunerError(f"--distill-positions must be one of {', '.join(DISTILL_POSITIONS)}, "
                                  f"got {self.distill_positions!r}")
        if isinstance(self.align, bool) or not (isinstance(self.align, (int, float)) and self.align >= 0):
            raise GradPrunerError(f"--align must be a weight >= 0, got {self.align!r}")
        if self.teacher_cache not in TEACHER_CACHES:
            raise GradPrunerError(f"--teacher-cache must be one of {', '.join(TEACHER_CACHES)}, "
                                  f"got {self.teacher_cache!r}")
        if self.lr is not None and not (isinstance(self.lr, (int, float)) and self.lr > 0):
            raise GradPrunerError(f"heal lr must be positive, got {self.lr!r}")

    @property
    def distils(self) -> bool:
        """Whether the healing learns from a teacher (its distributions or its layers)."""
        return self.distill > 0 or self.align > 0

    def summary(self, teacher: str | None, train: TrainConfig, top_k: int | None = None) -> dict:
        """What the sidecar records of a healing: these options, the teacher it distilled from
        (None without distillation), the top-k its logits were cached to (None: on the fly) and
        the training settings it ran with."""
        return {"method": self.method, "describe": self.describe(), "distill": self.distill,
                "temperature": self.temperature, "distill_positions": self.distill_positions,
                "align": self.align, "teacher": teacher if self.distils else None,
                "teacher_top_k": top_k if self.distils else None, "lr": train.lr, "full": train.full}

    def describe(self) -> str:
        """A short name of the options, for logs and tables."""
        parts = [self.method if self.method != "partial" else f"partial{self.layers}"
                 + ("+head" if self.lm_head else "")]
        if self.distill:
            parts.append(f"distill{self.distill:g}" + ("-all" if self.distill_positions == "all" else ""))
        if self.align:
            parts.append(f"align{self.align:g}")
        return "+".join(parts)


class LoRAHeal:
    """The training config's own fine-tuning: LoRA (the probe's adapters as the warm start), or
    full fine-tuning under `--full`."""

    warm_starts = True

    def prepare(self, model, train: TrainConfig, heal: HealConfig):
        return model, replace(train, lr=heal.lr or train.lr)


class FullHeal:
    """Every weight trained."""

    warm_starts = False

    def prepare(self, model, train: TrainConfig, heal: HealConfig):
        for param in model.parameters():
            param.requires_grad_(True)
        return model, replace(train, full=True, lr=heal.lr or train.lr)


class PartialHeal:
    """The last `heal.layers` decoder layers and the final norm trained, the rest frozen."""

    warm_starts = False

    def prepare(self, model, train: TrainConfig, heal: HealConfig):
        from ..model.surgery import (base_model,  # torch: imported once a model is healed
                                     decoder_layers)

        layers = decoder_layers(model)
        for param in model.parameters():
            param.requires_grad_(False)
        trained = list(layers[-heal.layers:])
        norm = getattr(getattr(base_model(model), "model", None), "norm", None)
        if norm is not None:
            trained.append(norm)
        if heal.lm_head:
            trained.append(model.get_output_embeddings())
        for module in trained:
            for param in module.parameters():
                param.requires_grad_(True)
        return model, replace(train, full=True, lr=heal.lr or train.lr)


HEALERS = {"lora": LoRAHeal(), "full": FullHeal(), "partial": PartialHeal()}
if tuple(HEALERS) != HEALINGS:
    raise TypeError("training.healing.HEALERS is not catalog.HEALINGS")


def get_healer(name: str):
    if name not in HEALERS:
        raise GradPrunerError(f"unknown healing {name!r}; known: {', '.join(HEALERS)}")
    return HEALERS[name]
