"""The one prune-and-heal recipe: probe -> select -> apply -> fine-tune -> evaluate.

`run`, every `compare` cell and the benchmarks call these functions, so what the docs report is
what users run. The training examples are split once (`split_heldout`): the last `heldout` judge
cuts and are never trained on; the rest train the probe, the pruned and the dense models.
The cut is selected and applied in fp32 (merges add in full precision) and then healed in the
recipe's dtype.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from .apply import apply
from .apply.fold import Calibration
from .config import RecipeConfig
from .errors import GradPrunerError
from .evaluate import evaluate_examples
from .igia import IGIA
from .models import is_quantized, quantized_copy, resolve_device, resolve_dtype
from .plan import PrunePlan, PruneRecord
from .prune import check_igia_matches
from .search.budget import heal_budget
from .search.select import select
from .selection import removal_count
from .surgery import count_parameters, num_layers
from .tasks import Task
from .heal import HealConfig, get_healer
from .heal.distill import distillation
from .train import TrainConfig, add_lora, finetune, probe as probe_run
from .warm_start import load_adapters, save_adapters, warm_start


@dataclass
class ProbeResult:
    """The probe's IGIA, its statistics (steps, seconds, the steady step time) and, with LoRA, its
    adapters by original layer index (for the warm start); `info`: what a saved probe folder
    records of its run (task, held-out count, versions, ...)."""

    igia: IGIA
    stats: dict
    adapters: dict
    info: dict = field(default_factory=dict)

    def save(self, folder: Path, extra: dict) -> None:
        self.igia.save(folder, extra={"probe": self.stats, **extra})
        if self.adapters:
            save_adapters(self.adapters, folder)

    @classmethod
    def load(cls, folder: str | Path) -> "ProbeResult":
        igia = IGIA.load(folder)
        info = json.loads((Path(folder) / "scores.json").read_text())
        adapters = load_adapters(folder) if (Path(folder) / "adapters.safetensors").is_file() else {}
        return cls(igia, info.get("probe", {}), adapters, info)


def split_heldout(examples: list, heldout: int) -> tuple[list, list]:
    """(training examples, the last `heldout` set apart to judge cuts; none for 0)."""
    if heldout < 0:
        raise GradPrunerError(f"--heldout must be at least 0, got {heldout}")
    if heldout == 0:
        return list(examples), []
    if len(examples) <= heldout:
        raise GradPrunerError(f"{len(examples)} training examples: too few to hold out {heldout}; "
                              "give more data or a smaller --heldout")
    return examples[:-heldout], examples[-heldout:]


def probe(model, tokenizer, examples: list, train: TrainConfig, steps: int,
          schedule_steps: int | None = None, checkpoint_dir: str | None = None) -> ProbeResult:
    """The first `steps` steps of fine-tuning `model` on `examples`, with their IGIA; with LoRA
    the model is left as it was, with full fine-tuning its weights have taken the steps. With
    `checkpoint_dir` the Trainer's checkpoint after the probe is kept there (`finetune_dense`).
    With `train.load_in_bits` the probe trains on a quantized copy of `model` (QLoRA), unless
    `model` was loaded quantized."""
    adapters: dict = {}
    quantize = train.load_in_bits and not is_quantized(model)
    trainee = quantized_copy(model, train.load_in_bits) if quantize else model
    igia, stats = probe_run(trainee, tokenizer, examples, train, steps, schedule_steps, adapters,
                            checkpoint_dir)
    return ProbeResult(igia, stats, adapters)


def finetune_dense(model, tokenizer, train_examples: list, cfg: TrainConfig,
                   probed: ProbeResult, checkpoint_dir: str | None):
    """The dense reference fine-tune; with the probe's checkpoint (a LoRA probe of the same run,
    `probe(..., checkpoint_dir=...)`) it continues from the probe's last step instead of redoing
    those steps. Its `train_seconds` are then its steady step time (`step_seconds`, after the
    first resumed step, which loads the checkpoint) times all its steps; `resumed_seconds` are the
    seconds it ran. Returns (model, stats)."""
    if checkpoint_dir is None:
        return qlora_finetune(model, tokenizer, train_examples, cfg)
    tuned, stats = qlora_finetune(model, tokenizer, train_examples,
                                  replace(cfg, checkpoint_dir=checkpoint_dir, resume=True))
    reused = probed.stats["steps"]
    per_step = stats["step_seconds"] or stats["train_seconds"] / max(stats["steps"] - reused, 1)
    stats.update(resumed_seconds=stats["train_seconds"], train_seconds=per_step * stats["steps"],
                 seconds_per_step=per_step, probe_steps_reused=reused)
    return tuned, stats


def qlora_finetune(model, tokenizer, train_examples: list, cfg: TrainConfig, **kwargs):
    """`finetune`, on a quantized copy of `model` with `cfg.load_in_bits` (QLoRA), the adapters
    then merged into `model`'s own full-precision weights; returns (model, stats)."""
    if not cfg.load_in_bits:
        return finetune(model, tokenizer, train_examples, cfg, **kwargs)
    return finetune(quantized_copy(model, cfg.load_in_bits), tokenizer, train_examples, cfg,
                    full_precision=lambda: model, **kwargs)


