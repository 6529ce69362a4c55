"""Command line: arguments only; every command calls the library.

    gradpruner probe | prune | finetune | eval | run | compare | export | tasks

Parsing, `--help`, argument errors and the checks of the settings finish before torch,
transformers or peft are imported (the modules they need import none).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from .errors import GradPrunerError


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr and exit code 2."""

    def error(self, message: str):
        self.exit(2, f"gradpruner: error: {message} (see --help)\n")


def _add_model(p: argparse.ArgumentParser, device_map: bool = False, gguf: bool = False) -> None:
    also = "; or a .gguf file of `gradpruner export`, scored through llama.cpp" if gguf else ""
    p.add_argument("--model", default=None,
                   help=f"local HF folder or Hub id (default: the offline SmolLM2-135M-Instruct){also}")
    p.add_argument("--dtype", default="auto",
                   help="auto (default: bf16 on CUDA, else fp32) | float32 | bfloat16 | float16")
    p.add_argument("--device", default="auto", help="auto (default: CUDA when present) | cpu | cuda[:N]")
    if device_map:
        p.add_argument("--device-map", default=None, choices=["auto"],
                       help="spread a model too large for one device over all GPUs (and the CPU)")


def _add_data(p: argparse.ArgumentParser, evaluation: bool = True, task: str | None = None) -> None:
    default = f"default {task}; " if task else ""
    p.add_argument("--task", help=f"built-in task ({default}see `gradpruner tasks`)")
    p.add_argument("--data", help="your data: a JSONL, JSON, parquet or CSV file, a `datasets` "
                                  "folder or a Hub dataset id, of conversations ({\"messages\": "
                                  "[...]}), prompt/completion or multiple-choice records (README)")
    if evaluation:
        p.add_argument("--eval-data", help="evaluation data, as --data (default: the data's test or "
                                           "validation split, else a held-out tenth of it)")
    p.add_argument("--chat-template", choices=["auto", "on", "off"], default="auto",
                   help="auto (default): conversations in the tokenizer's chat template, plain "
                        "records as they are; on: plain records too (the prompt as the user's "
                        "turn); off: no template (plain records only)")


def _add_output(p: argparse.ArgumentParser, default: str | None = None) -> None:
    p.add_argument("--out", required=default is None, default=default,
                   help=f"output folder (default {default})" if default else "output folder")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")


def _add_train(p: argparse.ArgumentParser, steps: int | None) -> None:
    p.add_argument("--steps", type=int, default=steps,
                   help=f"optimizer steps (default {steps if steps else 'one epoch'})")
    p.add_argument("--epochs", type=float, default=None, help="epochs instead of --steps")
    p.add_argument("--batch-size", type=int, default=8, help="per-process batch size (default 8)")
    p.add_argument("--grad-accum", type=int, default=1, help="gradient accumulation steps (default 1)")
    p.add_argument("--lr", type=float, default=3e-4, help="learning rate (default 3e-4)")
    p.add_argument("--lora-rank", type=int, default=8, help="LoRA rank (default 8)")
    p.add_argument("--lora-alpha", type=int, default=32, help="LoRA alpha (default 32)")
    p.add_argument("--full", action="store_true", help="full fine-tuning instead of LoRA")
    p.add_argument("--max-length", type=int, default=256, help="tokens per training example (default 256)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of training and of the random criterion (default 0)")
    p.add_argument("--gradient-checkpointing", action="store_true",
                   help="recompute activations to save memory")
    bits = p.add_mutually_exclusive_group()
    for n in (4, 8):
        bits.add_argument(f"--load-in-{n}bit", dest="load_in_bits", action="store_const", const=n,
                          help=f"QLoRA: LoRA on {n}-bit base weights (bitsandbytes); the adapters "
                               "are merged into the full-precision weights")


