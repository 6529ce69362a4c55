"""The stages that write files, in the paper's order, and `run`, which chains them.

probe  -> an IGIA folder (igia.safetensors + scores.json)
prune  -> a plain HF model folder + gradpruner.json
finetune -> a plain HF model folder (LoRA merged) + gradpruner.json
eval   -> a JSON of metrics
run    -> all of the above, the dense reference beside, and a report (Markdown, JSON, plot)
"""

from __future__ import annotations

import copy
import json
import platform
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .config import RunConfig, prune_inputs_error, task_data_need
from .costs import cut_costs
from .distributed import (is_main_process, join_processes, main_process_output, on_main,
                          refuse_sharded_probe, refuse_sharded_run, several_processes, world_size)
from .errors import GradPrunerError
from .harness import HarnessSpec, run_harness
from .heal import HealConfig, get_healer
from .heal.distill import distillation
from .igia import IGIA
from .journal import Journal, open_journal
from .memory import check_fits
from .model_card import CARD_NAME, Measured, model_card
from .models import load_config, load_model, resolve_device, resolve_dtype, resolve_model
from .outputs import (SIDECAR_NAME, atomic_output_dir, check_output_dir, last_complete_checkpoint,
                      write_json)
from .plan import PruneRecord
from .progress import layer_ranges, say, stage
from .prune import check_igia_matches, prune_model
from .recipe import (ProbeResult, cut, evaluate, finetune_dense, heal, probe, recipe_dtype,
                     split_heldout, teacher_model)
from .search.budget import heal_budget
from .selection import select_layers
from .surgery import save_pretrained_atomic
from .tasks import Task, get_task, list_tasks, resolve_task
from .timing import compare_prefill
from .train import TrainConfig, finetune
from .warm_start import ADAPTERS, load_adapters

def versions() -> dict:
    """Library versions recorded in every sidecar."""
    import peft
    import transformers

    return {"gradpruner": __version__, "torch": torch.__version__,
            "transformers": transformers.__version__, "peft": peft.__version__,
            "python": platform.python_version()}


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


def probe_stage(model: str | None, task: Task, out: str, cfg: TrainConfig, steps: int = 40,
                schedule_steps: int | None = None, dtype: str = "auto", device: str = "auto",
                overwrite: bool = False, device_map: str | None = None, heldout: int = 32) -> IGIA:
    """Probe `model` on the task's training data for `steps` steps and save the IGIA to `out`.

    The last `heldout` training examples are left out (they judge the cuts of `prune`, as in
    `run`), and the probe folder records how many. Under several processes (DDP) every rank
    probes; only the main one writes `out`. With `cfg.load_in_bits` the probe trains LoRA on a
    4 or 8-bit base (QLoRA); the IGIA is read from the adapters' gradients and applies to the
    full-precision model's layers, which `prune` cuts.
    """
    cfg.validate()
    refuse_sharded_probe()
    if is_main_process():
        check_output_dir(out, overwrite, resolve_model(model))
    examples, held = stage_split(task.train_examples(), heldout)
    check_memory(model, cfg, dtype, device, device_map)
    net, tokenizer, source = load_model(model, dtype, device, device_map, cfg.load_in_bits)
    output = partial(atomic_output_dir, out, overwrite=overwrite, source=source)
    with main_process_output(output) as tmp, stage("probe", f"{steps} steps") as st:
        probed = probe(net, tokenizer, examples, cfg, steps, schedule_steps)
        st.result = f"{probed.stats['steps']} steps, IGIA of {len(probed.igia.layer_scores)} layers"
        if tmp is not None:
            probed.save(tmp, {"source_model": source, "task": task.name, "heldout": len(held),
                              "versions": versions(), "train_config": asdict(cfg)})
    return probed.igia


