"""The comparison's outputs: a Markdown table, CSV and JSON rows, accuracy against parameters
removed (one line per method), the layer scores of every method side by side, and how well the
held-out loss before healing predicts the accuracy after it."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

from .run_report import primary_metric

COLUMNS = ("method", "ratio", "seed", "layers_removed", "params_removed", "acc_before",
           "acc_after", "heldout_acc_after", "heldout_loss", "finetune_seconds", "finetune_vs_dense",
           "prefill_vs_dense", "select_seconds", "same_cut_as")


def healing_seconds(cell: dict) -> float:
    """The seconds a cell spent healing: its fine-tune and any healing between pruning rounds."""
    return cell["finetune"]["train_seconds"] + cell["finetune"].get("round_heal_seconds", 0.0)


def rows(results: dict) -> list[dict]:
    """One flat row per cell, the dense reference first."""
    dense_by_seed = {d["seed"]: d for d in results["dense"]}
    zero = results["zero_shot"]
    out = [{"method": "dense", "ratio": 0.0, "seed": d["seed"], "layers_removed": "",
            "params_removed": 0.0, "acc_before": primary_metric(zero["before"]),
            "acc_after": primary_metric(d["after"]),
            "heldout_acc_after": primary_metric(d.get("heldout_after")),
            "heldout_loss": zero["heldout_loss"], "finetune_seconds": d["finetune"]["train_seconds"],
            "finetune_vs_dense": 1.0, "prefill_vs_dense": 1.0, "select_seconds": 0.0,
            "same_cut_as": ""} for d in results["dense"]]
    for c in results["cells"]:
        dense = dense_by_seed[c["seed"]]
        prefill = c["prefill_seconds"]
        out.append({
            "method": c["method"], "ratio": c["ratio"], "seed": c["seed"],
            "layers_removed": " ".join(map(str, c["prune"]["removed_layers"])),
            "params_removed": c["prune"]["param_fraction_removed"],
            "acc_before": primary_metric(c["before"]), "acc_after": primary_metric(c["after"]),
            "heldout_acc_after": primary_metric(c.get("heldout_after")),
            "heldout_loss": c["heldout_loss"], "finetune_seconds": healing_seconds(c),
            "finetune_vs_dense": healing_seconds(c) / dense["finetune"]["train_seconds"],
            "prefill_vs_dense": prefill["pruned"] / prefill["dense"],
            "select_seconds": c["select_seconds"], "same_cut_as": c.get("same_cut_as", ""),
        })
    return out


def spearman(x: list[float], y: list[float]) -> float | None:
    """Spearman's rank correlation (average ranks for ties); None when undefined."""
    def ranks(values: list[float]) -> list[float]:
        order = sorted(range(len(values)), key=values.__getitem__)
        out = [0.0] * len(values)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
                j += 1
            for k in range(i, j + 1):
                out[order[k]] = (i + j) / 2
            i = j + 1
        return out

    if len(x) < 3:
        return None
    rx, ry = ranks(x), ranks(y)
    mx, my = statistics.fmean(rx), statistics.fmean(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    var = (sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry)) ** 0.5
    return cov / var if var else None


def _mean(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.fmean(values):.3f} ± {statistics.stdev(values):.3f}"


def markdown(results: dict, table: list[dict]) -> str:
    """The comparison as Markdown: one table per ratio, means over seeds."""
    lines = [f"# Comparison on {results['task']}", "",
             f"Model: `{results['model']}`. Fine-tuning: {results['config']['train']['steps']} "
             f"LoRA steps, batch {results['config']['train']['batch_size']}, seeds "
             f"{results['config']['seeds']}; evaluation items: {results['config']['eval_limit']}.", ""]
    header = ("| method | layers removed | params removed | acc before FT | acc after FT | "
              "held-out loss | FT time / dense | prefill / dense | selection s |")
    groups: dict[tuple[str, float], list[dict]] = {}
    for row in table:
        groups.setdefault((row["method"], row["ratio"]), []).append(row)
    for ratio in sorted({r["ratio"] for r in table}):
        lines += [f"## Ratio {ratio}" if ratio else "## Dense reference", "", header,
                  "|---|---|---|---|---|---|---|---|---|"]
        for (method, r), cell in groups.items():
            if r != ratio:
                continue
            twin = f" (= {cell[0]['same_cut_as']})" if cell[0]["same_cut_as"] else ""
            lines.append(
                f"| {method}{twin} | {cell[0]['layers_removed'] or '-'} | "
                f"{cell[0]['params_removed']:.3f} | {_mean([c['acc_before'] for c in cell])} | "
                f"**{_mean([c['acc_after'] for c in cell])}** | "
                f"{_mean([c['heldout_loss'] for c in cell])} | "
                f"{_mean([c['finetune_vs_dense'] for c in cell])} | "
                f"{_mean([c['prefill_vs_dense'] for c in cell])} | "
                f"{statistics.fmean(c['select_seconds'] for c in cell):.1f} |")
        lines.append("")
    pruned = [r for r in table if r["method"] != "dense"]
    rho = spearman([-r["heldout_loss"] for r in pruned], [r["acc_after"] for r in pruned])
    lines += ["## Does the held-out loss before healing predict the accuracy after it?", "",
              f"Spearman rank correlation between -(held-out loss before fine-tuning) and accuracy "
              f"after fine-tuning over the {len(pruned)} pruned cells: "
              f"**{rho:.2f}**." if rho is not None else
              "The rank correlation is undefined here (fewer than 3 cells, or no variation).", ""]
    return "\n".join(lines)