def _add_selection(p: argparse.ArgumentParser, ratio: float | None) -> None:
    """The criterion, the cut (`ratio` or a count or a list) and the merge."""
    from .catalog import CRITERION_NAMES

    p.add_argument("--criterion", default="auto", choices=CRITERION_NAMES,
                   help="auto (default): of the cuts several criteria propose, the one with the "
                        "lowest held-out task loss; gradpruner: the paper's IGIA score")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--ratio", type=float, default=ratio,
                       help="fraction of decoder layers to remove" + (f" (default {ratio})" if ratio else ""))
    group.add_argument("--layers", type=int, help="number of layers to remove")
    group.add_argument("--remove", help="explicit layers to remove, e.g. 3,4,5 or 20-27")
    p.add_argument("--merge", default="auto",
                   help="donor layers to merge by the paper's rule: a number (the paper: 3), 'all', "
                        "'none'; 'fold': replace each removed block by a least-squares linear map "
                        "folded into the layer before; 'replace': train the layer before each "
                        "removed block alone to reproduce the block (LLM-Streamline); or 'auto' "
                        "(default: no merge, the fold, and "
                        "donors 1-3 at scales 1, 0.5, 0.25, judged on held-out loss)")


def _add_merge_options(p: argparse.ArgumentParser) -> None:
    """The merge's density and the selection budget."""
    from .catalog import DEFAULT_DENSITY, FOLD_FITS

    p.add_argument("--density", type=float, default=DEFAULT_DENSITY,
                   help=f"kept fraction of each donor matrix (default {DEFAULT_DENSITY})")
    p.add_argument("--fold-fit", choices=FOLD_FITS, default="lstsq",
                   help="how the linear fold fits its map: lstsq, least squares (default lstsq), "
                        "or cosine, cosine distance from there (ReplaceMe's two objectives)")
    p.add_argument("--selection-budget", type=_budget, default=0.1, metavar="F",
                   help="auto's search and the merge search take at most this fraction of the "
                        "pruned model's fine-tune (timed by the probe), skipping the parts that do "
                        "not fit; 'none': the whole search (default 0.1)")


def _add_heal(p: argparse.ArgumentParser, rounds: bool = True) -> None:
    """How the cut model is healed (`training.healing.HealConfig`)."""
    from .catalog import DISTILL_POSITIONS, HEALINGS, TEACHER_CACHES

    p.add_argument("--heal", choices=HEALINGS, default="lora",
                   help="lora (default): LoRA on every linear module; full: every weight; partial: "
                        "full fine-tuning of the last --heal-layers layers, the rest frozen")
    p.add_argument("--heal-layers", type=int, default=4, help="layers --heal partial trains (default 4)")
    p.add_argument("--heal-lm-head", action="store_true", help="--heal partial also trains the LM head")
    p.add_argument("--heal-lr", type=float, default=None,
                   help="learning rate of the healing (default: --lr)")
    p.add_argument("--distill", type=float, default=0.0, metavar="W",
                   help="weight of the teacher's KL term in the healing loss, 0-1 (default 0: none)")
    p.add_argument("--distill-positions", choices=DISTILL_POSITIONS, default="answer",
                   help="where the KL term compares the teacher's and the model's distributions: "
                        "the answer tokens (default) or every token of each example")
    p.add_argument("--align", type=float, default=0.0, metavar="W",
                   help="weight of the hidden-state alignment: each kept layer's output matched to "
                        "the dense layer it stands for, by cosine distance (default 0: none)")
    p.add_argument("--temperature", type=float, default=2.0, help="distillation temperature (default 2)")
    p.add_argument("--teacher", metavar="DIR",
                   help="the distillation teacher (default: the dense model with the probe's adapters)")
    p.add_argument("--teacher-cache", choices=TEACHER_CACHES, default="auto",
                   help="keep the teacher's --teacher-top-k tokens per answer position from each "
                        "example's first visit instead of running it on every batch; auto (default): "
                        "when the healing visits its examples more than once")
    p.add_argument("--teacher-top-k", type=int, default=64,
                   help="tokens per answer position the teacher cache keeps (default 64)")
    if rounds:
        p.add_argument("--rounds", type=int, default=1,
                       help="remove the layers in this many rounds, re-scored and healed in between (default 1)")
        p.add_argument("--round-steps", type=int, default=10,
                       help="healing steps between rounds (default 10)")


