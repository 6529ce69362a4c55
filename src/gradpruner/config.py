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

from .catalog import (CRITERIA, CRITERION_NAMES, DATA_FREE_CRITERIA, DEFAULT_DENSITY, GGUF_TYPES,
                      HEALS, MERGE_WORDS, METHODS, PROBE_CRITERIA)
from .errors import GradPrunerError
from .evaluation.harness import HarnessSpec, parse_task_names
from .outputs import plain_json
from .tasks.chat import check_mode
from .tasks.records import check_source
from .training.healing import HealConfig
from .training.train_config import TrainConfig

DTYPES = ("auto", "float32", "bfloat16", "float16")
# settings that earlier versions wrote elsewhere (report.json configs): in `train`, `save_every` is
# a run's own setting now, the others its checkpoints (`training.Checkpoints`); in `heal`, the
# rounds of iterative pruning belong to the cut
LEGACY_KEYS = {"train": ("save_every", "checkpoint_dir", "resume", "progress"),
               "heal": ("rounds", "round_steps")}
MOVED_KEYS = ("save_every", "rounds", "round_steps")  # the rest is dropped


class FromDict:
    """A command's config built from plain values (a parsed file, the flags) by
    `config_from_dict`; unknown keys are an error."""

    @classmethod
    def from_dict(cls, data: dict):
        return config_from_dict(cls, data)


DEFAULT_RATIO = 0.2  # `run`'s cut when none is given
KEEP_HELDOUT = 256  # held-out examples with --keep: a share's standard error about 0.06 near 0.5


@dataclass
class CutFields:
    """The settings of a cut that a user gives: the criterion, its size (`ratio`, `count` or an
    explicit `remove`), the merge (`merge`, the paper's `density`) and the share of the
    fine-tune after it that the selection may take (`selection_budget`; None: no limit)."""

    criterion: str = "auto"
    ratio: float | None = None
    count: int | None = None
    remove: list[int] | None = None
    merge: int | str | None = "auto"
    density: float = DEFAULT_DENSITY
    selection_budget: float | None = 0.1


@dataclass
class CutSettings(CutFields):
    """What decides a cut: the user's `CutFields`, the criteria's settings dataclasses by name,
    the seed, the steps of the fine-tune that follows (`heal_steps`, whose time the selection
    budget shares; None: no limit), and iterative pruning's `rounds` with `round_steps` of
    healing between them."""

    criterion_settings: dict[str, object] = field(default_factory=dict)
    seed: int = 0
    heal_steps: int | None = None
    rounds: int = 1
    round_steps: int = 10

    def removing(self, total: int) -> int:
        """How many of `total` layers the cut removes."""
        from .removal import removal_count, validate_removal

        if self.remove is not None:
            return len(validate_removal(self.remove, total))
        return removal_count(total, self.ratio, self.count)


@dataclass
class HarnessSettings:
    """lm-evaluation-harness tasks an evaluation adds (`evaluation/harness.py`): their names (a
    list or comma-separated) and a folder of the user's own task YAMLs."""

    harness: list[str] | None = None
    harness_include: str | None = None

    def check_harness(self) -> None:
        if self.harness_include and not self.harness:
            raise GradPrunerError("--harness-include needs --harness TASKS")
        if self.harness:
            self.harness_spec().validate()

    def harness_spec(self) -> HarnessSpec | None:
        """The lm-eval tasks of `harness`, or None (chat-formatted with --chat-template on)."""
        if not self.harness:
            return None
        names = parse_task_names(self.harness if isinstance(self.harness, str)
                                 else ",".join(map(str, self.harness)))
        return HarnessSpec(names, self.harness_include, getattr(self, "chat_template", "auto") == "on")


@dataclass
class GGUFSettings:
    """The GGUF files an export writes: the `quant` types (comma-separated), converted by
    llama.cpp's converter from the `llama_cpp` checkout, else llama-cpp-python's source package."""

    quant: str = "f16"
    llama_cpp: str | None = None

    @property
    def file_types(self) -> list[str]:
        return parse_gguf_types(self.quant)


