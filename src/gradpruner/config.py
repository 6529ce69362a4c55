"""One config for `run` and `compare`: the defaults, a YAML (or JSON) file, and the validation,
all before any model is loaded and before torch is imported (nothing this module imports needs it).

    gradpruner run --config run.yaml --steps 200      # flags override the file

A file holds the fields of `RunConfig` / `CompareConfig` (training settings under `train:`,
criterion settings under `settings: {criterion name: {field: value}}`); a run's `report.json`
works too (its `config`), and reproduces the run's plan.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from .compare_methods import HEALS, METHODS
from .errors import GradPrunerError
from .harness import HarnessSpec, parse_task_names
from .heal import HealConfig
from .chat import check_mode
from .records import check_source
from .outputs import plain_json
from .train_config import TrainConfig

DTYPES = ("auto", "float32", "bfloat16", "float16")
# the names of `criteria.CRITERIA`, known here without importing the criteria (and torch with them);
# a test holds both to the registry
CRITERION_NAMES = ("angular", "auto", "block_influence", "gradpruner", "gradpruner_relative",
                   "gradpruner_unsquared", "laco", "ppl", "random", "tail", "taylor")
PROBE_CRITERIA = ("gradpruner", "gradpruner_relative", "gradpruner_unsquared")  # read the probe's IGIA
DATA_FREE_CRITERIA = ("random", "tail")  # need neither the probe nor task data
MERGE_WORDS = ("auto", "none", "all", "fold")  # --merge's words; or a number of donors
CONTROL_KEYS = ("progress", "save_every", "checkpoint_dir", "resume")  # training settings that change no result


@dataclass
class RecipeConfig:
    """What the prune-and-heal recipe needs: the model, data, cut, merge, probe and healing.

    `heldout` training examples are set apart, never trained on, to judge cuts; `selection_budget`
    is the share of the pruned model's fine-tune that `auto` and the merge search may take.
    """

    model: str | None = None
    task: str | None = "arc_easy"
    data: str | None = None
    eval_data: str | None = None
    chat_template: str = "auto"
    criterion: str = "auto"
    ratio: float | None = 0.2
    count: int | None = None
    remove: list[int] | None = None
    merge: int | str | None = "auto"
    density: float = 0.2
    selection_budget: float | None = 0.1
    settings: dict[str, dict] = field(default_factory=dict)
    probe_steps: int = 40
    heldout: int = 32
    eval_limit: int | None = 300
    warm_start: bool = True
    dtype: str = "auto"
    device: str = "auto"
    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=60))
    heal: HealConfig = field(default_factory=HealConfig)

    @property
    def warm_starts(self) -> bool:
        """Whether the pruned model's LoRA adapters start from the probe's."""
        return self.warm_start and not self.train.full and self.heal.method == "lora"

    def validate(self) -> None:
        """Every check that needs no model: one clear error for the first bad value."""
        from .search.budget import check_fraction

        if self.criterion not in CRITERION_NAMES:
            raise GradPrunerError(f"unknown criterion {self.criterion!r}; known: {', '.join(CRITERION_NAMES)}")
        self._validate_cut()
        check_merge(self.merge)
        if not (isinstance(self.density, (int, float)) and 0 < self.density <= 1):
            raise GradPrunerError(f"--density must be in (0, 1], got {self.density}")
        check_fraction(self.selection_budget)
        _at_least(1, probe_steps=self.probe_steps, heldout=self.heldout)
        if self.eval_limit is not None:
            _at_least(1, limit=self.eval_limit)
        if self.dtype not in DTYPES:
            raise GradPrunerError(f"--dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if not self.task and not self.data:
            raise GradPrunerError("give a built-in task (--task, see `gradpruner tasks`) or --data F.jsonl")
        for path in (self.data, self.eval_data):
            if path:
                check_source(path)
        check_mode(self.chat_template)
        if self.task and not self.data:
            from .tasks import get_task

            get_task(self.task)  # an unknown task name is the error
        self.train.check_heal(self.heal.method)
        self.train.validate()
        self.heal.validate()
        if self.heal.rounds > 1:
            self._check_rounds()
        if self.heal.teacher and not Path(self.heal.teacher).is_dir():
            raise GradPrunerError(f"teacher model folder not found: {self.heal.teacher}")
        self._check_settings()

    def _check_rounds(self) -> None:
        """Iterative pruning re-scores the healed model, which has no probe of its own."""
        if self.criterion in PROBE_CRITERIA:
            raise GradPrunerError(f"--rounds re-scores the healed model each round; criterion "
                                  f"{self.criterion!r} reads the dense model's probe: use auto or a "
                                  "criterion that scores on task data")
        if self.remove:
            raise GradPrunerError("--rounds removes by a criterion, not an explicit --remove list")
        if isinstance(self.merge, int) or self.merge == "all":
            raise GradPrunerError("--rounds merges by 'auto', 'fold' or 'none' (the paper's merge "
                                  "reads the dense model's probe)")

    def _validate_cut(self) -> None:
        given = [k for k in ("ratio", "count", "remove") if getattr(self, k) is not None]
        if len(given) != 1:
            raise GradPrunerError("give exactly one of ratio (--ratio), count (--layers) or remove (--remove)")
        if self.ratio is not None:
            check_ratio(self.ratio)
        if self.count is not None and (isinstance(self.count, bool) or not isinstance(self.count, int)
                                       or self.count < 1):
            raise GradPrunerError(f"the number of layers to remove must be a positive integer, got {self.count}")

    def _check_settings(self) -> None:
        for name, values in self.settings.items():
            settings_class(name)(**values)  # unknown criteria or fields are the error

    def criterion_settings(self) -> dict[str, object]:
        """The settings dataclasses of the criteria the file configures."""
        return {name: settings_class(name)(**values) for name, values in self.settings.items()}

    def to_json(self) -> dict:
        return plain_json(asdict(self))

    @classmethod
    def from_dict(cls, data: dict) -> "RecipeConfig":
        """A config from plain values (a parsed file, flags); unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise GradPrunerError(f"unknown config key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        values = dict(data)
        defaults = cls()
        nested = {key: _nested(key, values.pop(key, None) or {}, getattr(defaults, key))
                  for key in ("train", "heal")}
        return cls(**values, **nested)

    @classmethod
    def from_file(cls, path: str, overrides: dict | None = None) -> "RecipeConfig":
        """The config in a YAML or JSON file (a report.json's `config` too), `overrides` on top."""
        data = read_config_file(path)
        return cls.from_dict(merge_config(data, overrides or {}))


@dataclass
class RunConfig(RecipeConfig):
    """Settings of `gradpruner run`; the defaults finish in about 15 minutes on 2 CPU cores."""

    out: str = "runs/default"
    dense: bool = True
    overwrite: bool = False
    resume: bool = False  # continue the interrupted run in OUT.partial (`journal.py`)
    harness: list[str] | None = None  # lm-eval tasks the report adds (`harness.py`)
    harness_include: str | None = None

    def validate(self) -> None:
        super().validate()
        if self.harness_include and not self.harness:
            raise GradPrunerError("--harness-include needs --harness TASKS")
        if self.harness:
            self.harness_spec().validate()

    def harness_spec(self) -> HarnessSpec | None:
        """The lm-eval tasks of `harness` (a list or comma-separated names), or None."""
        if not self.harness:
            return None
        names = parse_task_names(self.harness if isinstance(self.harness, str)
                                 else ",".join(map(str, self.harness)))
        return HarnessSpec(names, self.harness_include, self.chat_template == "on")

    def fingerprint(self) -> dict:
        """The settings a resumed run must share with the interrupted one: all but where it
        writes, whether it resumes, and the training settings that change no result."""
        values = {k: v for k, v in self.to_json().items() if k not in ("out", "overwrite", "resume")}
        values["train"] = {k: v for k, v in values["train"].items() if k not in CONTROL_KEYS}
        return values


@dataclass
class CompareConfig(RecipeConfig):
    """Settings of one comparison: every method at every ratio and seed, with the recipe's
    settings; those that change results are checked when a comparison resumes."""

    out: str = "runs/compare"
    methods: list[str] = field(default_factory=lambda: all_methods())
    ratios: list[float] = field(default_factory=lambda: [0.25, 0.4])
    seeds: int = 1
    heals: list[str] = field(default_factory=lambda: ["lora"])

    def _validate_cut(self) -> None:
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise GradPrunerError(f"unknown method(s) {', '.join(unknown)}; known: {', '.join(METHODS)}")
        unknown = [h for h in self.heals if h not in HEALS]
        if unknown or not self.heals:
            raise GradPrunerError(f"unknown or no healing variant(s) {', '.join(unknown)}; known: {', '.join(HEALS)}")
        if not self.ratios:
            raise GradPrunerError("--ratio is empty")
        for ratio in self.ratios:
            check_ratio(ratio)
        _at_least(1, seeds=self.seeds)


def all_methods() -> list[str]:
    """The methods of `--methods all`: every criterion's own (the `auto` merge variants are
    asked for by name)."""
    return [m for m in METHODS if m not in ("auto_fold", "auto_nomerge")]


def check_ratio(ratio: object) -> None:
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not math.isfinite(ratio) \
            or not 0 < ratio < 1:
        raise GradPrunerError(f"ratio must be a number strictly between 0 and 1, got {ratio}")


def parse_merge_count(value: str | int | None) -> int | str | None:
    """`--merge` as an int, "all", "fold" (the linear fold), "auto" (held-out search) or None
    ("none")."""
    if value is None or value == "none":
        return None
    if value in MERGE_WORDS:
        return value
    try:
        count = int(value)
    except (TypeError, ValueError):
        raise GradPrunerError(f"--merge takes a number of donor layers, 'all', 'fold', 'auto' or 'none', got {value!r}") from None
    if count < 0:
        raise GradPrunerError(f"--merge must not be negative, got {count}")
    return count or None


def task_data_need(criterion: str, merge: int | str | None, remove: list[int] | None) -> str | None:
    """Why a cut with these settings and a probe's IGIA needs task data (the end of "so that
    ..."), or None when the IGIA is enough."""
    scored = remove is None or merge  # the criterion's scores are read
    if scored and criterion not in PROBE_CRITERIA + DATA_FREE_CRITERIA:
        return "auto can judge cuts" if criterion == "auto" else f"{criterion} can score layers"
    if merge in ("auto", "fold"):
        return f"--merge {merge} can " + ("judge merges" if merge == "auto" else "fit the fold")
    return None


def prune_inputs_error(criterion: str, merge: int | str | None, remove: list[int] | None) -> str | None:
    """What `prune` with neither a probe (--scores) nor task data (--task, --data) lacks for
    these settings, as the one-line error that says what to pass; None when it needs neither."""
    if isinstance(merge, int) or merge == "all":
        return (f"--merge {merge} merges by the probe's IGIA: pass --scores PROBE_DIR (the output "
                "of `gradpruner probe`), or --merge none")
    scored = remove is None or merge
    if scored and criterion in PROBE_CRITERIA:
        return (f"--criterion {criterion} reads the probe's IGIA: pass --scores PROBE_DIR (the "
                "output of `gradpruner probe`), or use --criterion tail or random, which need nothing")
    if scored and criterion not in DATA_FREE_CRITERIA:
        does = "judges cuts" if criterion == "auto" else "scores layers"
        return (f"--criterion {criterion} {does} on task data: pass --scores PROBE_DIR (a `gradpruner "
                "probe` output; its task is used), --task NAME (see `gradpruner tasks`) or --data "
                "FILE, or cut without either by --criterion tail (or random) --merge none")
    if merge == "fold":
        return ("--merge fold fits the fold on task data: pass --task NAME or --data FILE (or "
                "--scores PROBE_DIR of a built-in task), or use --merge none")
    return None


def check_merge(merge: object) -> None:
    if merge is None or merge in ("all", "auto", "fold"):
        return
    if isinstance(merge, bool) or not isinstance(merge, int) or merge < 1:
        raise GradPrunerError(f"--merge takes a number of donor layers, 'all', 'fold', 'auto' or 'none', got {merge!r}")


def changed_settings(previous: dict, current: dict) -> list[str]:
    """The top-level settings whose values differ between two fingerprints (plain JSON)."""
    return sorted(k for k in set(previous) | set(current) if previous.get(k) != current.get(k))


def _at_least(low: int, **values: object) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise GradPrunerError(f"--{name.replace('_', '-')} must be at least {low}, got {value}")


def settings_class(name: str) -> type:
    """The settings dataclass of criterion `name` (or of the linear fold, "fold")."""
    from .criteria import CRITERIA

    if name == "fold":
        from .apply.fold import FoldSettings

        return FoldSettings
    if name not in CRITERIA:
        raise GradPrunerError(f"settings for unknown criterion {name!r}; known: {', '.join(sorted(CRITERIA))}")
    cls = getattr(CRITERIA[name], "settings_class", None)
    if cls is None:
        raise GradPrunerError(f"criterion {name!r} has no settings")
    return cls


def read_config_file(path: str) -> dict:
    """The mapping in a YAML or JSON config file (or a report.json's `config`)."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise GradPrunerError(f"config file not found: {path}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise GradPrunerError(f"{path}: not a YAML or JSON config ({str(err).splitlines()[0]})") from None
    if isinstance(data, dict) and isinstance(data.get("config"), dict) and "versions" in data:
        data = data["config"]  # a report.json
    if not isinstance(data, dict):
        raise GradPrunerError(f"{path}: a config file holds a mapping of settings")
    return data


def _nested(key: str, given, default):
    """The nested settings `key` (`train`, `heal`): the defaults with the given values on top."""
    cls = type(default)
    if isinstance(given, cls):
        given = asdict(given)
    known = {f.name for f in fields(cls)}
    bad = sorted(set(given) - known)
    if bad:
        raise GradPrunerError(f"unknown {key} setting(s) {', '.join(bad)}; known: {', '.join(sorted(known))}")
    return cls(**{**asdict(default), **given})


def merge_config(base: dict, overrides: dict) -> dict:
    """`base` with `overrides` on top (`train`, `heal` and `settings` merged key by key)."""
    out = {**base, **overrides}
    for key in ("train", "heal", "settings"):
        if key in base and key in overrides:
            out[key] = {**base[key], **overrides[key]}
    return out
