"""Pinned results: pruning the tiny test models gives exactly what it gave when this was written.

Every case prunes a fresh `tiny_model(arch)` (6 layers) with a probe IGIA made as in
test_auto.py and compares the outcome (removed and kept layers, merge plan, merged entry counts,
layer scores, parameter count) and a fingerprint of the pruned weights (float64 sum and sum of
squares of every tensor of the state dict) with `pinned_results.json`.

The gradpruner API is touched only in the "API adapter" section right below (`make_igia` and
`outcome`): when the API changes, rewrite those two functions, not the pins. The cases are plain
data. To regenerate the pins (only when a change of results is intended):

    cd tests && ../.venv/bin/python test_pinned.py [OUTPUT.json]
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

from tiny_models import tiny_model
from tiny_tokenizer import tiny_tokenizer

PINS = Path(__file__).with_name("pinned_results.json")

# ---------------------------------------------------------------- API adapter (the only gradpruner use)
from gradpruner.tasks.examples import MCExample  # noqa: E402
from gradpruner.workflows.recipe import prune_model  # noqa: E402
from gradpruner.training.trainer import TrainConfig, probe_gradients as probe  # noqa: E402

EXAMPLES = [MCExample.from_question(f"Question: color {i}? Answer:", ["blue", "green"], i % 2)
            for i in range(24)]  # as in test_auto.py
HELDOUT = [MCExample.from_question(f"Question: color {i}? Answer:", ["blue", "green"], i % 2)
           for i in range(24, 32)]  # 8 more items, for `auto`'s held-out judge


def make_igia(arch: str):
    """The probe's IGIA on a fresh tiny model of `arch`, made as in test_auto.py (seeded)."""
    result, _ = probe(tiny_model(arch), tiny_tokenizer(), EXAMPLES,
                      TrainConfig(steps=3, batch_size=4, lr=1e-4), 3)  # as pinned
    return result


def igia_sq_norms(igia) -> torch.Tensor:
    """The per-step, per-module ||S||_F^2 of a probe (checked to be deterministic)."""
    return igia.sq_norms


def outcome(model, igia, case: dict) -> dict:
    """Prune `model` in place as `case` says; what is pinned of the result.

    `case` keys: criterion, merge, and one of count / ratio / remove; optional density (0.2),
    seed (0), heldout (False: no held-out examples).
    """
    record = prune_model(model, igia, tiny_tokenizer(), EXAMPLES, seed=case.get("seed", 0),
                         heldout=HELDOUT if case.get("heldout") else [], criterion=case["criterion"],
                         count=case.get("count"), ratio=case.get("ratio"), remove=case.get("remove"),
                         merge=case["merge"], density=case.get("density", 0.2)).to_json()
    return {
        "removed": record["removed_layers"],
        "kept": record["kept_layers"],
        "merged": record["merged"],  # receiver (str) -> donor layers
        "merged_entries": record["merged_entries"],  # receiver weight name -> merged entries
        "layer_scores": record["layer_scores"],
        "params_after": record["params_after"],
    }
# ---------------------------------------------------------------- end of the API adapter


PAPER = {"criterion": "gradpruner", "merge": 3, "density": 0.2}
CASES: dict[str, dict] = {
    # the paper's rule
    "llama-paper-count2-merge3-d0.2": {**PAPER, "count": 2},
    "llama-paper-ratio0.5-merge3-d0.2": {**PAPER, "ratio": 0.5},
    "llama-paper-count2-mergeall-d0.2": {**PAPER, "count": 2, "merge": "all"},
    "llama-paper-count2-merge1-d0.5": {**PAPER, "count": 2, "merge": 1, "density": 0.5},
    # IGIA variants
    "llama-gradpruner-nomerge": {"criterion": "gradpruner", "count": 2, "merge": None},
    "llama-gradpruner_unsquared-merge3": {"criterion": "gradpruner_unsquared", "count": 2, "merge": 3},
    "llama-gradpruner_relative-nomerge": {"criterion": "gradpruner_relative", "count": 2, "merge": None},
    # baselines
    "llama-tail": {"criterion": "tail", "count": 2, "merge": None},
    "llama-random-seed0": {"criterion": "random", "count": 2, "merge": None, "seed": 0},
    "llama-random-seed3": {"criterion": "random", "count": 2, "merge": None, "seed": 3},
    "llama-block_influence": {"criterion": "block_influence", "count": 2, "merge": None},
    "llama-angular": {"criterion": "angular", "count": 2, "merge": None},
    "llama-taylor": {"criterion": "taylor", "count": 2, "merge": None},
    "llama-ppl": {"criterion": "ppl", "count": 2, "merge": None},
    "llama-laco": {"criterion": "laco", "count": 2, "merge": None},
    # auto, judged on held-out examples
    "llama-auto-nomerge": {"criterion": "auto", "count": 2, "merge": None, "heldout": True},
    "llama-auto-mergeauto": {"criterion": "auto", "count": 2, "merge": "auto", "heldout": True},
    # an explicit removal list, merged by the gradpruner scores
    "llama-remove1,4-merge3": {"criterion": "gradpruner", "remove": [1, 4], "merge": 3},
    # other architectures
    "qwen3-paper-count2-merge3-d0.2": {**PAPER, "count": 2, "arch": "qwen3"},
    "qwen3-block_influence": {"criterion": "block_influence", "count": 2, "merge": None, "arch": "qwen3"},
    "gemma2-paper-count2-merge3-d0.2": {**PAPER, "count": 2, "arch": "gemma2"},
    "gemma2-block_influence": {"criterion": "block_influence", "count": 2, "merge": None, "arch": "gemma2"},
}
NEEDS_PROBE = {"gradpruner", "gradpruner_unsquared", "gradpruner_relative", "auto"}


