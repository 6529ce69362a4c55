"""One plan, one recipe: typed plans that replay, `run` and a `compare` cell giving the same
result, the config file, and validation before any model is loaded."""

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import gradpruner.workflows.compare as compare_module
import gradpruner.model.loading as models_module
from gradpruner.merging import apply
from gradpruner.cli import main
from gradpruner.config import CompareConfig, RunConfig
from gradpruner.errors import GradPrunerError
from gradpruner.plan import MergeStep, PrunePlan, PruneRecord
from gradpruner.workflows.recipe import prune_model
from tiny_models import tiny_model
from tiny_tokenizer import tiny_tokenizer
import test_auto

import test_compare

igia = test_auto.igia  # the module-scoped probe fixture
workspace = test_compare.workspace  # a tiny llama folder and 60 four-choice questions
EXAMPLES = test_auto.EXAMPLES
TRAIN = dict(steps=3, batch_size=4, lr=5e-3, seed=0)


def state(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("criterion,merge", [("gradpruner", 3), ("laco", None), ("auto", "auto"),
                                             ("block_influence", None)])
def test_a_sidecar_replays_to_the_same_weights(igia, criterion, merge):
    model = tiny_model("llama")
    record = prune_model(model, igia, tiny_tokenizer(), EXAMPLES, criterion=criterion, count=2,
                         merge=merge)
    sidecar = json.loads(json.dumps(record.to_json()))  # as written to gradpruner.json
    again = PruneRecord.from_json(sidecar)
    assert again.plan == record.plan and again.to_json() == record.to_json()
    replayed, entries = apply(tiny_model("llama"), again.plan, igia)
    assert entries == record.merged_entries
    mine, theirs = state(model), state(replayed)
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)


def test_plans_check_themselves():
    with pytest.raises(GradPrunerError, match="must all be removed"):
        PrunePlan(6, (1, 2), (MergeStep(0, (3,)),), "gradpruner", 0.2, 1.0)
    with pytest.raises(GradPrunerError, match="unknown merge rule"):
        PrunePlan(6, (1,), (MergeStep(0, (1,)),), "magic")
    with pytest.raises(GradPrunerError, match="schema version"):
        PruneRecord.from_json({"schema_version": 0})
    laco = PrunePlan(6, (2, 3, 4), (MergeStep(3, (4,)), MergeStep(1, (2, 3))), "laco")
    assert laco.merged == {1: [2, 3, 4]}  # a donor that had received passes its donors on
    with pytest.raises(GradPrunerError, match="plan is for a model with 8 layers, this one has 6: apply it to the "
                       "model it was made for"):
        apply(tiny_model("llama"), PrunePlan(8, (1,)))


def test_select_changes_nothing_it_is_given(igia):
    from gradpruner.search.select import select

    model = tiny_model("llama")
    before = state(model)
    examples = list(EXAMPLES)
    for criterion, merge in (("auto", "auto"), ("laco", None), ("gradpruner", "auto")):
        select(model, tiny_tokenizer(), examples, igia=igia, criterion=criterion, count=2, merge=merge)
    assert examples == EXAMPLES
    assert all(torch.equal(v, before[k]) for k, v in state(model).items())
    assert all(not p.requires_grad or p.grad is None for p in model.parameters())


def recipe(workspace, out: Path, **extra) -> dict:
    return dict(model=str(workspace / "model"), task=None, data=str(workspace / "data.jsonl"),
                count=None, ratio=0.3, probe_steps=2, heldout=8, eval_limit=8,
                selection_budget=None, train=TRAIN, out=str(out), **extra)


