"""The stages that write files, in the paper's order, and `run`, which chains them.

probe  -> an IGIA folder (igia.safetensors + scores.json)
prune  -> a plain HF model folder + gradpruner.json
finetune -> a plain HF model folder (LoRA merged) + gradpruner.json
eval   -> a JSON of metrics
run    -> all of the above, the dense reference beside, and a report (Markdown, JSON, plot)
"""

from __future__ import annotations

import json
import platform
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path

import torch

from . import __version__
from .costs import cut_costs
from .criteria import ScoreContext
from .criteria.budget import heal_budget
from .distributed import is_main_process, main_process_output, refuse_sharded_probe
from .errors import GradPrunerError
from .evaluate import evaluate_examples
from .igia import IGIA
from .memory import check_fits
from .models import load_config, load_model, resolve_device, resolve_dtype, resolve_model
from .outputs import SIDECAR_NAME, atomic_output_dir, check_output_dir, write_json
from .prune import check_igia_matches, prune_model
from .surgery import save_pretrained_atomic
from .selection import select_layers
from .tasks import Task, get_task, list_tasks, task_from_jsonl
from .timing import compare_prefill
from .warm_start import load_adapters, save_adapters
from .train import TrainConfig, finetune, probe

def versions() -> dict:
    """Library versions recorded in every sidecar."""
    import peft
    import transformers

    return {"gradpruner": __version__, "torch": torch.__version__,
            "transformers": transformers.__version__, "peft": peft.__version__,
            "python": platform.python_version()}


def resolve_task(task: str | None, data: str | None, eval_data: str | None = None) -> Task:
    """The built-in task `task`, or a task made of the user's JSONL file(s)."""
    if data:
        return task_from_jsonl(data, eval_data)
    if not task:
        raise GradPrunerError("give a built-in task (--task, see `gradpruner tasks`) or --data F.jsonl")
    return get_task(task)


def read_sidecar(model_dir: str) -> dict:
    """The `gradpruner.json` of a model folder, or {} when it has none."""
    path = Path(model_dir) / SIDECAR_NAME
    return json.loads(path.read_text()) if path.is_file() else {}


def check_memory(model: str | None, cfg: TrainConfig, dtype: str, device: str,
                 device_map: str | None) -> None:
    """Print the memory a training run needs; stop early when the device cannot hold it."""
    if device_map:  # spread over several devices: accelerate plans the placement
        return
    target = resolve_device(device)
    check_fits(load_config(resolve_model(model)), resolve_dtype(dtype, target), target,
               cfg.batch_size, cfg.max_length, cfg.full, cfg.lora_rank, cfg.gradient_checkpointing)


def probe_stage(model: str | None, task: Task, out: str, cfg: TrainConfig, steps: int = 40,
                schedule_steps: int | None = None, dtype: str = "auto", device: str = "auto",
                overwrite: bool = False, device_map: str | None = None) -> IGIA:
    """Probe `model` on the task's training data for `steps` steps and save the IGIA to `out`.

    Under several processes (DDP) every rank probes; only the main one writes `out`.
    """
    refuse_sharded_probe()
    if is_main_process():
        check_output_dir(out, overwrite, resolve_model(model))
    examples = task.train_examples()
    check_memory(model, cfg, dtype, device, device_map)
    net, tokenizer, source = load_model(model, dtype, device, device_map)
    output = partial(atomic_output_dir, out, overwrite=overwrite, source=source)
    adapters: dict = {}
    with main_process_output(output) as tmp:
        igia, stats = probe(net, tokenizer, examples, cfg, steps, schedule_steps, adapters)
        if tmp is not None:
            igia.save(tmp, extra={"source_model": source, "task": task.name, "probe": stats,
                                  "versions": versions(), "train_config": asdict(cfg)})
            if adapters:
                save_adapters(adapters, tmp)
    return igia


