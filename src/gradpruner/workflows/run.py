"""`gradpruner run`: the recipe from start to end beside the dense reference, and its report.

    zero-shot evaluation -> probe -> cut -> heal -> evaluate the pruned model
    -> dense fine-tune and evaluation -> inference timing, model card and report

Each step is the recipe's function (`recipe.py`), run as a stage of the run's journal
(`journal.py`; with `--keep`, each candidate cut scored is one too): the run works in
`OUT.partial`, records each stage as it finishes, and becomes `OUT` once complete, so `--resume`
continues a killed run from its last finished stage (and a fine-tune from its last checkpoint)
to the result an uninterrupted run gives.
"""

from __future__ import annotations

import copy
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from functools import cache, partial
from pathlib import Path

import torch

from ..config import RunConfig
from ..errors import GradPrunerError
from ..evaluation.scoring import evaluate_examples
from ..distributed import (is_main_process, join_processes, on_main, refuse_sharded_run,
                           several_processes, world_size)
from ..evaluation.harness import run_harness
from ..evaluation.timing import compare_prefill
from ..merging.fold import check_foldable
from ..model.loading import load_config, load_model, resolve_device, resolve_dtype, resolve_model
from ..model.surgery import num_layers, save_pretrained_atomic
from ..outputs import atomic_output_dir, check_output_dir, last_complete_checkpoint
from ..plan import PruneRecord
from ..progress import say, stage
from ..provenance import versions
from ..reports.model_card import CARD_NAME, Measured, model_card
from ..reports.run_report import primary_metric
from ..search.keep import KeepPoint, keep_search, share_of
from ..tasks import Task, resolve_task
from ..training.train_config import Checkpoints
from .journal import Journal, open_journal
from .recipe import (Healing, ProbeResult, cut, evaluate, finetune_dense, heal, probe,
                     split_heldout, teacher_model)
from .stages import (check_memory, cut_summary, describe, metric_summary, probe_summary,
                     read_sidecar, training_summary)


KEEP_CHOSEN = "keep.chosen"  # `--keep`'s chosen candidate, healed, until it becomes `model/`


@dataclass
class Models:
    """The models a run's steps share: the dense model in fp32 (loaded once; the cut is chosen
    and applied in fp32), its tokenizer and source, and the recipe's dtype and device, in which
    copies of it train and evaluate and saved models load."""

    master: torch.nn.Module
    tokenizer: object
    source: str
    dtype: torch.dtype
    device: str

    @classmethod
    def load(cls, cfg: RunConfig) -> "Models":
        master, tokenizer, source = load_model(cfg.model, "float32", cfg.device)
        return cls(master, tokenizer, source, resolve_dtype(cfg.dtype, resolve_device(cfg.device)),
                   cfg.device)

    def working(self) -> torch.nn.Module:
        """A copy of the dense model in the recipe's dtype."""
        return copy.deepcopy(self.master).to(self.dtype)

    def saved(self, folder: Path) -> torch.nn.Module:
        """A model the run saved in its work folder, loaded in the recipe's dtype."""
        return load_model(str(folder), str(self.dtype).removeprefix("torch."), self.device)[0]


def run(cfg: RunConfig) -> dict:
    """Probe -> cut -> heal -> evaluate, beside the dense reference; writes a report.

    Under several processes (DDP: torchrun, accelerate launch) the probe and the fine-tunes train
    in every process (the batch size is per process); the evaluations, the cut, the timing and
    every file are rank 0's while the others wait, and then load what it saved. A run stopped
    before its first stage finished leaves nothing.
    """
    cfg.validate()
    check_output_dir(cfg.out, cfg.overwrite)
    if cfg.merge == "fold":
        check_foldable(load_config(resolve_model(cfg.model)))
    if cfg.export:
        from ..export.gguf import check_exportable

        check_exportable(load_config(resolve_model(cfg.model)), cfg.llama_cpp, cfg.model or "the model")
    task = resolve_task(cfg.task, cfg.data, cfg.eval_data, cfg.chat_template)
    train, held = split_heldout(task.train_examples(), cfg.heldout_count)
    refuse_sharded_run()
    # the run keeps its full-precision model beside the quantized copies that QLoRA trains
    check_memory(cfg.model, replace(cfg.train, load_in_bits=None), cfg.dtype, cfg.device, None,
                 cfg.heal.distils)
    join_processes(resolve_device(cfg.device))
    journal = on_main(partial(_open_journal, cfg))
    started = time.perf_counter() - journal.seconds
    try:
        return _run(cfg, task, train, held, journal, started)
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


