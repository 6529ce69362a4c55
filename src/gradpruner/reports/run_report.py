"""Reports: the `run` summary as Markdown and JSON, and the layer-score plot."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..search.budget import SkippedPart
from ..search.keep import KeepSearch


@dataclass(frozen=True)
class ScorePlot:
    """What the layer-score plot shows: the scores of the criterion that chose the cut, what they
    measure and how the cut follows from them, why these layers went, and, for `auto`, the
    candidate cuts it weighed, the one it chose and the held-out measure that judged them."""

    criterion: str
    scores: list[float]
    score: str
    rule: str
    why: str
    candidates: list[dict]
    chosen: str | None
    measure: str | None

    @classmethod
    def of(cls, prune: dict) -> "ScorePlot | None":
        """The plot of a `PruneRecord`'s JSON; None when it holds no layer scores."""
        from ..search.select import make_criterion as get_criterion

        auto = prune["selection"].get("auto") or {}
        given = (prune.get("config") or {}).get("remove")
        if prune["criterion"] == "auto" and auto.get("candidates") and not given:
            picked = next(c for c in auto["candidates"] if c["name"] == auto["chosen"])
            name = picked["name"] if picked["scores"] else "block_influence"  # greedy's guide
            scores = picked["scores"] or next(c["scores"] for c in auto["candidates"]
                                              if c["name"] == name)
            judge = auto.get("judge")
            why = (f"auto chose {picked['name']}'s cut: lowest held-out loss" if judge else
                   f"auto kept {picked['name']}'s cut unjudged (budget)")
            if picked["name"] == "greedy":
                why += "; greedy removed layers one at a time among the lowest of these"
            return cls(name, scores, get_criterion(name).score, get_criterion(name).rule,
                       why + _rounds(prune), auto["candidates"], picked["name"],
                       judge["measure"] if judge else None)
        if not prune.get("layer_scores"):
            return None
        named = prune["selection"].get("criterion", prune["criterion"])  # who scored the layers
        criterion = get_criterion(named)
        why = "layers given by --remove" if given else f"{criterion.name} chose the cut"
        return cls(criterion.name, prune["layer_scores"], criterion.score, criterion.rule,
                   why + _rounds(prune), [], None, None)

    def sentence(self) -> str:
        """The report's line saying whose scores the plot shows."""
        text = (f"The plot shows the layer scores of `{self.criterion}` ({self.score}; "
                f"{self.rule}): {self.why}.")
        if self.candidates:
            text += (" Below them, every candidate cut `auto` weighed, with its held-out loss "
                     "(the chosen one in red).")
        return text


def _rounds(prune: dict) -> str:
    """With iterative pruning: that the scores are the first round's."""
    rounds = prune.get("rounds") or []
    return f"; the scores of round 1 of {len(rounds)}" if rounds else ""


