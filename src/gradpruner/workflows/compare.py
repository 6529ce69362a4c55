"""`gradpruner compare`: several pruning methods side by side on one model and task.

Every method gets the same model, training data, held-out examples, fine-tuning budget, seeds
and evaluation items; only the choice of layers (and the merge) differs. Work shared by methods
is done once: one dense fine-tune per seed (the reference), one probe per seed for every method
that reads the IGIA. Each finished cell (method x ratio x seed) is a JSON file under `cells/`,
written atomically, so an interrupted comparison resumes where it stopped. Two methods that cut
the same layers with the same merge share one fine-tune. Each method can be healed by several
variants (`HEALS`, `--heals`): cells of their own, sharing the method's cut; every cell also
records its accuracy on the held-out training examples, where defaults are chosen.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, replace
from pathlib import Path

from ..catalog import HEALS, METHODS
from ..config import CompareConfig, changed_settings
from ..errors import GradPrunerError
from ..evaluation.judge import task_batches, task_loss
from ..evaluation.scoring import evaluate_examples
from ..evaluation.timing import compare_prefill
from ..model.loading import load_model, resolve_device, resolve_dtype
from ..outputs import atomic_output_dir, plain_json, write_json
from ..progress import say, stage
from ..provenance import versions
from ..tasks import resolve_task
from ..training.healing import HealConfig
from .recipe import (Cut, Healing, ProbeResult, cut, evaluate, finetune_dense, heal, needs_probe,
                     probe, split_heldout, teacher_model)

RESULT_KEYS = ("model", "task", "data", "eval_data", "density", "selection_budget", "settings",
               "probe_steps", "heldout", "eval_limit", "dtype", "warm_start")


def fingerprint(cfg: CompareConfig) -> dict:
    """What must match for finished cells to be reused (the healing and the rounds when they are
    not the defaults: the healing variants are cells of their own)."""
    train = asdict(cfg.train)
    heal = {"heal": asdict(cfg.heal)} if cfg.heal != HealConfig() else {}
    rounds = ({"rounds": cfg.rounds, "round_steps": cfg.round_steps}
              if (cfg.rounds, cfg.round_steps) != (1, 10) else {})
    return plain_json({**{k: getattr(cfg, k) for k in RESULT_KEYS}, "train": train, **heal,
                       **rounds})


def variant_name(method: str, heal: str) -> str:
    """A method healed by a variant: `method`, or `method+heal` for a variant other than LoRA."""
    return method if heal == "lora" else f"{method}+{heal}"


def cell_name(method: str, heal: str, ratio: float, seed: int) -> str:
    """The cell's file name: `variant-rR-sS`."""
    return f"{variant_name(method, heal)}-r{ratio}-s{seed}"