def _run(cfg: RunConfig, task: Task, train: list, held: list, journal: Journal,
         started: float) -> dict:
    """The steps in order, each a stage of the journal (skipped when a resumed run finished it)."""
    folder = journal.folder
    models = Models.load(cfg)

    def elapsed() -> float:
        return time.perf_counter() - started

    def stage_(name: str, compute, everywhere: bool = False):
        return journal.stage(name, compute, elapsed, on_main, everywhere)

    results: dict = {"task": task.name, "model": models.source, "versions": versions(),
                     "config": cfg.to_json()}
    results["dense_zero_shot"] = stage_("zero_shot", lambda: _evaluation(
        "dense zero-shot evaluation", models.working(), models.tokenizer, task, cfg.eval_limit))
    results["probe"] = stage_("probe", lambda: _probe(cfg, models, task, train, folder),
                              everywhere=True)
    probed = ProbeResult.load(folder / "probe")

    @cache
    def teacher():
        """The distillation teacher (made once, when a stage needs it), else None."""
        if not cfg.heal.distils:
            return None
        return teacher_model(models.master, probed, cfg.heal, cfg.train, models.dtype)

    healing = partial(_healing, cfg, models, train, teacher, folder)
    tuned: list = []  # this session's dense model, for the timing (a resumed run has none)
    dense_stage = partial(stage_, "dense", lambda: _dense(cfg, models, task, train, held, probed,
                                                          folder, tuned), everywhere=True)
    settings = cfg.cut_settings(len(train))
    if cfg.keep is not None:  # the dense reference first: the cut's size is a share of it
        _add_dense(results, dense_stage())
        candidate = partial(journal.stage, elapsed=elapsed)  # on rank 0, inside the keep stage
        results["keep"] = stage_("keep", lambda: _keep(cfg, models, task, train, held, probed,
                                                       healing, results["dense_heldout"], folder,
                                                       candidate))
        settings = replace(settings, ratio=None, count=results["keep"]["chosen"], remove=None)
    if cfg.keep is not None and results["keep"].get("delivered"):  # the chosen candidate, healed
        results["pruned_finetune"] = stage_("pruned_finetune", lambda: _deliver_candidate(folder))
    else:
        made = stage_("cut", lambda: _cut(cfg, models, train, held, probed, settings, healing,
                                          folder))
        record = PruneRecord.from_json(made["record"])
        results["pruned_finetune"] = stage_("pruned_finetune", lambda: _heal_cut(
            models, task, train, probed, record, made["heal_seconds"], healing("pruned"), folder),
            everywhere=True)
    teacher.cache_clear()  # the dense fine-tune needs no teacher
    results["prune"] = read_sidecar(str(folder / "model"))
    pruned = cache(lambda: models.saved(folder / "model"))
    results.update(stage_("pruned_eval", lambda: _measure(
        cfg, models, task, "pruned model", "pruned_finetuned", pruned(), held)))
    if cfg.dense and cfg.keep is None:
        _add_dense(results, dense_stage())
    if cfg.export:
        results["gguf"] = stage_("export", lambda: _export(cfg, task, folder))
    dense = tuned[0] if tuned else None
    return on_main(partial(_finish, cfg, models, results, pruned(), dense, journal, started))


def _add_dense(results: dict, finished: dict) -> None:
    """The dense stage's results into the run's (lm-eval's beside the pruned model's)."""
    harness = {**results.get("harness", {}), **finished.pop("harness", {})}
    results.update(finished, **({"harness": harness} if harness else {}))