def _add_gguf(p: argparse.ArgumentParser) -> None:
    """The GGUF files of an export (`config.GGUFSettings`)."""
    p.add_argument("--quant",
                   help="comma-separated GGUF types, e.g. f16,q8_0,q4_k_m (default f16; also f32, "
                        "bf16, q6_k, q5_k_m, q5_0, q4_0, q3_k_m, q2_k)")
    p.add_argument("--llama-cpp", metavar="DIR",
                   help="a llama.cpp checkout whose convert_hf_to_gguf.py to use (default: "
                        "$GRADPRUNER_LLAMA_CPP, else llama-cpp-python's source package, fetched once)")


def _add_harness(p: argparse.ArgumentParser, models: str) -> None:
    """lm-evaluation-harness tasks (`evaluation/harness.py`)."""
    p.add_argument("--harness", metavar="TASKS",
                   help=f"comma-separated lm-eval tasks to run on {models} too (needs "
                        "`pip install lm-eval`; --limit items of each)")
    p.add_argument("--harness-include", metavar="DIR",
                   help="folder of your own lm-eval task YAMLs for --harness")


def _flags_only(p: argparse.ArgumentParser) -> None:
    """Make every option of `p` set its value only when given: the defaults are the configs'
    (`config.py`), the same as in the help; for `run` and `compare` flags override `--config`."""
    for action in p._actions:
        action.default = argparse.SUPPRESS


def _budget(text: str) -> float | None:
    if text.strip().lower() == "none":
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a fraction or 'none', got {text!r}") from None


def _add_recipe(p: argparse.ArgumentParser, out: str | None) -> None:
    """The options of `run` and `compare` (`config.RecipeConfig`)."""
    p.add_argument("--config", help="YAML or JSON file of settings (a run's report.json works too)")
    _add_model(p)
    _add_data(p, task="arc_easy")
    _add_train(p, steps=60)
    _add_merge_options(p)
    _add_heal(p)
    p.add_argument("--probe-steps", type=int, default=40, help="steps of the probe (default 40)")
    p.add_argument("--heldout", type=int, default=32,
                   help="training examples set apart, never trained on, to judge cuts (default 32)")
    p.add_argument("--limit", type=int, default=300, help="evaluation items (default 300; 0 = all)")
    p.add_argument("--cold-start", action="store_true",
                   help="start the pruned model's LoRA adapters fresh instead of from the probe's")
    if out:
        _add_output(p, out)
    else:
        p.add_argument("--out", required=True,
                       help="output folder; an unfinished comparison there is resumed")


TRAIN_FLAGS = ("steps", "epochs", "batch_size", "grad_accum", "lr", "lora_rank", "lora_alpha",
               "full", "max_length", "seed", "gradient_checkpointing", "load_in_bits")
HEAL_FLAGS = {"heal": "method", "heal_layers": "layers", "heal_lm_head": "lm_head", "heal_lr": "lr",
              "distill": "distill", "temperature": "temperature", "teacher": "teacher",
              "teacher_cache": "teacher_cache", "teacher_top_k": "top_k",
              "distill_positions": "distill_positions", "align": "align"}
RENAMED = {"layers": "count", "limit": "eval_limit"}  # flag -> config field
FLAGLESS = {"command", "version", "config", "no_dense", "cold_start", "heals", "methods"}


