"""`gradpruner compare`: several pruning methods side by side on one model and task.

Every method gets the same model, training data, held-out examples, fine-tuning budget, seeds
and evaluation items; only the choice of layers (and the merge) differs. Work shared by methods
is done once: one dense fine-tune per seed (the reference), one probe per seed for every method
that reads the IGIA. Each finished cell (method x ratio x seed) is a JSON file under `cells/`,
written atomically, so an interrupted comparison resumes where it stopped. Two methods that cut
the same layers with the same merge share one fine-tune.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .criteria import ScoreContext, get_criterion
from .criteria.budget import SelectionBudget, check_fraction, heal_budget
from .criteria.judge import task_batches, task_loss
from .errors import GradPrunerError
from .igia import IGIA
from .models import load_model
from .outputs import atomic_output_dir, write_json
from .pipeline import _jsonable, _say, resolve_task, timed_eval, versions
from .prune import prune_model
from .selection import removal_count
from .timing import compare_prefill
from .train import TrainConfig, finetune, probe

# method -> (criterion, merge donors or "auto"/None)
METHODS: dict[str, tuple[str, int | str | None]] = {
    "auto": ("auto", "auto"),
    "gradpruner": ("gradpruner", 3),
    "gradpruner_nomerge": ("gradpruner", None),
    "gradpruner_unsquared": ("gradpruner_unsquared", 3),
    "tail": ("tail", None),
    "random": ("random", None),
    "block_influence": ("block_influence", None),
    "angular": ("angular", None),
    "taylor": ("taylor", None),
    "ppl": ("ppl", None),
    "laco": ("laco", None),
}


CONTROL_KEYS = ("progress", "save_every", "checkpoint_dir", "resume")  # do not change results


@dataclass
class CompareConfig:
    """Settings of one comparison; those that change results are checked on resume."""

    model: str | None = None
    task: str | None = "arc_easy"
    data: str | None = None
    eval_data: str | None = None
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    ratios: list[float] = field(default_factory=lambda: [0.25, 0.4])
    seeds: int = 1
    density: float = 0.2
    selection_budget: float | None = 0.1  # of each cell's healing fine-tune; None: no limit
    probe_steps: int = 40
    heldout: int = 32
    eval_limit: int | None = 300
    dtype: str = "auto"
    device: str = "auto"
    out: str = "runs/compare"
    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=60))

    def validate(self) -> None:
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise GradPrunerError(f"unknown method(s) {', '.join(unknown)}; known: {', '.join(METHODS)}")
        if self.seeds < 1:
            raise GradPrunerError(f"--seeds must be at least 1, got {self.seeds}")
        if self.heldout < 1:
            raise GradPrunerError(f"--heldout must be at least 1, got {self.heldout}")
        check_fraction(self.selection_budget)
        self.train.validate()

    def fingerprint(self) -> dict:
        """What must match for finished cells to be reused."""
        keep = ("model", "task", "data", "eval_data", "density", "selection_budget", "probe_steps",
                "heldout", "eval_limit", "dtype")
        return {**{k: getattr(self, k) for k in keep}, "train": _results_settings(asdict(self.train))}


def _results_settings(train: dict) -> dict:
    """The training settings that change results: all but `CONTROL_KEYS`."""
    return {k: v for k, v in train.items() if k not in CONTROL_KEYS}


class Comparison:
    """One comparison's state on disk: settings, probes and finished cells under `out`."""

    def __init__(self, cfg: CompareConfig):
        cfg.validate()
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.task = resolve_task(cfg.task, cfg.data, cfg.eval_data)
        self._check_settings()
        examples = self.task.train_examples()
        if len(examples) <= cfg.heldout:
            raise GradPrunerError(f"{len(examples)} training examples: too few to hold out {cfg.heldout}")
        self.train_examples, self.heldout = examples[:-cfg.heldout], examples[-cfg.heldout:]
        self.model, self.tokenizer, self.source = load_model(cfg.model, cfg.dtype, cfg.device)
        held = ScoreContext(model=self.model, tokenizer=self.tokenizer, examples=self.heldout)
        self.heldout_batches = task_batches(held, cfg.heldout, 8, "compare")

    def _check_settings(self) -> None:
        path = self.out / "settings.json"
        fingerprint = _jsonable(self.cfg.fingerprint())
        if path.is_file():
            previous = json.loads(path.read_text())
            previous["train"] = _results_settings(previous.get("train", {}))  # older versions kept all
            previous.setdefault("selection_budget", None)  # older versions searched without a limit
            if previous != fingerprint:
                changed = sorted(k for k in fingerprint if previous.get(k) != fingerprint[k])
                raise GradPrunerError(f"{self.out} holds a comparison with other settings "
                                      f"({', '.join(changed)}); use another --out")
        elif self.out.exists() and any(self.out.iterdir()):
            raise GradPrunerError(f"{self.out} exists and is not a comparison folder; use another --out")
        (self.out / "cells").mkdir(parents=True, exist_ok=True)
        write_json(path, fingerprint)

    # ------------------------------------------------------------------ cells
    def cell(self, name: str, compute) -> dict:
        """The finished cell `name`, computed (and saved) only when it is not on disk."""
        path = self.out / "cells" / f"{name}.json"
        if path.is_file():
            return json.loads(path.read_text())
        _say(f"compare: {name}")
        result = _jsonable(compute())
        write_json(path, result)
        return result

    def evaluate(self, model) -> dict:
        return timed_eval(model, self.tokenizer, self.task, self.cfg.eval_limit)

    def heldout_loss(self, model) -> float:
        return task_loss(model, self.heldout_batches)

    def train_config(self, seed: int) -> TrainConfig:
        return TrainConfig(**{**asdict(self.cfg.train), "seed": seed, "progress": False})

    def zero_shot(self) -> dict:
        return self.cell("dense-zero-shot", lambda: {
            "before": self.evaluate(self.model), "heldout_loss": self.heldout_loss(self.model)})

    def dense(self, seed: int) -> dict:
        def compute():
            tuned, stats = finetune(copy.deepcopy(self.model), self.tokenizer, self.train_examples,
                                    self.train_config(seed))
            return {"method": "dense", "seed": seed, "finetune": stats, "after": self.evaluate(tuned)}

        return self.cell(f"dense-s{seed}", compute)

    def probe_folder(self, seed: int) -> Path:
        return self.out / f"probe-s{seed}"

    def budget(self, ratio: float, seed: int, probed: bool) -> SelectionBudget:
        """The selection budget of a cell: a share of its healing fine-tune, timed by the probe."""
        total = self.model.config.num_hidden_layers
        record = (json.loads((self.probe_folder(seed) / "scores.json").read_text()).get("probe")
                  if probed else None)
        return heal_budget(self.cfg.selection_budget, self.cfg.train.planned_steps(len(self.train_examples)),
                           total, removal_count(total, ratio), record)

    def probe(self, seed: int) -> IGIA:
        folder = self.probe_folder(seed)
        if not (folder / "scores.json").is_file():
            _say(f"compare: probe, seed {seed}")
            cfg = self.train_config(seed)
            igia, stats = probe(copy.deepcopy(self.model), self.tokenizer, self.train_examples, cfg,
                                self.cfg.probe_steps, cfg.steps)
            with atomic_output_dir(folder) as tmp:
                igia.save(tmp, extra={"probe": stats, "task": self.task.name})
        return IGIA.load(folder)

    def pruned(self, method: str, ratio: float, seed: int, done: dict[str, dict]) -> dict:
        """Prune, judge, fine-tune and evaluate one cell; reuses the fine-tune of an earlier
        cell (`done`, by cut) that removed the same layers with the same merge."""
        def compute():
            criterion, merge = METHODS[method]
            net = copy.deepcopy(self.model)
            igia = self.probe(seed) if get_criterion(criterion).needs_probe or merge else None
            ctx = ScoreContext(model=net, tokenizer=self.tokenizer, examples=self.train_examples,
                               igia=igia, seed=seed, heldout=self.heldout,
                               budget=self.budget(ratio, seed, igia is not None))
            start = time.perf_counter()
            record = prune_model(net, igia, criterion=criterion, ratio=ratio, merge=merge,
                                 density=self.cfg.density, context=ctx)
            select_seconds = time.perf_counter() - start
            result = {"method": method, "ratio": ratio, "seed": seed, "prune": record,
                      "select_seconds": select_seconds, "heldout_loss": self.heldout_loss(net),
                      "before": self.evaluate(net)}
            twin = done.get(_cut_key(record, seed))
            if twin is not None:
                return {**result, "same_cut_as": twin["method"],
                        **{k: twin[k] for k in ("finetune", "after", "prefill_seconds")}}
            tuned, stats = finetune(net, self.tokenizer, self.train_examples, self.train_config(seed))
            prefill = compare_prefill({"dense": self.model, "pruned": tuned})
            return {**result, "finetune": stats, "after": self.evaluate(tuned),
                    "prefill_seconds": prefill}

        result = self.cell(f"{method}-r{ratio}-s{seed}", compute)
        done.setdefault(_cut_key(result["prune"], seed), result)
        return result


def _cut_key(record: dict, seed: int) -> str:
    """Cells with the same key give the same pruned weights and so the same fine-tune."""
    fields = ("removed_layers", "merged", "merge_rule", "density", "merge_scale")
    return json.dumps([seed, *[record.get(k) for k in fields]])


def compare(cfg: CompareConfig) -> dict:
    """Run every cell not yet on disk; the table, the CSV/JSON and the plots are rewritten after
    each cell, so an unfinished comparison already shows what it has."""
    from .compare_report import write_comparison

    comparison = Comparison(cfg)
    results = {"task": comparison.task.name, "model": comparison.source, "versions": versions(),
               "config": _jsonable(asdict(cfg)), "zero_shot": comparison.zero_shot(),
               "dense": [], "cells": []}
    done: dict[str, dict] = {}
    for seed in range(cfg.train.seed, cfg.train.seed + cfg.seeds):  # --seed is the first one
        results["dense"].append(comparison.dense(seed))
        for ratio in cfg.ratios:
            for method in cfg.methods:
                results["cells"].append(comparison.pruned(method, ratio, seed, done))
                write_comparison(results, comparison.out)  # the tables so far, after every cell
    return results