def prune_stage(model: str | None, scores: str | None, out: str, *, criterion: str = "gradpruner",
                ratio: float | None = None, count: int | None = None,
                remove: list[int] | None = None, merge: int | str | None = 3,
                density: float = 0.2, merge_scale: float = 1.0, dtype: str = "float32",
                device: str = "auto", overwrite: bool = False, task: Task | None = None,
                seed: int = 0, heal_steps: int | None = None,
                selection_budget: float | None = 0.1) -> dict:
    """Prune `model` by a criterion's scores and save the smaller model with its sidecar.

    GradPruner's criteria read the probe's output (`scores`); criteria that score layers or
    judge cuts on task data use the training split of `task` (default: the probed task).
    `auto` and the merge search take at most `selection_budget` of the time of the
    `heal_steps`-step fine-tune planned after (no limit when either is None), timed by the probe.
    The model is pruned in `dtype` (fp32: merges add in full precision) on `device`.
    """
    source = resolve_model(model)
    check_output_dir(out, overwrite, source)
    igia = IGIA.load(scores) if scores else None
    probed = json.loads((Path(scores) / "scores.json").read_text()) if scores else {}
    if task is None and probed.get("task") in {t.name for t in list_tasks()}:
        task = get_task(probed["task"])
    config = load_config(source)
    if igia is not None:
        check_igia_matches(igia, config)
    total = config.num_hidden_layers
    removed = len(select_layers([0.0] * total, ratio=ratio, count=count, remove=remove))
    examples = task.train_examples() if task is not None else []
    net, tokenizer, source = load_model(source, dtype, device)
    budget = heal_budget(selection_budget, heal_steps, total, removed, probed.get("probe"))  # from now
    context = ScoreContext(model=net, tokenizer=tokenizer, examples=examples, igia=igia, seed=seed,
                           budget=budget)
    record = prune_model(net, igia, criterion=criterion, ratio=ratio, count=count, remove=remove,
                         merge=merge, density=density, merge_scale=merge_scale, context=context)
    record["costs"] = cut_costs(config, record["kept_layers"])
    record.update(source_model=source, scores_dir=scores, versions=versions())
    save_pretrained_atomic(net, tokenizer, out, record, overwrite, source)
    return record


def finetune_stage(model: str | None, task: Task, out: str, cfg: TrainConfig,
                   dtype: str = "auto", device: str = "auto", overwrite: bool = False,
                   device_map: str | None = None, warm_start: str | None = None) -> dict:
    """Fine-tune `model` on the task and save it (LoRA merged) with the sidecar extended.

    Checkpoints (with `cfg.save_every`) go to the sibling folder `OUT.checkpoints`, which
    `cfg.resume` continues from and a finished run removes. `warm_start` is a probe folder
    whose adapters the pruned model's adapters start from.
    """
    if is_main_process():
        check_output_dir(out, overwrite, resolve_model(model))
    examples = task.train_examples()
    check_memory(model, cfg, dtype, device, device_map)
    net, tokenizer, source = load_model(model, dtype, device, device_map)
    checkpoints = Path(out).with_name(Path(out).name + ".checkpoints")
    cfg = replace(cfg, checkpoint_dir=str(checkpoints))
    record = read_sidecar(source) or {"source_model": source, "versions": versions()}
    kept = record.get("kept_layers") or list(range(net.config.num_hidden_layers))
    warm = (load_adapters(warm_start), kept) if warm_start else None
    tuned, stats = finetune(net, tokenizer, examples, cfg, warm=warm)
    record["finetune"] = {**stats, "task": task.name}
    if is_main_process():
        save_pretrained_atomic(tuned, tokenizer, out, record, overwrite, source)
        shutil.rmtree(checkpoints, ignore_errors=True)
    return record


def eval_stage(model: str | None, task: Task, limit: int | None = None, out: str | None = None,
               protocol: str = "loglik", batch_size: int = 16, dtype: str = "auto",
               device: str = "auto", device_map: str | None = None) -> dict:
    """Evaluate `model` on the task's evaluation split; optionally write the metrics as JSON."""
    net, tokenizer, source = load_model(model, dtype, device, device_map)
    result = timed_eval(net, tokenizer, task, limit, protocol, batch_size)
    result.update(model=source, task=task.name, protocol=protocol)
    if out:
        path = Path(out)
        if path.exists() and path.is_dir():
            raise GradPrunerError(f"--out {out} is a folder; give a file name such as metrics.json")
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, result)
    return result


def timed_eval(model, tokenizer, task: Task, limit: int | None, protocol: str = "loglik",
               batch_size: int = 16) -> dict:
    """Metrics on the task's evaluation split, with the wall time and items per second."""
    examples = task.eval_examples()[:limit] if limit else task.eval_examples()
    start = time.perf_counter()
    metrics = evaluate_examples(model, tokenizer, examples, task.kind, protocol=protocol,
                                batch_size=batch_size)
    seconds = time.perf_counter() - start
    return {**metrics, "eval_seconds": seconds, "items_per_second": len(examples) / seconds}