def prune_stage(model: str | None, scores: str | None, out: str, *, criterion: str = "auto",
                ratio: float | None = None, count: int | None = None,
                remove: list[int] | None = None, merge: int | str | None = "auto",
                density: float = 0.2, device: str = "auto", overwrite: bool = False,
                task: Task | None = None, seed: int = 0, heal_steps: int | None = None,
                selection_budget: float | None = 0.1, heldout: int | None = None,
                settings: dict | None = None) -> PruneRecord:
    """Prune `model` by a criterion and save the smaller model with its sidecar.

    GradPruner's criteria read the probe's output (`scores`); criteria that score layers or
    judge cuts on task data use the training split of `task` (default: the probed task), whose
    last `heldout` examples (default: as many as the probe left out, else 32) judge the cuts; the
    sidecar records them, so that `finetune_stage` leaves them out too. `auto` and the merge search take at most
    `selection_budget` of the time of the `heal_steps`-step fine-tune planned after (no limit
    when either is None), timed by the probe. The model is pruned in fp32 on `device`.
    Without `model`, the model the probe records (`source_model`) is pruned when it names one.
    A cut that needs task data (or the probe) it is not given stops before the model loads,
    saying what to pass: a probe saved from the user's own trainer names no task, and one made on
    the user's data does not hold that data.
    """
    probed = ProbeResult.load(scores) if scores else None
    meta = probed.info if probed else {}
    recorded = None if model else meta.get("source_model")
    source = probed_model(scores, recorded) if recorded else resolve_model(model)
    check_output_dir(out, overwrite, source)
    if task is None and meta.get("task") in {t.name for t in list_tasks()}:
        task = get_task(meta["task"])
    config = load_config(source)
    if probed is not None:
        check_igia_matches(probed.igia, config)
    total = config.num_hidden_layers
    removing = len(select_layers([0.0] * total, ratio=ratio, count=count, remove=remove))
    missing = prune_inputs_error(criterion, merge, remove) if probed is None and task is None else None
    if missing:
        raise GradPrunerError(missing)
    reason = task_data_need(criterion, merge, remove) if probed is not None and task is None else None
    if reason:
        made = (f"was made on your data ({meta['task']}), which is not saved with it" if meta.get("task")
                else "was saved from your own trainer and names no task")
        raise GradPrunerError(
            f"the probe in {scores} {made}: pass --data FILE (your training data) or --task NAME "
            f"so that {reason}, or --criterion gradpruner --merge none (or --merge 3, the paper's "
            "merge) to cut by the IGIA alone")
    examples = task.train_examples() if task is not None else []
    heldout = meta.get("heldout", 32) if heldout is None else heldout
    train, held = stage_split(examples, heldout)
    net, tokenizer, source = load_model(source, "float32", device)
    step = probed.stats.get("step_seconds") if probed else None
    budget = heal_budget(selection_budget, heal_steps, total, removing, step)
    with stage("pruning", f"criterion {criterion}, merge {merge}") as st:
        record = prune_model(net, probed.igia if probed else None, tokenizer, train, heldout=held,
                             criterion=criterion, ratio=ratio, count=count, remove=remove,
                             merge=merge, density=density, budget=budget, seed=seed,
                             settings=settings)
        st.result = cut_summary(record)
    describe(record, config, source, scores, {"task": task.name if task else None, "heldout": len(held),
                                              "datasets": list(task.datasets) if task else []})
    sidecar = record.to_json()
    save_pretrained_atomic(net, tokenizer, out, sidecar, overwrite, source, model_card(sidecar))
    return record


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
    record.costs = cut_costs(config, record.kept_layers)
    record.source_model, record.scores_dir = source, scores_dir
    record.config, record.versions = settings, versions()
    return record


