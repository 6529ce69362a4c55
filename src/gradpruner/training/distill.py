"""Distillation while healing: the pruned student learns the teacher's token distributions on the
answer positions of the task data, mixed with the task loss.

    loss = (1 - weight) * task loss + weight * T^2 * KL(softmax(teacher / T) || softmax(student / T))

the KL summed over the vocabulary and averaged over the answer tokens (Hinton et al. 2015; the T^2
keeps the gradient's scale independent of T). The teacher runs without gradients, on the same
device and in the same dtype as the student; where the model projects only the answer positions
onto the vocabulary (`logits_to_keep`), so does the teacher.

By default the teacher runs on each training batch. A healing that visits its examples more than
once (several epochs) instead keeps, from each example's first visit, the teacher's `top_k` most
likely tokens at each answer position (`Distillation.cached`): one teacher pass per example
instead of one per visit. The KL is then taken over those k tokens and one bucket holding the rest
of each distribution's mass (`topk_distill_sum`), which equals the full KL when the k tokens hold
all the teacher's mass and is never larger than it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .healing import HealConfig
from .train_config import TrainConfig

TINY = torch.finfo(torch.float32).tiny


def distill_sum(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor,
                temperature: float) -> torch.Tensor:
    """T^2 * sum over the `mask`ed positions of KL(teacher || student) at temperature T, in fp32."""
    t = float(temperature)
    student = F.log_softmax(student_logits[mask].float() / t, dim=-1)
    teacher = F.log_softmax(teacher_logits[mask].float() / t, dim=-1)
    return (teacher.exp() * (teacher - student)).sum() * t * t


def topk_distill_sum(student_logits: torch.Tensor, top_logp: torch.Tensor, top_ids: torch.Tensor,
                     temperature: float) -> torch.Tensor:
    """T^2 * sum over positions of KL(teacher || student) over k + 1 outcomes: the teacher's top k
    tokens (`top_logp`, its log-probabilities at T, and `top_ids`, both [positions, k]) and one
    bucket for every other token, the student's logits [positions, vocab] grouped the same way."""
    t = float(temperature)
    student = F.log_softmax(student_logits.float() / t, dim=-1).gather(-1, top_ids)
    teacher = top_logp.float()
    rest_p = (1 - teacher.exp().sum(-1)).clamp(min=0)
    rest_q = (1 - student.exp().sum(-1)).clamp(min=TINY)
    top = (teacher.exp() * (teacher - student)).sum(-1)
    rest = rest_p * (rest_p.clamp(min=TINY).log() - rest_q.log())
    return (top + rest).sum() * t * t


@dataclass
class Distillation:
    """A teacher model (frozen, eval mode) and how its KL term mixes with the task loss. With
    `top_k`, `cached` keeps the teacher's `top_k` most likely tokens and their log-probabilities at
    the temperature, [answer positions, top_k] each, by example index (its index in the healing's
    examples), on the CPU from the example's first visit. `teacher_rows`: the examples the teacher
    has run on."""

    teacher: torch.nn.Module
    weight: float = 0.5
    temperature: float = 2.0
    top_k: int | None = None
    teacher_rows: int = 0
    cached: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(init=False, default_factory=dict)

    def __post_init__(self):
        self.teacher.eval()
        for param in self.teacher.parameters():
            param.requires_grad_(False)

    def teacher_logits(self, inputs: dict, rows: torch.Tensor | None = None) -> torch.Tensor:
        """The teacher's logits on the batch (on its `rows` only when given)."""
        pick = (lambda x: x if rows is None or x is None else x[rows])
        kwargs = {"input_ids": pick(inputs["input_ids"]),
                  "attention_mask": pick(inputs.get("attention_mask")), "use_cache": False}
        if "logits_to_keep" in inputs:
            kwargs["logits_to_keep"] = inputs["logits_to_keep"]
        self.teacher_rows += len(kwargs["input_ids"])
        with torch.no_grad():
            return self.teacher(**kwargs).logits

    def loss(self, task_loss: torch.Tensor, student_logits: torch.Tensor, inputs: dict,
             tokens: torch.Tensor | int | None = None,
             indices: torch.Tensor | None = None) -> torch.Tensor:
        """The mixed loss of one batch; the KL term is divided by `tokens` (the answer tokens of the
        whole accumulated batch, as the task loss is) or, without it, by this batch's. With the
        cache, `indices` are the batch's example indices."""
        if "shift_labels" in inputs:  # logits only at the positions that predict a label
            mask = inputs["shift_labels"] != -100
        else:
            mask = torch.zeros_like(inputs["labels"], dtype=torch.bool)
            mask[:, :-1] = inputs["labels"][:, 1:] != -100
        if self.top_k is None:
            kl = distill_sum(student_logits, self.teacher_logits(inputs), mask, self.temperature)
        else:
            if indices is None:
                raise ValueError("a cached teacher needs the batch's example indices")
            top_logp, top_ids = self._teacher_top_k(inputs, mask, indices.tolist())
            kl = topk_distill_sum(student_logits[mask], top_logp.to(student_logits.device),
                                  top_ids.to(student_logits.device), self.temperature)
        kl = kl / (tokens if tokens is not None else mask.sum().clamp(min=1))
        return (1 - self.weight) * task_loss + self.weight * kl

    def _teacher_top_k(self, inputs: dict, mask: torch.Tensor, indices: list[int]):
        """The batch's top-k log-probabilities and token ids, [answer positions, k] in the order of
        `student_logits[mask]`; the teacher runs on the rows it has not seen."""
        missing = [r for r, i in enumerate(indices) if i not in self.cached]
        if missing:
            rows = torch.tensor(missing, device=mask.device)
            logits = self.teacher_logits(inputs, rows)
            for logit, r in zip(logits, missing):
                logp = F.log_softmax(logit[mask[r]].float() / self.temperature, dim=-1)
                top = logp.topk(min(self.top_k, logp.shape[-1]), dim=-1)
                self.cached[indices[r]] = (top.values.cpu(), top.indices.cpu())
        entries = [self.cached[i] for i in indices]
        return torch.cat([e[0] for e in entries]), torch.cat([e[1] for e in entries])


def caches_teacher(heal: HealConfig, train: TrainConfig, examples: int) -> bool:
    """Whether a healing of `examples` training examples caches the teacher's top-k: always (on),
    never (off), or (auto) when it visits the examples more than once on average, where one
    teacher pass per example is cheaper than one per visit."""
    if heal.teacher_cache != "auto":
        return heal.teacher_cache == "on"
    visits = train.planned_steps(examples) * train.batch_size * train.grad_accum
    return visits > examples


def distillation(teacher: torch.nn.Module, heal: HealConfig, train: TrainConfig,
                 examples: int) -> Distillation:
    """The `Distillation` of a healing by `heal` with `train` over `examples` training examples."""
    top_k = heal.top_k if caches_teacher(heal, train, examples) else None
    return Distillation(teacher, heal.distill, heal.temperature, top_k)