@dataclass
class RunConfig:
    """Settings of `gradpruner run`; the defaults finish in about 15 minutes on 2 CPU cores."""

    model: str | None = None
    task: str | None = "arc_easy"
    data: str | None = None
    eval_data: str | None = None
    out: str = "runs/default"
    criterion: str = "auto"
    ratio: float | None = 0.2
    count: int | None = None
    remove: list[int] | None = None
    merge: int | str | None = "auto"
    density: float = 0.2
    selection_budget: float | None = 0.1  # of the pruned fine-tune's time; None: no limit
    probe_steps: int = 40
    eval_limit: int | None = 300
    dense: bool = True
    warm_start: bool = True  # LoRA only: the pruned model's adapters start from the probe's
    dtype: str = "auto"
    device: str = "auto"
    overwrite: bool = False
    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=60))


def run(cfg: RunConfig) -> dict:
    """Probe -> prune -> fine-tune -> evaluate, beside the dense reference; writes a report.

    Everything goes to a temporary sibling of `cfg.out`, renamed into place at the end, so an
    interrupted run leaves no half-written folder.
    """
    from .report import write_report

    task = resolve_task(cfg.task, cfg.data, cfg.eval_data)
    started = time.perf_counter()
    with atomic_output_dir(cfg.out, overwrite=cfg.overwrite) as tmp:
        dense, tokenizer, source = load_model(cfg.model, cfg.dtype, cfg.device)
        results: dict = {"task": task.name, "model": source, "versions": versions(),
                         "config": _jsonable(asdict(cfg))}
        _say(f"evaluating the dense model zero-shot on {task.name}")
        results["dense_zero_shot"] = timed_eval(dense, tokenizer, task, cfg.eval_limit)
        del dense
        _say(f"probing: {cfg.probe_steps} steps of LoRA fine-tuning")
        probe_stage(source, task, str(tmp / "probe"), cfg.train, cfg.probe_steps,
                    cfg.train.steps, cfg.dtype, cfg.device)
        results["probe"] = json.loads((tmp / "probe" / "scores.json").read_text())["probe"]
        _say("pruning")
        record = prune_stage(source, str(tmp / "probe"), str(tmp / "pruned"),
                             criterion=cfg.criterion, ratio=cfg.ratio, count=cfg.count,
                             remove=cfg.remove, merge=cfg.merge, density=cfg.density,
                             device=cfg.device, task=task, seed=cfg.train.seed,
                             heal_steps=cfg.train.planned_steps(len(task.train_examples())),
                             selection_budget=cfg.selection_budget)
        results["prune"] = record
        _say("fine-tuning the pruned model")
        warm = cfg.warm_start and not cfg.train.full
        tuned = finetune_stage(str(tmp / "pruned"), task, str(tmp / "model"), cfg.train,
                               cfg.dtype, cfg.device, warm_start=str(tmp / "probe") if warm else None)
        results["pruned_finetune"] = tuned["finetune"]
        pruned, _, _ = load_model(str(tmp / "model"), cfg.dtype, cfg.device)
        results["pruned_finetuned"] = timed_eval(pruned, tokenizer, task, cfg.eval_limit)
        dense, _, _ = load_model(source, cfg.dtype, cfg.device)
        if cfg.dense:
            _say("fine-tuning the dense model (the reference; --no-dense skips it)")
            dense, stats = finetune(dense, tokenizer, task.train_examples(), cfg.train)
            results["dense_finetune"] = stats
            results["dense_finetuned"] = timed_eval(dense, tokenizer, task, cfg.eval_limit)
        _say("timing inference: prefill of 8 x 128 tokens, dense and pruned interleaved")
        results["prefill_seconds"] = compare_prefill({"dense": dense, "pruned": pruned})
        del dense, pruned
        results["total_seconds"] = time.perf_counter() - started
        write_report(results, tmp)
    return results


def _say(message: str) -> None:
    import sys

    print(f"[gradpruner] {message}", file=sys.stderr, flush=True)


def _jsonable(value):
    return json.loads(json.dumps(value, default=str))