def finetune_stage(model: str | None, task: Task, out: str, cfg: TrainConfig,
                   dtype: str = "auto", device: str = "auto", overwrite: bool = False,
                   device_map: str | None = None, warm_start: str | None = None,
                   heldout: int | None = None, heal: HealConfig | None = None) -> dict:
    """Fine-tune `model` on the task and save it (LoRA merged) with the sidecar extended.

    The last `heldout` training examples are left out (default: those that judged the model's
    cut, when its sidecar names this task; else none).
    Checkpoints (with `cfg.save_every`) go to the sibling folder `OUT.checkpoints`, which
    `cfg.resume` continues from and a finished run removes. `warm_start` is a probe folder
    whose adapters the pruned model's adapters start from. `heal` chooses LoRA, full or
    partial-layer fine-tuning and distillation; the default teacher is the model the sidecar
    says was pruned, with the adapters of the probe (`warm_start`, else the sidecar's). With
    `cfg.load_in_bits` LoRA trains on a 4 or 8-bit base (QLoRA) and the adapters are merged into
    the model loaded again in full precision (`dtype`) on the CPU, so the saved model's weights
    are the full-precision ones plus the adapters.
    """
    heal = heal or HealConfig()
    heal.validate()
    cfg.validate()
    cfg.check_heal(heal.method)
    source = resolve_model(model)
    if is_main_process():
        check_output_dir(out, overwrite, source)
    sidecar = read_sidecar(source)
    record = sidecar or {"source_model": source, "versions": versions()}
    if heldout is None:
        judged = record.get("config") or {}
        heldout = judged.get("heldout", 0) if judged.get("task") == task.name else 0
    examples, _ = stage_split(task.train_examples(), heldout)
    if heal.distils and not heal.teacher and not sidecar.get("source_model"):
        raise GradPrunerError("--distill on a model without a gradpruner.json naming its dense "
                              "source: give --teacher DIR")
    check_memory(model, cfg, dtype, device, device_map, heal.distils)
    net, tokenizer, source = load_model(model, dtype, device, device_map, cfg.load_in_bits)
    full_precision = partial(_full_precision, source, dtype, device) if cfg.load_in_bits else None
    checkpoints = Path(out).with_name(Path(out).name + ".checkpoints")
    healer = get_healer(heal.method)
    net, cfg = healer.prepare(net, replace(cfg, checkpoint_dir=str(checkpoints)), heal)
    kept = record.get("kept_layers") or list(range(net.config.num_hidden_layers))
    warm = (load_adapters(warm_start), kept) if warm_start and healer.warm_starts else None
    distill = None
    if heal.distils:
        teacher = _stage_teacher(net, heal, cfg, sidecar, warm_start)
        distill = distillation(teacher, heal, cfg, len(examples))
    with stage("fine-tune", heal.describe()) as st:
        tuned, stats = finetune(net, tokenizer, examples, cfg, warm=warm, distill=distill,
                                full_precision=full_precision)
        st.result = training_summary(stats)
    stats["heal"] = heal.summary(heal.teacher or sidecar.get("source_model"), cfg,
                                 distill.top_k if distill else None)
    record["finetune"] = {**stats, "task": task.name, "heldout": heldout,
                          "datasets": list(task.datasets)}
    if is_main_process():
        save_pretrained_atomic(tuned, tokenizer, out, record, overwrite, source, model_card(record))
        shutil.rmtree(checkpoints, ignore_errors=True)
    return record


def _full_precision(source: str, dtype: str, device: str):
    """The model at `source` in full precision (`dtype` as the training device resolves it) on
    the CPU, where a QLoRA fine-tune's adapters are merged (beside the quantized model, which
    may fill the GPU)."""
    resolved = resolve_dtype(dtype, resolve_device(device))
    return load_model(source, str(resolved).removeprefix("torch."), "cpu")[0]


def _stage_teacher(student, heal: HealConfig, train: TrainConfig, sidecar: dict,
                   warm_start: str | None):
    """The teacher of `finetune --distill`, beside `student` in its dtype: `heal.teacher`, else
    the dense model the sidecar names with the adapters of its probe (`warm_start`, else the
    sidecar's probe folder), when that folder kept them."""
    param = next(student.parameters())
    if heal.teacher:  # loaded from its folder, its vocabulary checked against the student's
        return teacher_model(student, {}, heal, train, param.dtype)
    probe_dir = warm_start or sidecar.get("scores_dir")
    kept = probe_dir and (Path(probe_dir) / ADAPTERS).is_file()
    probed = ProbeResult.load(probe_dir) if kept else None
    adapters = probed.adapters if probed else {}
    if adapters:  # merged at the probe's scaling, which may differ from this fine-tune's
        settings = probed.info.get("train_config") or {}
        train = replace(train, lora_rank=settings.get("lora_rank", train.lora_rank),
                        lora_alpha=settings.get("lora_alpha", train.lora_alpha))
    dense, _, _ = load_model(sidecar["source_model"], "float32", str(param.device))
    return teacher_model(dense, adapters, heal, train, param.dtype)


def eval_stage(model: str | None, task: Task | None, limit: int | None = None,
               out: str | None = None, protocol: str = "loglik", batch_size: int = 16,
               dtype: str = "auto", device: str = "auto", device_map: str | None = None,
               harness: HarnessSpec | None = None) -> dict:
    """Evaluate `model` on the task's evaluation split and / or on lm-eval's tasks (`harness`,
    under "harness" in the result, checked before the model loads); optionally write the
    metrics as JSON."""
    if task is None and harness is None:
        raise GradPrunerError("give a task to evaluate (--task, --data or --harness)")
    if harness is not None:
        harness.validate()
    if model is not None and model.endswith(".gguf"):  # scored through llama.cpp (export/scoring.py)
        result = _eval_gguf(model, task, limit, protocol, harness)
    else:
        result = _eval_model(model, task, limit, protocol, batch_size, dtype, device, device_map,
                             harness)
    if out:
        path = Path(out)
        if path.exists() and path.is_dir():
            raise GradPrunerError(f"--out {out} is a folder; give a file name such as metrics.json")
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, result)
    return result


