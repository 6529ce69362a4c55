"""An instant CLI: parsing, `--help`, argument errors and the checks of the settings finish in a
fresh interpreter without importing torch, transformers or peft; every option's help states its
default; the lazy package keeps its public names."""

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import gradpruner
from gradpruner import cli
from gradpruner.catalog import (CRITERION_NAMES, DATA_FREE_CRITERIA, HEALINGS, HEALS, MERGE_WORDS,
                                METHODS, PROBE_CRITERIA)
from gradpruner.config import prune_inputs_error
from gradpruner.criteria import CRITERIA
from gradpruner.training.healing import HEALERS
from test_recipe import BAD_SETTINGS

HEAVY = ("torch", "transformers", "peft")

# each case runs `main(argv)` in one fresh interpreter, then records its exit code, the last line
# of its stderr and the heavy libraries imported so far
CHILD = """
import contextlib, io, json, sys
from gradpruner.cli import main

out = []
for argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exit_:
            code = exit_.code
    lines = err.getvalue().strip().splitlines()
    out.append([code, lines[-1] if lines else "", [m for m in %r if m in sys.modules]])
import gradpruner.training.trainer  # the probe of this check: the training module does import them
out.append([0, "", [m for m in %r if m in sys.modules]])
print(json.dumps(out))
""" % (HEAVY, HEAVY)


