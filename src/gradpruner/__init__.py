"""gradpruner: prune decoder layers of an LLM while fine-tuning it (GradPruner, ICLR 2026)."""

__version__ = "0.1.0"