def needs_probe(criterion: str, merge) -> bool:
    """Whether a criterion and merge read the probe's IGIA (`auto` uses it when given)."""
    from .criteria import get_criterion

    return criterion == "auto" or get_criterion(criterion).needs_probe or merge not in (None, 0)


@dataclass
class Cut:
    """A pruned (not yet healed) fp32 model and its record; `heal_seconds`: the healing between
    rounds of iterative pruning."""

    model: object
    record: PruneRecord
    select_seconds: float
    heal_seconds: float = 0.0


def cut(model_fp32, tokenizer, train_examples: list, heldout: list, probed: ProbeResult | None,
        cfg: RecipeConfig, criterion: str, merge, ratio: float | None, seed: int,
        teacher=None, dtype: torch.dtype = torch.float32) -> Cut:
    """Select a plan for `model_fp32` and apply it, within the selection budget of the fine-tune
    that follows; with `cfg.heal.rounds` > 1, in rounds healed in between (`cut_in_rounds`)."""
    if cfg.heal.rounds > 1:
        return cut_in_rounds(model_fp32, tokenizer, train_examples, heldout, probed, cfg, criterion,
                             merge, ratio, seed, teacher, dtype)
    return _cut_once(model_fp32, tokenizer, train_examples, heldout, probed, cfg, criterion, merge,
                     ratio, seed)


def round_counts(removing: int, rounds: int) -> list[int]:
    """`removing` layers over at most `rounds` rounds, the earlier rounds taking the extra ones."""
    base, extra = divmod(removing, rounds)
    return [n for n in (base + (i < extra) for i in range(rounds)) if n]


def cut_in_rounds(model_fp32, tokenizer, train_examples: list, heldout: list,
                  probed: ProbeResult | None, cfg: RecipeConfig, criterion: str, merge,
                  ratio: float | None, seed: int, teacher, dtype: torch.dtype) -> Cut:
    """Iterative pruning: remove the layers in `cfg.heal.rounds` rounds, each chosen by the
    criterion on the model as the rounds before left it, with `cfg.heal.round_steps` healing
    steps after every round but the last. The probe (of the dense model) serves the first round
    only; later rounds merge by the fold or not at all. The record's plan is the whole cut in
    original indices; `rounds` says what each round removed, merged and healed."""
    total = num_layers(model_fp32)
    params_before = count_parameters(model_fp32)
    counts = round_counts(removal_count(total, ratio, cfg.count), cfg.heal.rounds)
    kept, rounds, first = list(range(total)), [], None
    select_seconds = heal_seconds = 0.0
    model = model_fp32
    for number, count in enumerate(counts):
        later = number > 0
        done = _cut_once(model, tokenizer, train_examples, heldout, None if later else probed,
                         replace(cfg, ratio=None, count=count, remove=None), criterion,
                         (merge if merge in ("auto", "fold", None) else None) if later else merge,
                         None, seed + number)
        plan, select_seconds = done.record.plan, select_seconds + done.select_seconds
        first = first or done.record
        entry = {"removed": [kept[i] for i in plan.removed], "merge_rule": plan.merge_rule,
                 "merges": [{"receiver": kept[s.receiver], "donors": [kept[d] for d in s.donors]}
                            for s in plan.merges], "select_seconds": round(done.select_seconds, 2)}
        kept = [kept[i] for i in plan.kept]
        if number < len(counts) - 1:
            model, stats = heal(done.model, tokenizer, train_examples, None if later else probed,
                                cfg, kept, seed, dtype, teacher, cfg.heal.round_steps)
            model = model.float()
            heal_seconds += stats["train_seconds"]
            entry["heal"] = {k: stats[k] for k in ("steps", "train_seconds", "train_loss")}
        rounds.append(entry)
    removed = tuple(i for i in range(total) if i not in kept)
    record = PruneRecord(PrunePlan(total, removed), criterion, first.layer_scores, params_before,
                         count_parameters(model), {}, first.selection, rounds=rounds)
    return Cut(model, record, select_seconds, heal_seconds)