def fresh_python(code: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`code` in a new interpreter that imports this checkout's gradpruner."""
    src = str(Path(gradpruner.__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=120)


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_help_errors_and_checks_import_no_model_library(tmp_path):
    commands = sorted(subcommands(cli.build_parser()))
    cases = [  # argv, exit code, what stderr's last line holds
        (["--help"], 0, ""),
        (["--version"], 0, ""),
        *(([name, "--help"], 0, "") for name in commands),
        ([], 2, "no command given: `gradpruner run` runs the whole job on the default model and task"),
        # prune with neither a probe nor task data: what to pass, before any model loads
        (["prune", "--ratio", "0.25", "--out", "x"], 2,
         "--criterion auto judges cuts on task data: pass --scores PROBE_DIR (a `gradpruner probe` "
         "output; its task is used), --task NAME (see `gradpruner tasks`) or --data FILE, or cut "
         "without either by --criterion tail (or random) --merge none"),
        (["prune", "--criterion", "block_influence", "--remove", "1", "--out", "x"], 2,
         "--criterion block_influence scores layers on task data: pass --scores PROBE_DIR"),
        (["prune", "--criterion", "gradpruner_relative", "--merge", "none", "--ratio", "0.25", "--out", "x"],
         2, "--criterion gradpruner_relative reads the probe's IGIA: pass --scores PROBE_DIR (the output "
            "of `gradpruner probe`), or use --criterion tail or random, which need nothing"),
        (["prune", "--criterion", "tail", "--merge", "3", "--ratio", "0.25", "--out", "x"], 2,
         "--merge 3 merges by the probe's IGIA: pass --scores PROBE_DIR (the output of `gradpruner "
         "probe`), or --merge none"),
        (["prune", "--criterion", "tail", "--merge", "fold", "--ratio", "0.25", "--out", "x"], 2,
         "--merge fold fits the fold on task data: pass --task NAME or --data FILE (or --scores "
         "PROBE_DIR of a built-in task), or use --merge none"),
        (["prune", "--out", "x"], 2, "give the size of the cut: --ratio F (e.g. 0.25), --layers N or "
                                     "--remove LIST (e.g. 20-27)"),
        (["compare", "--ratio", ",", "--out", "x"], 2,
         "--ratio is empty: give comma-separated numbers, e.g. --ratio 0.25,0.4"),
        (["run", "--bogus"], 2, "unrecognized arguments: --bogus"),
        (["run", "--criterion", "nope"], 2, "invalid choice: 'nope'"),
        (["prune", "--model", "m", "--scores", "s", "--ratio", "1.5", "--out", "x"], 2, "ratio must be"),
        (["prune", "--model", "m", "--scores", "s", "--ratio", "nan", "--out", "x"], 2, "ratio must be"),
        (["prune", "--model", "m", "--scores", "s", "--remove", "1.5", "--out", "x"], 2, "not a layer"),
        (["compare", "--ratio", "x", "--out", "x"], 2, "--ratio takes comma-separated numbers"),
        *((argv, 2, message) for argv, message in BAD_SETTINGS),
        (["probe", "--task", "nope", "--out", "x"], 2, "unknown task 'nope'"),
        (["finetune", "--data", "missing.jsonl", "--out", "x"], 2, "data file not found"),
        (["probe", "--load-in-4bit", "--load-in-8bit", "--out", "x"], 2, "not allowed with argument"),
        (["finetune", "--load-in-4bit", "--full", "--out", "x"], 2, "--load-in-4bit trains LoRA "
                                                                   "adapters on a quantized base: not with --full"),
        (["finetune", "--load-in-8bit", "--heal", "partial", "--out", "x"], 2, "not with --heal partial"),
        (["run", "--load-in-4bit", "--heal", "full"], 2, "--load-in-4bit trains LoRA adapters on a "
                                                          "quantized base: not with --heal full"),
        (["compare", "--load-in-8bit", "--full", "--out", "x"], 2, "not with --full"),
        (["eval", "--data", "in/bad.jsonl"], 2, "bad.jsonl:1: no assistant turn"),
        (["eval", "--data", "in/chat.jsonl", "--chat-template", "off"], 2, "needs the chat template"),
        (["tasks"], 0, ""),
    ]
    chat = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    (tmp_path / "in").mkdir()  # the data the cases read
    (tmp_path / "in" / "bad.jsonl").write_text(json.dumps({"messages": chat["messages"][:1]}) + "\n")
    (tmp_path / "in" / "chat.jsonl").write_text("".join(
        json.dumps({"messages": [{"role": "user", "content": f"hi {i}"}, chat["messages"][1]]}) + "\n"
        for i in range(4)))
    done = fresh_python(CHILD, json.dumps([argv for argv, _, _ in cases]), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    *results, probe = json.loads(done.stdout)
    assert sorted(probe[2]) == sorted(HEAVY)  # the check sees an import when there is one
    assert len(results) == len(cases)
    for (argv, code, message), (got_code, last_line, heavy) in zip(cases, results):
        assert (got_code, heavy) == (code, []), (argv, last_line)
        assert message in last_line, (argv, last_line)
    assert [p.name for p in tmp_path.iterdir()] == ["in"]  # no check wrote anything


def test_importing_the_package_is_light_and_keeps_its_public_names(tmp_path):
    code = """
import json, sys, types
import gradpruner
light = [m for m in %r if m in sys.modules]
import gradpruner.merging.merge, gradpruner.evaluation.scoring, gradpruner.training.distill
from gradpruner import *
from gradpruner import apply, evaluate, heal, model
print(json.dumps({"light": light, "missing": [n for n in gradpruner.__all__ if n not in globals()],
                  "functions": [callable(f) and not isinstance(f, types.ModuleType)
                                for f in (apply, evaluate, heal, gradpruner.apply)],
                  "submodule": model.__name__}))
""" % (HEAVY,)
    done = fresh_python(code, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert found == {"light": [], "missing": [], "functions": [True] * 4,
                     "submodule": "gradpruner.model"}
    from gradpruner.search.select import select
    from gradpruner.training.trainer import TrainConfig

    assert gradpruner.select is select and gradpruner.TrainConfig is TrainConfig
    with pytest.raises(AttributeError):
        gradpruner.no_such_name


def test_the_catalog_without_the_registries_matches_them():
    from gradpruner.search.auto import Auto

    selectable = {**CRITERIA, "auto": Auto}
    assert CRITERION_NAMES == tuple(sorted(selectable))
    assert PROBE_CRITERIA == tuple(sorted(n for n, c in selectable.items() if c.needs_probe))
    assert DATA_FREE_CRITERIA == tuple(sorted(n for n, c in selectable.items()
                                              if not c.needs_probe and not c.needs_data))
    assert HEALINGS == tuple(HEALERS)


@pytest.mark.parametrize("criterion,merge,remove", [
    ("tail", "auto", None), ("random", None, None), ("tail", None, None),
    ("auto", None, [1, 2]), ("gradpruner", None, [3]),  # an explicit cut reads no scores
])
def test_prune_without_probe_or_task_data_runs_what_needs_neither(criterion, merge, remove):
    assert prune_inputs_error(criterion, merge, remove) is None


def states_default(default, text: str) -> bool:
    """Whether `text` says "default" and spells `default` (a number in any notation)."""
    words = [w.rstrip(".") for w in re.findall(r"[\w./+-]+", text)]

    def same(word: str) -> bool:
        if word == str(default):
            return True
        try:
            return isinstance(default, (int, float)) and float(word) == default
        except ValueError:
            return False

    return "default" in text.lower() and any(same(w) for w in words)


def test_every_option_has_help_that_states_its_default(monkeypatch):
    monkeypatch.setattr(cli, "_flags_only", lambda parser: None)  # run/compare: the defaults shown
    parser = cli.build_parser()
    parsers = {"gradpruner": parser, **subcommands(parser)}
    checked = 0
    for name, sub in parsers.items():
        for action in sub._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            option = f"{name} {action.option_strings[0]}"
            assert action.help and action.help != argparse.SUPPRESS, f"{option} has no help"
            if action.default not in (None, False, argparse.SUPPRESS):
                assert states_default(action.default, action.help), (option, action.default, action.help)
            checked += 1
    assert checked > 100


def test_the_default_check_catches_a_silent_default():
    assert states_default(1e-4, "learning rate (default 1e-4)")
    assert states_default("runs/default", "output folder (default runs/default)")
    assert not states_default(16, "evaluation batch size")
    assert not states_default(16, "evaluation batch size (default 8)")


def readme_choices() -> dict[str, set[str]]:
    """The README's section on every choice: for each list's opening words, the names its items
    describe (the backticked names before an item's first colon)."""
    text = (Path(gradpruner.__file__).parents[2] / "README.md").read_text()
    start = text.index("### Every choice:")
    lists: dict[str, set[str]] = {}
    for line in text[start:text.index("\n### ", start + 1)].splitlines()[1:]:
        if line.startswith("- "):
            lists[intro] |= set(re.findall(r"`([^`]+)`", line.split(": ")[0]))
        elif line:
            intro = line.split(" (")[0]
            lists[intro] = set()
    return lists


def test_every_criterion_merge_healing_method_and_variant_is_described_in_the_readme():
    lists = readme_choices()
    assert lists["Criteria"] == set(CRITERION_NAMES)
    assert lists["Merges"] == {*MERGE_WORDS, "N"}
    assert {f"--heal {name}" for name in HEALERS} <= lists["Healing"]
    assert {"--distill W", "--teacher-cache auto|on|off", "--rounds N"} <= lists["Healing"]
    assert lists["`compare --methods`"] == set(METHODS)
    assert lists["`compare --heals`"] == set(HEALS)


def test_a_reader_that_goes_away_gets_no_error_line(tmp_path):
    src = str(Path(gradpruner.__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(f"'{sys.executable}' -m gradpruner.cli tasks | head -n 1", shell=True,
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert done.stdout.startswith("task") and len(done.stdout.splitlines()) == 1
    assert done.stderr == ""