class Comparison:
    """One comparison's state on disk: settings, probes and finished cells under `out`."""

    def __init__(self, cfg: CompareConfig):
        cfg.validate()
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.task = resolve_task(cfg.task, cfg.data, cfg.eval_data, cfg.chat_template)
        self.train_examples, self.heldout = split_heldout(self.task.train_examples(), cfg.heldout)
        self._check_settings()
        self.master, self.tokenizer, self.source = load_model(cfg.model, "float32", cfg.device)
        self.dtype = resolve_dtype(cfg.dtype, resolve_device(cfg.device))
        self.model = copy.deepcopy(self.master).to(self.dtype)  # the dense model, never changed
        self.heldout_batches = task_batches(self.tokenizer, self.heldout, 8, "compare")
        self._last_cut: tuple[tuple, Cut] | None = None  # healing variants share one cut

    def _check_settings(self) -> None:
        path = self.out / "settings.json"
        current = fingerprint(self.cfg)
        if path.is_file():
            previous = json.loads(path.read_text())
            if previous != current:
                changed = changed_settings(previous, current)
                raise GradPrunerError(f"{self.out} holds a comparison with other settings "
                                      f"({', '.join(changed)}); use another --out")
        elif self.out.exists() and any(self.out.iterdir()):
            raise GradPrunerError(f"{self.out} exists and is not a comparison folder; use another --out")
        (self.out / "cells").mkdir(parents=True, exist_ok=True)
        write_json(path, current)

    # ------------------------------------------------------------------ cells
    def cell(self, name: str, compute) -> dict:
        """The finished cell `name`, computed (and saved) only when it is not on disk."""
        path = self.out / "cells" / f"{name}.json"
        if path.is_file():
            return json.loads(path.read_text())
        with stage(f"compare: {name}"):
            result = plain_json(compute())
        write_json(path, result)
        return result

    def evaluate(self, model) -> dict:
        return evaluate(model, self.tokenizer, self.task, self.cfg.eval_limit)

    def heldout_loss(self, model) -> float:
        return task_loss(model, self.heldout_batches)

    def heldout_metrics(self, model) -> dict:
        """Metrics on the held-out training examples (never trained on): where defaults are
        chosen, apart from the test items."""
        return evaluate_examples(model, self.tokenizer, self.heldout, self.task.kind)

    def recipe(self, seed: int, heal: str = "lora") -> CompareConfig:
        """The recipe's settings for a cell of `seed` and healing variant `heal` (whose settings
        are the healing's, or the cut's rounds)."""
        variant = HEALS[heal]
        options = {k: v for k, v in variant.items() if k not in ("rounds", "round_steps")}
        schedule = {k: v for k, v in variant.items() if k in ("rounds", "round_steps")}
        return replace(self.cfg, train=replace(self.cfg.train, seed=seed),
                       heal=replace(self.cfg.heal, **options), **schedule)

    def zero_shot(self) -> dict:
        return self.cell("dense-zero-shot", lambda: {
            "before": self.evaluate(self.model), "heldout_loss": self.heldout_loss(self.model)})

    def dense(self, seed: int) -> dict:
        def compute():
            train = self.recipe(seed).train
            tuned, stats = finetune_dense(copy.deepcopy(self.model), self.tokenizer,
                                          self.train_examples, train, None)
            return {"method": "dense", "seed": seed, "finetune": stats, "after": self.evaluate(tuned),
                    "heldout_after": self.heldout_metrics(tuned)}

        return self.cell(f"dense-s{seed}", compute)

    def probed(self, seed: int) -> ProbeResult:
        folder = self.out / f"probe-s{seed}"
        if not (folder / "scores.json").is_file():
            say(f"compare: probe, seed {seed}")
            train = self.recipe(seed).train
            probed = probe(copy.deepcopy(self.model), self.tokenizer, self.train_examples, train,
                           self.cfg.probe_steps, train.planned_steps(len(self.train_examples)))
            with atomic_output_dir(folder) as tmp:
                probed.save(tmp, {"task": self.task.name})
        return ProbeResult.load(folder)

    def pruned(self, method: str, ratio: float, seed: int, done: dict[str, dict],
               heal_name: str = "lora") -> dict:
        """Cut, judge, heal and evaluate one cell (the recipe `run` runs); reuses the fine-tune
        of an earlier cell (`done`, by plan and healing) that gave the same plan, and the cut of
        the cell before when only the healing differs."""
        def compute():
            criterion, merge = METHODS[method]
            recipe = self.recipe(seed, heal_name)
            probed = self.probed(seed) if recipe.warm_starts or recipe.heal.distils or \
                needs_probe(criterion, merge) else None
            teacher = (teacher_model(self.master, probed, recipe.heal, recipe.train, self.dtype)
                       if recipe.heal.distils else None)
            healing = Healing(recipe.train, recipe.heal, self.dtype, teacher,
                              recipe.heal.teacher or "dense+probe adapters", recipe.warm_starts)
            done_cut = self._cut(method, ratio, seed, recipe, probed, healing)
            net, record = done_cut.model, done_cut.record
            result = {"method": variant_name(method, heal_name),
                      "criterion_method": method, "heal": heal_name, "ratio": ratio, "seed": seed,
                      "prune": record.to_json(), "select_seconds": done_cut.select_seconds,
                      "heldout_loss": self.heldout_loss(net), "before": self.evaluate(net)}
            twin = done.get(_cut_key(result["prune"], seed, recipe))
            if twin is not None:
                return {**result, "same_cut_as": twin["method"],
                        **{k: twin[k] for k in ("finetune", "after", "prefill_seconds", "heldout_after")
                           if k in twin}}
            tuned, stats = heal(net, self.tokenizer, self.train_examples,
                                None if record.rounds else probed, healing, record.kept_layers)
            stats["round_heal_seconds"] = done_cut.heal_seconds
            prefill = compare_prefill({"dense": self.model, "pruned": tuned})
            return {**result, "finetune": stats, "after": self.evaluate(tuned),
                    "heldout_after": self.heldout_metrics(tuned), "prefill_seconds": prefill}

        result = self.cell(cell_name(method, heal_name, ratio, seed), compute)
        done.setdefault(_cut_key(result["prune"], seed, self.recipe(seed, heal_name)), result)
        return result

    def _cut(self, method: str, ratio: float, seed: int, recipe: CompareConfig,
             probed: ProbeResult | None, healing: Healing) -> Cut:
        """The cell's cut; a copy of the previous cell's when only the healing differs (and
        neither removes in rounds)."""
        key = (method, ratio, seed)
        if recipe.rounds == 1 and self._last_cut and self._last_cut[0] == key:
            previous = self._last_cut[1]
            return replace(previous, model=copy.deepcopy(previous.model))
        criterion, merge = METHODS[method]
        settings = replace(recipe, criterion=criterion, merge=merge, ratio=ratio)
        done = cut(copy.deepcopy(self.master), self.tokenizer, self.train_examples, self.heldout,
                   probed, settings.cut_settings(len(self.train_examples)), healing)
        if recipe.rounds == 1:
            self._last_cut = (key, replace(done, model=copy.deepcopy(done.model)))
        return done


def _cut_key(sidecar: dict, seed: int, recipe: CompareConfig) -> str:
    """Cells with the same key give the same pruned weights and healing, so the same fine-tune."""
    return json.dumps([seed, sidecar["plan"], sidecar.get("rounds"), asdict(recipe.heal)])


def compare(cfg: CompareConfig) -> dict:
    """Run every cell not yet on disk; the table, the CSV/JSON and the plots are rewritten after
    each cell, so an unfinished comparison already shows what it has."""
    from ..reports.compare_report import write_comparison

    comparison = Comparison(cfg)
    results = {"task": comparison.task.name, "model": comparison.source, "versions": versions(),
               "config": cfg.to_json(), "zero_shot": comparison.zero_shot(),
               "dense": [], "cells": []}
    done: dict[str, dict] = {}
    for seed in range(cfg.train.seed, cfg.train.seed + cfg.seeds):  # --seed is the first one
        results["dense"].append(comparison.dense(seed))
        for ratio in cfg.ratios:
            for method in cfg.methods:
                for heal_name in cfg.heals:
                    results["cells"].append(comparison.pruned(method, ratio, seed, done, heal_name))
                    write_comparison(results, comparison.out)  # the tables so far, after every cell
    return results
