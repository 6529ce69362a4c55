"""The one prune-and-heal recipe: probe -> cut (select and apply) -> heal -> evaluate.

Every entry point calls these functions for its steps: the stage commands (`stages.py`), `run`
(`run.py`), every `compare` cell and the benchmarks, so what the docs report is what users run.
The training examples are split once (`split_heldout`): the last `heldout` judge cuts and are
never trained on; the rest train the probe, the pruned and the dense models. The cut is selected
and applied in fp32 (merges add in full precision) and then healed in the recipe's dtype.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from ..catalog import CRITERIA, DEFAULT_DENSITY
from ..config import CutSettings
from ..errors import GradPrunerError
from ..evaluation.scoring import evaluate_examples
from ..merging import apply
from ..merging.fold import Calibration
from ..model.loading import is_quantized, load_model, quantized_copy
from ..model.surgery import count_parameters, num_layers
from ..plan import PrunePlan, PruneRecord
from ..removal import removal_count
from ..search.budget import SelectionBudget, heal_budget
from ..search.select import select
from ..tasks import Task
from ..training.distill import distillation
from ..training.healing import HealConfig, get_healer
from ..training.igia import IGIA, check_igia_matches
from ..training.train_config import Checkpoints, TrainConfig
from ..training.trainer import add_lora, finetune, probe_gradients
from ..training.warm_start import ADAPTERS, load_adapters, save_adapters, warm_start


@dataclass
class ProbeResult:
    """The probe's IGIA, its statistics (steps, seconds, the steady step time) and, with LoRA, its
    adapters by original layer index (for the warm start); `info`: what a saved probe folder
    records of its run (task, held-out count, training settings, versions, ...)."""

    igia: IGIA
    stats: dict
    adapters: dict
    info: dict = field(default_factory=dict)

    def save(self, folder: Path, extra: dict) -> None:
        self.igia.save(folder, extra={"probe": self.stats, **extra})
        if self.adapters:
            save_adapters(self.adapters, folder)

    @classmethod
    def load(cls, folder: str | Path, with_adapters: bool = False) -> "ProbeResult":
        """The probe saved in `folder`; with `with_adapters` a folder without LoRA adapters (a
        full-gradient probe, or one saved by an earlier version) is the error."""
        keeps = with_adapters or (Path(folder) / ADAPTERS).is_file()
        adapters = load_adapters(folder) if keeps else {}
        igia = IGIA.load(folder)  # a folder that is no probe's output is the error
        info = json.loads((Path(folder) / "scores.json").read_text())
        return cls(igia, info.get("probe", {}), adapters, info)

    def lora_settings(self, train: TrainConfig) -> TrainConfig:
        """`train` with the LoRA rank and alpha the probe's adapters were trained with (they are
        merged at the probe's scaling), where the probe recorded them."""
        probed = self.info.get("train_config") or {}
        return replace(train, lora_rank=probed.get("lora_rank", train.lora_rank),
                       lora_alpha=probed.get("lora_alpha", train.lora_alpha))


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
          schedule_steps: int | None = None, checkpoints: Checkpoints | None = None) -> ProbeResult:
    """The first `steps` steps of fine-tuning `model` on `examples`, with their IGIA; with LoRA
    the model is left as it was, with full fine-tuning its weights have taken the steps. With
    `checkpoints` the Trainer's checkpoints are kept as the fine-tune that continues the probe
    keeps them, the last after the probe's last step (`finetune_dense`).
    With `train.load_in_bits` the probe trains on a quantized copy of `model` (QLoRA), unless
    `model` was loaded quantized."""
    adapters: dict = {}
    quantize = train.load_in_bits and not is_quantized(model)
    trainee = quantized_copy(model, train.load_in_bits) if quantize else model
    igia, stats = probe_gradients(trainee, tokenizer, examples, train, steps, schedule_steps,
                                  adapters, checkpoints)
    return ProbeResult(igia, stats, adapters)