def config_values(args) -> dict:
    """The config values the given flags set (flags left out set nothing): one mapping from the
    flags of every command to the fields of its config (`config.py`)."""
    from .config import parse_merge_count
    from .removal import parse_layer_list

    given = {RENAMED.get(k, k): v for k, v in vars(args).items() if k not in FLAGLESS}
    out = {k: v for k, v in given.items() if k not in TRAIN_FLAGS and k not in HEAL_FLAGS}
    train = {k: given[k] for k in TRAIN_FLAGS if k in given}
    if "epochs" in train:
        train["steps"] = None
    if train:
        out["train"] = train
    heal = {field: given[flag] for flag, field in HEAL_FLAGS.items() if flag in given}
    if heal:
        out["heal"] = heal
    if "data" in given and args.command in ("run", "compare"):
        out["task"] = None  # the built-in default task gives way to the user's data
    if "harness" in given:
        from .evaluation.harness import parse_task_names

        out["harness"] = list(parse_task_names(given["harness"]))
    if "eval_limit" in given and args.command in ("run", "compare"):
        out["eval_limit"] = given["eval_limit"] or None  # 0: every item
    if "no_dense" in vars(args):
        out["dense"] = False
    if "cold_start" in vars(args):
        out["warm_start"] = False
    if "merge" in given:
        out["merge"] = parse_merge_count(given["merge"])
    if "fold_fit" in out:  # a setting of the fold, beside a config file's others
        out["settings"] = {"fold": {"fit": out.pop("fold_fit")}}
    if given.get("remove") is not None:
        out["remove"] = parse_layer_list(given["remove"])
    if "heals" in vars(args):
        out["heals"] = [h.strip() for h in args.heals.split(",") if h.strip()]
    if "methods" in vars(args) and args.methods != "all":
        out["methods"] = [m.strip() for m in args.methods.split(",") if m.strip()]
    if args.command == "compare" and "ratio" in out:
        out["ratios"] = _floats(out.pop("ratio"), "--ratio")
    elif any(k in out for k in ("ratio", "count", "remove", "keep")):
        out = {"ratio": None, "count": None, "remove": None, **out}  # one size replaces another
    return out


