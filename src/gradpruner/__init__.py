"""gradpruner: prune decoder layers of an LLM while fine-tuning it (GradPruner, ICLR 2026).

The library, step by step (each returns a typed result):

    probed = probe(model, tokenizer, train, TrainConfig(steps=100), steps=40)   # ProbeResult
    plan, report = select(model, tokenizer, train, heldout=held, igia=probed.igia, ratio=0.25)
    model, merged_entries = apply(model, plan, probed.igia)                    # merge and cut
    tuned, stats = finetune(model, tokenizer, train, TrainConfig(steps=500))
    metrics = evaluate(tuned, tokenizer, get_task("arc_easy"), limit=300)
"""

__version__ = "0.1.0"

from .apply import apply  # noqa: E402
from .config import CompareConfig, RunConfig  # noqa: E402
from .errors import GradPrunerError  # noqa: E402
from .igia import IGIA, IGIACallback  # noqa: E402
from .plan import PrunePlan, PruneRecord  # noqa: E402
from .prune import prune_model  # noqa: E402
from .recipe import ProbeResult, evaluate, probe, split_heldout  # noqa: E402
from .search.budget import SelectionBudget  # noqa: E402
from .search.select import SelectionReport, select  # noqa: E402
from .tasks import get_task  # noqa: E402
from .train import TrainConfig, finetune  # noqa: E402

__all__ = ["IGIA", "IGIACallback", "GradPrunerError", "PrunePlan", "PruneRecord", "ProbeResult",
           "RunConfig", "CompareConfig", "SelectionBudget", "SelectionReport", "TrainConfig",
           "apply", "evaluate", "finetune", "get_task", "probe", "prune_model", "select",
           "split_heldout", "__version__"]
