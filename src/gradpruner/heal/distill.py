"""Distillation while healing: the pruned student learns the teacher's token distributions on the
answer positions of the task data, mixed with the task loss.

    loss = (1 - weight) * task loss + weight * T^2 * KL(softmax(teacher / T) || softmax(student / T))

the KL summed over the vocabulary and averaged over the answer tokens (Hinton et al. 2015; the T^2
keeps the gradient's scale independent of T). The teacher runs on the fly on each training batch,
without gradients, on the same device and in the same dtype as the student; where the model
projects only the answer positions onto the vocabulary (`logits_to_keep`), so does the teacher.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def distill_sum(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor,
                temperature: float) -> torch.Tensor:
    """T^2 * sum over the `mask`ed positions of KL(teacher || student) at temperature T, in fp32."""
    t = float(temperature)
    student = F.log_softmax(student_logits[mask].float() / t, dim=-1)
    teacher = F.log_softmax(teacher_logits[mask].float() / t, dim=-1)
    return (teacher.exp() * (teacher - student)).sum() * t * t


@dataclass
class Distillation:
    """A teacher model (frozen, eval mode) and how its KL term mixes with the task loss."""

    teacher: torch.nn.Module
    weight: float = 0.5
    temperature: float = 2.0

    def __post_init__(self):
        self.teacher.eval()
        for param in self.teacher.parameters():
            param.requires_grad_(False)

    def teacher_logits(self, inputs: dict) -> torch.Tensor:
        kwargs = {"input_ids": inputs["input_ids"], "attention_mask": inputs.get("attention_mask"),
                  "use_cache": False}
        if "logits_to_keep" in inputs:
            kwargs["logits_to_keep"] = inputs["logits_to_keep"]
        with torch.no_grad():
            return self.teacher(**kwargs).logits

    def loss(self, task_loss: torch.Tensor, student_logits: torch.Tensor, inputs: dict,
             tokens: torch.Tensor | int | None = None) -> torch.Tensor:
        """The mixed loss of one batch; the KL term is divided by `tokens` (the answer tokens of the
        whole accumulated batch, as the task loss is) or, without it, by this batch's."""
        teacher_logits = self.teacher_logits(inputs)
        if "shift_labels" in inputs:  # logits only at the positions that predict a label
            mask = inputs["shift_labels"] != -100
        else:
            mask = torch.zeros_like(inputs["labels"], dtype=torch.bool)
            mask[:, :-1] = inputs["labels"][:, 1:] != -100
        kl = distill_sum(student_logits, teacher_logits, mask, self.temperature)
        kl = kl / (tokens if tokens is not None else mask.sum().clamp(min=1))
        return (1 - self.weight) * task_loss + self.weight * kl