def _keep(cfg: RunConfig, models: Models, task: Task, train: list, held: list,
          probed: ProbeResult, healing, dense_heldout: dict, folder: Path,
          journaled: Callable[[str, Callable[[], dict]], dict]) -> dict:
    """`--keep`: the largest cut whose healed model keeps the share `cfg.keep` of the dense
    fine-tuned model's held-out accuracy (`keep.keep_search`); each candidate cut of the dense
    model healed for `keep_steps` steps (default: as long as the final heal) and scored on the
    held-out examples. Candidates healed as long as the final heal are that heal: each one that
    keeps the share is saved (with its sidecar) to `keep.chosen/`, which then holds the chosen
    one, delivered as the run's model. Each candidate's point is a stage of its own
    (`journaled(name, compute)`), so that a resumed run scores only the candidates it had not."""
    total = num_layers(models.master)
    planned = cfg.train.planned_steps(len(train))
    steps = cfg.keep_steps or planned
    delivers = steps == planned
    dense = primary_metric(dense_heldout)
    settings = cfg.cut_settings(len(train))

    def score(count: int) -> KeepPoint:
        return KeepPoint(**journaled(f"keep_{count}", lambda: scored(count).to_json()))

    def scored(count: int) -> KeepPoint:
        with stage(f"--keep {cfg.keep:g}: a cut of {count} of {total} layers",
                   f"{steps} healing steps, {len(held)} held-out items") as st:
            done = cut(copy.deepcopy(models.master), models.tokenizer, train, held, probed,
                       replace(settings, ratio=None, count=count, remove=None))
            healed, stats = heal(done.model, models.tokenizer, train, probed, healing(),
                                 done.record.kept_layers, steps)
            accuracy = primary_metric(evaluate_examples(healed, models.tokenizer, held, task.kind))
            share, error = share_of(accuracy, dense, len(held))
            st.result = f"held-out {accuracy:.3f}: {share:.3f} ± {error:.3f} of dense"
        point = KeepPoint(count, list(done.record.removed_layers), accuracy, len(held), share, error)
        if delivers and point.keeps(cfg.keep):  # the search visits the sizes that keep it upwards
            stats["round_heal_seconds"] = done.heal_seconds
            record = _healed_record(_described(cfg, models, done.record), stats, task)
            save_pretrained_atomic(healed, models.tokenizer, folder / KEEP_CHOSEN, record.to_json(),
                                   overwrite=True, source_dir=models.source)
        return point

    found = keep_search(score, total, cfg.keep, dense, len(held), steps, delivers)
    chosen = found.chosen_point
    if chosen is None:
        smallest = found.points[0]
        raise GradPrunerError(f"no cut keeps {cfg.keep:g} of the dense model's held-out accuracy "
                              f"({dense:.3f} on {len(held)} items): removing one layer keeps "
                              f"{smallest.share:.3f} ± {smallest.share_se:.3f}; ask for less with --keep")
    say(f"--keep {cfg.keep:g}: {found.chosen} of {total} layers removed, held-out share "
        f"{chosen.share:.3f} (probability {found.confidence:.0%} that it is at least {cfg.keep:g})")
    return found.to_json()


def _deliver_candidate(folder: Path) -> dict:
    """`--keep`'s chosen candidate, healed, as the run's model (`model/`); returns its
    fine-tune's statistics."""
    if (folder / KEEP_CHOSEN).is_dir():  # else a stopped run moved it but did not record it
        (folder / KEEP_CHOSEN).rename(folder / "model")
    return read_sidecar(str(folder / "model"))["finetune"]


def _evaluation(label: str, model, tokenizer, task: Task, limit: int | None) -> dict:
    """`evaluate` as a stage named `label`, ending with the metric, items and seconds."""
    with stage(label, f"{task.name}, {min(limit or 10**12, len(task.eval_examples()))} items") as st:
        result = evaluate(model, tokenizer, task, limit)
        st.result = metric_summary(result)
    return result


def _continues_probe(cfg: RunConfig) -> bool:
    """Whether the dense reference continues from the probe's checkpoint: a LoRA probe is the
    first steps of the dense fine-tune."""
    return (cfg.dense and cfg.train.steps is not None and cfg.probe_steps < cfg.train.steps
            and not cfg.train.full)


def _probe(cfg: RunConfig, models: Models, task: Task, train: list, folder: Path) -> dict:
    """Probe a copy of the dense model into `probe/` (its checkpoints into `dense.checkpoints/`
    when the dense reference continues from it); returns the probe's statistics."""
    dense = _checkpoints(cfg, train, folder, "dense")
    on_main(partial(shutil.rmtree, dense.folder, ignore_errors=True))  # of a probe that was killed
    kind = "full" if cfg.train.full else "LoRA"
    with stage("probe", f"{cfg.probe_steps} steps of {kind} fine-tuning") as st:
        probed = probe(models.working(), models.tokenizer, train, cfg.train, cfg.probe_steps,
                       cfg.train.planned_steps(len(train)), dense if _continues_probe(cfg) else None)
        st.result = probe_summary(probed)
    on_main(partial(_save_probe, probed, folder / "probe", {
        "source_model": models.source, "task": task.name, "versions": versions(),
        "train_config": asdict(cfg.train)}))
    return probed.stats


def _save_probe(probed: ProbeResult, folder: Path, info: dict) -> None:
    """Save the probe's IGIA and adapters to `folder`, which every process then loads."""
    with atomic_output_dir(folder, overwrite=True) as tmp:
        probed.save(tmp, info)


