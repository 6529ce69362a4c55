"""Evaluation: scoring by lm-evaluation-harness's definitions, the held-out judge of a cut,
the lm-eval bridge and side-by-side timing."""