@dataclass
class CriterionSettings:
    """The criteria's (and the linear fold's) own settings, by name: {name: {field: value}}."""

    settings: dict[str, dict] = field(default_factory=dict)

    def check_settings(self) -> None:
        for name, values in self.settings.items():
            settings_class(name)(**values)  # unknown criteria or fields are the error

    def criterion_settings(self) -> dict[str, object]:
        """The settings dataclasses of the criteria the file configures."""
        return {name: settings_class(name)(**values) for name, values in self.settings.items()}


@dataclass
class RecipeConfig(CutFields, CriterionSettings, FromDict):
    """What the prune-and-heal recipe needs: the model, data, cut, merge, probe and healing.

    `heldout` training examples are set apart, never trained on, to judge cuts; `selection_budget`
    is the share of the pruned model's fine-tune that `auto` and the merge search may take.
    """

    model: str | None = None
    task: str | None = "arc_easy"
    data: str | None = None
    eval_data: str | None = None
    chat_template: str = "auto"
    ratio: float | None = DEFAULT_RATIO
    probe_steps: int = 40
    heldout: int = 32
    eval_limit: int | None = 300
    warm_start: bool = True
    rounds: int = 1  # iterative pruning: remove the layers in rounds ...
    round_steps: int = 10  # ... with this many healing steps between them
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

        _check_cut(self.criterion, self.merge, self.density)
        self._validate_cut()
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
        _at_least(1, rounds=self.rounds, round_steps=self.round_steps)
        if self.rounds > 1:
            self._check_rounds()
        if self.heal.teacher and not Path(self.heal.teacher).is_dir():
            raise GradPrunerError(f"teacher model folder not found: {self.heal.teacher}")
        self.check_settings()

    def _check_rounds(self) -> None:
        """Iterative pruning re-scores the healed model, which has no probe of its own."""
        if self.criterion in PROBE_CRITERIA:
            raise GradPrunerError(f"--rounds re-scores the healed model each round; criterion "
                                  f"{self.criterion!r} reads the dense model's probe: use auto or a "
                                  "criterion that scores on task data")
        if self.remove:
            raise GradPrunerError("--rounds removes by a criterion, not an explicit --remove list")
        if isinstance(self.merge, int) or self.merge == "all":
            raise GradPrunerError("--rounds merges by 'auto', 'fold', 'replace' or 'none' (the paper's merge "
                                  "reads the dense model's probe)")

    def _validate_cut(self) -> None:
        given = [k for k in ("ratio", "count", "remove") if getattr(self, k) is not None]
        if len(given) != 1:
            raise GradPrunerError("give exactly one of ratio (--ratio), count (--layers) or remove (--remove)")
        _check_size(self.ratio, self.count)

    def cut_settings(self, train_examples: int) -> CutSettings:
        """The cut's settings, its budget a share of the fine-tune of `train_examples` examples
        that heals it."""
        explicit = self.ratio is None
        return CutSettings(self.criterion, self.ratio, self.count if explicit else None,
                           self.remove if explicit else None, self.merge, self.density,
                           self.selection_budget, self.criterion_settings(), self.train.seed,
                           self.train.planned_steps(train_examples), self.rounds,
                           self.round_steps)

    def to_json(self) -> dict:
        return plain_json(asdict(self))

    @classmethod
    def from_file(cls, path: str, overrides: dict | None = None) -> "RecipeConfig":
        """The config in a YAML or JSON file (a report.json's `config` too), `overrides` on top."""
        data = read_config_file(path)
        return cls.from_dict(merge_config(data, overrides or {}))