def _checkpoints(cfg: RunConfig, train: list, folder: Path, name: str) -> Checkpoints:
    """Fine-tune `name`'s checkpoints: every `--save-every` steps (by default five times in the
    fine-tune) into `name.checkpoints` of the work folder, resumed from the last complete one."""
    path = folder / f"{name}.checkpoints"
    every = cfg.save_every or max(1, cfg.train.planned_steps(len(train)) // 5)
    return Checkpoints(str(path), every, last_complete_checkpoint(str(path)) is not None)


def _healing(cfg: RunConfig, models: Models, train: list, teacher, folder: Path,
             name: str | None = None) -> Healing:
    """How the run heals a cut model (with checkpoints of fine-tune `name` when given)."""
    return Healing(cfg.train, cfg.heal, models.dtype, teacher=teacher(),
                   teacher_name=cfg.heal.teacher or "dense+probe adapters",
                   warm_start=cfg.warm_starts,
                   checkpoints=_checkpoints(cfg, train, folder, name) if name else None)


def _cut(cfg: RunConfig, models: Models, train: list, held: list, probed: ProbeResult,
         settings, healing, folder: Path) -> dict:
    """Select and apply the cut; the cut model (in the recipe's dtype) goes to `cut/` until it
    is healed. Returns its record and seconds."""
    shutil.rmtree(folder / "pruned.checkpoints", ignore_errors=True)
    with stage("pruning", f"criterion {cfg.criterion}, merge {cfg.merge}") as st:
        done = cut(copy.deepcopy(models.master), models.tokenizer, train, held, probed,
                   settings, healing() if cfg.rounds > 1 else None)
        record = _described(cfg, models, done.record)
        st.result = cut_summary(record)
    save_pretrained_atomic(done.model.to(models.dtype), models.tokenizer, folder / "cut",
                           record.to_json(), overwrite=True)
    return {"record": record.to_json(), "select_seconds": done.select_seconds,
            "heal_seconds": done.heal_seconds}


def _described(cfg: RunConfig, models: Models, record: PruneRecord) -> PruneRecord:
    """A cut's record with what the run's sidecar says beyond it (`stages.describe`)."""
    return describe(record, models.master.config, models.source, f"{cfg.out}/probe",
                    cfg.to_json())


def _healed_record(record: PruneRecord, stats: dict, task: Task) -> PruneRecord:
    """A cut's record with its heal's statistics and the task's data (the sidecar's `finetune`)."""
    return replace(record, finetune={**stats, "task": task.name, "datasets": list(task.datasets)})


def _heal_cut(models: Models, task: Task, train: list, probed: ProbeResult, record: PruneRecord,
              round_seconds: float, healing: Healing, folder: Path) -> dict:
    """Heal the cut model (from its last checkpoint when one was kept) and save it to `model/`
    with its sidecar; returns the fine-tune's statistics."""
    with stage("healing", healing.heal.describe()) as st:
        pruned, stats = heal(models.saved(folder / "cut"), models.tokenizer, train,
                             None if record.rounds else probed, healing, record.kept_layers)
        st.result = training_summary(stats)
    stats["round_heal_seconds"] = round_seconds
    on_main(partial(_save_healed, models, pruned, _healed_record(record, stats, task), folder))
    return stats


def _save_healed(models: Models, pruned, record: PruneRecord, folder: Path) -> None:
    """Save the healed model to `model/`; remove its checkpoints and the cut model."""
    save_pretrained_atomic(pruned, models.tokenizer, folder / "model", record.to_json(),
                           overwrite=True, source_dir=models.source)
    for name in ("pruned.checkpoints", "cut"):
        shutil.rmtree(folder / name)


def _measure(cfg: RunConfig, models: Models, task: Task, name: str, key: str, model,
             held: list) -> dict:
    """{key: the metrics of `model` (the `name`) on the task}, with lm-eval's under "harness"
    when `--harness` names tasks, and with `--keep` its metrics on the `held` out examples
    under "<name>_heldout"."""
    result = {key: _evaluation(f"{name} evaluation", model, models.tokenizer, task,
                               cfg.eval_limit)}
    if cfg.keep is not None:
        with stage(f"{name} on the held-out examples", f"{len(held)} items") as st:
            result[key.replace("_finetuned", "_heldout")] = scored = evaluate_examples(
                model, models.tokenizer, held, task.kind)
            st.result = metric_summary(scored)
    harness = cfg.harness_spec()
    if harness:
        with stage(f"lm-evaluation-harness on the {name}", ", ".join(harness.tasks)):
            result["harness"] = {key: run_harness(model, models.tokenizer, harness, cfg.eval_limit)}
    return result


def _dense(cfg: RunConfig, models: Models, task: Task, train: list, held: list,
           probed: ProbeResult, folder: Path, tuned: list) -> dict:
    """The dense reference, fine-tuned (continuing from the probe's checkpoint when it is the
    first steps of the same run) and evaluated on rank 0; its checkpoints are kept until it is
    evaluated, so that a resumed run redoes at most the steps after the last one. The model is
    appended to `tuned`, for this session's timing."""
    continues = _continues_probe(cfg)
    checkpoints = _checkpoints(cfg, train, folder, "dense")
    with stage("dense fine-tune", "the reference; --no-dense skips it") as st:
        dense, stats = finetune_dense(models.working(), models.tokenizer, train, cfg.train,
                                      probed, checkpoints, continues)
        st.result = training_summary(stats)
    tuned.append(dense)
    return on_main(partial(_evaluate_dense, cfg, models, task, dense, stats, held, folder))


def _evaluate_dense(cfg: RunConfig, models: Models, task: Task, dense, stats: dict, held: list,
                    folder: Path) -> dict:
    """The dense reference's statistics and metrics (and lm-eval's, with `--harness`); its
    checkpoints removed."""
    result = {"dense_finetune": stats,
              **_measure(cfg, models, task, "dense model", "dense_finetuned", dense, held)}
    if cfg.export:  # the export stage scores its GGUF files beside the pruned model's
        save_pretrained_atomic(dense, models.tokenizer, folder / "dense", {}, overwrite=True,
                               source_dir=models.source)
    shutil.rmtree(folder / "dense.checkpoints", ignore_errors=True)
    return result


def _export(cfg: RunConfig, task: Task, folder: Path) -> dict:
    """The healed model's GGUF files in `gguf/` (`export.gguf.export_gguf`) and, where the run
    has one, the dense reference's in a scratch folder, each scored on the task's evaluation
    items through llama.cpp; the dense files and folder are removed after. An export that
    llama.cpp refuses is recorded, not fatal: the healed model stands."""
    from ..export.gguf import export_gguf

    examples = task.eval_examples()[:cfg.eval_limit] if cfg.eval_limit else task.eval_examples()
    served: dict = {}
    for name, model, out in (("pruned", "model", "gguf"), ("dense", "dense", "dense.gguf")):
        if not (folder / model).is_dir():
            continue
        try:
            exported = export_gguf(str(folder / model), str(folder / out), cfg.file_types,
                                   overwrite=True, llama_cpp=cfg.llama_cpp,
                                   source_name=str(Path(cfg.out) / model))
        except GradPrunerError as err:
            say(f"no GGUF export of the {name} model: {err}")
            served[name] = {"refused": str(err)}
            continue
        served[name] = {"files": [f.to_json() for f in exported.files],
                        "metrics": {f.file_type: _served(exported.out / f.name, name, examples, task)
                                    for f in exported.files}}
    for scratch in ("dense", "dense.gguf"):
        shutil.rmtree(folder / scratch, ignore_errors=True)
    return served


def _served(path: Path, name: str, examples: list, task: Task) -> dict:
    """The metrics of one GGUF file on `examples`, through llama.cpp."""
    from ..export.scoring import evaluate_gguf

    with stage(f"{name} {path.name} through llama.cpp", f"{task.name}, {len(examples)} items") as st:
        result = evaluate_gguf(str(path), examples, task.kind)
        st.result = metric_summary(result)
    return result


def _finish(cfg: RunConfig, models: Models, results: dict, pruned, dense, journal: Journal,
            started: float) -> dict:
    """Time inference, write the model card and the report, and make the work folder `OUT`."""
    from ..reports.run_report import write_report

    # the prefill's time depends on the models' shapes, not their weights: a resumed run whose
    # dense fine-tune finished before times the dense model as loaded
    reference = dense if dense is not None else models.working()
    with stage("inference timing", "prefill of 8 x 128 tokens, dense and pruned interleaved") as st:
        results["prefill_seconds"] = compare_prefill({"dense": reference, "pruned": pruned})
        st.result = ", ".join(f"{name} {seconds * 1000:.0f} ms"
                              for name, seconds in results["prefill_seconds"].items()
                              if isinstance(seconds, (int, float)))
    # the model card, once the accuracies and the prefill timing are known
    card = model_card(results["prune"], Measured.from_results(results))
    (journal.folder / "model" / CARD_NAME).write_text(card, encoding="utf-8")
    results["total_seconds"] = time.perf_counter() - started
    write_report(results, journal.folder)
    journal.promote(cfg.out)
    return results
