"""What `gradpruner compare` can run: its pruning methods and its healing variants, in a module
that imports no torch, so that a comparison's settings are checked before any model library is
loaded."""

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
    "auto_nomerge": ("auto", None),
}

# healing variant -> `heal.HealConfig` fields set on top of the comparison's own
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
}
