"""Healing options: the distillation loss by hand and by gradient, the trainer's mixed loss,
partial-layer healing, iterative pruning, and each option through `run` with a sidecar that
replays."""

import copy
import json
import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from gradpruner.merging import apply
from gradpruner.merging.fold import Calibration
from gradpruner.config import CutSettings, RunConfig
from gradpruner.tasks.examples import training_features
from gradpruner.errors import GradPrunerError
from gradpruner.training.healing import HealConfig
from gradpruner.training.distill import Distillation, caches_teacher, distill_sum, topk_distill_sum
from gradpruner.plan import PruneRecord
from gradpruner.workflows.recipe import Healing, cut, heal, round_counts
from gradpruner.model.surgery import decoder_layers
from gradpruner.training.trainer import TrainConfig, make_trainer
from tiny_models import tiny_model
from tiny_tokenizer import tiny_tokenizer
import test_auto
import test_compare
from test_recipe import recipe, state

workspace = test_compare.workspace
EXAMPLES = test_auto.EXAMPLES


def test_the_distillation_term_equals_a_hand_computation():
    student = torch.tensor([[[1.0, 0.0, -1.0], [0.5, 0.5, 0.0]]])
    teacher = torch.tensor([[[0.0, 2.0, 0.0], [1.0, -1.0, 3.0]]])
    mask = torch.tensor([[True, False]])  # only the first position is an answer position
    t = 2.0

    def softmax(row):
        e = [math.exp(v / t) for v in row]
        return [v / sum(e) for v in e]

    p, q = softmax([0.0, 2.0, 0.0]), softmax([1.0, 0.0, -1.0])
    expected = t * t * sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    assert float(distill_sum(student, teacher, mask, t)) == pytest.approx(expected, rel=1e-6)
    assert float(distill_sum(teacher, teacher, torch.ones(1, 2, dtype=torch.bool), t)) == pytest.approx(0.0, abs=1e-7)


def test_the_distillation_gradient_equals_a_direct_implementation():
    torch.manual_seed(0)
    student = torch.randn(2, 5, 11, requires_grad=True)
    teacher = torch.randn(2, 5, 11)
    mask = torch.rand(2, 5) > 0.4
    t = 1.5
    distill_sum(student, teacher, mask, t).backward()
    ours = student.grad.clone()
    student.grad = None
    direct = F.kl_div(F.log_softmax(student[mask] / t, -1), F.log_softmax(teacher[mask] / t, -1),
                      log_target=True, reduction="sum") * t * t
    direct.backward()
    torch.testing.assert_close(ours, student.grad)
    assert ours[~mask].abs().sum() == 0  # positions that predict no answer token get no gradient


def test_the_trainer_mixes_the_task_loss_and_the_teacher_term(tmp_path):
    tokenizer = tiny_tokenizer()
    student, teacher = tiny_model("llama", seed=0), tiny_model("llama", seed=1)
    distill = Distillation(teacher, weight=0.3, temperature=2.0)
    cfg = TrainConfig(steps=1, batch_size=4, full=True)
    trainer = make_trainer(student, tokenizer, EXAMPLES[:4], cfg, str(tmp_path), distill=distill)
    batch = trainer.data_collator(training_features(tokenizer, EXAMPLES[:4]))
    assert "shift_labels" in batch  # the LM head runs on the answer positions only
    mixed = trainer.compute_loss(student, batch)
    with torch.no_grad():
        task = student(**batch).loss
        kwargs = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                      logits_to_keep=batch["logits_to_keep"])
        mask = batch["shift_labels"] != -100
        kl = distill_sum(student(**kwargs).logits, teacher(**kwargs).logits, mask, 2.0) / mask.sum()
    assert float(mixed) == pytest.approx(float(0.7 * task + 0.3 * kl), rel=1e-5)
    assert not any(p.requires_grad for p in teacher.parameters())


