"""The model card: the README.md, in the Hugging Face Hub's format, of every model folder gradpruner
writes. YAML front matter (base model, tags, datasets, the base model's license) and Markdown that
says what was removed and merged, the parameters before and after, how the model was healed, what
`run` measured of it, how to load it and what to cite. Everything comes from the `gradpruner.json`
sidecar, except what is known of the base model (`base_model_info`) and `run`'s measurements.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from huggingface_hub import ModelCardData, try_to_load_from_cache

from ..assets import DEFAULT_MODEL_ID, DEFAULT_MODEL_LICENSE, default_model_path
from ..plan import PruneRecord

CARD_NAME = "README.md"
LICENSE_KEYS = ("license", "license_name", "license_link")
METRICS = ("acc", "acc_norm", "rouge_l", "exact_match")
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
_SNAPSHOT = re.compile(r"/models--([\w.-]+?)--([\w.-]+)/snapshots/[^/]+$")  # a Hub cache folder

CITATION = """@inproceedings{huang2026gradpruner,
  title = {GradPruner: Gradient-guided Layer Pruning Enabling Efficient Fine-Tuning and Inference for LLMs},
  author = {Huang, Wei and Cheng, Anda and Wang, Yinggui},
  booktitle = {International Conference on Learning Representations (ICLR)},
  year = {2026},
  eprint = {2601.19503},
  archivePrefix = {arXiv}
}"""

_MERGE_RULES = {  # rule -> (name, what it does with the plan's settings)
    "gradpruner": ("GradPruner's rule", "each donor matrix sparsified to density {density:g} by "
                   "its IGIA-Matrix, its entries of the same sign as the receiver's added (scale "
                   "{scale:g})"),
    "laco": ("LaCo's rule", "every parameter of the donors folded into the receiver as differences"),
    "fold": ("the linear fold", "the removed block replaced by the least-squares linear map fitted "
             "on {calibration} training examples (ridge {ridge:g}), folded into the receiver's MLP "
             "down projection"),
    "replace": ("the replacement layer", "the receiver trained alone on {calibration} training "
                "examples to reproduce the output of the block it starts (itself and the removed "
                "layers after it)"),
}
_HEALERS = {
    "lora": "LoRA on every linear module (rank {lora_rank}, alpha {lora_alpha}), merged into the "
            "weights",
    "full": "full fine-tuning of every weight",
    "partial": "full fine-tuning of the last kept layers and the final norm, everything else frozen",
}


@dataclass(frozen=True)
class BaseModelInfo:
    """What is known of the model a card's model was made from: the folder or Hub id it was loaded
    from, its Hub id when known, and the license fields of its own card (none when it has none)."""

    source: str
    hub_id: str | None = None
    license: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.hub_id or Path(self.source).name


@dataclass(frozen=True)
class Measured:
    """What `run` measured once the model was saved: the metrics of the pruned, fine-tuned model,
    of the dense model fine-tuned alike (None without the dense reference) and zero-shot, and the
    median prefill seconds of each ("dense", "pruned")."""

    task: str
    pruned: dict
    dense: dict | None = None
    dense_zero_shot: dict | None = None
    prefill_seconds: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_results(cls, results: dict) -> "Measured":
        """The measurements in `run`'s results (its report.json)."""
        return cls(results["task"], results["pruned_finetuned"], results.get("dense_finetuned"),
                   results.get("dense_zero_shot"), results.get("prefill_seconds") or {})


def front_matter(text: str) -> dict:
    """The YAML front matter of a Markdown card, {} when it has none or it does not parse."""
    match = re.match(r"^---\r?\n(.*?)\r?\n---[ \t]*(\r?\n|$)", text, re.S)
    if not match:
        return {}
    try:
        data = yaml.safe_load(match.group(1))
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def base_model_info(source: str | None) -> BaseModelInfo:
    """The base model `source` (a folder, or a Hub id that `models.resolve_model` left as given):
    its Hub id when known (a Hub id, the offline default model, a folder of the Hub's cache) and
    the license of its own README.md (for a Hub id, a copy in the local Hub cache)."""
    if not source:
        return BaseModelInfo("unknown")
    path = Path(source).expanduser()
    if not path.exists():
        hub_id = source if _HUB_ID.match(source) else None
        cached = try_to_load_from_cache(hub_id, CARD_NAME) if hub_id else None
        return BaseModelInfo(source, hub_id, _license(Path(cached)) if isinstance(cached, str) else {})
    own = _license(path / CARD_NAME)
    if path.resolve() == default_model_path().resolve():
        return BaseModelInfo(source, DEFAULT_MODEL_ID, own or {"license": DEFAULT_MODEL_LICENSE})
    snapshot = _SNAPSHOT.search(path.resolve().as_posix())
    return BaseModelInfo(source, f"{snapshot[1]}/{snapshot[2]}" if snapshot else None, own)