def _cut_once(model_fp32, tokenizer, train_examples: list, heldout: list,
              probed: ProbeResult | None, cfg: RecipeConfig, criterion: str, merge,
              ratio: float | None, seed: int) -> Cut:
    """Select a plan for `model_fp32` and apply it (in place)."""
    igia = probed.igia if probed else None
    if igia is not None:
        check_igia_matches(igia, model_fp32)
    total = num_layers(model_fp32)
    count = cfg.count if ratio is None else None
    removing = len(cfg.remove) if cfg.remove else removal_count(total, ratio, count)
    step = probed.stats.get("step_seconds") if probed else None
    budget = heal_budget(cfg.selection_budget, cfg.train.planned_steps(len(train_examples)), total,
                         removing, step)
    params_before = count_parameters(model_fp32)
    start = time.perf_counter()
    plan, report = select(model_fp32, tokenizer, train_examples, heldout=heldout, igia=igia,
                          criterion=criterion, ratio=ratio, count=count,
                          remove=cfg.remove if ratio is None else None, merge=merge,
                          density=cfg.density, budget=budget, seed=seed,
                          settings=cfg.criterion_settings())
    _, entries = apply(model_fp32, plan, igia, Calibration(tokenizer, train_examples))
    record = PruneRecord(plan, criterion, report.layer_scores, params_before,
                         count_parameters(model_fp32), entries, report.to_json())
    return Cut(model_fp32, record, time.perf_counter() - start)


def heal(model, tokenizer, train_examples: list, probed: ProbeResult | None, cfg: RecipeConfig,
         kept: list[int], seed: int, dtype: torch.dtype, teacher=None, steps: int | None = None):
    """Heal the cut model in `dtype` by `cfg.heal` (LoRA merged, warm-started from the probe's
    adapters when `cfg.warm_starts`; or full, or partial-layer fine-tuning), distilling from
    `teacher` when `cfg.heal.distill` > 0, for `steps` (default: the training config's); returns
    (model, stats)."""
    healer = get_healer(cfg.heal.method)
    warm = (probed.adapters, kept) if cfg.warm_starts and probed and probed.adapters else None
    model, train = healer.prepare(model.to(dtype), replace(cfg.train, seed=seed), cfg.heal)
    if steps is not None:
        train = replace(train, steps=steps, epochs=None)
    distill = None
    if cfg.heal.distils:
        if teacher is None:
            raise GradPrunerError("distillation needs a teacher model: give --teacher DIR")
        distill = distillation(teacher, cfg.heal, train, len(train_examples))
    tuned, stats = qlora_finetune(model, tokenizer, train_examples, train, warm=warm, distill=distill)
    stats["heal"] = cfg.heal.summary(cfg.heal.teacher or "dense+probe adapters", train,
                                     distill.top_k if distill else None)
    return tuned, stats


def teacher_model(master, adapters: dict, heal_cfg: HealConfig, train: TrainConfig,
                  dtype: torch.dtype):
    """The distillation teacher in `dtype` on the master's device: `heal_cfg.teacher` (a model
    folder), else the dense `master` with the probe's LoRA `adapters` merged in (it has seen the
    task for the probe's steps), else the dense model as it is."""
    if heal_cfg.teacher:
        from .models import load_model

        teacher, _, _ = load_model(heal_cfg.teacher, str(dtype).removeprefix("torch."),
                                   str(next(master.parameters()).device))
        if teacher.config.vocab_size != master.config.vocab_size:
            raise GradPrunerError(f"the teacher's vocabulary ({teacher.config.vocab_size}) is not "
                                  f"the model's ({master.config.vocab_size}): give a --teacher with the "
                                  "same tokenizer")
        return teacher.eval()
    teacher = copy.deepcopy(master).to(dtype)
    if adapters:
        peft = add_lora(teacher, train)
        warm_start(peft, adapters, list(range(num_layers(master))))
        teacher = peft.merge_and_unload()
    return teacher.eval()


def evaluate(model, tokenizer, task: Task, limit: int | None, protocol: str = "loglik",
             batch_size: int = 16) -> dict:
    """Metrics on the task's evaluation split, with the wall time and items per second."""
    examples = task.eval_examples()[:limit] if limit else task.eval_examples()
    start = time.perf_counter()
    metrics = evaluate_examples(model, tokenizer, examples, task.kind, protocol=protocol,
                                batch_size=batch_size)
    seconds = time.perf_counter() - start
    return {**metrics, "eval_seconds": seconds, "items_per_second": len(examples) / seconds}


def recipe_dtype(cfg: RecipeConfig) -> torch.dtype:
    """The dtype the recipe trains and evaluates in (`cfg.dtype`, auto: bf16 on CUDA)."""
    return resolve_dtype(cfg.dtype, resolve_device(cfg.device))