def command_config(args, check: bool = True):
    """The resolved config of a command, checked unless `check` is False: its defaults, then
    `--config` (run, compare), then the flags."""
    from . import config

    classes = {"probe": config.ProbeConfig, "prune": config.PruneConfig,
               "finetune": config.FinetuneConfig, "eval": config.EvalConfig,
               "run": config.RunConfig, "compare": config.CompareConfig,
               "export": config.ExportConfig}
    base = config.read_config_file(args.config) if getattr(args, "config", None) else {}
    cfg = classes[args.command].from_dict(config.merge_config(base, config_values(args)))
    if check:
        cfg.validate()
    return cfg


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="gradpruner", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)

    p = sub.add_parser("probe", help="run the first steps of fine-tuning and save the IGIA")
    _add_model(p, device_map=True)
    _add_data(p)
    _add_train(p, steps=40)
    p.add_argument("--schedule-steps", type=int, default=None,
                   help="length of the full run whose schedule the probe follows (default 100x)")
    p.add_argument("--heldout", type=int, default=32,
                   help="last training examples left out of the probe, to judge cuts (default 32)")
    _add_output(p)

    _flags_only(p)

    p = sub.add_parser("prune", help="remove (and merge) layers by the probe's scores")
    p.add_argument("--model", default=None, help="the model that was probed")
    p.add_argument("--scores", help="the probe's output folder (GradPruner's criteria)")
    _add_data(p, evaluation=False)
    p.add_argument("--heldout", type=int, default=None,
                   help="last training examples that judge cuts (default: as many as the probe "
                        "left out, else 32)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random criterion (default 0)")
    _add_selection(p, ratio=None)
    _add_merge_options(p)
    p.add_argument("--heal-steps", type=int, default=None,
                   help="steps of the fine-tune planned after pruning: sets the selection budget "
                        "(default: no budget)")
    _add_output(p)

    _flags_only(p)

    p = sub.add_parser("finetune", help="fine-tune a model (dense or pruned) on a task")
    _add_model(p, device_map=True)
    _add_data(p)
    _add_train(p, steps=None)
    p.add_argument("--save-every", type=int, default=None,
                   help="checkpoint every N steps into OUT.checkpoints (removed when done)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the last checkpoint in OUT.checkpoints")
    p.add_argument("--heldout", type=int, default=None,
                   help="last training examples left out (default: those that judged the model's "
                        "cut when its gradpruner.json names this task, else 0)")
    p.add_argument("--warm-start", metavar="PROBE_DIR",
                   help="start the adapters of each kept layer from the probe's (LoRA only)")
    _add_heal(p, rounds=False)
    _add_output(p)

    _flags_only(p)

    p = sub.add_parser("eval", help="evaluate a model on a task")
    _add_model(p, device_map=True, gguf=True)
    _add_data(p)
    p.add_argument("--limit", type=int, default=None, help="first N evaluation items")
    p.add_argument("--protocol", default="loglik", choices=["loglik", "generate"],
                   help="multiple choice by loglik (default): each choice's log-likelihood, as "
                        "lm-evaluation-harness scores it; generate: the answer letter the model "
                        "generates (generation tasks: always ROUGE-L)")
    p.add_argument("--batch-size", type=int, default=16, help="evaluation batch size (default 16)")
    p.add_argument("--out", help="write the metrics to this JSON file")
    _add_harness(p, "the model (alone when no --task or --data is given)")

    _flags_only(p)

    p = sub.add_parser("run", help="probe, prune, fine-tune and evaluate, beside the dense model")
    _add_recipe(p, "runs/default")
    _add_selection(p, ratio=0.2)
    p.add_argument("--keep", type=float, metavar="S",
                   help="size the cut by the accuracy to keep: remove as many layers as possible "
                        "while the healed model keeps at least this share of the dense fine-tuned "
                        "model's accuracy on held-out training examples (e.g. 0.95; at least "
                        "256 held out); replaces --ratio")
    p.add_argument("--keep-steps", type=int, metavar="N",
                   help="healing steps of each cut --keep tries (default: as many as the final "
                        "heal's, so the shares predict the final model's; fewer are cheaper but "
                        "keep more layers than needed)")
    p.add_argument("--no-dense", action="store_true", help="skip the dense reference fine-tune")
    p.add_argument("--save-every", type=int, default=None, metavar="N",
                   help="checkpoint the fine-tunes every N steps into OUT.partial, for --resume "
                        "(default: five times in each fine-tune)")
    p.add_argument("--resume", action="store_true",
                   help="continue the interrupted run in OUT.partial from its last finished stage "
                        "and checkpoint (default off: a run over an interrupted one is refused, "
                        "unless --overwrite)")
    _add_harness(p, "the dense and the pruned fine-tuned models, in the report")
    p.add_argument("--export", choices=["gguf"],
                   help="also export the healed model to OUT/gguf with llama.cpp's tools (the "
                        "serve extra) and score each file, and the dense model's, on the task "
                        "through llama.cpp, in the report")
    _add_gguf(p)
    _flags_only(p)

    p = sub.add_parser("compare", help="pruning methods side by side: same model, data, budget, seeds")
    _add_recipe(p, None)
    p.add_argument("--methods", help="comma-separated methods, or 'all' (default; see the README)")
    p.add_argument("--ratio", help="comma-separated fractions of layers to remove (default 0.25,0.4)")
    p.add_argument("--seeds", type=int, help="N seeds for every cell: --seed, --seed + 1, ... (default 1)")
    p.add_argument("--heals", help="comma-separated healing variants for every method (default lora; "
                                   "also full, partial, partial_head, distill, partial_distill, "
                                   "rounds, distill_all, distill_align, full_distill_align, and "
                                   "lora_lr3, partial_lr10, distill_lr3, full_lr1 "
                                   "with the healing learning rate set to 3e-4 / 1e-3 / 1e-4; "
                                   "catalog.HEALS)")
    _flags_only(p)

    p = sub.add_parser("export", help="export a model folder to GGUF with llama.cpp's converter and "
                                      "quantizer, each file checked against transformers")
    p.add_argument("--model", default=None,
                   help="local HF model folder (default: the offline SmolLM2-135M-Instruct)")
    p.add_argument("--format", default="gguf", choices=["gguf"], help="output format (default gguf)")
    _add_gguf(p)
    _add_output(p)
    _flags_only(p)

    sub.add_parser("tasks", help="list the built-in tasks")
    return parser


