"""lm-evaluation-harness on an already loaded model: `gradpruner eval --harness TASKS` and the
`--harness` rows of `run`'s report.

lm-eval is optional (`pip install lm-eval`, or the `harness` extra). Its `HFLM` wraps the model
and tokenizer in memory, and `simple_evaluate` runs the tasks zero-shot with lm-eval's own
prompts, requests and metrics. Task names are lm-eval's (`lm-eval ls tasks`); `include` is a
folder of the user's task YAMLs (a local `dataset_path: json` task needs no network).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from ..errors import GradPrunerError

INSTALL = "lm-evaluation-harness is not installed: pip install lm-eval (or gradpruner[harness])"


@dataclass(frozen=True)
class HarnessSpec:
    """The lm-eval tasks (tasks, groups or tags) to run, a folder of extra task YAMLs, and
    whether lm-eval renders prompts in the tokenizer's chat template (`--chat-template on`)."""

    tasks: tuple[str, ...]
    include: str | None = None
    chat_template: bool = False

    def validate(self) -> None:
        """Every check that needs no model: lm-eval installed, the folder there, names known."""
        require_lm_eval()
        if not self.tasks:
            raise GradPrunerError("--harness names no lm-eval task: give names such as "
                                  "--harness arc_easy,hellaswag")
        if self.include and not Path(self.include).is_dir():
            raise GradPrunerError(f"--harness-include folder not found: {self.include}")
        task_manager(self)


def parse_task_names(text: str) -> tuple[str, ...]:
    """The comma-separated task names of `--harness`."""
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    if not names:
        raise GradPrunerError(f"--harness takes comma-separated lm-eval task names, got {text!r}")
    return names


def require_lm_eval() -> None:
    """Stop with the install line when lm-eval cannot be imported."""
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise GradPrunerError(INSTALL) from None


@lru_cache(maxsize=4)
def _manager(include: str | None, defaults: bool):
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=include, include_defaults=defaults)


def task_manager(spec: HarnessSpec):
    """lm-eval's `TaskManager` that knows every task of `spec`; unknown names are the error.

    When the include folder holds every task, lm-eval's own (over ten thousand, some seconds
    to index) are left out.
    """
    if spec.include:
        local = _manager(spec.include, False)
        if set(spec.tasks) <= set(local.all_tasks):
            return local
    manager = _manager(spec.include, True)
    unknown = [name for name in spec.tasks if name not in manager.all_tasks]
    if unknown:
        where = f" or in {spec.include}" if spec.include else ""
        raise GradPrunerError(f"unknown lm-eval task(s) {', '.join(unknown)}: not in lm-eval"
                              f"{where} (see `lm-eval ls tasks`)")
    return manager


def run_harness(model, tokenizer, spec: HarnessSpec, limit: int | None = None,
                batch_size: int = 16) -> dict[str, dict[str, float]]:
    """lm-eval's metrics of `model` on the tasks of `spec` (the first `limit` items of each):
    {task or group: {metric: value, "n": items}}, metric names without lm-eval's ",none"
    filter suffix (other filters keep theirs)."""
    spec.validate()
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    was_training = model.training
    try:
        output = simple_evaluate(model=lm, tasks=list(spec.tasks), task_manager=task_manager(spec),
                                 limit=limit, log_samples=False,
                                 apply_chat_template=spec.chat_template)
    finally:
        model.train(was_training)
    return harness_metrics(output)


def harness_metrics(output: dict) -> dict[str, dict[str, float]]:
    """The numeric metrics per task of a `simple_evaluate` result, with each task's item count."""
    counts = output.get("n-samples", {})
    metrics = {}
    for name, values in output["results"].items():
        row = {key.removesuffix(",none"): value for key, value in values.items()
               if "," in key and isinstance(value, (int, float)) and not isinstance(value, bool)}
        if name in counts:
            row["n"] = counts[name]["effective"]
        metrics[name] = row
    return metrics


def harness_table(rows: dict[str, dict[str, dict[str, float]] | None]) -> list[str]:
    """Markdown table of lm-eval metrics: one row per task and metric, one column per model
    (`rows`: {model label: run_harness result or None})."""
    columns = list(rows)
    keys = []
    for result in rows.values():
        for task, metrics in (result or {}).items():
            keys += [(task, m) for m in metrics if m != "n" and "stderr" not in m
                     and (task, m) not in keys]
    lines = [f"| lm-eval task | metric | {' | '.join(columns)} |",
             "|---|---|" + "---|" * len(columns)]
    for task, metric in keys:
        cells = [_cell((rows[c] or {}).get(task, {}), metric) for c in columns]
        lines.append(f"| {task} | {metric} | {' | '.join(cells)} |")
    return lines


def _cell(metrics: dict[str, float], metric: str) -> str:
    if metric not in metrics:
        return "-"
    stderr = metrics.get(metric.replace(",", "_stderr,", 1) if "," in metric
                         else f"{metric}_stderr")
    return f"{metrics[metric]:.3f}" + (f" ± {stderr:.3f}" if stderr is not None else "")