def steady_time(stats: dict, reused_steps: int = 0) -> dict:
    """`stats` of a fine-tune that resumed from a checkpoint (its own, or the `reused_steps` of
    the probe it continues) ran only its last steps: its `train_seconds` become its steady step
    time times all its steps (`resumed_seconds`: the seconds it ran). Others are returned as
    they are."""
    if not stats.get("resumed_from") or "resumed_seconds" in stats:
        return stats
    ran = max(stats["steps"] - reused_steps, 1)
    per_step = stats["step_seconds"] or stats["train_seconds"] / ran
    stats.update(resumed_seconds=stats["train_seconds"], train_seconds=per_step * stats["steps"],
                 seconds_per_step=per_step)
    if reused_steps:
        stats["probe_steps_reused"] = reused_steps
    return stats


def finetune_dense(model, tokenizer, train_examples: list, cfg: TrainConfig,
                   probed: ProbeResult, checkpoints: Checkpoints | None = None,
                   continues_probe: bool = False):
    """The dense reference fine-tune, checkpointed to `checkpoints`; with `continues_probe` (a
    LoRA probe of the same run that kept its checkpoint there) it continues from the probe's last
    step instead of redoing those steps (`steady_time`). Returns (model, stats)."""
    if continues_probe:
        checkpoints = replace(checkpoints, resume=True)
    tuned, stats = qlora_finetune(model, tokenizer, train_examples, cfg, checkpoints=checkpoints)
    return tuned, steady_time(stats, probed.stats["steps"] if continues_probe else 0)


def qlora_finetune(model, tokenizer, train_examples: list, cfg: TrainConfig,
                   full_precision: Callable[[], object] | None = None, **kwargs):
    """`finetune`; with `cfg.load_in_bits` (QLoRA) on a quantized copy of `model` (or `model`
    itself when it was loaded quantized, `full_precision` loading its full-precision weights),
    the adapters then merged into the full-precision weights. Returns (model, stats)."""
    if not cfg.load_in_bits:
        return finetune(model, tokenizer, train_examples, cfg, **kwargs)
    if is_quantized(model):
        return finetune(model, tokenizer, train_examples, cfg, full_precision=full_precision,
                        **kwargs)
    return finetune(quantized_copy(model, cfg.load_in_bits), tokenizer, train_examples, cfg,
                    full_precision=lambda: model, **kwargs)


def needs_probe(criterion: str, merge) -> bool:
    """Whether a criterion and merge read the probe's IGIA (`auto` uses it when given)."""
    return criterion == "auto" or CRITERIA[criterion].needs_probe or merge not in (None, 0)


@dataclass
class Healing:
    """How a cut model is healed: the training settings, the healing options, the dtype, the
    distillation teacher (with `heal.distill` > 0) and the name the record gives it, whether
    LoRA adapters start from the probe's (`warm_start`), where it checkpoints, and for a model
    loaded quantized (QLoRA), how to load its full-precision weights."""

    train: TrainConfig
    heal: HealConfig
    dtype: torch.dtype
    teacher: object = None
    teacher_name: str | None = None
    warm_start: bool = True
    checkpoints: Checkpoints | None = None
    full_precision: Callable[[], object] | None = None


def heal(model, tokenizer, train_examples: list, probed: ProbeResult | None, healing: Healing,
         kept: list[int], steps: int | None = None):
    """Heal the cut model in `healing.dtype` by `healing.heal` (LoRA merged, its adapters
    warm-started from the probe's when `healing.warm_start` and the probe kept adapters; or full,
    or partial-layer fine-tuning), distilling from the teacher when the healing distils, for
    `steps` (default: the training settings'); returns (model, stats)."""
    options = healing.heal
    healer = get_healer(options.method)
    warm = (probed.adapters, kept) if (healing.warm_start and healer.warm_starts and probed
                                       and probed.adapters and not healing.train.full) else None
    prepared = model if is_quantized(model) else model.to(healing.dtype)
    prepared, train = healer.prepare(prepared, healing.train, options)
    if steps is not None:
        train = replace(train, steps=steps, epochs=None)
    distill = None
    if options.distils:
        if healing.teacher is None:
            raise GradPrunerError("distillation needs a teacher model: give --teacher DIR")
        distill = distillation(healing.teacher, options, train, len(train_examples), kept)
    tuned, stats = qlora_finetune(prepared, tokenizer, train_examples, train,
                                  full_precision=healing.full_precision, warm=warm,
                                  distill=distill, checkpoints=healing.checkpoints)
    stats = steady_time(stats)
    stats["heal"] = options.summary(healing.teacher_name, train, distill.top_k if distill else None)
    return tuned, stats


