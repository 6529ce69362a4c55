"""Fine-tuning on transformers' Trainer, with LoRA (merged afterwards) or full fine-tuning.

The probe is the first steps of the same run with an `IGIACallback` attached, so it sees exactly
the optimizer, clipping and schedule that the fine-tune would. Because everything goes through
the Trainer, `accelerate launch` / `torchrun` work unchanged.
"""

from __future__ import annotations

import inspect
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments, set_seed

from ..errors import GradPrunerError
from ..evaluation.timing import StepTimer
from ..model.loading import is_quantized
from ..model.surgery import base_model
from ..outputs import last_complete_checkpoint
from ..progress import Progress
from ..tasks.examples import Example, PadCollator, pad_id, training_features
from .igia import IGIA, IGIACallback
from .train_config import Checkpoints, TrainConfig
from .warm_start import adapter_state, warm_start

if TYPE_CHECKING:
    from .distill import Distillation


def add_lora(model, cfg: TrainConfig):
    """Wrap `model` with LoRA adapters on every linear module (PEFT's "all-linear"); a model
    with quantized base weights is first prepared for it (PEFT's `prepare_model_for_kbit_training`:
    the base frozen, its unquantized weights in fp32)."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if is_quantized(model):
        model = prepare_model_for_kbit_training(model, cfg.gradient_checkpointing)
    set_seed(cfg.seed)
    lora = LoraConfig(
        r=cfg.lora_rank,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


class TrainingProgress(TrainerCallback):
    """The training loop's progress (`progress.Progress`): steps done of the run's steps and
    the last logged loss, on the main process."""

    def __init__(self):
        self._progress: Progress | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self._progress = Progress(state.max_steps, "steps").__enter__()
            self._progress.update(state.global_step)  # a resumed run starts part-way

    def on_step_end(self, args, state, control, **kwargs):
        if self._progress is not None:
            self._progress.update(state.global_step - self._progress.count.done)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self._progress is not None and logs and "loss" in logs:
            self._progress.note(f"loss {logs['loss']:.4g}")

    def on_train_end(self, args, state, control, **kwargs):
        if self._progress is not None:
            self._progress.__exit__(None, None, None)
            self._progress = None


class _ScheduledTrainer(Trainer):
    """A Trainer whose learning-rate schedule is that of a run of `schedule_steps` steps, and
    whose loss mixes in a teacher's (`distillation`) when one is given.

    The probe runs only the first steps of a fine-tune; its warm-up and decay must be the full
    run's, while its progress bar and stopping point are the probe's own.
    """

    schedule_steps: int | None = None
    distillation: Distillation | None = None

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        return super().create_scheduler(self.schedule_steps or num_training_steps, optimizer)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.distillation is None:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        indices = inputs.pop("example_index", None)
        with self.distillation.student_states(model) as states:
            loss, outputs = super().compute_loss(model, inputs, True, num_items_in_batch)
        tokens = num_items_in_batch if self.model_accepts_loss_kwargs else None
        loss = self.distillation.loss(loss, outputs.logits, inputs, tokens, indices, states)
        return (loss, outputs) if return_outputs else loss


def make_trainer(model, tokenizer, examples: list[Example], cfg: TrainConfig, output_dir: str,
                 callbacks: list | None = None, max_steps: int | None = None,
                 schedule_steps: int | None = None, distill: Distillation | None = None,
                 autocast: torch.dtype | None = None, save_every: int | None = None) -> Trainer:
    """A Trainer over the tokenised gold answers of `examples` (loss on the answer only).

    `max_steps` overrides `cfg.steps`; `schedule_steps` sets the length of the learning-rate
    schedule when it differs from the number of steps run (the probe); `distill` mixes a
    teacher's distributions into the loss; `autocast` (bf16 or fp16) computes in that dtype
    while the weights stay fp32 (mixed precision, see `master_weights`; `cfg.bf16` asks for it
    too); `save_every` checkpoints into `output_dir` every that many steps. `TrainingProgress`
    shows the steps (a bar on a terminal, periodic lines in a log file) instead of the Trainer's
    bar.
    """
    cfg.validate()
    features = training_features(tokenizer, examples, cfg.max_length)
    if not features:
        raise GradPrunerError("no training examples: give more data (or a smaller --heldout)")
    if distill is not None and distill.top_k is not None:  # the teacher cache's key
        features = [{**f, "example_index": i} for i, f in enumerate(features)]
    steps = max_steps if max_steps is not None else cfg.steps
    # train where the model is (`--device cpu` on a GPU machine included); a model spread by
    # device_map stays where accelerate put it
    on_cpu = next(model.parameters()).device.type == "cpu" and not getattr(model, "hf_device_map", None)
    args = TrainingArguments(
        output_dir=output_dir,
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.lr,
        lr_scheduler_type=cfg.scheduler,
        warmup_steps=cfg.warmup_ratio,
        max_grad_norm=cfg.max_grad_norm,
        max_steps=steps if steps is not None else -1,
        num_train_epochs=cfg.epochs if cfg.epochs is not None else 1.0,
        seed=cfg.seed,
        data_seed=cfg.seed,
        bf16=cfg.bf16 or autocast == torch.bfloat16,
        fp16=autocast == torch.float16,
        **_checkpointing(cfg.gradient_checkpointing),
        logging_steps=cfg.logging_steps,
        save_strategy="steps" if save_every else "no",
        save_steps=save_every or 500,
        save_total_limit=2,
        report_to="none",
        remove_unused_columns=False,
        disable_tqdm=True,
        use_cpu=on_cpu,
        dataloader_num_workers=0,
    )
    trainer = _ScheduledTrainer(
        model=model,
        args=args,
        train_dataset=features,
        data_collator=PadCollator(pad_id(tokenizer), answer_logits=takes_logits_to_keep(model)
                                  and not (distill is not None and distill.all_positions)),
        callbacks=[*(callbacks or []), TrainingProgress()],
    )
    trainer.remove_callback(PrinterCallback)  # it prints every log dict to stdout
    trainer.schedule_steps, trainer.distillation = schedule_steps, distill
    return trainer


def takes_logits_to_keep(model) -> bool:
    """Whether the causal LM's forward can limit its LM head to given positions (`logits_to_keep`);
    training then projects only the answer positions onto the vocabulary (see `PadCollator`)."""
    return "logits_to_keep" in inspect.signature(base_model(model).forward).parameters


def _checkpointing(enabled: bool) -> dict:
    """Activation checkpointing under the argument name this transformers version uses."""
    if not enabled:
        return {}
    fields = TrainingArguments.__dataclass_fields__
    return {"activation_checkpointing" if "activation_checkpointing" in fields
            else "gradient_checkpointing": True}


def finetune(model, tokenizer, examples: list[Example], cfg: TrainConfig,
             callbacks: list | None = None, warm: tuple[dict, list[int]] | None = None,
             distill: Distillation | None = None, full_precision: Callable[[], object] | None = None,
             checkpoints: Checkpoints | None = None):
    """Fine-tune `model` on `examples`; returns (the plain HF model, stats).

    With LoRA the adapters are merged into the weights, so the result saves as an ordinary model.
    With `checkpoints`, checkpoints go to its folder every `every` steps, and with its `resume`
    the fine-tune continues from the last one there (optimizer, schedule, data order and RNG
    included), ending with the model an uninterrupted run would give. `warm` = (the probe's
    adapters, kept layers) starts the adapters from the probe's (`warm_start`). With `cfg.full`
    only the parameters that require gradients train (partial-layer healing freezes the rest);
    `distill` mixes a teacher's token distributions into the loss. A `model` with quantized base
    weights (QLoRA) needs `full_precision`, which loads the same model in full precision: the
    trained adapters are merged into those weights, not into the quantized ones (which would
    round the whole model to the quantization grid).
    """
    if is_quantized(model) and full_precision is None:
        raise GradPrunerError("a quantized model's adapters are merged into its full-precision "
                              "weights: give full_precision")
    set_seed(cfg.seed)
    use_cache = base_model(model).config.use_cache  # the Trainer switches it off for training
    trainable = model if cfg.full else add_lora(model, cfg)
    warmed = warm_start(trainable, *warm) if warm and not cfg.full else 0
    trained = sum(p.numel() for p in trainable.parameters() if p.requires_grad)
    resume = checkpoints is not None and checkpoints.resume
    with _output_dir(checkpoints) as out, master_weights(model, cfg.full) as half:
        timer = StepTimer()
        trainer = make_trainer(trainable, tokenizer, examples, cfg, out, [*(callbacks or []), timer],
                               distill=distill, autocast=half,
                               save_every=checkpoints.every if checkpoints else None)
        checkpoint = last_complete_checkpoint(out) if resume else None
        if resume and checkpoint is None:
            print(f"gradpruner: no checkpoint in {out}: starting from the first step", file=sys.stderr)
        start = time.perf_counter()
        output = trainer.train(resume_from_checkpoint=checkpoint)
        seconds = time.perf_counter() - start
    if cfg.full:
        result = trainable
    elif full_precision is not None:
        result = merge_adapters_into(full_precision(), trainable, cfg)
    else:
        result = trainable.merge_and_unload()
    result.config.use_cache = use_cache
    result.eval()
    stats = {
        "steps": trainer.state.global_step,
        "train_seconds": seconds,
        "train_loss": output.training_loss,
        "seconds_per_step": seconds / max(trainer.state.global_step, 1),
        "step_seconds": timer.steady_seconds(),
        "resumed_from": checkpoint,
        "warm_started_matrices": warmed,
        "teacher_rows": distill.teacher_rows if distill else None,
        "trained_parameters": trained,
        "config": asdict(cfg),
    }
    return result, stats


@contextmanager
def master_weights(model, full: bool) -> Iterator[torch.dtype | None]:
    """Full fine-tuning (`full`) of a model in bf16 or fp16 in mixed precision: inside, the
    model's weights are fp32 and the 16-bit dtype is yielded, to autocast in; on leaving, they
    return to that dtype. Adam's updates are often below a 16-bit weight's rounding step; on fp32
    weights they add up instead of being rounded away. Yields None (and changes nothing) for LoRA
    or a model already in fp32."""
    dtype = next(model.parameters()).dtype
    if not full or dtype not in (torch.bfloat16, torch.float16):
        yield None
        return
    model.float()
    try:
        yield dtype
    finally:
        model.to(dtype)


def merge_adapters_into(model, trained, cfg: TrainConfig):
    """`model` with the LoRA adapters of `trained` merged into its weights: `trained` is a PEFT
    model of the same architecture made by `add_lora` with `cfg` (the QLoRA fine-tune of a
    quantized copy of `model`)."""
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    state = get_peft_model_state_dict(trained)
    target = add_lora(model, cfg)
    if set(state) != set(get_peft_model_state_dict(target)):
        raise GradPrunerError("the trained adapters do not fit the full-precision model's modules")
    set_peft_model_state_dict(target, state)
    return target.merge_and_unload()


@contextmanager
def _output_dir(checkpoints: Checkpoints | None) -> Iterator[str]:
    """The checkpoint folder when checkpoints are kept or resumed from, else a temporary one."""
    if checkpoints is not None and (checkpoints.every or checkpoints.resume):
        Path(checkpoints.folder).mkdir(parents=True, exist_ok=True)
        yield checkpoints.folder
    else:
        with tempfile.TemporaryDirectory(prefix="gradpruner-train-") as tmp:
            yield tmp


def probe_gradients(model, tokenizer, examples: list[Example], cfg: TrainConfig, steps: int,
                    schedule_steps: int | None = None, adapters: dict | None = None,
                    checkpoints: Checkpoints | None = None) -> tuple[IGIA, dict]:
    """Run the first `steps` optimizer steps of fine-tuning and return their IGIA and stats.

    The learning-rate schedule is that of a run of `schedule_steps` (default: `cfg.steps`, or 100x
    the probe, the paper's "about 1 % of the run"). With LoRA the probe's adapters are removed
    afterwards (copied into `adapters` first when it is given, for `--warm-start`); with full
    fine-tuning the model's weights have taken `steps` optimizer steps. With `checkpoints`, the
    Trainer's checkpoints are kept in its folder every `checkpoints.every` steps and after the
    last step, so that `finetune` with `resume` and the same checkpoints continues the same run
    from them (the probe is that run's first steps).
    """
    if steps < 1:
        raise GradPrunerError(f"probe steps must be at least 1, got {steps}")
    horizon = max(schedule_steps or cfg.steps or 100 * steps, steps)
    set_seed(cfg.seed)
    use_cache = base_model(model).config.use_cache  # the Trainer switches it off for training
    trainable = model if cfg.full else add_lora(model, cfg)
    callback = IGIACallback(max_steps=steps)
    kept = Checkpoints(checkpoints.folder, checkpoints.every or steps) if checkpoints else None
    with _output_dir(kept) as out, master_weights(model, cfg.full) as half:
        trainer = make_trainer(trainable, tokenizer, examples, cfg, out, [callback],
                               steps, horizon, autocast=half, save_every=kept and kept.every)
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
    base_model(model).config.use_cache = use_cache
    if not cfg.full:
        if adapters is not None:  # kept for --warm-start
            adapters.update(adapter_state(trainable))
        trainable.unload()
    stats = {"steps": callback.steps_seen, "probe_seconds": seconds, "schedule_steps": horizon,
             "step_seconds": callback.step_seconds}
    return callback.result(), stats
