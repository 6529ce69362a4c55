"""What a layer cut saves, measured against the best it could save.

    python benchmarks/bench_efficiency.py                                  # default model
    python benchmarks/bench_efficiency.py --shape llama8b --layers 8 --quick  # Llama-3.1-8B-shaped

For each ratio, the dense model and the cut models run side by side in one process: runs
alternate between the models and the median over repetitions is kept, so a shared, noisy machine
slows all of them alike. Every time is printed as pruned / dense, beside the ideal ratio of the
cost model (forward FLOPs of the matrix products, `gradpruner.model.costs.flops_ratio`, counting the LM
head only at the positions that need it) and "speed-up / ideal" = ideal ratio / measured ratio.

- fine-tuning step time: LoRA (rank 8, every linear module) and full fine-tuning, through the
  Trainer that `gradpruner finetune` uses; also with the LM head over every position, the
  training as it was before the answer-only head, to show that gap;
- inference: prefill latency (the last position's logits, as `generate` asks) and decode tokens
  per second with a KV cache, batch 1 and 8;
- peak memory of a LoRA step, a full step and a prefill: the weights plus the peak of what the
  step allocates on top (CPU: the process's peak resident memory, reset before each step);
- the probe's overhead: LoRA steps with the IGIA callback against plain LoRA steps;
- end to end: probe + prune + fine-tune of the cut model through the CLI's stages (loading and
  saving included), against fine-tuning the dense model for the same number of steps.

The cut removes the last layers before the final one (which layers go does not change the cost of
a cut; the sidecar of a real run records its own costs). The Llama-3.1-8B shape (hidden 4096, MLP
14336, 32 query / 8 KV heads, vocabulary 128256) has random weights and, on CPU, fewer layers;
its cut models share the dense model's weight tensors, so three of them fit in memory.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import gc
import inspect
import json
import re
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from transformers import AutoTokenizer, DynamicCache, LlamaConfig, LlamaForCausalLM

sys.path.insert(0, str(Path(__file__).parent))
from bench_probe import StepTimer  # noqa: E402

from gradpruner.config import FinetuneConfig, ProbeConfig, PruneConfig  # noqa: E402
from gradpruner.model.costs import flops_ratio  # noqa: E402
from gradpruner.tasks.examples import PadCollator, pad_id  # noqa: E402
from gradpruner.training.igia import IGIACallback  # noqa: E402
from gradpruner.model.loading import load_model, resolve_device, resolve_model  # noqa: E402
from gradpruner.workflows.stages import finetune_stage, probe_stage, prune_stage  # noqa: E402
from gradpruner.tasks import resolve_task  # noqa: E402
from gradpruner.removal import removal_count  # noqa: E402
from gradpruner.model.surgery import cut_layers  # noqa: E402
from gradpruner.evaluation.timing import interleaved_medians  # noqa: E402
from gradpruner.training.trainer import TrainConfig, add_lora, make_trainer  # noqa: E402

PARTS = ("lora", "full", "inference", "memory", "probe", "e2e")
LONG_RUN = (1000, 10)  # fine-tune and probe steps of the projection: the paper's probe of ~1 %
LLAMA_8B = dict(hidden_size=4096, intermediate_size=14336, num_attention_heads=32,
                num_key_value_heads=8, vocab_size=128256, rope_theta=500000.0,
                max_position_embeddings=8192, tie_word_embeddings=False)


# ---------------------------------------------------------------- models


def tail_cut(n_layers: int, ratio: float) -> list[int]:
    """Layers removed by a cut of `ratio`: the last ones before the final layer."""
    count = removal_count(n_layers, ratio)
    return list(range(n_layers - 1 - count, n_layers - 1))


def cut_copy(model, remove: list[int], share_weights: bool):
    """A copy of `model` without the `remove` layers; its weights are the dense model's own
    tensors when `share_weights` (inference and LoRA freeze them), else copied."""
    memo = {id(t): t for t in [*model.parameters(), *model.buffers()]} if share_weights else {}
    cut = copy.deepcopy(model, memo)
    cut_layers(cut, remove)
    return cut


def variants(model, ratios: list[float], share_weights: bool) -> dict[str, torch.nn.Module]:
    """The dense model (a copy unless weights are shared) and one cut model per ratio."""
    n = model.config.num_hidden_layers
    models = {"dense": cut_copy(model, [], share_weights)}
    for ratio in ratios:
        models[f"r{ratio}"] = cut_copy(model, tail_cut(n, ratio), share_weights)
    return models


def kept_of(model, dense) -> list[int]:
    """Original indices of `model`'s layers (tail cut)."""
    n, k = dense.config.num_hidden_layers, model.config.num_hidden_layers
    return list(range(k - 1)) + [n - 1] if k < n else list(range(n))