def _license(readme: Path) -> dict[str, str]:
    """The license fields of the front matter of `readme`, {} when it has none."""
    if not readme.is_file():
        return {}
    data = front_matter(readme.read_text(encoding="utf-8", errors="replace"))
    return {key: str(data[key]) for key in LICENSE_KEYS if data.get(key)}


def model_card(sidecar: dict, measured: Measured | None = None) -> str:
    """The card of a model folder whose `gradpruner.json` is `sidecar`."""
    return render_card(sidecar, base_model_info(sidecar.get("source_model")), measured)


def render_card(sidecar: dict, base: BaseModelInfo, measured: Measured | None = None) -> str:
    """The card: front matter, then the cut, the healing, the measurements, loading and citation."""
    cut = PruneRecord.from_json(sidecar) if "plan" in sidecar else None
    tuned = sidecar.get("finetune")
    sections = [*_title(cut, base, tuned), *_cut_section(cut), *_heal_section(tuned, cut),
                *_measured_section(measured), *_load_section(cut), *_citation_section()]
    return f"---\n{_metadata(sidecar, cut, base).to_yaml()}\n---\n\n" + "\n".join(sections)


def _metadata(sidecar: dict, cut: PruneRecord | None, base: BaseModelInfo) -> ModelCardData:
    datasets = [*((sidecar.get("config") or {}).get("datasets") or []),
                *((sidecar.get("finetune") or {}).get("datasets") or [])]
    tags = ["gradpruner", "layer-pruning", "pruned"] if cut else ["gradpruner", "fine-tuned"]
    return ModelCardData(base_model=base.hub_id, tags=tags, datasets=list(dict.fromkeys(datasets)) or None,
                         library_name="transformers", pipeline_tag="text-generation",
                         **base.license)


def _title(cut: PruneRecord | None, base: BaseModelInfo, tuned: dict | None) -> list[str]:
    link = f"[{base.hub_id}](https://huggingface.co/{base.hub_id})" if base.hub_id else f"`{base.source}`"
    if cut is None:
        return [f"# {base.name}, fine-tuned", "",
                f"{link}, fine-tuned by gradpruner without removing layers.", ""]
    removed, total = len(cut.removed_layers), cut.plan.num_layers
    done = "then fine-tuned" if tuned else "not fine-tuned since"
    return [f"# {base.name} with {removed} of {total} decoder layers removed", "",
            f"{link} with decoder layers removed by gradpruner, an implementation of GradPruner "
            f"(Huang, Cheng, Wang, ICLR 2026), {done}. It is a plain `transformers` checkpoint: no "
            "gradpruner code is needed to run it.", ""]


def _cut_section(cut: PruneRecord | None) -> list[str]:
    if cut is None:
        return []
    plan, costs = cut.plan, cut.costs
    kept = len(plan.kept)
    lines = ["## What was removed and merged", "",
             f"- Removed decoder layers (0-based indices in the original model): "
             f"{_indices(cut.removed_layers)}; {plan.num_layers} layers before, {kept} after.",
             f"- Criterion: {_criterion(cut)}.",
             f"- Merged: {_merges(cut)}.",
             f"- Parameters: {cut.params_before:,} before, {cut.params_after:,} after "
             f"({1 - cut.params_after / cut.params_before:.1%} fewer)."]
    if costs.get("flops_per_token_before"):
        lines.append(f"- Forward FLOPs per token ({costs['seq_len']}-token sequences): "
                     f"{costs['flops_per_token_before']:,.0f} before, "
                     f"{costs['flops_per_token_after']:,.0f} after (ideal speed-up "
                     f"{costs['ideal_speedup']:.2f}x).")
    for number, entry in enumerate(cut.rounds, 1):
        healed = entry.get("heal")
        lines.append(f"- Round {number}: removed {_indices(entry['removed'])}"
                     + (f", then {healed['steps']} healing steps" if healed else "") + ".")
    return [*lines, ""]


def _indices(layers: list[int]) -> str:
    return ", ".join(map(str, layers)) or "none"


def _criterion(cut: PruneRecord) -> str:
    """The criterion that chose the cut, in words."""
    if cut.criterion == "remove":
        return "none, the layers were given (`--remove`)"
    auto = cut.selection.get("auto") or {}
    if cut.criterion == "auto" and auto.get("chosen"):
        return (f"`auto`, which chose the cut of `{auto['chosen']}` among its candidates by "
                "held-out loss")
    return f"`{cut.criterion}`"