def test_a_compare_cell_is_what_run_gives(workspace, tmp_path, monkeypatch):
    import gradpruner.workflows.run as pipeline_module
    from gradpruner.workflows.compare import compare

    dense = {}
    original_dense, original_finetune = pipeline_module.finetune_dense, compare_module.finetune_dense

    def keep_dense(name, function):
        def wrapped(*args, **kwargs):
            model, stats = function(*args, **kwargs)
            dense[name] = (state(model), stats)
            return model, stats
        return wrapped

    monkeypatch.setattr(pipeline_module, "finetune_dense", keep_dense("run", original_dense))
    monkeypatch.setattr(compare_module, "finetune_dense", keep_dense("compare", original_finetune))
    results = pipeline_module.run(RunConfig.from_dict(recipe(workspace, tmp_path / "run")))
    healed = []
    original_heal = compare_module.heal

    def keep(*args, **kwargs):
        model, stats = original_heal(*args, **kwargs)
        healed.append(state(model))
        return model, stats

    monkeypatch.setattr(compare_module, "heal", keep)
    settings = recipe(workspace, tmp_path / "cmp", methods=["auto"])
    settings.pop("ratio")
    compared = compare(CompareConfig.from_dict({**settings, "ratios": [0.3]}))
    cell = compared["cells"][0]
    assert cell["prune"]["plan"] == results["prune"]["plan"]
    assert cell["prune"]["selection"]["auto"]["candidates"] == results["prune"]["selection"]["auto"]["candidates"]
    saved = load_file(str(tmp_path / "run" / "model" / "model.safetensors"))
    (tuned,) = healed
    assert saved.keys() <= tuned.keys()
    assert all(torch.equal(saved[k], tuned[k]) for k in saved)
    assert cell["after"]["acc"] == results["pruned_finetuned"]["acc"]
    assert cell["finetune"]["warm_started_matrices"] == results["pruned_finetune"]["warm_started_matrices"] > 0
    # run's dense reference continues from the probe's checkpoint: the same model as compare's
    # uninterrupted dense fine-tune
    (mine, mine_stats), (theirs, theirs_stats) = dense["run"], dense["compare"]
    assert mine_stats["probe_steps_reused"] == 2 and mine_stats["steps"] == theirs_stats["steps"] == 3
    assert all(torch.equal(mine[k], theirs[k]) for k in theirs)
    assert results["dense_finetuned"]["acc"] == compared["dense"][0]["after"]["acc"]
    assert not any(p.name.endswith("checkpoints") for p in (tmp_path / "run").iterdir())
    assert "first 2 steps of the dense fine-tune" in (tmp_path / "run" / "report.md").read_text()
    # the held-out examples judge cuts and are never trained on, in run as in compare
    assert results["prune"]["selection"]["auto"]["judge"]["examples"] == 8


