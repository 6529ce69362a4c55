"""The merge rules behind their registry: sidecars written before it replay, each rule takes
only its own settings, and the registry and the catalog agree."""

import json
from pathlib import Path

import pytest

from gradpruner.catalog import MERGE_RULES
from gradpruner.errors import GradPrunerError
from gradpruner.merging import apply
from gradpruner.merging.fold import Calibration
from gradpruner.merging.rules import RULES
from gradpruner.model.surgery import num_layers
from gradpruner.plan import MergeStep, PrunePlan, PruneRecord
from gradpruner.tasks.examples import MCExample
from gradpruner.training.train_config import TrainConfig
from gradpruner.workflows.recipe import probe
from tiny_models import tiny_model
from tiny_tokenizer import tiny_tokenizer

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results"
# cells of earlier comparisons (the default model, 30 layers), one per merge rule
OLD_CELLS = ["heal-lr3e-4/piqa/cells/auto_fold-r0.25-s1.json",
             "one-recipe/piqa/cells/laco-r0.4-s0.json",
             "one-recipe/piqa/cells/gradpruner-r0.4-s0.json"]
EXAMPLES = [MCExample.from_question(f"Question: color {i}? Answer:", ["blue", "green"], i % 2)
            for i in range(16)]


def test_the_registry_is_the_catalog():
    assert tuple(RULES) == MERGE_RULES
    assert all(rule.name == name for name, rule in RULES.items())


@pytest.mark.parametrize("cell", OLD_CELLS)
def test_sidecars_written_before_the_registry_replay(cell):
    sidecar = json.loads((RESULTS / cell).read_text())["prune"]
    record = PruneRecord.from_json(sidecar)
    assert record.plan.to_json() == sidecar["plan"]  # the format is unchanged
    model = tiny_model("llama", num_hidden_layers=30)
    probed = probe(tiny_model("llama", num_hidden_layers=30), tiny_tokenizer(), EXAMPLES,
                   TrainConfig(steps=2, batch_size=4, lr=1e-2), 2)
    _, entries = apply(model, record.plan, probed.igia, Calibration(tiny_tokenizer(), EXAMPLES))
    assert num_layers(model) == 30 - len(sidecar["removed_layers"])
    assert (sum(entries.values()) > 0) == (record.plan.merge_rule != "laco")


@pytest.mark.parametrize("rule,settings,stray", [
    ("laco", {"density": 0.2}, "density"),
    ("fold", {"ridge": 0.0, "calibration": 4, "scale": 1.0}, "scale"),
    ("gradpruner", {"density": 0.2, "scale": 1.0, "ridge": 0.1}, "ridge"),
])
def test_a_rule_takes_only_its_own_settings(rule, settings, stray):
    plan = PrunePlan(6, (2,), (MergeStep(1, (2,)),), rule, **settings)
    with pytest.raises(GradPrunerError, match=f"a {rule} merge takes no {stray}"):
        apply(tiny_model("llama"), plan)


def test_a_fold_step_folds_the_block_right_after_its_receiver():
    plan = PrunePlan(6, (2, 4), (MergeStep(1, (2, 4)),), "fold", ridge=0.0, calibration=4)
    with pytest.raises(GradPrunerError, match="right after its receiver, got 1 <- \\[2, 4\\]"):
        apply(tiny_model("llama"), plan, calibration=Calibration(tiny_tokenizer(), EXAMPLES))
