"""The one prune-and-heal recipe: probe -> select -> apply -> fine-tune -> evaluate.

`run`, every `compare` cell and the benchmarks call these functions, so what the docs report is
what users run. The training examples are split once (`split_heldout`): the last `heldout` judge
cuts and are never trained on; the rest train the probe, the pruned and the dense models.
The cut is selected and applied in fp32 (merges add in full precision) and then healed in the
recipe's dtype.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from .apply import apply
from .config import RecipeConfig
from .errors import GradPrunerError
from .evaluate import evaluate_examples
from .igia import IGIA
from .models import resolve_device, resolve_dtype
from .plan import PruneRecord
from .prune import check_igia_matches
from .search.budget import heal_budget
from .search.select import select
from .selection import removal_count
from .surgery import count_parameters, num_layers
from .tasks import Task
from .train import TrainConfig, finetune, probe as probe_run
from .warm_start import load_adapters, save_adapters


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
        raise GradPrunerError(f"{len(examples)} training examples: too few to hold out {heldout}")
    return examples[:-heldout], examples[-heldout:]


def probe(model, tokenizer, examples: list, train: TrainConfig, steps: int,
          schedule_steps: int | None = None, checkpoint_dir: str | None = None) -> ProbeResult:
    """The first `steps` steps of fine-tuning `model` on `examples`, with their IGIA; with LoRA
    the model is left as it was, with full fine-tuning its weights have taken the steps. With
    `checkpoint_dir` the Trainer's checkpoint after the probe is kept there (`finetune_dense`)."""
    adapters: dict = {}
    igia, stats = probe_run(model, tokenizer, examples, train, steps, schedule_steps, adapters,
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
        return finetune(model, tokenizer, train_examples, cfg)
    tuned, stats = finetune(model, tokenizer, train_examples,
                            replace(cfg, checkpoint_dir=checkpoint_dir, resume=True))
    reused = probed.stats["steps"]
    per_step = stats["step_seconds"] or stats["train_seconds"] / max(stats["steps"] - reused, 1)
    stats.update(resumed_seconds=stats["train_seconds"], train_seconds=per_step * stats["steps"],
                 seconds_per_step=per_step, probe_steps_reused=reused)
    return tuned, stats


def needs_probe(criterion: str, merge) -> bool:
    """Whether a criterion and merge read the probe's IGIA (`auto` uses it when given)."""
    from .criteria import get_criterion

    return criterion == "auto" or get_criterion(criterion).needs_probe or merge not in (None, 0)


@dataclass
class Cut:
    """A pruned (not yet healed) fp32 model and its record."""

    model: object
    record: PruneRecord
    select_seconds: float


def cut(model_fp32, tokenizer, train_examples: list, heldout: list, probed: ProbeResult | None,
        cfg: RecipeConfig, criterion: str, merge, ratio: float | None, seed: int) -> Cut:
    """Select a plan for `model_fp32` and apply it (in place), within the selection budget of the
    fine-tune that follows."""
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
    _, entries = apply(model_fp32, plan, igia)
    record = PruneRecord(plan, criterion, report.layer_scores, params_before,
                         count_parameters(model_fp32), entries, report.to_json())
    return Cut(model_fp32, record, time.perf_counter() - start)


def heal(model, tokenizer, train_examples: list, probed: ProbeResult | None, cfg: RecipeConfig,
         kept: list[int], seed: int, dtype: torch.dtype):
    """Fine-tune the cut model in `dtype` (LoRA merged, warm-started from the probe's adapters
    when `cfg.warm_start`); returns (model, stats)."""
    warm = (probed.adapters, kept) if cfg.warm_starts and probed and probed.adapters else None
    return finetune(model.to(dtype), tokenizer, train_examples, replace(cfg.train, seed=seed), warm=warm)


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