def plot_layer_scores(plot: ScorePlot, removed: list[int], merged: dict, path: Path) -> None:
    """Bar chart of the chosen criterion's layer scores, removed layers in red, donors hatched
    (log scale when every score is positive); under it, for `auto`, one row per candidate cut
    with its layers marked and its held-out loss, the chosen one in red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    total = len(plot.scores)
    rows = len(plot.candidates)
    fig, axes = plt.subplots(2 if rows else 1, 1, sharex=True, squeeze=False,
                             figsize=(max(7, total * 0.3), 3.4 + (0.32 * rows + 0.8 if rows else 0)),
                             gridspec_kw={"height_ratios": [3.2, 0.32 * rows + 0.6] if rows else [1]})
    _score_bars(axes[0][0], plot, removed, merged)
    if rows:
        _candidate_rows(axes[1][0], plot)
    bottom = axes[-1][0]
    bottom.set_xlabel("decoder layer (original index; removed in red)")
    bottom.set_xticks(range(total))
    bottom.tick_params(axis="x", labelsize=7)
    for i, label in enumerate(bottom.get_xticklabels()):
        if i in removed:
            label.set_color("tab:red")
            label.set_fontweight("bold")
    bottom.set_xlim(-0.6, total - 0.4)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _score_bars(ax, plot: ScorePlot, removed: list[int], merged: dict) -> None:
    """The layer scores: removed layers red on a light red band (seen even at a score of 0),
    merge donors hatched."""
    donors = {d for ds in merged.values() for d in ds}
    for i in removed:
        ax.axvspan(i - 0.5, i + 0.5, color="tab:red", alpha=0.12, linewidth=0)
    colors = ["tab:red" if i in removed else "tab:blue" for i in range(len(plot.scores))]
    positive = all(s > 0 for s in plot.scores)
    bars = ax.bar(range(len(plot.scores)), plot.scores, color=colors)
    for i, bar in enumerate(bars):
        if i in donors:
            bar.set_hatch("//")
            bar.set_edgecolor("black")
    if positive:
        ax.set_yscale("log")
    ax.set_ylabel(f"{plot.criterion} score" + (" (log)" if positive else ""))
    ax.set_title(f"{plot.score}; {plot.rule}\n{plot.why}; red = removed"
                 + (", hatched = merged" if donors else ""), fontsize=9)


def _candidate_rows(ax, plot: ScorePlot) -> None:
    """One row per candidate cut of `auto`, best held-out loss on top, the chosen one in red."""
    ordered = sorted(plot.candidates, key=lambda c: (c["loss"] is None, c["loss"] or 0.0))
    labels = []
    for row, c in enumerate(ordered):
        picked = c["name"] == plot.chosen
        ax.scatter(c["removed"], [row] * len(c["removed"]), marker="s", s=36,
                   color="tab:red" if picked else "tab:gray")
        loss = "not judged" if c["loss"] is None else f"{c['loss']:.3f}"
        labels.append(f"{c['name']}: {loss}" + (" (chosen)" if picked else ""))
    ax.set_yticks(range(len(ordered)), labels, fontsize=7)
    for label, c in zip(ax.get_yticklabels(), ordered):
        if c["name"] == plot.chosen:
            label.set_color("tab:red")
            label.set_fontweight("bold")
    ax.set_ylim(len(ordered) - 0.5, -0.5)
    ax.grid(axis="x", alpha=0.3)
    measure = (f"held-out {plot.measure}: lower is better" if plot.measure
               else "none judged: the selection budget left no time")
    ax.set_ylabel("candidate cut:\nheld-out loss", fontsize=8)
    ax.set_title(f"auto's candidate cuts (squares: the layers each removes)\n{measure}",
                 fontsize=9)


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
    from ..evaluation.harness import harness_table

    table = harness_table({"dense, fine-tuned": rows.get("dense_finetuned"),
                           "pruned, fine-tuned": rows.get("pruned_finetuned")})
    return ["lm-evaluation-harness (zero-shot; lm-eval's prompts and metrics):", "", *table, ""]


def _keep_section(results: dict) -> list[str]:
    """With `run --keep`: the held-out accuracy against the layers removed that chose the cut,
    how sure the choice is, and the held-out and test shares the delivered model got."""
    if not results.get("keep"):
        return []
    found = KeepSearch.from_json(results["keep"])
    lines = [f"The cut's size was chosen by `--keep {found.keep:g}`: the most layers removed "
             f"whose healed model keeps that share of the dense fine-tuned model's accuracy on "
             f"{found.items} held-out training examples (dense: {found.dense_accuracy:.3f}). Each "
             f"candidate is a cut of the dense model healed for {found.steps or '?'} steps; "
             "bisection over the sizes:", "",
             "| layers removed | removed | held-out accuracy | share of dense (± s.e.) |",
             "|---|---|---|---|"]
    for point in found.points:
        mark = " **chosen**" if point.removed == found.chosen else ""
        lines.append(f"| {point.removed}{mark} | {point.removed_layers} | "
                     f"{point.accuracy:.3f} | {point.share:.3f} ± {point.share_se:.3f} |")
    lines += ["", f"Probability that the chosen cut's held-out share is at least {found.keep:g}: "
              f"{found.confidence:.0%} (normal approximation).", ""]
    pruned, dense_test = results.get("pruned_heldout"), results.get("dense_finetuned")
    if pruned:
        share = primary_metric(pruned) / found.dense_accuracy
        predicted = found.chosen_point.share
        test = _ratio(primary_metric(results.get("pruned_finetuned")), primary_metric(dense_test))
        heal = ("The model delivered is the chosen candidate itself (its heal was the full heal)"
                if found.delivered else "After the full heal")
        lines += [f"{heal}: held-out share {share:.3f} (predicted {predicted:.3f}), "
                  f"test share {test}.", ""]
    return lines


def _served(results: dict) -> list[str]:
    """With `run --export gguf`: the fine-tuned models through transformers and through llama.cpp
    at each exported GGUF type, side by side, with the files' sizes and checks."""
    served = results.get("gguf")
    if not served:
        return []
    types = list(dict.fromkeys(f["file_type"] for entry in served.values()
                               for f in entry.get("files", [])))
    lines = ["Served through llama.cpp (`gguf/` holds the pruned model's files; each scored on the "
             "same items):", "",
             "| model | transformers | " + " | ".join(f"GGUF {t}" for t in types) + " |",
             "|---" * (2 + len(types)) + "|"]
    for name in ("dense", "pruned"):
        entry = served.get(name)
        if entry is None:
            continue
        metrics = entry.get("metrics", {})
        cells = [_metric(metrics.get(t)) for t in types]
        lines.append(f"| {name}, fine-tuned | {_metric(results.get(name + '_finetuned'))} | "
                     + " | ".join(cells) + " |")
        sizes = {f["file_type"]: f["bytes"] / 2**20 for f in entry.get("files", [])}
        lines.append(f"| {name}: file MiB | - | "
                     + " | ".join(f"{sizes[t]:.1f}" if t in sizes else "-" for t in types) + " |")
    lines.append("")
    for name, entry in served.items():
        if "refused" in entry:
            lines += [f"No GGUF export of the {name} model: {entry['refused']}", ""]
        for f in entry.get("files", []):
            check = f["check"]
            verdict = {True: "passed", False: "FAILED", None: "reported"}[check["passed"]]
            lines.append(f"- {name} `{f['file']}` against transformers: top-1 agreement "
                         f"{check['top1_agreement']:.1%}, max |dlogit| "
                         f"{check['max_abs_logit_diff']:.3g}: {verdict}")
    return [*lines, ""]


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
        cached = f", its top {heal['teacher_top_k']} cached" if heal.get("teacher_top_k") else ""
        line += (f" (distillation weight {heal['distill']:g}, temperature {heal['temperature']:g}, "
                 f"teacher {heal['teacher']}{cached})")
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
        *_keep_section(results),
        *_served(results),
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
        *_plot_lines(prune),
    ]
    return "\n".join(lines)


def _plot_lines(prune: dict) -> list[str]:
    """The sentence saying whose layer scores the plot shows, and the plot."""
    plot = ScorePlot.of(prune)
    if plot is None:
        return []
    return [plot.sentence(), "", "![layer scores](layer_scores.png)", ""]


def write_report(results: dict, directory: Path) -> None:
    """`report.json`, `report.md` and `layer_scores.png` in `directory`; prints the Markdown."""
    prune = results["prune"]
    plot = ScorePlot.of(prune)
    if plot is not None:
        plot_layer_scores(plot, prune["removed_layers"], prune["merged"], directory / "layer_scores.png")
    (directory / "report.json").write_text(json.dumps(results, indent=2, default=str))
    text = run_markdown(results)
    (directory / "report.md").write_text(text)
    print(text)