def load(shape: str, layers: int | None):
    """(dense model, tokenizer): the default model, or a random Llama-3.1-8B-shaped one."""
    if shape == "default":
        model, tokenizer, _ = load_model(None, "float32", "auto")
        return model, tokenizer
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(None))  # the default model's
    config = LlamaConfig(**LLAMA_8B, num_hidden_layers=layers or 32)
    torch.manual_seed(0)
    return LlamaForCausalLM(config).to(resolve_device("auto")).eval(), tokenizer


# ---------------------------------------------------------------- fine-tuning


def step_seconds(model, tokenizer, examples, cfg: TrainConfig, steps: int, full_head: bool,
                 callbacks: list | None = None) -> float:
    """Median wall time of an optimizer step over `steps` steps (the first dropped)."""
    timer = StepTimer()
    with tempfile.TemporaryDirectory() as tmp:
        trainer = make_trainer(model, tokenizer, examples, cfg, tmp, [timer, *(callbacks or [])],
                               max_steps=steps)
        if full_head:
            trainer.data_collator = PadCollator(pad_id(tokenizer))
        trainer.train()
    return statistics.median(timer.times[1:])


def training_table(models, tokenizer, examples, cfg, steps, repeats, full: bool) -> dict:
    """Median step seconds of each model, answer-only LM head and (LoRA) every-position head."""
    trainable = {name: (m if full else add_lora(m, cfg)) for name, m in models.items()}
    if full:
        for m in trainable.values():
            m.requires_grad_(True)
    runs = {}
    for name, m in trainable.items():
        runs[name] = lambda m=m: step_seconds(m, tokenizer, examples, cfg, steps, False)
        if not full:
            runs[f"{name} (head on every position)"] = (
                lambda m=m: step_seconds(m, tokenizer, examples, cfg, steps, True))
    return interleaved_medians(runs, repeats, warmup=0)


def head_share(tokenizer, examples, cfg: TrainConfig, model) -> tuple[float, int]:
    """Share of padded batch positions that go through the LM head in training, and the mean
    padded length, over the first batches the Trainer draws."""
    with tempfile.TemporaryDirectory() as tmp:
        loader = make_trainer(model, tokenizer, examples, cfg, tmp, max_steps=4).get_train_dataloader()
        batches = [b for _, b in zip(range(4), loader)]
    kept = sum(b["logits_to_keep"].numel() for b in batches)
    total = sum(b["input_ids"].shape[1] for b in batches)
    return kept / total, round(total / len(batches))


# ---------------------------------------------------------------- inference


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def prefill_and_decode(model, ids: torch.Tensor, new_tokens: int) -> tuple[float, float]:
    """Seconds of the prefill (KV cache filled, last position's logits) and seconds per decoded
    token over `new_tokens` greedy steps with the cache."""
    cache = {_cache_argument(model): DynamicCache(config=model.config)}  # filled in place
    sync(ids.device)
    with torch.inference_mode():
        start = time.perf_counter()
        logits = model(input_ids=ids, use_cache=True, logits_to_keep=1, **cache).logits
        sync(ids.device)
        prefill = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(new_tokens):
            logits = model(input_ids=logits[:, -1:].argmax(-1), use_cache=True, **cache).logits
        sync(ids.device)
    return prefill, (time.perf_counter() - start) / new_tokens