def plot_accuracy(table: list[dict], path: Path, title: str) -> None:
    """Accuracy after fine-tuning against the fraction of parameters removed, per method."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    dense = [r["acc_after"] for r in table if r["method"] == "dense"]
    if dense:
        ax.axhline(statistics.fmean(dense), color="black", linestyle="--", label="dense, fine-tuned")
    colors = (*plt.get_cmap("tab10").colors, "black", "olive", "navy")
    methods = list(dict.fromkeys(r["method"] for r in table if r["method"] != "dense"))
    for index, method in enumerate(methods):
        by_ratio: dict[float, list[dict]] = {}
        for r in table:
            if r["method"] == method:
                by_ratio.setdefault(r["ratio"], []).append(r)
        points = sorted((statistics.fmean(c["params_removed"] for c in cs),
                         statistics.fmean(c["acc_after"] for c in cs)) for cs in by_ratio.values())
        ax.plot(*zip(*points), marker="os^vD<>ph*X"[index % 11], color=colors[index % len(colors)],
                label=method, linewidth=2.5 if method in ("auto", "gradpruner") else 1.2)
    ax.set_xlabel("fraction of parameters removed")
    ax.set_ylabel("accuracy after fine-tuning")
    ax.set_title(title)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_layer_choices(results: dict, ratio: float, path: Path) -> None:
    """One row per method: its layer scores as within-method ranks, removed layers marked.

    `auto` is shaded by the probe's score (which ranks its merge donors); methods without
    per-layer scores (laco) get a neutral row."""
    plt = _pyplot()
    first = min((c["seed"] for c in results["cells"]), default=0)
    cells = [c for c in results["cells"] if c["ratio"] == ratio and c["seed"] == first]
    if not cells:
        return
    total = cells[0]["prune"]["num_layers_before"]
    grid = []
    for c in cells:
        scores = c["prune"]["layer_scores"] or [0.0] * total
        if len(set(scores)) == 1:  # no per-layer score (laco, an explicit list): neutral row
            grid.append([0.5] * total)
            continue
        order = sorted(range(total), key=scores.__getitem__)
        rank = [0.0] * total
        for position, layer in enumerate(order):
            rank[layer] = position / max(total - 1, 1)
        grid.append(rank)
    fig, ax = plt.subplots(figsize=(max(7, total * 0.3), 0.45 * len(cells) + 1.5))
    ax.imshow(grid, aspect="auto", cmap="viridis", vmin=0, vmax=1)
    for row, c in enumerate(cells):
        for layer in c["prune"]["removed_layers"]:
            ax.text(layer, row, "x", ha="center", va="center", color="red", fontsize=9,
                    fontweight="bold")
    ax.set_yticks(range(len(cells)), [c["method"] for c in cells])
    ax.set_xticks(range(total))
    ax.tick_params(axis="x", labelsize=7)
    ax.set_xlabel("decoder layer (bright = more important by the method's own score; x = removed)")
    ax.set_title(f"{results['task']}: which layers each method removes at ratio {ratio}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_comparison(results: dict, out: Path) -> None:
    """results.md, results.csv, results.json, accuracy.png and layers-r{ratio}.png in `out`."""
    table = rows(results)
    (out / "results.json").write_text(json.dumps({**results, "rows": table}, indent=2) + "\n")
    with (out / "results.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(table)
    (out / "results.md").write_text(markdown(results, table) + "\n")
    plot_accuracy(table, out / "accuracy.png", f"{results['task']}: pruned and fine-tuned")
    for ratio in sorted({c["ratio"] for c in results["cells"]}):
        plot_layer_choices(results, ratio, out / f"layers-r{ratio}.png")