def fingerprint(model) -> dict[str, list[float]]:
    """Tensor name -> [float64 sum, float64 sum of squares] over the whole state dict."""
    out = {}
    for name, tensor in model.state_dict().items():
        values = tensor.detach().to(torch.float64)
        out[name] = [float(values.sum()), float(values.square().sum())]
    return out


def run_case(case: dict, igia_of) -> dict:
    """The pinned outcome of `case` plus the fingerprint of the pruned model.

    The probe `igia_of(arch)` is given where the criterion reads it or a merge needs it, else
    None (as without --scores), so a change of the probe shows only in the cases that use it.
    """
    arch = case.get("arch", "llama")
    model = tiny_model(arch)
    igia = igia_of(arch) if case["criterion"] in NEEDS_PROBE or case["merge"] else None
    result = outcome(model, igia, {k: v for k, v in case.items() if k != "arch"})
    return {**result, "fingerprint": fingerprint(model)}


def rounded(value):
    """JSON-ready: floats to 10 significant digits, tuples as lists, keys as strings."""
    if isinstance(value, float):
        return float(f"{value:.10g}") if math.isfinite(value) else value
    if isinstance(value, dict):
        return {str(k): rounded(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [rounded(v) for v in value]
    return value


@pytest.fixture(scope="module")
def igia_of():
    """arch -> its probe IGIA, each made once per module."""
    made = {}

    def get(arch: str):
        if arch not in made:
            made[arch] = make_igia(arch)
        return made[arch]

    return get


@pytest.fixture(scope="module")
def pins() -> dict:
    return json.loads(PINS.read_text())


def test_the_pins_cover_every_case(pins):
    assert set(pins["cases"]) == set(CASES)
    assert pins["cases_spec"] == rounded(CASES)  # a case changed: regenerate deliberately


def test_the_probe_is_deterministic(igia_of):
    again = make_igia("llama")
    assert torch.equal(igia_sq_norms(again), igia_sq_norms(igia_of("llama")))


@pytest.mark.parametrize("name", list(CASES))
def test_pruning_gives_the_pinned_result(name, igia_of, pins):
    got = rounded(run_case(CASES[name], igia_of))
    want = pins["cases"][name]
    for key in ("removed", "kept", "merged", "merged_entries", "params_after"):
        assert got[key] == want[key], key
    if want["layer_scores"] is None:
        assert got["layer_scores"] is None
    else:
        # abs tiny: IGIA scores are ~1e-9, the default abs 1e-12 would loosen them to ~1e-3
        assert got["layer_scores"] == pytest.approx(want["layer_scores"], rel=1e-5, abs=1e-15)
    assert set(got["fingerprint"]) == set(want["fingerprint"])
    for tensor, (total, squares) in want["fingerprint"].items():
        assert got["fingerprint"][tensor] == pytest.approx([total, squares], rel=1e-6, abs=1e-9), tensor


if __name__ == "__main__":  # regenerate: cd tests && ../.venv/bin/python test_pinned.py [OUT.json]
    import os

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TQDM_DISABLE", "1")
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else PINS
    made: dict = {}

    def cached(arch):
        if arch not in made:
            made[arch] = make_igia(arch)
        return made[arch]

    first = igia_sq_norms(cached("llama"))
    if not torch.equal(first, igia_sq_norms(make_igia("llama"))):
        raise SystemExit("the probe is not deterministic: nothing pinned")
    pinned = {"cases_spec": rounded(CASES),
              "cases": {name: rounded(run_case(case, cached)) for name, case in CASES.items()}}
    target.write_text(json.dumps(pinned, indent=1, sort_keys=True) + "\n")
    print(f"wrote {len(pinned['cases'])} cases to {target}")