def _cache_argument(model) -> str:
    """The forward's name for the KV cache (`cache` in newer transformers, `past_key_values` before)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def inference_table(models, batch: int, prompt: int, new_tokens: int, repeats: int) -> dict:
    """Median prefill seconds and decode seconds per token of each model, runs alternating."""
    ids = torch.randint(100, 20000, (batch, prompt), generator=torch.Generator().manual_seed(0))
    ids = ids.to(models["dense"].device)
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in models}
    for round_ in range(repeats + 1):  # the first round warms up
        for name, m in models.items():
            measured = prefill_and_decode(m, ids, new_tokens)
            if round_:
                samples[name].append(measured)
    return {name: {"prefill_s": statistics.median(p for p, _ in runs),
                   "decode_s_per_token": statistics.median(d for _, d in runs)}
            for name, runs in samples.items()}


# ---------------------------------------------------------------- memory


def _status_kib(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def peak_extra_bytes(device: torch.device, work) -> int:
    """Peak bytes that `work()` allocates beyond what is held before it."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        work()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap back, so reuse shows as growth
    before = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak resident size
    work()
    return (_status_kib("VmHWM") - before) * 1024


def weight_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def memory_table(models, tokenizer, examples, cfg, batch: int, prompt: int, full: bool) -> dict:
    """Weights + peak extra bytes of a LoRA step, a full step (when `full`) and a prefill."""
    device = models["dense"].device
    ids = torch.randint(100, 20000, (batch, prompt), generator=torch.Generator().manual_seed(0)).to(device)
    out = {}
    for name, m in models.items():
        with torch.inference_mode():
            infer = peak_extra_bytes(device, lambda: m(input_ids=ids, logits_to_keep=1))
        out[name] = {"weights": weight_bytes(m), "prefill_extra": infer}
    def train(trainable) -> int:
        return peak_extra_bytes(device, lambda: step_seconds(trainable, tokenizer, examples, cfg, 2, False))

    for name, m in models.items():
        if full:
            out[name]["full_step_extra"] = train(copy.deepcopy(m).requires_grad_(True))
        out[name]["lora_step_extra"] = train(add_lora(cut_copy(m, [], True), cfg))
    return out


# ---------------------------------------------------------------- probe and end to end


def probe_overhead(model, tokenizer, examples, cfg, steps, repeats) -> dict:
    """Median LoRA step seconds without and with the probe's IGIA callback."""
    lora = add_lora(cut_copy(model, [], True), cfg)
    return interleaved_medians({
        "plain LoRA step": lambda: step_seconds(lora, tokenizer, examples, cfg, steps, False),
        "probe step": lambda: step_seconds(lora, tokenizer, examples, cfg, steps, False,
                                           [IGIACallback(max_steps=steps)]),
    }, repeats, warmup=0)


def end_to_end(task_name: str, cfg: TrainConfig, probe_steps: int, ratio: float,
               criteria: list[str]) -> dict:
    """Seconds of the CLI stages: dense fine-tune vs probe + prune + fine-tune per criterion."""
    task = resolve_task(task_name, None)
    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        finetune_stage(FinetuneConfig(out=f"{tmp}/dense", train=cfg), task)
        out["dense fine-tune"] = {"total": time.perf_counter() - start}
        print(f"[end to end] dense fine-tune: {out['dense fine-tune']['total']:.0f} s", flush=True)
        for criterion in criteria:
            parts = {}
            start = time.perf_counter()
            probe_stage(ProbeConfig(out=f"{tmp}/probe", train=replace(cfg, steps=probe_steps),
                                    schedule_steps=cfg.steps), task)
            parts["probe"] = time.perf_counter() - start
            mark = time.perf_counter()
            merge = 3 if criterion == "gradpruner" else "auto"
            prune_stage(PruneConfig(scores=f"{tmp}/probe", out=f"{tmp}/pruned-{criterion}",
                                    criterion=criterion, ratio=ratio, merge=merge, overwrite=True),
                        task)
            parts["prune"] = time.perf_counter() - mark
            mark = time.perf_counter()
            finetune_stage(FinetuneConfig(model=f"{tmp}/pruned-{criterion}",
                                          out=f"{tmp}/tuned-{criterion}", train=cfg), task)
            parts["fine-tune"] = time.perf_counter() - mark
            parts["total"] = time.perf_counter() - start
            out[f"probe + prune ({criterion}) + fine-tune"] = parts
            print(f"[end to end] {criterion}: {parts}", flush=True)
            for folder in ("probe", f"pruned-{criterion}", f"tuned-{criterion}"):
                shutil.rmtree(Path(tmp) / folder)
    return out