def test_the_top_k_term_equals_a_hand_computation_and_bounds_the_full_one():
    student = torch.tensor([[1.0, 0.0, -1.0, 0.5]])
    teacher = torch.tensor([[0.0, 2.0, 0.0, 1.0]])
    t = 2.0
    logp = F.log_softmax(teacher / t, -1)
    top = logp.topk(2, -1)  # tokens 1 and 3; the rest (0 and 2) in one bucket
    p = logp.exp()[0].tolist()
    q = F.softmax(student / t, -1)[0].tolist()
    rest_p, rest_q = p[0] + p[2], q[0] + q[2]
    expected = t * t * (p[1] * math.log(p[1] / q[1]) + p[3] * math.log(p[3] / q[3])
                        + rest_p * math.log(rest_p / rest_q))
    ours = float(topk_distill_sum(student, top.values, top.indices, t))
    assert ours == pytest.approx(expected, rel=1e-6)
    assert ours < float(distill_sum(student[None], teacher[None], torch.ones(1, 1, dtype=torch.bool), t))


def test_the_top_k_term_over_the_whole_vocabulary_is_the_full_term_and_gradient():
    torch.manual_seed(0)
    student = torch.randn(6, 11, requires_grad=True)
    teacher = torch.randn(6, 11)
    t = 1.5
    top = F.log_softmax(teacher / t, -1).topk(11, -1)
    topk_distill_sum(student, top.values, top.indices, t).backward()
    ours = student.grad.clone()
    student.grad = None
    distill_sum(student[None], teacher[None], torch.ones(1, 6, dtype=torch.bool), t).backward()
    torch.testing.assert_close(ours, student.grad, rtol=1e-4, atol=1e-6)


def test_the_teacher_cache_runs_the_teacher_once_per_example_and_matches_it_on_the_fly(tmp_path):
    tokenizer = tiny_tokenizer()
    student, teacher = tiny_model("llama", seed=0), tiny_model("llama", seed=1)
    cfg = TrainConfig(steps=1, batch_size=4, full=True)
    cached = Distillation(teacher, weight=0.3, temperature=2.0, top_k=student.config.vocab_size)
    trainer = make_trainer(student, tokenizer, EXAMPLES[:8], cfg, str(tmp_path), distill=cached)
    features = trainer.train_dataset
    assert [f["example_index"] for f in features] == list(range(8))
    fly = make_trainer(student, tokenizer, EXAMPLES[:8], cfg, str(tmp_path),
                       distill=Distillation(teacher, weight=0.3, temperature=2.0))
    for epoch in range(2):  # the second visit reads the cache
        for rows in ([3, 0, 5, 1], [2, 7, 4, 6]):
            batch = trainer.data_collator([features[r] for r in rows])
            plain = {k: v for k, v in batch.items() if k != "example_index"}
            with torch.no_grad():
                ours = trainer.compute_loss(student, dict(batch))
                theirs = fly.compute_loss(student, plain)
            assert float(ours) == pytest.approx(float(theirs), rel=1e-5)
    assert cached.teacher_rows == 8 and fly.distillation.teacher_rows == 16


def test_the_teacher_is_cached_when_the_healing_revisits_its_examples():
    train = TrainConfig(steps=10, batch_size=8)
    assert caches_teacher(HealConfig(distill=0.5), train, 60)  # 80 visits of 60 examples
    assert not caches_teacher(HealConfig(distill=0.5), train, 100)
    assert caches_teacher(HealConfig(distill=0.5), TrainConfig(steps=None, epochs=2), 100)
    assert caches_teacher(HealConfig(distill=0.5, teacher_cache="on"), train, 100)
    assert not caches_teacher(HealConfig(distill=0.5, teacher_cache="off"), train, 60)


def test_a_cached_healing_over_two_epochs_records_its_top_k():
    model, teacher = tiny_model("llama"), tiny_model("llama", seed=4)
    cfg = RunConfig(train=TrainConfig(steps=None, epochs=2, batch_size=4),
                    heal=HealConfig(distill=0.5, top_k=16))
    _, stats = heal(model, tiny_tokenizer(), EXAMPLES, None, healing(cfg, teacher), list(range(6)))
    assert stats["steps"] == 12 and stats["teacher_rows"] == len(EXAMPLES)
    assert stats["heal"]["teacher_top_k"] == 16
    off = replace(cfg, heal=HealConfig(distill=0.5, teacher_cache="off"))
    _, stats = heal(tiny_model("llama"), tiny_tokenizer(), EXAMPLES, None, healing(off, teacher),
                    list(range(6)))
    assert stats["teacher_rows"] == 2 * len(EXAMPLES) and stats["heal"]["teacher_top_k"] is None


