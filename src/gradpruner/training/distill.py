"""Distillation while healing: the pruned student learns the teacher's token distributions, and
optionally its layers' outputs, on the task data, mixed with the task loss.

    loss = (1 - weight) * task loss + weight * T^2 * KL(softmax(teacher / T) || softmax(student / T))
           + align * mean over kept layers of (1 - cos(student layer output, teacher layer output))

The KL is summed over the vocabulary and averaged over the answer tokens (`positions` "answer")
or over every position of each example, prompt and answer ("all": a signal at every token
instead of about one per example on multiple-choice tasks) (Hinton et al. 2015; the T^2 keeps the
gradient's scale independent of T). The alignment term (Minitron; Kovalev & Tikhomirov 2025)
matches each kept layer's output to the output of the dense layer it stands for
(`removal.matched_teacher_layers`: the end of the removed span after it) at every position, by
cosine distance, which the residual stream's growth with depth does not scale. The teacher runs
without gradients, on the same device and in the same dtype as the student; where the model
projects only the answer positions onto the vocabulary (`logits_to_keep`), so does the teacher.

By default the teacher runs on each training batch. A healing of the answer positions without
alignment that visits its examples more than once (several epochs) instead keeps, from each
example's first visit, the teacher's `top_k` most likely tokens at each answer position
(`Distillation.cached`): one teacher pass per example instead of one per visit. (With alignment
the teacher's layers run on every batch anyway, and every position's top-k would be a cache
as large as the logits it saves.) The KL is then taken over those k tokens and one bucket holding the rest
of each distribution's mass (`topk_distill_sum`), which equals the full KL when the k tokens hold
all the teacher's mass and is never larger than it.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import torch
import torch.nn.functional as F

from ..removal import matched_teacher_layers
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


def alignment_loss(student: list[torch.Tensor], teacher: list[torch.Tensor],
                   mask: torch.Tensor) -> torch.Tensor:
    """Mean over the layer pairs of the mean over the `mask`ed positions of the cosine distance
    1 - cos(student, teacher) between hidden states [batch, positions, hidden], in fp32."""
    distances = [(1 - F.cosine_similarity(s[mask].float(), t[mask].float(), dim=-1)).mean()
                 for s, t in zip(student, teacher, strict=True)]
    return torch.stack(distances).mean()


@contextmanager
def layer_outputs(model, indices: list[int]) -> Iterator[dict[int, torch.Tensor]]:
    """Within the block, the hidden states the decoder layers `indices` of `model` output in each
    forward pass, by layer index (the last pass's)."""
    from ..model.surgery import decoder_layers  # torch-heavy: imported when a heal aligns

    layers = decoder_layers(model)
    outputs: dict[int, torch.Tensor] = {}

    def keep(index: int):
        def hook(module, args, output):
            outputs[index] = output[0] if isinstance(output, tuple) else output
        return hook

    handles = [layers[i].register_forward_hook(keep(i)) for i in sorted(set(indices))]
    try:
        yield outputs
    finally:
        for handle in handles:
            handle.remove()


@dataclass
class Distillation:
    """A teacher model (frozen, eval mode) and how its KL term (on the answer positions or on
    `all` of them) and, with `align` > 0, its layers' outputs mix with the task loss.
    `teacher_layers[j]`: the teacher layer whose output student layer j matches. With `top_k`,
    `cached` keeps the teacher's `top_k` most likely tokens and their log-probabilities at the
    temperature, [answer positions, top_k] each, by example index (its index in the healing's
    examples), on the CPU from the example's first visit. `teacher_rows`: the examples the
    teacher has run on. `accumulation`: the micro-batches of a step, over which the per-batch
    means of the all-position KL and the alignment are averaged."""

    teacher: torch.nn.Module
    weight: float = 0.5
    temperature: float = 2.0
    top_k: int | None = None
    all_positions: bool = False
    align: float = 0.0
    teacher_layers: list[int] | None = None
    accumulation: int = 1
    teacher_rows: int = 0
    cached: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(init=False, default_factory=dict)
    _teacher_states: dict[int, torch.Tensor] = field(init=False, default_factory=dict)

    def __post_init__(self):
        self.teacher.eval()
        for param in self.teacher.parameters():
            param.requires_grad_(False)
        if self.align and self.teacher_layers is None:
            raise ValueError("alignment needs the teacher layer of every student layer")
        if self.top_k is not None and (self.all_positions or self.align):
            raise ValueError("the teacher cache holds the answer positions' logits only")

    @contextmanager
    def student_states(self, student) -> Iterator[dict[int, torch.Tensor]]:
        """Within the block, the student's layer outputs of its forward pass (none without
        alignment)."""
        if not self.align:
            yield {}
            return
        with layer_outputs(student, list(range(len(self.teacher_layers)))) as states:
            yield states

    def teacher_logits(self, inputs: dict, rows: torch.Tensor | None = None) -> torch.Tensor:
        """The teacher's logits on the batch (on its `rows` only when given); with alignment its
        matched layers' outputs are kept for `loss`."""
        pick = (lambda x: x if rows is None or x is None else x[rows])
        kwargs = {"input_ids": pick(inputs["input_ids"]),
                  "attention_mask": pick(inputs.get("attention_mask")), "use_cache": False}
        if "logits_to_keep" in inputs:
            kwargs["logits_to_keep"] = inputs["logits_to_keep"]
        self.teacher_rows += len(kwargs["input_ids"])
        with torch.no_grad(), layer_outputs(self.teacher, self.teacher_layers if self.align else []) as states:
            logits = self.teacher(**kwargs).logits
        self._teacher_states = states
        return logits

    def loss(self, task_loss: torch.Tensor, student_logits: torch.Tensor, inputs: dict,
             tokens: torch.Tensor | int | None = None, indices: torch.Tensor | None = None,
             student_states: dict[int, torch.Tensor] | None = None) -> torch.Tensor:
        """The mixed loss of one batch. The answer-position KL term is divided by `tokens` (the
        answer tokens of the whole accumulated batch, as the task loss is) or, without it, by
        this batch's; the all-position KL and the alignment are this batch's means (divided by
        the accumulation where `tokens` is given, as the Trainer then does not). With the cache,
        `indices` are the batch's example indices; with alignment, `student_states` are the
        student's layer outputs (`student_states`)."""
        mask = self._kl_mask(inputs)
        if self.top_k is None:
            teacher_logits = self.teacher_logits(inputs)
            kl = (distill_sum(student_logits, teacher_logits, mask, self.temperature)
                  if self.weight else student_logits.new_zeros(()))
        else:
            if indices is None:
                raise ValueError("a cached teacher needs the batch's example indices")
            top_logp, top_ids = self._teacher_top_k(inputs, mask, indices.tolist())
            kl = topk_distill_sum(student_logits[mask], top_logp.to(student_logits.device),
                                  top_ids.to(student_logits.device), self.temperature)
        share = 1 / self.accumulation if tokens is not None else 1.0
        if self.all_positions:
            kl = kl / mask.sum().clamp(min=1) * share
        else:
            kl = kl / (tokens if tokens is not None else mask.sum().clamp(min=1))
        loss = (1 - self.weight) * task_loss + self.weight * kl
        if self.align:
            positions = inputs["attention_mask"].bool()
            student = [student_states[j] for j in range(len(self.teacher_layers))]
            teacher = [self._teacher_states[i] for i in self.teacher_layers]
            loss = loss + self.align * alignment_loss(student, teacher, positions) * share
        self._teacher_states = {}
        return loss

    def _kl_mask(self, inputs: dict) -> torch.Tensor:
        """The positions whose distributions the KL compares: every real token (`all_positions`),
        else those that predict an answer token, as the student's logits hold them."""
        if self.all_positions:
            return inputs["attention_mask"].bool()
        if "shift_labels" in inputs:  # logits only at the positions that predict a label
            return inputs["shift_labels"] != -100
        mask = torch.zeros_like(inputs["labels"], dtype=torch.bool)
        mask[:, :-1] = inputs["labels"][:, 1:] != -100
        return mask

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
    """Whether a healing of `examples` training examples caches the teacher's top-k: never with
    the all-position KL or alignment (the teacher runs on every batch), else always (on), never
    (off), or (auto) when it visits the examples more than once on average, where one teacher
    pass per example is cheaper than one per visit."""
    if heal.distill_positions == "all" or heal.align:
        return False
    if heal.teacher_cache != "auto":
        return heal.teacher_cache == "on"
    visits = train.planned_steps(examples) * train.batch_size * train.grad_accum
    return visits > examples


def distillation(teacher: torch.nn.Module, heal: HealConfig, train: TrainConfig, examples: int,
                 kept: list[int]) -> Distillation:
    """The `Distillation` of a healing by `heal` with `train` over `examples` training examples
    of a model whose layers are the dense model's `kept` layers."""
    from ..model.surgery import num_layers

    top_k = heal.top_k if caches_teacher(heal, train, examples) else None
    matched = matched_teacher_layers(kept, num_layers(teacher)) if heal.align else None
    return Distillation(teacher, heal.distill, heal.temperature, top_k,
                        heal.distill_positions == "all", heal.align, matched, train.grad_accum)
