"""gradpruner: prune decoder layers of an LLM while fine-tuning it (GradPruner, ICLR 2026)."""

__version__ = "0.1.0"

from .errors import GradPrunerError  # noqa: E402
from .igia import IGIA, IGIACallback  # noqa: E402
from .prune import prune_model  # noqa: E402

__all__ = ["IGIA", "IGIACallback", "GradPrunerError", "prune_model", "__version__"]