@dataclass
class RunConfig(RecipeConfig, HarnessSettings, GGUFSettings):
    """Settings of `gradpruner run`; the defaults finish in about 15 minutes on 2 CPU cores.
    `export` ("gguf") adds the healed model's GGUF files (`GGUFSettings`), each scored on the
    task through llama.cpp beside the dense reference's."""

    out: str = "runs/default"
    dense: bool = True
    overwrite: bool = False
    resume: bool = False  # continue the interrupted run in OUT.partial (`journal.py`)
    save_every: int | None = None  # checkpoint the fine-tunes (default: five times in each)
    export: str | None = None
    keep: float | None = None  # the cut's size: the held-out share of dense accuracy to keep
    keep_steps: int | None = None  # healing steps of each candidate (default: the heal's)

    def __post_init__(self):
        if self.keep is not None and self.ratio == DEFAULT_RATIO and self.count is None \
                and self.remove is None:
            self.ratio = None  # --keep sizes the cut in place of the default ratio

    @property
    def heldout_count(self) -> int:
        """The training examples held out: `heldout`, at least `KEEP_HELDOUT` with `keep` (whose
        shares they estimate)."""
        return self.heldout if self.keep is None else max(self.heldout, KEEP_HELDOUT)

    def validate(self) -> None:
        super().validate()
        if self.save_every is not None:
            _at_least(1, save_every=self.save_every)
        self.check_harness()
        if self.export is not None:
            _check_format(self.export)
            parse_gguf_types(self.quant)
        if self.keep is not None:
            self._check_keep()

    def _validate_cut(self) -> None:
        if self.keep is None:
            return super()._validate_cut()
        if any(getattr(self, k) is not None for k in ("ratio", "count", "remove")):
            raise GradPrunerError("--keep chooses the size of the cut: give no --ratio, --layers or --remove")

    def _check_keep(self) -> None:
        if isinstance(self.keep, bool) or not isinstance(self.keep, (int, float)) \
                or not 0 < self.keep <= 1:
            raise GradPrunerError(f"--keep must be a share in (0, 1], e.g. 0.95, got {self.keep!r}")
        if not self.dense:
            raise GradPrunerError("--keep measures shares of the dense fine-tuned model: drop --no-dense")
        if self.rounds > 1:
            raise GradPrunerError("--keep searches one-shot cuts: drop --rounds")
        if self.keep_steps is not None:
            _at_least(1, keep_steps=self.keep_steps)

    def fingerprint(self) -> dict:
        """The settings a resumed run must share with the interrupted one: all but where it
        writes, whether it resumes and how often it checkpoints."""
        return {k: v for k, v in self.to_json().items()
                if k not in ("out", "overwrite", "resume", "save_every")}


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


@dataclass
class StageConfig(FromDict):
    """What every stage command (`probe`, `prune`, `finetune`, `eval`) is given: the model, the
    data (a built-in task or the user's files, and how the chat template applies), where it runs
    and where it writes. Built from the flags by `config_from_dict` and checked by `validate`
    before any model loads."""

    model: str | None = None
    task: str | None = None
    data: str | None = None
    eval_data: str | None = None
    chat_template: str = "auto"
    dtype: str = "auto"
    device: str = "auto"
    device_map: str | None = None
    out: str | None = None
    overwrite: bool = False

    def validate(self) -> None:
        if self.dtype not in DTYPES:
            raise GradPrunerError(f"--dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        for path in (self.data, self.eval_data):
            if path:
                check_source(path)
        check_mode(self.chat_template)

    def resolve_task(self, optional: bool = False):
        """The task of the command, its data read and checked (None where `optional` and none
        is given)."""
        from .tasks import resolve_task

        if optional and not (self.task or self.data):
            return None
        return resolve_task(self.task, self.data, self.eval_data, self.chat_template)


@dataclass
class ProbeConfig(StageConfig):
    """`gradpruner probe`: `train.steps` steps of fine-tuning whose learning-rate schedule is that
    of a `schedule_steps`-step run; the last `heldout` training examples are left out."""

    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=40))
    schedule_steps: int | None = None
    heldout: int = 32

    def validate(self) -> None:
        super().validate()
        self.train.validate()
        _at_least(0, heldout=self.heldout)