def _eval_model(model: str | None, task: Task | None, limit: int | None, protocol: str,
                batch_size: int, dtype: str, device: str, device_map: str | None,
                harness: HarnessSpec | None) -> dict:
    """`eval_stage` of a Hugging Face model."""
    net, tokenizer, source = load_model(model, dtype, device, device_map)
    result = {}
    if task:
        with stage("evaluation", f"{task.name}, {protocol}") as st:
            result = evaluate(net, tokenizer, task, limit, protocol, batch_size)
            st.result = metric_summary(result)
    result.update(model=source, task=task.name if task else None, protocol=protocol)
    if harness is not None:
        with stage("lm-evaluation-harness", ", ".join(harness.tasks)):
            result["harness"] = run_harness(net, tokenizer, harness, limit, batch_size)
    return result


def _eval_gguf(path: str, task: Task | None, limit: int | None, protocol: str,
               harness: HarnessSpec | None) -> dict:
    """`eval_stage` of a GGUF file, through llama.cpp, on the same items and token ids."""
    from .export.llamacpp import require_runtime
    from .export.scoring import evaluate_gguf, gguf_file

    if task is None or harness is not None:
        raise GradPrunerError("a GGUF file is evaluated on a task (--task or --data), not with --harness")
    require_runtime()
    gguf_file(path)
    examples = task.eval_examples()[:limit] if limit else task.eval_examples()
    with stage("evaluation", f"{task.name}, {protocol}, through llama.cpp") as st:
        result = evaluate_gguf(path, examples, task.kind, protocol)
        st.result = metric_summary(result)
    return {**result, "model": path, "task": task.name, "protocol": protocol}


def run(cfg: RunConfig) -> dict:
    """Probe -> prune -> fine-tune -> evaluate (`recipe`), beside the dense reference; writes a
    report. The model is loaded once, in fp32 (the cut is selected and applied in fp32; training
    and evaluation run on copies in the recipe's dtype).

    The run works in `OUT.partial` (`journal.py`), recording each stage as it finishes, and
    becomes `cfg.out` once complete. With `cfg.resume`, a killed run continues from its last
    finished stage, and a fine-tune from its last checkpoint, to the result an uninterrupted run
    with the same settings gives. A run stopped before its first stage finished leaves nothing.

    Under several processes (DDP: torchrun, accelerate launch) the probe and the fine-tunes train
    in every process (the batch size is per process); the evaluations, the cut, the timing and
    every file are rank 0's while the others wait, and then load what it saved.
    """
    cfg.validate()
    check_output_dir(cfg.out, cfg.overwrite)
    task = resolve_task(cfg.task, cfg.data, cfg.eval_data, cfg.chat_template)
    train, held = split_heldout(task.train_examples(), cfg.heldout)
    refuse_sharded_run()
    # the run keeps its full-precision model beside the quantized copies that QLoRA trains
    check_memory(cfg.model, replace(cfg.train, load_in_bits=None), cfg.dtype, cfg.device, None,
                 cfg.heal.distils)
    join_processes(resolve_device(cfg.device))
    journal = on_main(partial(_open_journal, cfg))
    state = _RunState(cfg, task, train, held, journal, time.perf_counter() - journal.seconds)
    try:
        return _run_stages(state)
    except BaseException:
        if is_main_process() and not journal.stages:  # nothing worth resuming
            shutil.rmtree(journal.folder, ignore_errors=True)
        raise


def _open_journal(cfg: RunConfig) -> Journal:
    """The run's journal (`open_journal`), saying which stages a resumed run finished. Its
    settings count the processes of a run under several (the global batch is the per-process
    batch times them), so that it resumes under as many."""
    settings = cfg.fingerprint()
    if several_processes():
        settings["processes"] = world_size()
    journal = open_journal(cfg.out, settings, cfg.resume, cfg.overwrite)
    if journal.stages:
        say(f"resuming the run in {journal.folder}: finished {', '.join(journal.stages)}")
    return journal