def teacher_model(dense, probed: ProbeResult | None, heal_cfg: HealConfig, train: TrainConfig,
                  dtype: torch.dtype):
    """The distillation teacher in `dtype` on `dense`'s device: `heal_cfg.teacher` (a model
    folder), else the dense model with the probe's LoRA adapters merged in at the probe's
    scaling (it has seen the task for the probe's steps), else the dense model as it is. `dense`
    is not changed."""
    device = str(next(dense.parameters()).device)
    if heal_cfg.teacher:
        teacher, _, _ = load_model(heal_cfg.teacher, str(dtype).removeprefix("torch."), device)
        if teacher.config.vocab_size != dense.config.vocab_size:
            raise GradPrunerError(f"the teacher's vocabulary ({teacher.config.vocab_size}) is not "
                                  f"the model's ({dense.config.vocab_size}): give a --teacher with "
                                  "the same tokenizer")
        return teacher.eval()
    teacher = copy.deepcopy(dense).to(dtype)
    if probed is not None and probed.adapters:
        peft = add_lora(teacher, probed.lora_settings(train))
        warm_start(peft, probed.adapters, list(range(num_layers(dense))))
        teacher = peft.merge_and_unload()
    return teacher.eval()


@dataclass
class Cut:
    """A pruned (not yet healed) fp32 model and its record; `heal_seconds`: the healing between
    rounds of iterative pruning."""

    model: object
    record: PruneRecord
    select_seconds: float
    heal_seconds: float = 0.0


def prune_model(model, igia=None, tokenizer=None, examples: list | None = None, *,
                heldout: list | None = None, criterion: str = "auto", ratio: float | None = None,
                count: int | None = None, remove: list[int] | None = None,
                merge: int | str | None = "auto", density: float = DEFAULT_DENSITY,
                budget: SelectionBudget = SelectionBudget(), seed: int = 0,
                settings: dict[str, object] | None = None) -> PruneRecord:
    """Select a plan for `model` (`search.select.select`) and apply it in place; the record is
    what goes into `gradpruner.json`. An explicit `remove` runs no criterion: the record says
    "remove" for it (with a merge that ranks donors, `criterion`'s scores rank them)."""
    if igia is not None:
        check_igia_matches(igia, model)
    params_before = count_parameters(model)
    plan, report = select(model, tokenizer, examples, heldout=heldout, igia=igia,
                          criterion=criterion, ratio=ratio, count=count, remove=remove,
                          merge=merge, density=density, budget=budget, seed=seed,
                          settings=settings)
    _, entries = apply(model, plan, igia, Calibration(tokenizer, list(examples or [])))
    return PruneRecord(plan, "remove" if remove is not None else criterion, report.layer_scores,
                       params_before, count_parameters(model), entries, report.to_json())


def cut(model_fp32, tokenizer, train_examples: list, heldout: list, probed: ProbeResult | None,
        settings: CutSettings, healing: Healing | None = None) -> Cut:
    """Select a plan for `model_fp32` and apply it, within the selection budget of the fine-tune
    that follows; with `settings.rounds` > 1, in rounds healed by `healing` in between
    (`cut_in_rounds`)."""
    if settings.rounds > 1:
        return cut_in_rounds(model_fp32, tokenizer, train_examples, heldout, probed, settings,
                             healing)
    return _cut_once(model_fp32, tokenizer, train_examples, heldout, probed, settings)