# ---------------------------------------------------------------- report


def print_ratios(title: str, medians: dict, ideals: dict[str, float], unit="s") -> None:
    """Each row against the dense row of its kind ("r0.4 (x)" against "dense (x)")."""
    lines = [f"\n### {title}", "", "| model | median | pruned / dense | ideal | speed-up / ideal |",
             "|---|---|---|---|---|"]
    for name, value in medians.items():
        variant, _, kind = name.partition(" ")
        ratio = value / medians[" ".join(filter(None, ["dense", kind]))]
        ideal = ideals.get(name)
        tail = f"{ideal:.3f} | {ideal / ratio:.2f}" if variant != "dense" else "- | -"
        lines.append(f"| {name} | {value:.4g} {unit} | {ratio:.3f} | {tail} |")
    print("\n".join(lines), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", choices=["default", "llama8b"], default="default")
    parser.add_argument("--layers", type=int, default=None, help="layers of the llama8b shape (32)")
    parser.add_argument("--ratios", default="0.25,0.4")
    parser.add_argument("--task", default="arc_easy")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--prompt", type=int, default=128, help="prompt tokens for inference")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--steps", type=int, default=4, help="steps per timed training run")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--e2e-steps", type=int, default=200, help="fine-tune steps end to end")
    parser.add_argument("--e2e-probe", type=int, default=10, help="probe steps end to end")
    parser.add_argument("--e2e-criteria", default="gradpruner,auto")
    parser.add_argument("--quick", action="store_true",
                        help="no full fine-tuning and no end to end (llama8b on CPU)")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"some of {','.join(PARTS)}")
    parser.add_argument("--json", default=None, help="write every number here")
    args = parser.parse_args()
    ratios = [float(r) for r in args.ratios.split(",")]
    parts = set(args.parts.split(","))
    if args.quick:
        parts -= {"full", "e2e"}
    torch.manual_seed(0)

    dense, tokenizer = load(args.shape, args.layers)
    task = resolve_task(args.task, None)
    examples = task.train_examples()[:256]  # what the timed steps draw from
    cfg = TrainConfig(batch_size=args.batch, max_length=args.max_length, lr=2e-4,
                      logging_steps=10_000, seed=0)
    config, n = dense.config, dense.config.num_hidden_layers
    print(f"# {args.shape}: {n} layers, {sum(p.numel() for p in dense.parameters()) / 1e6:.0f} M "
          f"parameters, {dense.device}, {torch.get_num_threads()} threads; cuts {ratios} "
          f"(tail); batch {args.batch}, {args.repeats} repeats", flush=True)
    results: dict = {"args": vars(args)}
    shared = variants(dense, ratios, share_weights=True)
    kept = {name: kept_of(m, dense) for name, m in shared.items()}

    share, length = head_share(tokenizer, examples, cfg, dense)
    print(f"training batches: {length} tokens padded, {share:.1%} of positions go through the head")
    train_ideal = {k: flops_ratio(config, v, length, share) for k, v in kept.items()}
    train_ideal.update({f"{k} (head on every position)": flops_ratio(config, v, length)
                        for k, v in kept.items()})
    if "lora" in parts:
        lora = training_table(variants(dense, ratios, True), tokenizer, examples, cfg, args.steps,
                              args.repeats, full=False)
        results["lora_step_s"] = lora
        print_ratios("LoRA fine-tuning step", lora, train_ideal)
        print(f"answer-only LM head: dense LoRA step {lora['dense'] / lora['dense (head on every position)']:.3f} "
              "of the step with the head on every position")
    if "full" in parts:
        full = training_table(variants(dense, ratios, False), tokenizer, examples, cfg, args.steps,
                              args.repeats, full=True)
        results["full_step_s"] = full
        print_ratios("full fine-tuning step", full, train_ideal)
        gc.collect()

    results["inference"] = {}
    for batch in (1, 8) if "inference" in parts else ():
        table = inference_table(shared, batch, args.prompt, args.new_tokens, args.repeats)
        results["inference"][batch] = table
        prefill_ideal = {k: flops_ratio(config, v, args.prompt, 1 / args.prompt) for k, v in kept.items()}
        mean_context = 2 * args.prompt + args.new_tokens  # a causal sequence averaging prompt + new / 2 keys
        decode_ideal = {k: flops_ratio(config, v, mean_context) for k, v in kept.items()}
        print_ratios(f"prefill, batch {batch} x {args.prompt} tokens",
                     {k: v["prefill_s"] for k, v in table.items()}, prefill_ideal)
        print_ratios(f"decode with KV cache, batch {batch}: seconds per token",
                     {k: v["decode_s_per_token"] for k, v in table.items()}, decode_ideal)

    if "memory" in parts:
        print_memory(memory_table(shared, tokenizer, examples, cfg, args.batch, args.prompt,
                                  full="full" in parts), args, results)
    if "probe" in parts:
        probe = probe_overhead(dense, tokenizer, examples, cfg, args.steps, args.repeats)
        results["probe_step_s"] = probe
        print(f"\n### probe overhead: probe step / plain LoRA step = "
              f"{probe['probe step'] / probe['plain LoRA step']:.3f} (target <= 1.05)", flush=True)

    if "e2e" in parts and args.shape == "default":
        del shared, dense
        gc.collect()
        print_end_to_end(args, cfg, max(ratios), results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))