@dataclass
class PruneConfig(StageConfig, CutFields, CriterionSettings):
    """`gradpruner prune`: the cut of `model` (default: the probed one) by the probe in `scores`
    and / or the task's data, of which the last `heldout` examples judge cuts (default: as many
    as the probe left out, else 32); `heal_steps`: the fine-tune planned after, whose time the
    selection budget shares."""

    scores: str | None = None
    heldout: int | None = None
    seed: int = 0
    heal_steps: int | None = None

    def validate(self) -> None:
        from .search.budget import check_fraction

        super().validate()
        if self.ratio is None and self.count is None and self.remove is None:
            raise GradPrunerError("give the size of the cut: --ratio F (e.g. 0.25), --layers N or "
                                  "--remove LIST (e.g. 20-27)")
        _check_cut(self.criterion, self.merge, self.density)
        _check_size(self.ratio, self.count)
        check_fraction(self.selection_budget)
        if self.heal_steps is not None:
            _at_least(1, heal_steps=self.heal_steps)
        if self.heldout is not None:
            _at_least(0, heldout=self.heldout)
        if self.scores is None and not (self.task or self.data):
            missing = prune_inputs_error(self.criterion, self.merge, self.remove)
            if missing:
                raise GradPrunerError(missing)
        self.check_settings()

    def cut_settings(self) -> CutSettings:
        return CutSettings(self.criterion, self.ratio, self.count, self.remove, self.merge,
                           self.density, self.selection_budget, self.criterion_settings(),
                           self.seed, self.heal_steps)


@dataclass
class FinetuneConfig(StageConfig):
    """`gradpruner finetune`: fine-tune (heal) `model` by `train` and `heal`; the last `heldout`
    training examples are left out (default: those that judged the model's cut); `warm_start`: a
    probe folder whose adapters LoRA starts from; checkpoints every `save_every` steps into
    OUT.checkpoints, which `resume` continues from."""

    heldout: int | None = None
    warm_start: str | None = None
    save_every: int | None = None
    resume: bool = False
    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=None))
    heal: HealConfig = field(default_factory=HealConfig)

    def validate(self) -> None:
        super().validate()
        self.train.validate()
        self.train.check_heal(self.heal.method)
        self.heal.validate()
        if self.save_every is not None:
            _at_least(1, save_every=self.save_every)
        if self.heldout is not None:
            _at_least(0, heldout=self.heldout)


@dataclass
class EvalConfig(StageConfig, HarnessSettings):
    """`gradpruner eval`: the first `eval_limit` evaluation items of the task by `protocol`,
    and / or lm-eval's `harness` tasks."""

    eval_limit: int | None = None
    protocol: str = "loglik"
    batch_size: int = 16

    def validate(self) -> None:
        super().validate()
        _at_least(1, batch_size=self.batch_size)
        self.check_harness()
        if not (self.task or self.data or self.harness):
            raise GradPrunerError("give a task to evaluate (--task, --data or --harness)")


@dataclass
class ExportConfig(GGUFSettings, FromDict):
    """`gradpruner export`: the model folder as GGUF files (`GGUFSettings`), each checked against
    transformers, into `out`."""

    model: str | None = None
    format: str = "gguf"
    out: str | None = None
    overwrite: bool = False

    def validate(self) -> None:
        _check_format(self.format)
        parse_gguf_types(self.quant)  # an unknown type is the error


def _check_format(name: str) -> None:
    if name != "gguf":
        raise GradPrunerError(f"--export / --format must be gguf, got {name!r}")


def parse_gguf_types(text: str) -> list[str]:
    """The GGUF file types of a comma-separated `--quant` list, checked, in the given order."""
    names = list(dict.fromkeys(t.strip().lower() for t in text.split(",") if t.strip()))
    unknown = [n for n in names if n not in GGUF_TYPES]
    if unknown or not names:
        raise GradPrunerError(f"unknown GGUF type {', '.join(unknown) or repr(text)}: use any of "
                              f"{', '.join(GGUF_TYPES)}, comma-separated")
    return names


def all_methods() -> list[str]:
    """The methods of `--methods all`: every criterion's own (the `auto` merge variants are
    asked for by name)."""
    return [m for m in METHODS if m not in ("auto_fold", "auto_nomerge", "auto_replace")]


def _check_cut(criterion: str, merge: object, density: object) -> None:
    """The criterion, the merge and the paper's merge density, checked."""
    if criterion not in CRITERION_NAMES:
        raise GradPrunerError(f"unknown criterion {criterion!r}; known: {', '.join(CRITERION_NAMES)}")
    check_merge(merge)
    if isinstance(density, bool) or not (isinstance(density, (int, float)) and 0 < density <= 1):
        raise GradPrunerError(f"--density must be in (0, 1], got {density}")


