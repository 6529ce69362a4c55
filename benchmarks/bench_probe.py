"""The probe's cost: IGIA state memory against dense fp32 accumulators, and step time against
plain LoRA steps, measured side by side in one process.

    python benchmarks/bench_probe.py                 # default model + one Llama-3.1-8B-shaped layer
    python benchmarks/bench_probe.py --steps 40 --rank 8 --repeats 3

Memory is exact (numbers held by the IGIA state, fp32). Step time: LoRA training with and
without the IGIACallback on the same data and seed, runs alternating, median over repeats of the
per-step median (the first steps are dropped as warm-up).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainerCallback, TrainingArguments

from gradpruner.tasks.examples import PadCollator
from gradpruner.training.igia import IGIACallback
from gradpruner.training.trainer import TrainConfig, add_lora


class TimedIGIACallback(IGIACallback):
    """The probe, with the wall time spent inside its gradient hook recorded per step."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.hook_times: list[float] = []

    def on_pre_optimizer_step(self, *args, **kwargs):
        start = time.perf_counter()
        super().on_pre_optimizer_step(*args, **kwargs)
        self.hook_times.append(time.perf_counter() - start)


class StepTimer(TrainerCallback):
    """Wall time of each optimizer step."""

    def __init__(self):
        self.times: list[float] = []
        self._start = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter() - self._start)


def features(n: int, length: int, vocab: int) -> list[dict]:
    gen = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        ids = torch.randint(5, vocab, (length,), generator=gen).tolist()
        out.append({"input_ids": ids, "labels": [-100] * (length // 2) + ids[length // 2:]})
    return out


def train_steps(make_model, feats, steps: int, rank: int, batch: int, with_probe: bool):
    """Per-step times and, with the probe, the IGIA of `steps` LoRA steps."""
    model = add_lora(make_model(), TrainConfig(lora_rank=rank, seed=0))
    timer = StepTimer()
    probe = TimedIGIACallback(max_steps=steps)
    callbacks = [timer, probe] if with_probe else [timer]
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(
            output_dir=tmp, per_device_train_batch_size=batch, max_steps=steps,
            learning_rate=1e-4, warmup_steps=0.03, lr_scheduler_type="cosine", max_grad_norm=1.0,
            save_strategy="no", report_to="none", remove_unused_columns=False, use_cpu=True,
            disable_tqdm=True, seed=0, logging_steps=10_000,
        )
        Trainer(model=model, args=args, train_dataset=feats, data_collator=PadCollator(0),
                callbacks=callbacks).train()
    return timer.times, (probe if with_probe else None)


def step_time_ratio(make_model, feats, steps, rank, batch, repeats):
    """Medians of: plain LoRA step, probe step, time inside the probe's hook; and the IGIA."""
    plain, probed, hook, probe = [], [], [], None
    for _ in range(repeats):
        times, _ = train_steps(make_model, feats, steps, rank, batch, with_probe=False)
        plain.append(statistics.median(times[2:]))
        times, probe = train_steps(make_model, feats, steps, rank, batch, with_probe=True)
        probed.append(statistics.median(times[2:]))
        hook.append(statistics.median(probe.hook_times[2:]))
    medians = [statistics.median(x) for x in (plain, probed, hook)]
    return (*medians, probe.result())


def report(name: str, igia, plain: float, probed: float, hook: float) -> None:
    dense_mb = igia.dense_numel() * 4 / 2**20
    state_mb = igia.state_numel() * 4 / 2**20
    worst = max(
        (b.numel() + a.numel()) / (b.shape[1] * a.shape[2]) for b, a in igia.factors.values()
    ) if igia.factors else 1.0
    print(f"\n## {name}")
    print(f"IGIA state {state_mb:.1f} MiB vs dense fp32 accumulators {dense_mb:.1f} MiB: "
          f"ratio {state_mb / dense_mb:.3f}  (factor-form modules {len(igia.factors)}, "
          f"dense-form {len(igia.dense)}; largest factor/dense ratio of a module {worst:.3f})")
    print(f"step time: plain LoRA {plain:.3f} s, with probe {probed:.3f} s: ratio {probed / plain:.3f}")
    print(f"time inside the probe's hook {hook * 1000:.1f} ms per step: "
          f"{hook / plain:.2%} of a plain LoRA step")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-default", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"t = {args.steps} probe steps, LoRA rank {args.rank}, {torch.get_num_threads()} threads")

    if not args.skip_default:
        from transformers import AutoModelForCausalLM

        from gradpruner.assets import default_model_dir

        path = default_model_dir()
        feats = features(8 * args.steps, 64, 49152)
        results = step_time_ratio(
            lambda: AutoModelForCausalLM.from_pretrained(path), feats, args.steps, args.rank, 8,
            args.repeats)
        report("default model (SmolLM2-135M, 30 layers, batch 8 x 64 tokens)", results[3],
               *results[:3])

    config = LlamaConfig(hidden_size=4096, intermediate_size=14336, num_attention_heads=32,
                         num_key_value_heads=8, num_hidden_layers=1, vocab_size=512,
                         tie_word_embeddings=True)
    feats = features(args.steps, 32, 512)
    results = step_time_ratio(lambda: LlamaForCausalLM(config), feats, args.steps, args.rank, 1,
                              args.repeats)
    report("one Llama-3.1-8B-shaped layer (hidden 4096, MLP 14336, 8 KV heads; batch 1 x 32)",
           results[3], *results[:3])


if __name__ == "__main__":
    main()