def print_memory(memory: dict, args, results: dict) -> None:
    results["memory"] = memory
    lines = ["\n### peak memory (MiB): weights + peak extra of the step", "",
             f"| model | weights | prefill {args.batch} x {args.prompt} | LoRA step | full step |", "|---|---|---|---|---|"]
    for name, m in memory.items():
        mib = {k: v / 2**20 for k, v in m.items()}
        full_cell = f"{mib['weights'] + mib['full_step_extra']:.0f}" if "full_step_extra" in m else "-"
        lines.append(f"| {name} | {mib['weights']:.0f} | {mib['weights'] + mib['prefill_extra']:.0f} | "
                     f"{mib['weights'] + mib['lora_step_extra']:.0f} | {full_cell} |")
    print("\n".join(lines), flush=True)


def print_end_to_end(args, cfg: TrainConfig, ratio: float, results: dict) -> None:
    e2e_cfg = TrainConfig(**{**cfg.__dict__, "steps": args.e2e_steps})
    e2e = end_to_end(args.task, e2e_cfg, args.e2e_probe, ratio, args.e2e_criteria.split(","))
    results["end_to_end_s"] = e2e
    dense_s = e2e["dense fine-tune"]["total"]
    print(f"\n### end to end, ratio {ratio}: {args.e2e_steps} fine-tune steps, "
          f"{args.e2e_probe} probe steps (seconds; target <= 0.75 of the dense fine-tune)")
    for name, parts in e2e.items():
        detail = ", ".join(f"{k} {v:.0f}" for k, v in parts.items() if k != "total")
        print(f"- {name}: {parts['total']:.0f} s = {parts['total'] / dense_s:.3f} of dense"
              + (f" ({detail})" if detail else ""))
    print(f"\nprojected from these stage times to {LONG_RUN[0]} fine-tune steps and a "
          f"{LONG_RUN[1]}-step probe (each stage's time scaled by its steps; prune unchanged):")
    for name, parts in e2e.items():
        if "probe" in parts:
            long = (parts["probe"] * LONG_RUN[1] / args.e2e_probe + parts["prune"]
                    + parts["fine-tune"] * LONG_RUN[0] / args.e2e_steps)
            print(f"- {name}: {long / (dense_s * LONG_RUN[0] / args.e2e_steps):.3f} of dense")


if __name__ == "__main__":
    main()
