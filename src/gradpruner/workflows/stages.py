"""The stage commands, each a step of the recipe (`recipe.py`) that reads and writes files:

probe    -> an IGIA folder (igia.safetensors + scores.json, the LoRA adapters)
prune    -> a plain HF model folder + gradpruner.json
finetune -> a plain HF model folder (LoRA merged) + gradpruner.json
eval     -> a JSON of metrics

Each takes its config (`config.py`, checked before any model loads) and the task when the caller
has read it already (the CLI does, before importing torch), and returns a typed result; the step
itself is the recipe's function that `run` and `compare` call too.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path

from ..config import (EvalConfig, ExportConfig, FinetuneConfig, ProbeConfig, PruneConfig,
                      task_data_need)
from ..distributed import is_main_process, main_process_output, refuse_sharded_probe
from ..errors import GradPrunerError
from ..evaluation.harness import run_harness
from ..export.gguf import ExportResult, export_gguf
from ..merging.fold import check_foldable
from ..model.costs import cut_costs
from ..model.loading import load_config, load_model, resolve_device, resolve_dtype, resolve_model
from ..model.memory import check_fits
from ..model.surgery import save_pretrained_atomic
from ..outputs import SIDECAR_NAME, atomic_output_dir, check_output_dir, write_json
from ..plan import PruneRecord
from ..progress import layer_ranges, stage
from ..provenance import versions
from ..reports.model_card import model_card
from ..tasks import Task, get_task, list_tasks
from ..training.igia import check_igia_matches
from ..training.train_config import Checkpoints, TrainConfig
from .recipe import Healing, ProbeResult, cut, evaluate, heal, probe, split_heldout, teacher_model


def read_sidecar(model_dir: str) -> dict:
    """The `gradpruner.json` of a model folder, or {} when it has none."""
    path = Path(model_dir) / SIDECAR_NAME
    return json.loads(path.read_text()) if path.is_file() else {}


def check_memory(model: str | None, cfg: TrainConfig, dtype: str, device: str,
                 device_map: str | None, teacher: bool = False) -> None:
    """Print the memory a training run needs (with a distillation `teacher` beside it); stop
    early when the device cannot hold it."""
    if device_map:  # spread over several devices: accelerate plans the placement
        return
    target = resolve_device(device)
    check_fits(load_config(resolve_model(model)), resolve_dtype(dtype, target), target,
               cfg.batch_size, cfg.max_length, cfg.full, cfg.lora_rank, cfg.gradient_checkpointing,
               teacher, cfg.load_in_bits)


def stage_split(examples: list, heldout: int) -> tuple[list, list]:
    """`split_heldout` for a stage: nothing is held out of a split too small to hold `heldout`."""
    return split_heldout(examples, heldout if len(examples) > heldout else 0)


def probe_stage(cfg: ProbeConfig, task: Task | None = None) -> ProbeResult:
    """Probe the model on the task's training data for `cfg.train.steps` steps and save the IGIA
    (and LoRA adapters) to `cfg.out`.

    The last `cfg.heldout` training examples are left out (they judge the cuts of `prune`, as in
    `run`), and the probe folder records how many. Under several processes (DDP) every rank
    probes; only the main one writes. With `train.load_in_bits` the probe trains LoRA on a 4 or
    8-bit base (QLoRA); the IGIA is read from the adapters' gradients and applies to the
    full-precision model's layers, which `prune` cuts.
    """
    cfg.validate()
    refuse_sharded_probe()
    if is_main_process():
        check_output_dir(cfg.out, cfg.overwrite, resolve_model(cfg.model))
    task = task or cfg.resolve_task()
    examples, held = stage_split(task.train_examples(), cfg.heldout)
    train = cfg.train
    check_memory(cfg.model, train, cfg.dtype, cfg.device, cfg.device_map)
    net, tokenizer, source = load_model(cfg.model, cfg.dtype, cfg.device, cfg.device_map,
                                        train.load_in_bits)
    output = partial(atomic_output_dir, cfg.out, overwrite=cfg.overwrite, source=source)
    with main_process_output(output) as tmp, stage("probe", f"{train.steps} steps") as st:
        probed = probe(net, tokenizer, examples, train, train.steps, cfg.schedule_steps)
        st.result = probe_summary(probed)
        if tmp is not None:
            probed.save(tmp, {"source_model": source, "task": task.name, "heldout": len(held),
                              "versions": versions(), "train_config": asdict(train)})
    return probed


def prune_stage(cfg: PruneConfig, task: Task | None = None) -> PruneRecord:
    """Cut the model by the recipe's `cut` and save the smaller model with its sidecar.

    GradPruner's criteria read the probe's output (`cfg.scores`); criteria that score layers or
    judge cuts on task data use the training split of the task (default: the probed task), whose
    last `heldout` examples judge the cuts; the sidecar records them, so that `finetune` leaves
    them out too. The model is pruned in fp32. Without `cfg.model`, the model the probe records
    (`source_model`) is pruned. A cut that needs task data it is not given stops before the model
    loads, saying what to pass.
    """
    cfg.validate()
    probed = ProbeResult.load(cfg.scores) if cfg.scores else None
    meta = probed.info if probed else {}
    recorded = None if cfg.model else meta.get("source_model")
    source = probed_model(cfg.scores, recorded) if recorded else resolve_model(cfg.model)
    check_output_dir(cfg.out, cfg.overwrite, source)
    task = task or cfg.resolve_task(optional=True)
    if task is None and meta.get("task") in {t.name for t in list_tasks()}:
        task = get_task(meta["task"])
    config = load_config(source)
    if probed is not None:
        check_igia_matches(probed.igia, config)
    if cfg.merge == "fold":
        check_foldable(config)
    settings = cfg.cut_settings()
    settings.removing(config.num_hidden_layers)  # a bad size stops here, before the model loads
    if task is None:
        _refuse_without_data(cfg, meta)
    heldout = meta.get("heldout", 32) if cfg.heldout is None else cfg.heldout
    train, held = stage_split(task.train_examples() if task is not None else [], heldout)
    net, tokenizer, source = load_model(source, "float32", cfg.device)
    with stage("pruning", f"criterion {cfg.criterion}, merge {cfg.merge}") as st:
        done = cut(net, tokenizer, train, held, probed, settings)
        st.result = cut_summary(done.record)
    record = describe(done.record, config, source, cfg.scores,
                      {"task": task.name if task else None, "heldout": len(held),
                       "datasets": list(task.datasets) if task else []})
    sidecar = record.to_json()
    save_pretrained_atomic(done.model, tokenizer, cfg.out, sidecar, cfg.overwrite, source,
                           model_card(sidecar))
    return record


def _refuse_without_data(cfg: PruneConfig, meta: dict) -> None:
    """Stop a cut that needs task data when neither the flags nor the probe name a task."""
    reason = task_data_need(cfg.criterion, cfg.merge, cfg.remove)
    if cfg.scores is None or reason is None:
        return
    made = (f"was made on your data ({meta['task']}), which is not saved with it" if meta.get("task")
            else "was saved from your own trainer and names no task")
    raise GradPrunerError(
        f"the probe in {cfg.scores} {made}: pass --data FILE (your training data) or --task NAME "
        f"so that {reason}, or --criterion gradpruner --merge none (or --merge 3, the paper's "
        "merge) to cut by the IGIA alone")


def probed_model(scores: str, name: str) -> str:
    """The model a probe folder records (`prune` without --model), when it loads here."""
    try:
        source = resolve_model(name)
        load_config(source)
    except GradPrunerError as err:
        raise GradPrunerError(f"the probe in {scores} was made on {name}, which does not load here "
                              f"({err}): pass --model (the probed model's folder or Hub id)") from None
    return source


def describe(record: PruneRecord, config, source: str, scores_dir: str | None,
             settings: dict) -> PruneRecord:
    """`record` with what the sidecar says beyond the cut: the cost model of the cut on `config`,
    the source model, the probe folder, the settings that made it and the library versions."""
    return replace(record, costs=cut_costs(config, record.kept_layers), source_model=source,
                   scores_dir=scores_dir, config=settings, versions=versions())


@dataclass
class Finetuned:
    """What `finetune` did: the sidecar it wrote (the model's, with its `finetune` entry)."""

    sidecar: dict

    @property
    def stats(self) -> dict:
        return self.sidecar["finetune"]


def finetune_stage(cfg: FinetuneConfig, task: Task | None = None) -> Finetuned:
    """Heal (fine-tune) the model by the recipe's `heal` and save it (LoRA merged) with the
    sidecar extended by a `finetune` entry.

    The last `heldout` training examples are left out (default: those that judged the model's
    cut, when its sidecar names this task; else none). Checkpoints (with `cfg.save_every`) go to
    the sibling folder `OUT.checkpoints`, which `cfg.resume` continues from and a finished run
    removes. `warm_start` is a probe folder whose adapters the pruned model's LoRA adapters start
    from; the default distillation teacher is the model the sidecar says was pruned, with the
    adapters of the probe (`warm_start`, else the sidecar's). With `train.load_in_bits` LoRA
    trains on a 4 or 8-bit base (QLoRA) and the adapters are merged into the model loaded again
    in full precision (`dtype`) on the CPU.
    """
    cfg.validate()
    train, options = cfg.train, cfg.heal
    source = resolve_model(cfg.model)
    if is_main_process():
        check_output_dir(cfg.out, cfg.overwrite, source)
    task = task or cfg.resolve_task()
    sidecar = read_sidecar(source)
    if options.distils and not options.teacher and not sidecar.get("source_model"):
        raise GradPrunerError("--distill on a model without a gradpruner.json naming its dense "
                              "source: give --teacher DIR")
    heldout = cfg.heldout
    if heldout is None:
        judged = sidecar.get("config") or {}
        heldout = judged.get("heldout", 0) if judged.get("task") == task.name else 0
    examples, _ = stage_split(task.train_examples(), heldout)
    probed = _stage_probe(cfg, sidecar)
    check_memory(cfg.model, train, cfg.dtype, cfg.device, cfg.device_map, options.distils)
    net, tokenizer, source = load_model(cfg.model, cfg.dtype, cfg.device, cfg.device_map,
                                        train.load_in_bits)
    dtype = next(p.dtype for p in net.parameters() if p.is_floating_point())
    checkpoints = Path(cfg.out).with_name(Path(cfg.out).name + ".checkpoints")
    healing = Healing(
        train, options, resolve_dtype(cfg.dtype, resolve_device(cfg.device)),
        teacher=_stage_teacher(net, probed, sidecar, cfg, dtype) if options.distils else None,
        teacher_name=options.teacher or sidecar.get("source_model"),
        warm_start=cfg.warm_start is not None,
        checkpoints=Checkpoints(str(checkpoints), cfg.save_every, cfg.resume),
        full_precision=partial(_full_precision, source, cfg.dtype, cfg.device) if train.load_in_bits else None)
    kept = sidecar.get("kept_layers") or list(range(net.config.num_hidden_layers))
    with stage("fine-tune", options.describe()) as st:
        tuned, stats = heal(net, tokenizer, examples, probed if cfg.warm_start else None, healing,
                            kept)
        st.result = training_summary(stats)
    record = sidecar or {"source_model": source, "versions": versions()}
    record["finetune"] = {**stats, "task": task.name, "heldout": heldout,
                          "datasets": list(task.datasets)}
    if is_main_process():
        save_pretrained_atomic(tuned, tokenizer, cfg.out, record, cfg.overwrite, source,
                               model_card(record))
        shutil.rmtree(checkpoints, ignore_errors=True)
    return Finetuned(record)


def _stage_probe(cfg: FinetuneConfig, sidecar: dict) -> ProbeResult | None:
    """The probe whose adapters the fine-tune starts from (`--warm-start`, which must hold
    them) or, for the distillation teacher, the one the sidecar names, where it is kept."""
    if cfg.warm_start:
        return ProbeResult.load(cfg.warm_start, with_adapters=True)
    folder = sidecar.get("scores_dir")
    return ProbeResult.load(folder) if folder and Path(folder, "scores.json").is_file() else None


def _full_precision(source: str, dtype: str, device: str):
    """The model at `source` in full precision (`dtype` as the training device resolves it) on
    the CPU, where a QLoRA fine-tune's adapters are merged (beside the quantized model, which
    may fill the GPU)."""
    resolved = resolve_dtype(dtype, resolve_device(device))
    return load_model(source, str(resolved).removeprefix("torch."), "cpu")[0]


def _stage_teacher(student, probed: ProbeResult | None, sidecar: dict, cfg: FinetuneConfig, dtype):
    """The teacher of `finetune --distill` (`recipe.teacher_model`) beside `student`: the
    `--teacher` folder, else the dense model the sidecar names with the probe's adapters."""
    device = str(next(student.parameters()).device)
    dense = student if cfg.heal.teacher else load_model(sidecar["source_model"], "float32", device)[0]
    return teacher_model(dense, probed, cfg.heal, cfg.train, dtype)


def eval_stage(cfg: EvalConfig, task: Task | None = None) -> dict:
    """Evaluate the model on the task's evaluation split and / or on lm-eval's tasks (`harness`,
    under "harness" in the result); optionally write the metrics as JSON to `cfg.out`."""
    cfg.validate()
    task = task or cfg.resolve_task(optional=bool(cfg.harness))
    if cfg.out and Path(cfg.out).is_dir():
        raise GradPrunerError(f"--out {cfg.out} is a folder; give a file name such as metrics.json")
    if cfg.model is not None and cfg.model.endswith(".gguf"):
        result = _evaluate_gguf(cfg, task)
    else:
        result = _evaluate_model(cfg, task)
    if cfg.out:
        Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
        write_json(cfg.out, result)
    return result


def _evaluate_model(cfg: EvalConfig, task: Task | None) -> dict:
    """`eval_stage` of a Hugging Face model: the task's metrics and / or lm-eval's."""
    net, tokenizer, source = load_model(cfg.model, cfg.dtype, cfg.device, cfg.device_map)
    result = {}
    if task:
        with stage("evaluation", f"{task.name}, {cfg.protocol}") as st:
            result = evaluate(net, tokenizer, task, cfg.eval_limit, cfg.protocol, cfg.batch_size)
            st.result = metric_summary(result)
    result.update(model=source, task=task.name if task else None, protocol=cfg.protocol)
    harness = cfg.harness_spec()
    if harness is not None:
        with stage("lm-evaluation-harness", ", ".join(harness.tasks)):
            result["harness"] = run_harness(net, tokenizer, harness, cfg.eval_limit, cfg.batch_size)
    return result


def _evaluate_gguf(cfg: EvalConfig, task: Task | None) -> dict:
    """`eval_stage` of a GGUF file of `export`, through llama.cpp, on the same items and token
    ids as the Hugging Face path (`export.scoring`)."""
    from ..export.llamacpp import require_runtime
    from ..export.scoring import evaluate_gguf, gguf_file

    if task is None or cfg.harness:
        raise GradPrunerError("a GGUF file is evaluated on a task (--task or --data), not with --harness")
    require_runtime()
    gguf_file(cfg.model)
    examples = task.eval_examples()[:cfg.eval_limit] if cfg.eval_limit else task.eval_examples()
    with stage("evaluation", f"{task.name}, {cfg.protocol}, through llama.cpp") as st:
        result = evaluate_gguf(cfg.model, examples, task.kind, cfg.protocol)
        st.result = metric_summary(result)
    return {**result, "model": cfg.model, "task": task.name, "protocol": cfg.protocol}


def export_stage(cfg: ExportConfig) -> ExportResult:
    """Export the model folder as GGUF files with llama.cpp's own tools, each checked against
    the Hugging Face model (`export.gguf.export_gguf`)."""
    cfg.validate()
    return export_gguf(cfg.model, cfg.out, cfg.file_types, cfg.overwrite, cfg.llama_cpp)


def metric_summary(result: dict) -> str:
    """"acc 0.537 on 300 items" (the first metric of an evaluation)."""
    name = next(k for k in ("acc", "rouge_l", "exact_match") if k in result)
    return f"{name} {result[name]:.3f} on {result['n']} items"


def probe_summary(probed: ProbeResult) -> str:
    """"40 steps, IGIA of 30 layers"."""
    return f"{probed.stats['steps']} steps, IGIA of {len(probed.igia.layer_scores)} layers"


def cut_summary(record: PruneRecord) -> str:
    """"removed layers 13-15, 17; merged none" (merged: receiver <- donors)."""
    merged = "; ".join(f"{r} <- {layer_ranges(d)}" for r, d in (record.merged or {}).items())
    return f"removed layers {layer_ranges(record.removed_layers)}; merged {merged or 'none'}"


def training_summary(stats: dict) -> str:
    """"60 steps, loss 1.23"."""
    return f"{stats['steps']} steps, loss {stats['train_loss']:.4g}"