def _merges(cut: PruneRecord) -> str:
    """The merge rule and which removed layers went into which kept ones, or why none did."""
    plan = cut.plan
    steps = [(s.receiver, list(s.donors), plan.merge_rule) for s in plan.merges]
    steps += [(m["receiver"], m["donors"], entry["merge_rule"])
              for entry in cut.rounds for m in entry.get("merges", [])]
    if not steps:
        return "none; the removed layers were dropped"
    rules = {}  # the plan's own rule with its settings; the rounds' rules by name
    for _, _, rule in steps:
        name, detail = _MERGE_RULES[rule]
        rules[rule] = f"{name}: {detail.format(**plan.to_json())}" if rule == plan.merge_rule else name
    into = "; ".join(f"layer{'s' if len(d) > 1 else ''} {_indices(d)} into layer {r}"
                     for r, d, _ in steps)
    return f"{into}, by {' and '.join(rules.values())}"


def _heal_section(tuned: dict | None, cut: PruneRecord | None) -> list[str]:
    if not tuned:
        if cut is None:
            return []
        return ["## Healing", "",
                "Not fine-tuned after the cut: heal it on your task before use (`gradpruner "
                "finetune`), or expect a loss of quality.", ""]
    train, heal = tuned.get("config") or {}, tuned.get("heal") or {}
    method = "full" if heal.get("full") or train.get("full") else heal.get("method", "lora")
    how = _HEALERS[method].format(lora_rank=train.get("lora_rank"), lora_alpha=train.get("lora_alpha"))
    lines = ["## Healing" if cut else "## Fine-tuning", "",
             f"- Method: `{heal.get('describe', method)}`, {how}"
             + (f", warm-started from the probe's adapters ({tuned['warm_started_matrices']} "
                "matrices)" if tuned.get("warm_started_matrices") else "") + "."]
    if heal.get("distill"):
        lines.append(f"- Distillation from {heal.get('teacher') or 'the dense model'}: weight "
                     f"{heal['distill']:g} of the teacher's token distributions, temperature "
                     f"{heal['temperature']:g}.")
    lr = heal.get("lr", train.get("lr"))
    steps = tuned["steps"]
    lines.append(f"- {steps} step{'s' if steps != 1 else ''} on task `{tuned.get('task', '?')}`, "
                 f"learning rate {lr:g}, batch size {train.get('batch_size', '?')}, sequences up to "
                 f"{train.get('max_length', '?')} tokens; final training loss "
                 f"{tuned['train_loss']:.3f}.")
    return [*lines, ""]


def _measured_section(measured: Measured | None) -> list[str]:
    if measured is None:
        return []
    rows = [("pruned, fine-tuned (this model)", measured.pruned), ("dense, fine-tuned alike", measured.dense),
            ("dense, zero-shot", measured.dense_zero_shot)]
    rows = [(name, metrics) for name, metrics in rows if metrics]
    names = [m for m in METRICS if m in measured.pruned]
    lines = ["## Evaluation", "",
             f"Measured by `gradpruner run` on task `{measured.task}` "
             f"({measured.pruned.get('n', '?')} evaluation items):", "",
             f"| model | {' | '.join(names)} |", f"|---|{'---|' * len(names)}"]
    for name, metrics in rows:
        cells = [f"{metrics[m]:.3f}" if m in metrics else "-" for m in names]
        lines.append(f"| {name} | {' | '.join(cells)} |")
    prefill = measured.prefill_seconds
    if prefill.get("dense") and prefill.get("pruned"):
        lines += ["", f"Prefill of 8 sequences of 128 tokens (median of 5 runs, the models "
                      f"interleaved, on the machine that ran it): dense {prefill['dense']:.4f} s, "
                      f"pruned {prefill['pruned']:.4f} s "
                      f"({prefill['dense'] / prefill['pruned']:.2f}x as fast)."]
    return [*lines, ""]


def _load_section(cut: PruneRecord | None) -> list[str]:
    record = ("the plan (which `gradpruner` replays), the layer scores, the selection report, "
              if cut else "")
    return ["## How to load", "", "```python",
            "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
            'model = AutoModelForCausalLM.from_pretrained("path/to/this/folder")',
            'tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")', "```", "",
            f"`gradpruner.json` beside the weights is the full record: {record}the settings, the "
            "training statistics and the library versions.", "",
            "## How to serve", "",
            "vLLM (OpenAI-compatible API) and transformers serve the folder as it is:", "",
            "```sh", "vllm serve path/to/this/folder", "transformers serve  # then ask for the "
            "model path/to/this/folder", "```", "",
            "For llama.cpp and Ollama, export GGUF files, each checked against this folder "
            "(`pip install 'gradpruner[serve]'`); the export's own card has the serving commands:", "",
            "```sh", "gradpruner export --model path/to/this/folder --format gguf "
            "--quant f16,q8_0,q4_k_m --out gguf/", "```", ""]


def _citation_section() -> list[str]:
    return ["## Citation", "", "```bibtex", CITATION, "```", ""]