def _check_size(ratio: object, count: object) -> None:
    """The size of a cut, as a ratio or a count of layers (where given), checked."""
    if ratio is not None:
        check_ratio(ratio)
    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
        raise GradPrunerError(f"the number of layers to remove must be a positive integer, got {count}")


def check_ratio(ratio: object) -> None:
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not math.isfinite(ratio) \
            or not 0 < ratio < 1:
        raise GradPrunerError(f"ratio must be a number strictly between 0 and 1, got {ratio}")


def parse_merge_count(value: str | int | None) -> int | str | None:
    """`--merge` as an int, "all", "fold" (the linear fold), "replace" (the replacement layer),
    "auto" (held-out search) or None ("none")."""
    if value is None or value == "none":
        return None
    if value in MERGE_WORDS:
        return value
    try:
        count = int(value)
    except (TypeError, ValueError):
        raise GradPrunerError(f"--merge takes a number of donor layers, 'all', 'fold', 'replace', "
                              f"'auto' or 'none', got {value!r}") from None
    if count < 0:
        raise GradPrunerError(f"--merge must not be negative, got {count}")
    return count or None


def task_data_need(criterion: str, merge: int | str | None, remove: list[int] | None) -> str | None:
    """Why a cut with these settings and a probe's IGIA needs task data (the end of "so that
    ..."), or None when the IGIA is enough."""
    # the criterion's scores are read to choose the cut or to rank the paper's merge donors;
    # `auto` ranks donors of an explicit cut by the probe's IGIA
    ranks = remove is None or isinstance(merge, int) or merge == "all"
    if ranks and CRITERIA[criterion].needs_data and not (criterion == "auto" and remove is not None):
        return "auto can judge cuts" if criterion == "auto" else f"{criterion} can score layers"
    if merge in ("auto", "fold", "replace"):
        return f"--merge {merge} can " + {"auto": "judge merges", "fold": "fit the fold",
                                          "replace": "train the replacement layers"}[merge]
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
    if merge in ("fold", "replace"):
        does = "fits the fold" if merge == "fold" else "trains the replacement layers"
        return (f"--merge {merge} {does} on task data: pass --task NAME or --data FILE (or "
                "--scores PROBE_DIR of a built-in task), or use --merge none")
    return None


def check_merge(merge: object) -> None:
    if merge is None or merge in MERGE_WORDS:
        return
    if isinstance(merge, bool) or not isinstance(merge, int) or merge < 1:
        raise GradPrunerError(f"--merge takes a number of donor layers, 'all', 'fold', 'replace', "
                              f"'auto' or 'none', got {merge!r}")


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
        from .merging.fold import FoldSettings

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


def config_from_dict(cls: type, data: dict):
    """The config `cls` from plain values (a parsed file, the flags): the nested settings
    (`train`, `heal`) merged over the class's defaults; unknown keys are an error."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise GradPrunerError(f"unknown config key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    values = dict(data)
    for nested, legacy in LEGACY_KEYS.items():
        given = dict(values.get(nested) or {})
        if any(key in given for key in legacy):
            for key in MOVED_KEYS:
                if given.get(key) is not None and key in known:
                    values.setdefault(key, given[key])
            values[nested] = {k: v for k, v in given.items() if k not in legacy}
    defaults = cls()
    nested = {key: _nested(key, values.pop(key, None) or {}, getattr(defaults, key))
              for key in ("train", "heal") if key in known}
    return cls(**values, **nested)


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
    """`base` with `overrides` on top (`train`, `heal` and `settings` merged key by key, and
    each criterion's settings field by field)."""
    out = {**base, **overrides}
    for key in ("train", "heal", "settings"):
        if key in base and key in overrides:
            out[key] = {**base[key], **overrides[key]}
    if "settings" in base and "settings" in overrides:  # and each criterion's field by field
        given = base["settings"]
        out["settings"] = {**given, **{name: {**given.get(name, {}), **values}
                                       for name, values in overrides["settings"].items()}}
    return out