def _run_stages(state: _RunState) -> dict:
    """The stages of `run` in order, each skipped when the journal has it; returns the results."""
    cfg, task, folder = state.cfg, state.task, state.folder
    state.master, state.tokenizer, state.source = load_model(cfg.model, "float32", cfg.device)
    results: dict = {"task": task.name, "model": state.source, "versions": versions(),
                     "config": cfg.to_json()}
    results["dense_zero_shot"] = state.stage("zero_shot", _zero_shot)
    results["probe"] = state.stage("probe", _probe, everywhere=True)
    state.probed = ProbeResult.load(folder / "probe")
    state.stage("cut", _cut)
    healed = state.stage("pruned_finetune", _heal_pruned, everywhere=True)
    state.teacher = None
    results["prune"], results["pruned_finetune"] = read_sidecar(str(folder / "model")), healed
    results.update(state.stage("pruned_eval", _evaluate_pruned))
    if cfg.dense:
        dense = state.stage("dense", _dense, everywhere=True)
        harness = {**results.get("harness", {}), **dense.pop("harness", {})}
        results.update(dense, **({"harness": harness} if harness else {}))
    return on_main(partial(_finish, state, results))


@dataclass
class _RunState:
    """A `run` in progress: its settings, data and journal (`started`: when the run began, by
    `time.perf_counter`, its earlier sessions included), the fp32 dense model, and the probe
    and models its stages share."""

    cfg: RunConfig
    task: Task
    train: list
    held: list
    journal: Journal
    started: float
    master: Any = None
    tokenizer: Any = None
    source: str = ""
    probed: ProbeResult | None = None
    teacher: Any = None
    pruned: Any = None
    dense: Any = None

    @property
    def folder(self) -> Path:
        return self.journal.folder

    def stage(self, name: str, compute: Callable[["_RunState"], dict],
              everywhere: bool = False) -> dict:
        """The result of stage `name`: the journal's when a resumed run finished it, else
        `compute(self)`'s (which shows its progress), recorded in the journal. `compute` runs on
        rank 0 only unless it trains (`everywhere`); every process gets rank 0's result and
        keeps it in its copy of the journal, which only rank 0 saves."""
        if self.journal.done(name):
            return copy.deepcopy(self.journal.stages[name])
        result = compute(self) if everywhere else on_main(partial(compute, self))
        seconds = time.perf_counter() - self.started
        recorded = on_main(partial(self.journal.finish, name, result, seconds))
        self.journal.stages[name] = recorded
        return copy.deepcopy(recorded)

    def working(self):
        """A copy of the dense model in the recipe's dtype."""
        return copy.deepcopy(self.master).to(recipe_dtype(self.cfg))

    def saved(self, name: str):
        """A model the run saved in its work folder, loaded in the recipe's dtype."""
        dtype = str(recipe_dtype(self.cfg)).removeprefix("torch.")
        model, _, _ = load_model(str(self.folder / name), dtype, self.cfg.device)
        return model

    def pruned_model(self):
        """The fine-tuned pruned model: this session's, else the one saved in the work folder."""
        if self.pruned is None:
            self.pruned = self.saved("model")
        return self.pruned

    def distillation_teacher(self):
        """The teacher of `--distill` (made once), else None."""
        if self.cfg.heal.distils and self.teacher is None:
            self.teacher = teacher_model(self.master, self.probed.adapters, self.cfg.heal,
                                         self.cfg.train, recipe_dtype(self.cfg))
        return self.teacher

    def training(self, name: str) -> TrainConfig:
        """The training settings of fine-tune `name`: checkpoints (every `--save-every` steps,
        by default five times in the fine-tune) in `name.checkpoints` of the work folder,
        resumed from the last complete one there."""
        folder = self.folder / f"{name}.checkpoints"
        every = self.cfg.train.save_every or max(1, self.cfg.train.planned_steps(len(self.train)) // 5)
        return replace(self.cfg.train, save_every=every, checkpoint_dir=str(folder),
                       resume=last_complete_checkpoint(str(folder)) is not None)


def _zero_shot(state: _RunState) -> dict:
    return _evaluation("dense zero-shot evaluation", state.working(), state.tokenizer, state.task,
                       state.cfg.eval_limit)


def _reuses_probe(cfg: RunConfig) -> bool:
    """Whether the dense reference continues from the probe's checkpoint: a LoRA probe is the
    first steps of the dense fine-tune."""
    return (cfg.dense and cfg.train.steps is not None and cfg.probe_steps < cfg.train.steps
            and not cfg.train.full)


def _probe(state: _RunState) -> dict:
    """Probe a copy of the dense model into `probe/` (its checkpoint into `dense.checkpoints/`
    when the dense reference continues from it); returns the probe's statistics."""
    cfg, reuse = state.cfg, state.folder / "dense.checkpoints"
    on_main(partial(shutil.rmtree, reuse, ignore_errors=True))  # of a probe that was killed
    kind = "full" if cfg.train.full else "LoRA"
    with stage("probe", f"{cfg.probe_steps} steps of {kind} fine-tuning") as st:
        probed = probe(state.working(), state.tokenizer, state.train, cfg.train, cfg.probe_steps,
                       cfg.train.planned_steps(len(state.train)),
                       str(reuse) if _reuses_probe(cfg) else None)
        st.result = f"{probed.stats['steps']} steps, IGIA of {len(probed.igia.layer_scores)} layers"
    on_main(partial(_save_probe, state, probed))
    return probed.stats


def _save_probe(state: _RunState, probed: ProbeResult) -> None:
    """Save the probe's IGIA and adapters to `probe/`, which every process then loads."""
    with atomic_output_dir(state.folder / "probe", overwrite=True) as tmp:
        probed.save(tmp, {"source_model": state.source, "task": state.task.name,
                          "versions": versions(), "train_config": asdict(state.cfg.train)})


def _cut(state: _RunState) -> dict:
    """Select and apply the cut; the cut model (in the recipe's dtype) goes to `cut/` until it
    is healed. Returns its record and seconds."""
    cfg = state.cfg
    shutil.rmtree(state.folder / "pruned.checkpoints", ignore_errors=True)
    with stage("pruning", f"criterion {cfg.criterion}, merge {cfg.merge}") as st:
        done = cut(copy.deepcopy(state.master), state.tokenizer, state.train, state.held,
                   state.probed, cfg, cfg.criterion, cfg.merge, cfg.ratio, cfg.train.seed,
                   state.distillation_teacher(), recipe_dtype(cfg))
        record = describe(done.record, state.master.config, state.source, f"{cfg.out}/probe",
                          cfg.to_json())
        st.result = cut_summary(record)
    save_pretrained_atomic(done.model.to(recipe_dtype(cfg)), state.tokenizer, state.folder / "cut",
                           record.to_json(), overwrite=True)
    return {"record": record.to_json(), "select_seconds": done.select_seconds,
            "heal_seconds": done.heal_seconds}


def _heal_pruned(state: _RunState) -> dict:
    """Heal the cut model (from its last checkpoint when one was kept) and save it to `model/`
    with its sidecar; returns the fine-tune's statistics."""
    cfg, done = state.cfg, state.journal.stages["cut"]
    record = PruneRecord.from_json(done["record"])
    recipe = replace(cfg, train=state.training("pruned"))
    with stage("healing", cfg.heal.describe()) as st:
        pruned, stats = heal(state.saved("cut"), state.tokenizer, state.train,
                             None if record.rounds else state.probed, recipe, record.kept_layers,
                             cfg.train.seed, recipe_dtype(cfg), state.distillation_teacher())
        st.result = training_summary(stats)
    stats = _count_resumed(stats)
    stats["round_heal_seconds"] = done["heal_seconds"]
    record.finetune = {**stats, "task": state.task.name, "datasets": list(state.task.datasets)}
    on_main(partial(_save_pruned, state, pruned, record))
    state.pruned = pruned
    return stats


def _save_pruned(state: _RunState, pruned, record: PruneRecord) -> None:
    """Save the healed model to `model/`; remove its checkpoints and the cut model."""
    save_pretrained_atomic(pruned, state.tokenizer, state.folder / "model", record.to_json(),
                           overwrite=True, source_dir=state.source)
    for name in ("pruned.checkpoints", "cut"):
        shutil.rmtree(state.folder / name)


def _count_resumed(stats: dict) -> dict:
    """`stats` of a fine-tune; resumed from a checkpoint, it ran only its last steps in this
    session: its `train_seconds` become its steady step time times all its steps
    (`resumed_seconds`: the seconds it ran), as `finetune_dense` counts them."""
    if stats.get("resumed_from") and "resumed_seconds" not in stats:
        per_step = stats["step_seconds"] or stats["seconds_per_step"]
        stats.update(resumed_seconds=stats["train_seconds"], train_seconds=per_step * stats["steps"],
                     seconds_per_step=per_step)
    return stats


def _evaluate_pruned(state: _RunState) -> dict:
    """The fine-tuned pruned model's metrics (and lm-eval's, with `--harness`)."""
    return _measure(state, "pruned model", "pruned_finetuned", state.pruned_model())


def _measure(state: _RunState, name: str, key: str, model) -> dict:
    """{key: the metrics of `model` (the `name`) on the task}, with lm-eval's under "harness"
    when `--harness` names tasks."""
    cfg = state.cfg
    result = {key: _evaluation(f"{name} evaluation", model, state.tokenizer, state.task,
                               cfg.eval_limit)}
    harness = cfg.harness_spec()
    if harness:
        with stage(f"lm-evaluation-harness on the {name}", ", ".join(harness.tasks)):
            result["harness"] = {key: run_harness(model, state.tokenizer, harness, cfg.eval_limit)}
    return result


def _dense(state: _RunState) -> dict:
    """The dense reference, fine-tuned (continuing from the probe's checkpoint when it is the
    first steps of the same run) and evaluated on rank 0; its checkpoints are kept until it is
    evaluated, so that a resumed run redoes at most the steps after the last one."""
    cfg, reuse = state.cfg, state.folder / "dense.checkpoints"
    with stage("dense fine-tune", "the reference; --no-dense skips it") as st:
        dense, stats = finetune_dense(state.working(), state.tokenizer, state.train,
                                      state.training("dense"), state.probed,
                                      str(reuse) if _reuses_probe(cfg) else None)
        st.result = training_summary(stats)
    state.dense = dense
    return on_main(partial(_evaluate_dense, state, dense, stats))


def _evaluate_dense(state: _RunState, dense, stats: dict) -> dict:
    """The dense reference's statistics and metrics (and lm-eval's, with `--harness`); its
    checkpoints removed."""
    result = {"dense_finetune": _count_resumed(stats),
              **_measure(state, "dense model", "dense_finetuned", dense)}
    shutil.rmtree(state.folder / "dense.checkpoints", ignore_errors=True)
    return result


def _finish(state: _RunState, results: dict) -> dict:
    """Time inference, write the model card and the report, and make the work folder `OUT`."""
    from .report import write_report

    # the prefill's time depends on the models' shapes, not their weights: a resumed run whose
    # dense fine-tune finished before times the dense model as loaded
    dense = state.dense if state.dense is not None else state.working()
    with stage("inference timing", "prefill of 8 x 128 tokens, dense and pruned interleaved") as st:
        results["prefill_seconds"] = compare_prefill({"dense": dense, "pruned": state.pruned_model()})
        st.result = ", ".join(f"{name} {seconds * 1000:.0f} ms"
                              for name, seconds in results["prefill_seconds"].items()
                              if isinstance(seconds, (int, float)))
    # the model card, once the accuracies and the prefill timing are known
    card = model_card(results["prune"], Measured.from_results(results))
    (state.folder / "model" / CARD_NAME).write_text(card, encoding="utf-8")
    results["total_seconds"] = time.perf_counter() - state.started
    write_report(results, state.folder)
    state.journal.promote(state.cfg.out)
    return results


def _evaluation(label: str, model, tokenizer, task: Task, limit: int | None) -> dict:
    """`evaluate` as a stage named `label`, ending with the metric, items and seconds."""
    with stage(label, f"{task.name}, {min(limit or 10**12, len(task.eval_examples()))} items") as st:
        result = evaluate(model, tokenizer, task, limit)
        st.result = metric_summary(result)
    return result


def metric_summary(result: dict) -> str:
    """"acc 0.537 on 300 items" (the first metric of an evaluation)."""
    name = next(k for k in ("acc", "rouge_l", "exact_match") if k in result)
    return f"{name} {result[name]:.3f} on {result['n']} items"


def cut_summary(record: PruneRecord) -> str:
    """"removed layers 13-15, 17; merged none" (merged: receiver <- donors)."""
    merged = "; ".join(f"{r} <- {layer_ranges(d)}" for r, d in (record.merged or {}).items())
    return f"removed layers {layer_ranges(record.removed_layers)}; merged {merged or 'none'}"


def training_summary(stats: dict) -> str:
    """"60 steps, loss 1.23"."""
    return f"{stats['steps']} steps, loss {stats['train_loss']:.4g}"