def round_counts(removing: int, rounds: int) -> list[int]:
    """`removing` layers over at most `rounds` rounds, the earlier rounds taking the extra ones."""
    base, extra = divmod(removing, rounds)
    return [n for n in (base + (i < extra) for i in range(rounds)) if n]


def cut_in_rounds(model_fp32, tokenizer, train_examples: list, heldout: list,
                  probed: ProbeResult | None, settings: CutSettings, healing: Healing) -> Cut:
    """Iterative pruning: remove the layers in `settings.rounds` rounds, each chosen by the
    criterion on the model as the rounds before left it, with `settings.round_steps` healing
    steps after every round but the last. The probe (of the dense model) serves the first round
    only; later rounds merge by the fold or not at all. The record's plan is the whole cut in
    original indices; `rounds` says what each round removed, merged and healed."""
    total = num_layers(model_fp32)
    params_before = count_parameters(model_fp32)
    counts = round_counts(settings.removing(total), settings.rounds)
    kept, rounds, first = list(range(total)), [], None
    select_seconds = heal_seconds = 0.0
    model = model_fp32
    for number, count in enumerate(counts):
        later = number > 0
        merge = settings.merge
        this_round = replace(settings, ratio=None, count=count, remove=None, rounds=1,
                             seed=settings.seed + number,
                             merge=(merge if merge in ("auto", "fold", "replace", None) else None) if later else merge)
        done = _cut_once(model, tokenizer, train_examples, heldout, None if later else probed,
                         this_round)
        plan, select_seconds = done.record.plan, select_seconds + done.select_seconds
        first = first or done.record
        entry = {"removed": [kept[i] for i in plan.removed], "merge_rule": plan.merge_rule,
                 "merges": [{"receiver": kept[s.receiver], "donors": [kept[d] for d in s.donors]}
                            for s in plan.merges], "select_seconds": round(done.select_seconds, 2)}
        kept = [kept[i] for i in plan.kept]
        if number < len(counts) - 1:
            between = replace(healing, train=replace(healing.train, seed=settings.seed),
                              checkpoints=None)
            model, stats = heal(done.model, tokenizer, train_examples, None if later else probed,
                                between, kept, settings.round_steps)
            model = model.float()
            heal_seconds += stats["train_seconds"]
            entry["heal"] = {k: stats[k] for k in ("steps", "train_seconds", "train_loss")}
        rounds.append(entry)
    removed = tuple(i for i in range(total) if i not in kept)
    record = PruneRecord(PrunePlan(total, removed), settings.criterion, first.layer_scores,
                         params_before, count_parameters(model), {}, first.selection, rounds=rounds)
    return Cut(model, record, select_seconds, heal_seconds)


def _cut_once(model_fp32, tokenizer, train_examples: list, heldout: list,
              probed: ProbeResult | None, settings: CutSettings) -> Cut:
    """Select a plan for `model_fp32` and apply it (in place), within the selection budget."""
    total = num_layers(model_fp32)
    step = probed.stats.get("step_seconds") if probed else None
    budget = heal_budget(settings.selection_budget, settings.heal_steps, total,
                         settings.removing(total), step)
    start = time.perf_counter()
    record = prune_model(model_fp32, probed.igia if probed else None, tokenizer, train_examples,
                         heldout=heldout, criterion=settings.criterion, ratio=settings.ratio,
                         count=settings.count, remove=settings.remove, merge=settings.merge,
                         density=settings.density, budget=budget, seed=settings.seed,
                         settings=settings.criterion_settings)
    return Cut(model_fp32, record, time.perf_counter() - start)


def evaluate(model, tokenizer, task: Task, limit: int | None, protocol: str = "loglik",
             batch_size: int = 16) -> dict:
    """Metrics on the task's evaluation split, with the wall time and items per second."""
    examples = task.eval_examples()[:limit] if limit else task.eval_examples()
    start = time.perf_counter()
    metrics = evaluate_examples(model, tokenizer, examples, task.kind, protocol=protocol,
                                batch_size=batch_size)
    seconds = time.perf_counter() - start
    return {**metrics, "eval_seconds": seconds, "items_per_second": len(examples) / seconds}