def _changed(before: dict, after: dict) -> set[str]:
    return {k for k in before if not torch.equal(before[k], after[k])}


@pytest.mark.parametrize("lm_head", [False, True])
def test_partial_healing_changes_only_the_chosen_layers(lm_head):
    model = tiny_model("llama")
    before = state(model)
    cfg = RunConfig(train=TrainConfig(steps=3, batch_size=4, lr=1e-2),
                    heal=HealConfig(method="partial", layers=2, lm_head=lm_head))
    healed, stats = heal(model, tiny_tokenizer(), EXAMPLES, None, healing(cfg), list(range(6)))
    changed = _changed(before, state(healed))
    allowed = {k for k in before if k.startswith(("model.layers.4.", "model.layers.5.", "model.norm."))}
    if lm_head:
        allowed |= {"lm_head.weight"}
    assert changed and changed <= allowed
    assert any(k.startswith("model.layers.4.") for k in changed) and ("lm_head.weight" in changed) == lm_head
    assert stats["trained_parameters"] == sum(before[k].numel() for k in allowed)
    assert stats["heal"]["method"] == "partial" and stats["heal"]["full"] is True


def test_lora_healing_with_distillation_records_the_teacher():
    model, teacher = tiny_model("llama"), tiny_model("llama", seed=4)
    cfg = RunConfig(train=TrainConfig(steps=2, batch_size=4), heal=HealConfig(distill=0.5))
    _, stats = heal(model, tiny_tokenizer(), EXAMPLES, None, healing(cfg, teacher), list(range(6)))
    assert stats["heal"]["describe"] == "lora+distill0.5" and stats["heal"]["teacher"]
    with pytest.raises(GradPrunerError, match="teacher"):
        heal(tiny_model("llama"), tiny_tokenizer(), EXAMPLES, None, healing(cfg), list(range(6)))


def test_round_counts_split_the_removal():
    assert round_counts(6, 2) == [3, 3] and round_counts(7, 3) == [3, 2, 2] and round_counts(1, 3) == [1]


def test_iterative_pruning_removes_in_rounds_rescored_on_the_healed_model():
    tokenizer = tiny_tokenizer()
    train, held = EXAMPLES[:16], EXAMPLES[16:]
    cfg = RunConfig(train=TrainConfig(steps=2, batch_size=4, lr=5e-2))
    rounds = CutSettings("block_influence", count=3, merge=None, selection_budget=None,
                         heal_steps=2, rounds=2, round_steps=2)
    done = cut(tiny_model("llama"), tokenizer, train, held, None, rounds, healing(cfg))
    record = done.record
    first, second = record.rounds
    assert len(first["removed"]) == 2 and len(second["removed"]) == 1
    assert not set(first["removed"]) & set(second["removed"])
    assert sorted(first["removed"] + second["removed"]) == record.removed_layers
    assert first["heal"]["steps"] == 2 and "heal" not in second and done.heal_seconds > 0
    assert len(decoder_layers(done.model)) == 3 and record.kept_layers == [
        i for i in range(6) if i not in record.removed_layers]
    # round 2 is block influence on the healed model: the same cut on the model after round 1
    alone = cut(tiny_model("llama"), tokenizer, train, held, None, replace(rounds, count=2, rounds=1))
    assert alone.record.removed_layers == first["removed"]
    healed_first, _ = heal(alone.model, tokenizer, train, None, healing(cfg), alone.record.kept_layers,
                           steps=2)
    again = cut(healed_first.float(), tokenizer, train, held, None,
                replace(rounds, count=1, rounds=1, seed=1))
    assert [alone.record.kept_layers[i] for i in again.record.removed_layers] == second["removed"]
    # the sidecar round-trips, and its plan replays to the same architecture
    sidecar = json.loads(json.dumps(record.to_json()))
    assert PruneRecord.from_json(sidecar).rounds == record.rounds
    replayed, _ = apply(tiny_model("llama"), PruneRecord.from_json(sidecar).plan)
    assert len(decoder_layers(replayed)) == 3


