"""gradpruner: prune decoder layers of an LLM while fine-tuning it (GradPruner, ICLR 2026).

The library, step by step (each returns a typed result):

    probed = probe(model, tokenizer, train, TrainConfig(steps=100), steps=40)   # ProbeResult
    plan, report = select(model, tokenizer, train, heldout=held, igia=probed.igia, ratio=0.25)
    model, merged_entries = apply(model, plan, probed.igia, Calibration(tokenizer, train))
    tuned, stats = finetune(model, tokenizer, train, TrainConfig(steps=500),
                            distill=Distillation(teacher, weight=0.5))   # optional teacher
    metrics = evaluate(tuned, tokenizer, get_task("arc_easy"), limit=300)
"""

__version__ = "0.1.0"

from .apply import apply  # noqa: E402
from .apply.fold import Calibration  # noqa: E402
from .config import CompareConfig, RunConfig  # noqa: E402
from .errors import GradPrunerError  # noqa: E402
from .heal import HealConfig  # noqa: E402
from .heal.distill import Distillation  # noqa: E402
from .igia import IGIA, IGIACallback  # noqa: E402
from .plan import PrunePlan, PruneRecord  # noqa: E402
from .prune import prune_model  # noqa: E402
from .recipe import ProbeResult, evaluate, heal, probe, split_heldout, teacher_model  # noqa: E402
from .search.budget import SelectionBudget  # noqa: E402
from .search.select import SelectionReport, select  # noqa: E402
from .tasks import get_task  # noqa: E402
from .train import TrainConfig, finetune  # noqa: E402

__all__ = ["IGIA", "IGIACallback", "Calibration", "Distillation", "GradPrunerError", "HealConfig",
           "PrunePlan", "PruneRecord", "ProbeResult", "RunConfig", "CompareConfig",
           "SelectionBudget", "SelectionReport", "TrainConfig", "apply", "evaluate", "finetune",
           "get_task", "heal", "probe", "prune_model", "select", "split_heldout", "teacher_model",
           "__version__"]