def test_the_probe_checkpoints_as_the_dense_fine_tune_it_starts(tmp_path):
    """The probe keeps its checkpoints at the interval of the fine-tune that continues it, so the
    Trainer resumes from them with the settings it saved (no mismatch warning), and the last
    one after the probe's last step."""
    from gradpruner.config import TrainConfig
    from gradpruner.training.train_config import Checkpoints
    from gradpruner.workflows.recipe import probe

    folder = tmp_path / "dense.checkpoints"
    probe(tiny_model("llama"), tiny_tokenizer(), EXAMPLES, TrainConfig(**{**TRAIN, "steps": 6}),
          3, 6, Checkpoints(str(folder), every=2))
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint-2", "checkpoint-3"]
    state = json.loads((folder / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["save_steps"] == 2 and state["global_step"] == 3


def test_report_config_feeds_back_to_the_same_plan(workspace, tmp_path):
    first = tmp_path / "first"
    assert main(["run", "--model", str(workspace / "model"), "--data", str(workspace / "data.jsonl"),
                 "--out", str(first), "--probe-steps", "3", "--layers", "2", "--heldout", "8",
                 "--limit", "8", "--selection-budget", "none", "--steps", "3", "--batch-size", "4",
                 "--lr", "5e-3", "--no-dense"]) == 0
    report = json.loads((first / "report.json").read_text())
    assert report["config"]["count"] == 2 and report["config"]["dense"] is False
    again = tmp_path / "again"
    assert main(["run", "--config", str(first / "report.json"), "--out", str(again)]) == 0
    second = json.loads((again / "report.json").read_text())
    assert second["prune"]["plan"] == report["prune"]["plan"]
    assert {**second["config"], "out": None} == {**report["config"], "out": None}
    sidecar = json.loads((again / "model" / "gradpruner.json").read_text())
    assert sidecar["config"] == second["config"] and sidecar["finetune"]["steps"] == 3


def test_a_yaml_config_with_flags_on_top(tmp_path):
    from gradpruner.cli import build_parser, command_config

    path = tmp_path / "run.yaml"
    path.write_text("criterion: block_influence\nmerge: null\nratio: 0.25\nheldout: 16\n"
                    "train:\n  steps: 7\n  lr: 0.001\nsettings:\n  laco:\n    threshold: 0.5\n")
    args = build_parser().parse_args(["run", "--config", str(path), "--steps", "9", "--layers", "3"])
    cfg = command_config(args)
    assert (cfg.criterion, cfg.merge, cfg.heldout) == ("block_influence", None, 16)
    assert (cfg.train.steps, cfg.train.lr) == (9, 0.001)  # the flag wins, the file fills the rest
    assert (cfg.ratio, cfg.count) == (None, 3)
    assert cfg.criterion_settings()["laco"].threshold == 0.5


BAD_SETTINGS = [
    (["run", "--ratio", "40"], "ratio must be a number strictly between 0 and 1, got 40.0"),
    (["run", "--steps", "0"], "--steps must be at least 1"),
    (["run", "--density", "2"], "--density must be in (0, 1]"),
    (["run", "--merge", "-1"], "--merge must not be negative"),
    (["run", "--probe-steps", "0"], "--probe-steps must be at least 1"),
    (["run", "--heldout", "0"], "--heldout must be at least 1"),
    (["run", "--task", "nope"], "unknown task 'nope'"),
    (["run", "--data", "missing.jsonl"], "data file not found: missing.jsonl"),
    (["run", "--config", "missing.yaml"], "config file not found"),
    (["compare", "--ratio", "0.2,1.5", "--out", "x"], "ratio must be a number strictly between 0 and 1"),
    (["compare", "--methods", "tail,nope", "--out", "x"], "unknown method(s) nope"),
    (["compare", "--heals", "lora,magic", "--out", "x"], "healing variant(s) magic"),
    (["run", "--distill", "2"], "--distill must be a weight in [0, 1]"),
    (["run", "--heal-layers", "0", "--heal", "partial"], "heal layers must be a positive integer"),
    (["run", "--rounds", "2", "--criterion", "gradpruner"], "reads the dense model's probe"),
    (["run", "--rounds", "2", "--merge", "3"], "--rounds merges by 'auto', 'fold', 'replace' or 'none'"),
    (["run", "--distill", "0.5", "--teacher", "missing"], "teacher model folder not found: missing"),
    (["run", "--merge", "blend"], "--merge takes a number of donor layers, 'all', 'fold'"),
]  # test_instant_cli also runs each without torch


@pytest.mark.parametrize("args,message", BAD_SETTINGS)
def test_bad_settings_are_refused_before_any_model_is_loaded(args, message, monkeypatch, capsys, tmp_path):
    def refuse(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(models_module, "load_model", refuse)
    monkeypatch.setattr(models_module, "load_config", refuse)
    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and not list(tmp_path.iterdir())


def test_unknown_config_keys_are_refused(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("ratios_typo: 0.3\n")
    with pytest.raises(GradPrunerError, match="unknown config key"):
        RunConfig.from_file(str(path))
    path.write_text("train:\n  stepz: 3\n")
    with pytest.raises(GradPrunerError, match="unknown train setting"):
        RunConfig.from_file(str(path))
    path.write_text("settings:\n  laco:\n    nope: 1\n")
    with pytest.raises(TypeError):
        RunConfig.from_file(str(path)).validate()


def test_a_config_written_by_an_earlier_version_reads_as_it_meant():
    """report.json configs of earlier versions kept the run's checkpointing in `train` and the
    rounds of iterative pruning in `heal`: they are the run's and the cut's settings now."""
    cfg = RunConfig.from_dict({"train": {"steps": 7, "save_every": 5, "checkpoint_dir": "x",
                                         "resume": True},
                               "heal": {"method": "full", "rounds": 2, "round_steps": 3}})
    assert (cfg.train.steps, cfg.save_every, cfg.heal.method) == (7, 5, "full")
    assert (cfg.rounds, cfg.round_steps) == (2, 3)
    assert cfg.cut_settings(100).rounds == 2 and not cfg.resume


@pytest.mark.slow
def test_the_readme_library_example_runs_as_written(tmp_path, monkeypatch):
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    block = re.search(r"## The library\n.*?```python\n(.*?)```", readme, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(block, "README.md", "exec"), scope)
    assert 0 <= scope["metrics"]["acc"] <= 1
    assert (tmp_path / "pruned-tuned" / "config.json").is_file()
    assert scope["plan"].removed and len(scope["tuned"].model.layers) == 30 - len(scope["plan"].removed)