def _floats(text: str, option: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise GradPrunerError(f"{option} takes comma-separated numbers, got {text!r}") from None
    if not values:
        raise GradPrunerError(f"{option} is empty: give comma-separated numbers, e.g. {option} 0.25,0.4")
    return values


def _dispatch(args) -> int:
    """Check the settings (and read the data) that need no model, then import the model
    libraries and run the command's workflow."""
    if args.command is None:
        raise GradPrunerError("no command given: `gradpruner run` runs the whole job on the default "
                              "model and task (see --help for every command)")
    if args.command == "tasks":
        from .tasks import list_tasks

        print(f"{'task':<16}{'kind':<6}{'train':>8}{'eval':>8}  source")
        for task in list_tasks():  # sizes as recorded for the pinned packages: nothing loads
            train, held = (f"{n:>8}" for n in task.sizes) if task.sizes else (f"{'--data':>8}",) * 2
            print(f"{task.name:<16}{task.kind:<6}{train}{held}  {task.description}")
        return 0
    cfg = command_config(args)
    if args.command == "export":  # the output folder, then the serve extra, before any work
        from .export.llamacpp import require_runtime
        from .outputs import check_output_dir

        check_output_dir(cfg.out, cfg.overwrite)
        require_runtime()
    stage_task = None
    if args.command in ("probe", "prune", "finetune", "eval"):
        optional = args.command == "prune" or (args.command == "eval" and bool(cfg.harness))
        stage_task = cfg.resolve_task(optional)
    from .progress import interval_seconds

    interval_seconds()  # a bad $GRADPRUNER_PROGRESS_SECONDS stops here, before any loading
    # bitsandbytes, which PEFT imports when it is installed, warns at every start on CPUs with
    # AVX512-BF16 that it keeps its own 4-bit kernel when a Hub kernel cannot be had
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # weight-loading bars; training keeps its own progress bar
    from .workflows import stages

    if args.command == "probe":
        probed = stages.probe_stage(cfg, stage_task)
        print(json.dumps({"out": cfg.out, "layer_scores": probed.igia.layer_scores}))
    elif args.command == "prune":
        sidecar = stages.prune_stage(cfg, stage_task).to_json()
        print(json.dumps({k: sidecar[k] for k in ("removed_layers", "kept_layers", "merged",
                                                  "params_before", "params_after")}))
    elif args.command == "finetune":
        done = stages.finetune_stage(cfg, stage_task)
        print(json.dumps({"out": cfg.out, "train_loss": done.stats["train_loss"]}))
    elif args.command == "eval":
        print(json.dumps(stages.eval_stage(cfg, stage_task), indent=2))
    elif args.command == "export":
        exported = stages.export_stage(cfg)
        print(json.dumps({"out": cfg.out, "files": [f.to_json() for f in exported.files]}, indent=2))
    elif args.command == "compare":
        from .workflows.compare import compare

        results = compare(cfg)
        print(f"{cfg.out}/results.md: {len(results['cells'])} cells")
    else:
        from .workflows.run import run

        run(cfg)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    if args.version:
        from . import __version__

        print(__version__)
        return 0
    from .interrupt import sigterm_raises

    try:
        with sigterm_raises():
            return _dispatch(args)
    except GradPrunerError as err:
        print(f"gradpruner: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader of the output went away (`gradpruner tasks | head`)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit either
        return 128 + 13  # as a shell reports a process stopped by SIGPIPE
    except OSError as err:
        where = f": {err.filename}" if getattr(err, "filename", None) else ""
        print(f"gradpruner: error: {err.strerror or err}{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as interrupt:  # Ctrl-C, or SIGTERM (`interrupt.Terminated`)
        from .interrupt import close_progress_bars, exit_code, interrupted_message

        close_progress_bars()
        print(interrupted_message(args.command, _output(args), argv, interrupt), file=sys.stderr)
        return exit_code(interrupt)


def _output(args) -> str | None:
    """The output folder of the command `args`, from its config."""
    try:
        return command_config(args, check=False).out
    except GradPrunerError:
        return None


if __name__ == "__main__":
    sys.exit(main())