def healing(cfg: RunConfig, teacher=None) -> Healing:
    """How `run` heals with `cfg`, in fp32, distilling from `teacher`."""
    return Healing(cfg.train, cfg.heal, torch.float32, teacher,
                   "dense+probe adapters" if teacher is not None else None, cfg.warm_starts)


@pytest.mark.parametrize("options", [
    ["--merge", "fold"],
    ["--heal", "partial", "--heal-layers", "2", "--distill", "0.5"],
    ["--rounds", "2", "--round-steps", "1", "--merge", "fold"],
])
def test_each_option_runs_and_its_sidecar_replays(workspace, tmp_path, monkeypatch, options):
    import gradpruner.workflows.run as pipeline_module
    from gradpruner.cli import main
    from gradpruner.tasks import task_from_data
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cut_models = []
    original = pipeline_module.heal

    def keep_the_cut(model, *args, **kwargs):
        cut_models.append(state(model))
        return original(model, *args, **kwargs)

    monkeypatch.setattr(pipeline_module, "heal", keep_the_cut)
    out = tmp_path / "run"
    assert main(["run", "--model", str(workspace / "model"), "--data", str(workspace / "data.jsonl"),
                 "--out", str(out), "--probe-steps", "2", "--layers", "2", "--heldout", "8",
                 "--limit", "8", "--selection-budget", "none", "--steps", "2", "--batch-size", "4",
                 "--no-dense", *options]) == 0
    sidecar = json.loads((out / "model" / "gradpruner.json").read_text())
    record = PruneRecord.from_json(sidecar)
    report = json.loads((out / "report.json").read_text())
    assert sidecar["config"]["heal"] == report["config"]["heal"]
    assert sidecar["finetune"]["heal"]["describe"] == RunConfig.from_dict(report["config"]).heal.describe()
    assert "Healing: `" in (out / "report.md").read_text()
    examples = task_from_data(str(workspace / "data.jsonl")).train_examples()[:-8]  # 8 held out
    tokenizer = AutoTokenizer.from_pretrained(workspace / "model")
    replayed, entries = apply(AutoModelForCausalLM.from_pretrained(workspace / "model"), record.plan,
                              calibration=Calibration(tokenizer, examples))
    assert entries == record.merged_entries
    (before_healing,) = cut_models
    if "--rounds" in options:  # the plan replays the cut, not the healing between the rounds
        assert len(record.rounds) == 2 and sidecar["finetune"]["round_heal_seconds"] > 0
        assert {k: v.shape for k, v in state(replayed).items()} == {k: v.shape for k, v in before_healing.items()}
    else:
        assert record.plan.merge_rule == ("fold" if "fold" in options else record.plan.merge_rule)
        mine = state(replayed)
        assert mine.keys() == before_healing.keys()
        assert all(torch.equal(mine[k], before_healing[k]) for k in mine)


def test_bad_heal_settings_are_refused():
    for heal, message in ((HealConfig(method="magic"), "unknown healing"),
                          (HealConfig(distill=1.5), "--distill"),
                          (HealConfig(layers=0), "heal layers"),
                          (HealConfig(temperature=0), "--temperature"),
                          (HealConfig(teacher_cache="always"), "--teacher-cache"),
                          (HealConfig(top_k=0), "heal top_k")):
        with pytest.raises(GradPrunerError, match=message):
            RunConfig(heal=heal).validate()
    with pytest.raises(GradPrunerError, match="reads the dense model's probe"):
        RunConfig(criterion="gradpruner", rounds=2).validate()
    with pytest.raises(GradPrunerError, match="teacher model folder not found"):
        RunConfig(heal=HealConfig(distill=0.5, teacher="/nonexistent")).validate()


