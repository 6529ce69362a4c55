"""The probe: Initial Gradient Information Accumulation (IGIA) of every decoder linear module.

At each of the first t optimizer steps, after gradient clipping and before the optimizer step,
the simulated weight gradient of a LoRA-wrapped module is S = G_B @ G_A (the true gradient G of W
under full fine-tuning). Its IGIA matrix is F_W = sum_i S_i * S_i (fp32) and a layer's score is
the sum of F_W over the layer's linear modules, i.e. sum_i sum_W ||S_i||_F^2.

Memory: the layer score needs only ||G_B G_A||_F^2 = trace((G_B^T G_B)(G_A G_A^T)), an r x r
product. F_W itself is kept, per module, in whichever form is smaller: the per-step factors
(t * r * (in + out) numbers, F_W rebuilt on demand) or one dense fp32 accumulator (in * out).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import TrainerCallback

from ..distributed import full_grad, refuse_sharded_training
from ..errors import GradPrunerError
from ..evaluation.timing import StepTimer
from ..model.surgery import base_model, layer_index, layer_prefix

SCORE_VARIANTS = ("squared", "unsquared")
_TENSORS = "igia.safetensors"
_SCORES = "scores.json"


@dataclass
class TrainingRun:
    """What an `IGIACallback` saw of the training run it probed, so that `prune` can default from
    a probe saved inside the user's own trainer. Names as in `train.TrainConfig` where it has
    them (`processes`: the run's processes, each with `batch_size`); `steps` is the
    run's planned optimizer steps, `source_model` the model's folder (absolute) or Hub id,
    `step_seconds` the steady seconds of an optimizer step (None when fewer than two were timed),
    `max_length` TRL's `SFTConfig.max_length` (None under a plain `Trainer`)."""

    source_model: str | None
    steps: int | None
    batch_size: int
    grad_accum: int
    processes: int
    lr: float
    full: bool
    lora_rank: int | None
    lora_alpha: float | None
    max_length: int | None
    step_seconds: float | None = None

    def record(self, probe_steps: int) -> dict:
        """The `scores.json` fields `pipeline.prune_stage` reads, named as `probe_stage` writes
        them; `task` is None: the probe cannot tell which task the trainer's data is."""
        train = {k: v for k, v in asdict(self).items() if k not in ("source_model", "step_seconds")}
        return {"source_model": self.source_model, "task": None, "train_config": train,
                "probe": {"steps": probe_steps, "schedule_steps": self.steps,
                          "step_seconds": self.step_seconds}}


@dataclass
class IGIA:
    """Accumulated gradient information of one probe run.

    `sq_norms[i, m]` is ||S_i||_F^2 of module m at probe step i. `dense` holds F_W for the modules
    kept as dense accumulators; `factors` holds the per-step (G_B, G_A) stacks for the others.
    `run`: what the callback saw of the training run (written by `save`, not read back).
    """

    module_names: list[str]
    module_layers: list[int]
    num_layers: int
    mode: str
    sq_norms: torch.Tensor
    dense: dict[str, torch.Tensor] = field(default_factory=dict)
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    model_info: dict = field(default_factory=dict)
    run: TrainingRun | None = None

    @property
    def steps(self) -> int:
        return int(self.sq_norms.shape[0])

    @property
    def layer_scores(self) -> list[float]:
        """The paper's layer score: sum over steps and modules of ||S_i||_F^2."""
        return self.scores("squared")

    def scores(self, variant: str = "squared") -> list[float]:
        """Per-layer scores; `unsquared` is the authors' script: sum of ||S_i||_F."""
        if variant not in SCORE_VARIANTS:
            raise GradPrunerError(f"unknown score variant {variant!r} (use one of {SCORE_VARIANTS})")
        per_module = self.sq_norms if variant == "squared" else self.sq_norms.sqrt()
        totals = per_module.sum(dim=0)
        out = [0.0] * self.num_layers
        for layer, value in zip(self.module_layers, totals.tolist()):
            out[layer] += value
        return out

    def matrix(self, name: str) -> torch.Tensor:
        """The full fp32 F_W of module `name` (a base-model weight name), built on demand."""
        if name in self.dense:
            return self.dense[name]
        if name not in self.factors:
            raise KeyError(f"no IGIA for {name}")
        grad_b, grad_a = self.factors[name]
        out = torch.zeros(grad_b.shape[1], grad_a.shape[2], dtype=torch.float32)
        for b, a in zip(grad_b, grad_a):
            out += (b.float() @ a.float()).square_()
        return out

    def state_numel(self) -> int:
        """Numbers held for the F_W matrices (dense accumulators plus factors)."""
        dense = sum(t.numel() for t in self.dense.values())
        return dense + sum(b.numel() + a.numel() for b, a in self.factors.values())

    def dense_numel(self) -> int:
        """Numbers that dense fp32 accumulators for every module would hold."""
        shapes = [tuple(t.shape) for t in self.dense.values()]
        shapes += [(b.shape[1], a.shape[2]) for b, a in self.factors.values()]
        return sum(math.prod(s) for s in shapes)

    def save(self, directory: str | Path, extra: dict | None = None) -> None:
        """Write `igia.safetensors` (tensors) and `scores.json` (scores, metadata, the run's
        record and `extra`, which overrides the run's fields)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {"sq_norms": self.sq_norms.contiguous()}
        for name, value in self.dense.items():
            tensors[f"dense:{name}"] = value.contiguous()
        for name, (grad_b, grad_a) in self.factors.items():
            tensors[f"grad_b:{name}"] = grad_b.contiguous()
            tensors[f"grad_a:{name}"] = grad_a.contiguous()
        save_file(tensors, str(directory / _TENSORS))
        meta = {
            "layer_scores": self.scores("squared"),
            "layer_scores_unsquared": self.scores("unsquared"),
            "num_layers": self.num_layers,
            "steps": self.steps,
            "mode": self.mode,
            "module_names": self.module_names,
            "module_layers": self.module_layers,
            "model": self.model_info,
            **(self.run.record(self.steps) if self.run else {}),
            **(extra or {}),
        }
        (directory / _SCORES).write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, directory: str | Path) -> "IGIA":
        """Read an IGIA written by `save`."""
        directory = Path(directory)
        if not (directory / _SCORES).is_file() or not (directory / _TENSORS).is_file():
            raise GradPrunerError(f"{directory}: not a probe output (no {_SCORES} / {_TENSORS}): give "
                                  "the folder `gradpruner probe --out` wrote")
        try:
            meta = json.loads((directory / _SCORES).read_text())
            tensors = load_file(str(directory / _TENSORS))
        except Exception as err:  # JSON, OS and safetensors' own errors all mean "unreadable"
            raise GradPrunerError(f"{directory}: unreadable probe output ({err})") from None
        dense = {k.split(":", 1)[1]: v for k, v in tensors.items() if k.startswith("dense:")}
        factors = {
            k.split(":", 1)[1]: (v, tensors["grad_a:" + k.split(":", 1)[1]])
            for k, v in tensors.items()
            if k.startswith("grad_b:")
        }
        return cls(
            module_names=meta["module_names"],
            module_layers=meta["module_layers"],
            num_layers=meta["num_layers"],
            mode=meta["mode"],
            sq_norms=tensors["sq_norms"],
            dense=dense,
            factors=factors,
            model_info=meta.get("model", {}),
        )


def model_info(model) -> dict:
    """What identifies the probed model, to refuse scores from another one later."""
    config = base_model(model).config
    return {
        "model_type": config.model_type,
        "num_hidden_layers": config.num_hidden_layers,
        "hidden_size": config.hidden_size,
        "vocab_size": config.vocab_size,
        "name_or_path": str(getattr(config, "name_or_path", "")),
    }


class _Tracked:
    """One probed module: where its gradients are and how its F_W is stored."""

    def __init__(self, name: str, layer: int, grads: tuple, dense: bool):
        self.name, self.layer, self.grads, self.is_dense = name, layer, grads, dense
        self.accumulator: torch.Tensor | None = None
        self.steps_b: list[torch.Tensor] = []
        self.steps_a: list[torch.Tensor] = []


class IGIACallback(TrainerCallback):
    """Accumulates the IGIA of every decoder linear module over the first `max_steps` steps.

    Give it to a `transformers.Trainer` (or anything built on it, such as TRL's `SFTTrainer`)
    that trains a PEFT LoRA model, or the plain model for full fine-tuning. It reads the gradients
    at `on_pre_optimizer_step` (after clipping; under DDP after the all-reduce; under FSDP2 each
    module's gradients gathered whole, one module at a time, so every rank holds the same IGIA;
    FSDP1 and DeepSpeed are refused at `on_train_begin`) and, unless
    `stop_training=False`, stops training once `max_steps` steps were seen. `result()` returns
    the `IGIA` with what the callback saw of the run (`TrainingRun`: the model, the Trainer's
    settings, the step time), which `IGIA.save` records for `gradpruner prune`. Factor storage
    goes to `store_device` ("cpu" by default, so GPU memory is spared).
    """

    def __init__(self, max_steps: int | None = None, stop_training: bool = True,
                 store_device: str | torch.device = "cpu"):
        if max_steps is not None and max_steps < 1:
            raise GradPrunerError(f"probe steps must be at least 1, got {max_steps}")
        self.max_steps = max_steps
        self.stop_training = stop_training
        self.store_device = torch.device(store_device)
        self._tracked: list[_Tracked] = []
        self._sq_norms: list[torch.Tensor] = []
        self._mode = ""
        self._num_layers = 0
        self._info: dict = {}
        self._run: TrainingRun | None = None
        self._timer = StepTimer()

    @property
    def steps_seen(self) -> int:
        return len(self._sq_norms)

    @property
    def step_seconds(self) -> float | None:
        """The steady seconds of an optimizer step of the run (see `timing.StepTimer`)."""
        return self._timer.steady_seconds()

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if self._tracked:
            return
        refuse_sharded_training(args, model)
        horizon = self.max_steps or state.max_steps or args.max_steps
        self._attach(model, horizon if horizon and horizon > 0 else None)
        self._run = training_run(args, state, model, self._info["name_or_path"],
                                 full=self._mode == "full")

    def _attach(self, model, horizon: int | None) -> None:
        prefix = layer_prefix(model)
        self._num_layers = base_model(model).config.num_hidden_layers
        self._info = model_info(model)
        lora = lora_modules(model)
        self._mode = "lora" if lora else "full"
        candidates = lora or _full_modules(model, prefix)
        for name, grads, shape, rank in candidates:
            layer = layer_index(name, prefix)
            if layer is None:
                continue
            factor_numel = (horizon or 0) * rank * (shape[0] + shape[1])
            dense = self._mode == "full" or horizon is None or factor_numel >= math.prod(shape)
            self._tracked.append(_Tracked(_base_name(name), layer, grads, dense))
        if not self._tracked:
            raise GradPrunerError("the probe found no trainable linear module in the decoder layers")

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if self.max_steps is not None and self.steps_seen >= self.max_steps:
            return
        sq_norms = torch.stack([self._accumulate(t) for t in self._tracked]).cpu()
        if not torch.isfinite(sq_norms).all():
            bad = self._tracked[int((~torch.isfinite(sq_norms)).nonzero()[0])].name
            raise GradPrunerError(
                f"non-finite gradient at probe step {self.steps_seen + 1} in {bad}; "
                "lower the learning rate or use fp32"
            )
        self._sq_norms.append(sq_norms)

    def on_step_end(self, args, state, control, **kwargs):
        self._timer.on_step_end(args, state, control)
        if self.stop_training and self.max_steps is not None and self.steps_seen >= self.max_steps:
            control.should_training_stop = True
        return control

    def _accumulate(self, tracked: _Tracked) -> torch.Tensor:
        """Add one step of `tracked` and return its ||S||_F^2 (fp32 scalar)."""
        grads = [full_grad(p) for p in tracked.grads]
        if any(g is None for g in grads):
            return torch.zeros((), dtype=torch.float32)
        if len(grads) == 1:
            sim = grads[0].float()
            self._add_dense(tracked, sim)
            return sim.square().sum()
        grad_a, grad_b = (g.float() for g in grads)
        sq_norm = ((grad_b.T @ grad_b) * (grad_a @ grad_a.T)).sum()
        if tracked.is_dense:
            self._add_dense(tracked, grad_b @ grad_a)
        else:
            tracked.steps_b.append(grad_b.to(self.store_device, copy=True))
            tracked.steps_a.append(grad_a.to(self.store_device, copy=True))
        return sq_norm

    def _add_dense(self, tracked: _Tracked, sim: torch.Tensor) -> None:
        if tracked.accumulator is None:
            tracked.accumulator = torch.zeros(sim.shape, dtype=torch.float32, device=sim.device)
        tracked.accumulator.addcmul_(sim, sim)

    def result(self) -> IGIA:
        """The IGIA of the steps seen so far."""
        if not self._sq_norms:
            raise GradPrunerError("the probe saw no optimizer step (is the training data empty?)")
        dense, factors = {}, {}
        for t in self._tracked:
            if t.is_dense and t.accumulator is not None:
                dense[t.name] = t.accumulator.detach().cpu()
            elif t.steps_b:
                factors[t.name] = (torch.stack(t.steps_b).cpu(), torch.stack(t.steps_a).cpu())
        return IGIA(
            module_names=[t.name for t in self._tracked],
            module_layers=[t.layer for t in self._tracked],
            num_layers=self._num_layers,
            mode=self._mode,
            sq_norms=torch.stack(self._sq_norms),
            dense=dense,
            factors=factors,
            model_info=self._info,
            run=replace(self._run, step_seconds=self.step_seconds) if self._run else None,
        )


def training_run(args, state, model, name_or_path: str, full: bool) -> TrainingRun:
    """What the Trainer's arguments, state and model (its PEFT config, unless `full`) say of
    the run, at its start."""
    configs = getattr(model, "peft_config", None) or {}
    active = getattr(model, "active_adapter", None)
    lora = None if full else (configs.get(active) if isinstance(active, str)
                              else next(iter(configs.values()), None))
    local = bool(name_or_path) and Path(name_or_path).is_dir()
    return TrainingRun(
        source_model=str(Path(name_or_path).resolve()) if local else name_or_path or None,
        steps=state.max_steps if state.max_steps > 0 else None,
        batch_size=args.per_device_train_batch_size, grad_accum=args.gradient_accumulation_steps,
        processes=args.world_size, lr=args.learning_rate, full=full,
        lora_rank=getattr(lora, "r", None), lora_alpha=getattr(lora, "lora_alpha", None),
        max_length=getattr(args, "max_length", None),
    )


def _base_name(name: str) -> str:
    """A module name as a base-model weight name (no PEFT prefix), e.g. `model.layers.0.mlp.up_proj.weight`."""
    name = name.removeprefix("base_model.model.")
    return name if name.endswith(".weight") else name + ".weight"


def lora_modules(model) -> list[tuple[str, tuple, tuple[int, int], int]]:
    """(name, (A.weight, B.weight), (out, in), rank) of each LoRA-wrapped linear module."""
    found = []
    for name, module in model.named_modules():
        lora_a, lora_b = getattr(module, "lora_A", None), getattr(module, "lora_B", None)
        if not isinstance(lora_a, torch.nn.ModuleDict) or not lora_a:
            continue
        adapter = _active_adapter(module, lora_a)
        a, b = lora_a[adapter].weight, lora_b[adapter].weight
        if not a.requires_grad:
            continue
        found.append((name, (a, b), (b.shape[0], a.shape[1]), a.shape[0]))
    return found


def _active_adapter(module, lora_a: torch.nn.ModuleDict) -> str:
    active = getattr(module, "active_adapters", None) or list(lora_a.keys())
    names = [a for a in active if a in lora_a]
    if len(names) != 1:
        raise GradPrunerError(f"the probe needs exactly one active LoRA adapter, found {names}")
    return names[0]


def _full_modules(model, prefix: str) -> list[tuple[str, tuple, tuple[int, int], int]]:
    """(name, (weight,), shape, 0) of each trainable nn.Linear inside the decoder layers."""
    found = []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and module.weight.requires_grad:
            if layer_index(name, prefix) is not None:
                found.append((name, (module.weight,), tuple(module.weight.shape), 0))
    return found


def check_igia_matches(igia, model_or_config) -> None:
    """Refuse a probe output that was made on another model."""
    config = getattr(base_model(model_or_config), "config", model_or_config)
    info = igia.model_info or {}
    expected = {"num_hidden_layers": config.num_hidden_layers, "hidden_size": config.hidden_size,
                "model_type": config.model_type}
    if igia.num_layers != config.num_hidden_layers:
        raise GradPrunerError(
            f"the scores are for a model with {igia.num_layers} layers, this one has "
            f"{config.num_hidden_layers}: probe this model first"
        )
    for key, value in expected.items():
        if key in info and info[key] != value:
            raise GradPrunerError(
                f"the scores come from another model ({key} {info[key]!r}, this model {value!r}): "
                "pass the probed model with --model, or probe this model first"
            )
