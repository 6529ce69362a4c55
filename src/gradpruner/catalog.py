"""The names of everything a user chooses, with what each needs, in one module that imports no
torch: the CLI's choices and help, the configs' checks (made before any model loads) and
`compare`'s methods read them here, and the registries (criteria, merge rules, healings) check
themselves against them when they are imported.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CriterionInfo:
    """What a criterion reads: the probe's IGIA (`needs_probe`), task examples (`needs_data`)."""

    needs_probe: bool = False
    needs_data: bool = False


# every criterion `--criterion` takes; `auto` searches over the others' cuts (`search.auto`)
CRITERIA: dict[str, CriterionInfo] = {
    "angular": CriterionInfo(needs_data=True),
    "auto": CriterionInfo(needs_data=True),
    "block_influence": CriterionInfo(needs_data=True),
    "gradpruner": CriterionInfo(needs_probe=True),
    "gradpruner_relative": CriterionInfo(needs_probe=True),
    "gradpruner_unsquared": CriterionInfo(needs_probe=True),
    "laco": CriterionInfo(needs_data=True),
    "ppl": CriterionInfo(needs_data=True),
    "random": CriterionInfo(),
    "tail": CriterionInfo(),
    "taylor": CriterionInfo(needs_data=True),
}
CRITERION_NAMES = tuple(sorted(CRITERIA))
PROBE_CRITERIA = tuple(n for n in CRITERION_NAMES if CRITERIA[n].needs_probe)
DATA_FREE_CRITERIA = tuple(n for n in CRITERION_NAMES
                           if not CRITERIA[n].needs_probe and not CRITERIA[n].needs_data)

MERGE_WORDS = ("auto", "none", "all", "fold", "replace")  # --merge's words; or a number of donors
MERGE_RULES = ("gradpruner", "laco", "fold", "replace")  # the rules a plan merges by (`merging.RULES`)
DEFAULT_DENSITY = 0.2  # the kept fraction of each donor matrix in the paper's merge
FOLD_FITS = ("lstsq", "cosine")  # how the linear fold fits its map (`merging.fold`)

# `export --quant`: GGUF file types, by llama.cpp's names, with llama.cpp's file-type ids
GGUF_FLOAT_TYPES = {"f32": 0, "f16": 1, "bf16": 32}
GGUF_QUANT_TYPES = {"q8_0": 7, "q6_k": 18, "q5_k_m": 17, "q5_0": 8, "q4_k_m": 15, "q4_0": 2,
                    "q3_k_m": 12, "q2_k": 10}
GGUF_TYPES = {**GGUF_FLOAT_TYPES, **GGUF_QUANT_TYPES}

HEALINGS = ("lora", "full", "partial")  # --heal (`training.healing.HEALERS`)
TEACHER_CACHES = ("auto", "on", "off")  # --teacher-cache
DISTILL_POSITIONS = ("answer", "all")  # --distill-positions: where the KL term compares

# method -> (criterion, merge donors or "auto"/None)
METHODS: dict[str, tuple[str, int | str | None]] = {
    "auto": ("auto", "auto"),
    "gradpruner": ("gradpruner", 3),
    "gradpruner_nomerge": ("gradpruner", None),
    "gradpruner_unsquared": ("gradpruner_unsquared", 3),
    "tail": ("tail", None),
    "random": ("random", None),
    "block_influence": ("block_influence", None),
    "angular": ("angular", None),
    "taylor": ("taylor", None),
    "ppl": ("ppl", None),
    "laco": ("laco", None),
    "auto_fold": ("auto", "fold"),
    "auto_replace": ("auto", "replace"),
    "auto_nomerge": ("auto", None),
}

# healing variant -> `training.healing.HealConfig` fields (or the cut's `rounds`) set on top of the
# comparison's own
HEALS: dict[str, dict] = {
    "lora": {},
    "full": {"method": "full"},
    "full_lr1": {"method": "full", "lr": 1e-4},
    "partial": {"method": "partial"},
    "partial_head": {"method": "partial", "lm_head": True},
    "distill": {"distill": 0.5},
    "partial_distill": {"method": "partial", "distill": 0.5},
    "rounds": {"rounds": 2},
    "lora_lr3": {"lr": 3e-4},
    "partial_lr10": {"method": "partial", "lr": 1e-3},
    "distill_lr3": {"distill": 0.5, "lr": 3e-4},
    "distill_all": {"distill": 0.5, "distill_positions": "all"},
    "distill_align": {"distill": 0.5, "distill_positions": "all", "align": 1.0},
    "full_distill_align": {"method": "full", "distill": 0.5, "distill_positions": "all",
                           "align": 1.0},
}