def test_the_finetune_stage_heals_partially_with_a_teacher(workspace, tmp_path):
    from gradpruner.cli import main
    from safetensors.torch import load_file

    data = str(workspace / "data.jsonl")
    pruned, tuned = tmp_path / "pruned", tmp_path / "tuned"
    assert main(["prune", "--model", str(workspace / "model"), "--data", data, "--criterion",
                 "block_influence", "--layers", "2", "--merge", "fold", "--out", str(pruned)]) == 0
    assert main(["finetune", "--model", str(pruned), "--data", data, "--steps", "2", "--batch-size",
                 "4", "--lr", "1e-2", "--heal", "partial", "--heal-layers", "1", "--distill", "0.5",
                 "--teacher-cache", "on", "--teacher-top-k", "8", "--out", str(tuned)]) == 0
    sidecar = json.loads((tuned / "gradpruner.json").read_text())
    assert sidecar["plan"]["merge_rule"] == "fold"
    assert sidecar["finetune"]["heal"]["describe"] == "partial1+distill0.5"
    assert sidecar["finetune"]["heal"]["teacher_top_k"] == 8 and sidecar["finetune"]["teacher_rows"] == 8
    assert sidecar["finetune"]["heal"]["teacher"] == sidecar["source_model"]  # the dense model
    before, after = load_file(str(pruned / "model.safetensors")), load_file(str(tuned / "model.safetensors"))
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith(("model.layers.3.", "model.norm.")) for k in changed)


def test_the_healing_line_survives_a_dense_accuracy_of_zero():
    from gradpruner.reports.run_report import _healing

    results = {"pruned_finetune": {"heal": {"describe": "lora"}, "train_seconds": 5.0},
               "dense_finetune": {"train_seconds": 10.0}, "prune": {"rounds": []},
               "dense_finetuned": {"acc": 0.0}, "pruned_finetuned": {"acc": 0.25}}
    line = _healing(results)[1]
    assert "+0.250 (dense scored 0)" in line and "healing took 0.500" in line
    results["dense_finetuned"]["acc"] = 0.5
    assert "(50.0% of dense)" in _healing(results)[1]
    results["pruned_finetune"]["heal"] = {"describe": "lora+distill0.5", "distill": 0.5,
                                          "temperature": 2.0, "teacher": "dense", "teacher_top_k": 64}
    assert "teacher dense, its top 64 cached)" in _healing(results)[0]


def test_the_finetune_teacher_merges_the_probe_adapters_at_the_probes_rank(workspace, tmp_path, capsys):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from gradpruner.cli import main
    from gradpruner.workflows.recipe import ProbeResult, teacher_model
    from gradpruner.training.train_config import TrainConfig

    data, model = str(workspace / "data.jsonl"), str(workspace / "model")
    probe_dir, pruned = tmp_path / "probe", tmp_path / "pruned"
    assert main(["probe", "--model", model, "--data", data, "--steps", "2", "--batch-size", "4",
                 "--lr", "1e-2", "--lora-rank", "4", "--lora-alpha", "8", "--out", str(probe_dir)]) == 0
    assert main(["prune", "--model", model, "--scores", str(probe_dir), "--criterion", "tail",
                 "--layers", "2", "--merge", "none", "--out", str(pruned)]) == 0
    dense = AutoModelForCausalLM.from_pretrained(model)
    teacher = teacher_model(dense, ProbeResult.load(probe_dir), HealConfig(distill=0.5),
                            TrainConfig(lora_rank=8, lora_alpha=32), torch.float32)
    adapters = load_file(str(probe_dir / "adapters.safetensors"))
    name = "model.layers.0.self_attn.q_proj"
    expected = dense.get_submodule(name).weight + 8 / 4 * (
        adapters[f"{name}.lora_B"] @ adapters[f"{name}.lora_A"])
    assert torch.allclose(teacher.get_submodule(name).weight, expected, atol=1e-6)
    assert not torch.allclose(expected, dense.get_submodule(name).weight)
    # a warm start needs the probe's rank, and says so
    capsys.readouterr()
    assert main(["finetune", "--model", str(pruned), "--data", data, "--steps", "1",
                 "--warm-start", str(probe_dir), "--out", str(tmp_path / "tuned")]) == 2
    assert ("(their LoRA rank 4, this model's 8): give the probe of the model it was pruned from "
            "and its --lora-rank") in capsys.readouterr().err
