"""Reports: the `run` summary as Markdown and JSON, and the layer-score plot."""

from __future__ import annotations

import json
from pathlib import Path

from .search.budget import SkippedPart


def plot_layer_scores(scores: list[float], removed: list[int], merged: dict, path: Path,
                      title: str = "") -> None:
    """Bar chart of the layer scores (log scale), removed layers in red, donors hatched."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    donors = {d for ds in merged.values() for d in ds}
    colors = ["tab:red" if i in removed else "tab:blue" for i in range(len(scores))]
    fig, ax = plt.subplots(figsize=(max(6, len(scores) * 0.28), 3.2))
    bars = ax.bar(range(len(scores)), [max(s, 1e-30) for s in scores], color=colors)
    for i, bar in enumerate(bars):
        if i in donors:
            bar.set_hatch("//")
            bar.set_edgecolor("black")
    ax.set_yscale("log")
    ax.set_xlabel("decoder layer (original index)")
    ax.set_ylabel("importance score")
    ax.set_title(title or "layer scores: red = removed, hatched = merged into a kept layer")
    ax.set_xticks(range(len(scores)))
    ax.tick_params(axis="x", labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def primary_metric(metrics: dict | None) -> float | None:
    """The headline number of an evaluation: accuracy, else ROUGE-L, else exact match."""
    for key in ("acc", "rouge_l", "exact_match"):
        if metrics and key in metrics:
            return metrics[key]
    return None


def _metric(result: dict | None) -> str:
    value = primary_metric(result)
    if value is None:
        return "-"
    extra = f" (acc_norm {result['acc_norm']:.3f})" if "acc_norm" in result else ""
    return f"{value:.3f}{extra}"


def _harness(results: dict) -> list[str]:
    """The lm-evaluation-harness table of the fine-tuned models, when `run --harness` ran it."""
    rows = results.get("harness")
    if not rows:
        return []
    from .harness import harness_table

    table = harness_table({"dense, fine-tuned": rows.get("dense_finetuned"),
                           "pruned, fine-tuned": rows.get("pruned_finetuned")})
    return ["lm-evaluation-harness (zero-shot; lm-eval's prompts and metrics):", "", *table, ""]


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.3f}" if a and b else "-"


def _warnings(results: dict) -> list[str]:
    """A plain warning when the pruned model ends far below the dense one."""
    dense, pruned = results.get("dense_finetuned"), results.get("pruned_finetuned")
    if not dense or not pruned or "acc" not in dense:
        return []
    gap = dense["acc"] - pruned["acc"]
    if gap < 0.05:
        return []
    return [f"**Warning:** the pruned model is {gap:.3f} below the dense one after the same "
            "fine-tuning: this criterion removed layers this model needs. Look at the layer "
            "scores below and consider fewer layers or an explicit `--remove` list.", ""]


def skipped_parts(prune: dict) -> list[str]:
    """What the selection budget left out: the parts of auto's plan, then the merge search's."""
    selection = prune["selection"]
    plan = (selection.get("auto") or {}).get("plan") or {}
    parts = [str(SkippedPart(**s)) for s in plan.get("skipped", [])]
    merge = (selection.get("merge_search") or {}).get("skipped", [])
    return parts + [str(SkippedPart(**s)) for s in merge]


def _reused(dense_ft: dict) -> list[str]:
    """A line saying that the dense fine-tune continued from the probe, when it did."""
    steps = dense_ft.get("probe_steps_reused")
    if not steps:
        return []
    return [f"The probe is the first {steps} steps of the dense fine-tune: the dense reference "
            f"continued from the probe's checkpoint ({dense_ft['resumed_seconds']:.1f} s for its "
            f"{dense_ft['steps'] - steps} other steps); its fine-tuning seconds are its steady step "
            f"time times all {dense_ft['steps']} steps.", ""]


def _selection_cost(prune: dict, finetune: dict) -> list[str]:
    """`auto`'s selection and merge search against the pruned model's fine-tune, and what its
    budget left out."""
    selection = prune["selection"]
    seconds = selection["auto"]["seconds"] + (selection.get("merge_search") or {}).get("seconds", 0.0)
    lines = []
    if finetune.get("seconds_per_step") and finetune.get("train_seconds"):
        share = seconds / finetune["train_seconds"]
        lines.append(f"Selection and merge search: {seconds:.0f} s, as long as "
                     f"{seconds / finetune['seconds_per_step']:.0f} of the pruned model's "
                     f"fine-tuning steps ({share:.0%} of its {finetune.get('steps', '-')}-step fine-tune).")
    budget = selection["auto"].get("plan") or {}
    if budget.get("heal_steps"):
        skipped = skipped_parts(prune)
        lines.append(f"Budget: {budget['fraction']:.0%} of a {budget['heal_steps']}-step fine-tune, "
                     f"about {budget['seconds']:.0f} s" + (f"; skipped: {'; '.join(skipped)}"
                                                           if skipped else "; nothing skipped") +
                     ". `--selection-budget none` runs the whole search.")
    return ["", *lines] if lines else []


def _auto_section(prune: dict, finetune: dict) -> list[str]:
    """The candidate cuts `auto` judged, with their held-out losses, the merge trials, and what
    the selection cost against the fine-tune."""
    auto = prune["selection"].get("auto")
    if not auto or prune["criterion"] != "auto":
        return []
    judge = auto.get("judge")
    if judge is None:
        lines = [f"`auto` kept {auto['chosen']}'s cut unjudged: judging candidates on held-out "
                 f"examples did not fit its budget (selection {auto['seconds']:.0f} s)."]
        return [*lines, *_selection_cost(prune, finetune), ""]
    lines = [f"Cut chosen by `auto` from these candidates (held-out {judge['measure']} with the "
             f"layers skipped, {judge['examples']} examples; selection {auto['seconds']:.0f} s):", "",
             "| candidate | layers removed | held-out loss |", "|---|---|---|"]
    for c in sorted(auto["candidates"], key=lambda c: (c["loss"] is None, c["loss"] or 0.0)):
        mark = " (chosen)" if c["name"] == auto["chosen"] else ""
        loss = "not judged (budget)" if c["loss"] is None else f"{c['loss']:.3f}"
        lines.append(f"| {c['name']}{mark} | {' '.join(map(str, c['removed']))} | {loss} |")
    trials = (prune["selection"].get("merge_search") or {}).get("trials")
    if trials:
        tried = ", ".join(_trial(t) for t in trials)
        lines += ["", f"Merge trials (held-out {judge['measure']}): {tried}."]
    return [*lines, *_selection_cost(prune, finetune), ""]


def _trial(trial: dict) -> str:
    if trial.get("fold"):
        return f"linear fold: {trial['loss']:.3f}"
    if trial["donors"]:
        return f"{trial['donors']} donors x {trial['scale']:g}: {trial['loss']:.3f}"
    return f"none: {trial['loss']:.3f}"


def _round(entry: dict) -> str:
    """One round of iterative pruning: what it removed, folded or merged, and healed."""
    text = " ".join(map(str, entry["removed"]))
    if entry.get("merges"):
        text += f" ({entry['merge_rule']} into {', '.join(str(m['receiver']) for m in entry['merges'])})"
    if entry.get("heal"):
        text += f", then {entry['heal']['steps']} healing steps"
    return text


def _healing(results: dict) -> list[str]:
    """Which healing options ran, their step time beside the dense step, and the gap they left."""
    pruned_ft, dense_ft = results.get("pruned_finetune", {}), results.get("dense_finetune", {})
    heal = pruned_ft.get("heal") or {}
    if not heal:
        return []
    line = f"Healing: `{heal['describe']}`"
    if heal.get("teacher"):
        line += (f" (distillation weight {heal['distill']:g}, temperature {heal['temperature']:g}, "
                 f"teacher {heal['teacher']})")
    if pruned_ft.get("trained_parameters"):
        line += f"; {pruned_ft['trained_parameters']:,} parameters trained"
    line += "."
    rounds = results["prune"].get("rounds") or []
    if rounds:
        line += " Removed in rounds: " + "; ".join(_round(r) for r in rounds) + \
            f" ({pruned_ft.get('round_heal_seconds', 0):.0f} s of healing between rounds)."
    lines = [line]
    dense, pruned = results.get("dense_finetuned"), results.get("pruned_finetuned")
    if dense and pruned and "acc" in dense:
        healing = pruned_ft.get("train_seconds", 0) + pruned_ft.get("round_heal_seconds", 0)
        share = f"{pruned['acc'] / dense['acc']:.1%} of dense" if dense["acc"] else "dense scored 0"
        lines.append(f"Pruned minus dense accuracy after fine-tuning: {pruned['acc'] - dense['acc']:+.3f} "
                     f"({share}); healing took "
                     f"{_ratio(healing, dense_ft.get('train_seconds'))} of the dense fine-tune's time.")
    return [*lines, ""]


def run_markdown(results: dict) -> str:
    """The `run` report as Markdown."""
    prune = results["prune"]
    costs = prune.get("costs", {})
    dense_ft = results.get("dense_finetune", {})
    pruned_ft = results.get("pruned_finetune", {})
    prefill = results.get("prefill_seconds", {})
    merged = ", ".join(f"{d} -> {r}" for r, ds in prune["merged"].items() for d in ds) or "none"
    lines = [
        f"# gradpruner run: {results['task']}",
        "",
        f"Model: `{results['model']}`; criterion `{prune['criterion']}`.",
        "",
        f"- Layers removed ({len(prune['removed_layers'])} of {prune['num_layers_before']}): "
        f"{prune['removed_layers']}",
        f"- Merged (donor -> receiver): {merged}",
        f"- Parameters: {prune['params_before']:,} -> {prune['params_after']:,} "
        f"({prune['param_fraction_removed']:.1%} removed)",
        f"- Forward FLOPs per token after / before the cut (ideal time ratio): "
        f"{1 / costs['ideal_speedup'] if costs.get('ideal_speedup') else float('nan'):.3f}",
        "",
        "| model | accuracy |",
        "|---|---|",
        f"| dense, zero-shot | {_metric(results['dense_zero_shot'])} |",
        f"| dense, fine-tuned | {_metric(results.get('dense_finetuned'))} |",
        f"| pruned, fine-tuned | {_metric(results['pruned_finetuned'])} |",
        "",
        *_harness(results),
        "| cost | dense | pruned | pruned / dense |",
        "|---|---|---|---|",
        f"| fine-tuning seconds ({pruned_ft.get('steps', '-')} steps) | "
        f"{dense_ft.get('train_seconds', 0):.1f} | {pruned_ft.get('train_seconds', 0):.1f} | "
        f"{_ratio(pruned_ft.get('train_seconds'), dense_ft.get('train_seconds'))} |",
        f"| fine-tuning step seconds, steady (after the first step) | "
        f"{dense_ft.get('step_seconds') or 0:.3f} | {pruned_ft.get('step_seconds') or 0:.3f} | "
        f"{_ratio(pruned_ft.get('step_seconds'), dense_ft.get('step_seconds'))} |",
        f"| inference: prefill seconds, batch 8 x 128 tokens (median of 5) | "
        f"{prefill.get('dense', 0):.3f} | {prefill.get('pruned', 0):.3f} | "
        f"{_ratio(prefill.get('pruned'), prefill.get('dense'))} |",
        f"| probe seconds ({results['probe'].get('steps')} steps) | - | "
        f"{results['probe'].get('probe_seconds', 0):.1f} | - |",
        "",
        *_reused(dense_ft),
        *_healing(results),
        *_warnings(results),
        *_auto_section(prune, pruned_ft),
        f"Evaluation items: {results['dense_zero_shot'].get('n')}; "
        f"total wall time {results.get('total_seconds', 0) / 60:.1f} min.",
        "",
        "![layer scores](layer_scores.png)",
        "",
    ]
    return "\n".join(lines)


def write_report(results: dict, directory: Path) -> None:
    """`report.json`, `report.md` and `layer_scores.png` in `directory`; prints the Markdown."""
    prune = results["prune"]
    if prune.get("layer_scores"):
        title = ("the probe's layer scores; red = removed by auto's chosen cut, hatched = merged"
                 if prune["criterion"] == "auto" else "")
        plot_layer_scores(prune["layer_scores"], prune["removed_layers"], prune["merged"],
                          directory / "layer_scores.png", title)
    (directory / "report.json").write_text(json.dumps(results, indent=2, default=str))
    text = run_markdown(results)
    (directory / "report.md").write_text(text)
    print(text)
