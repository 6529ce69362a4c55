"""Dense supervision while healing: the KL term on every position, the hidden-state alignment of
each kept layer to the dense layer it stands for, their values and gradients against direct
implementations, the layer mapping, and the options through `run`."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from gradpruner.cli import main
from gradpruner.errors import GradPrunerError
from gradpruner.model.surgery import cut_layers, decoder_layers
from gradpruner.plan import PruneRecord
from gradpruner.removal import matched_teacher_layers
from gradpruner.tasks.examples import training_features
from gradpruner.training.distill import (Distillation, alignment_loss, caches_teacher,
                                         distill_sum, distillation)
from gradpruner.training.healing import HealConfig
from gradpruner.training.trainer import TrainConfig, make_trainer
from tiny_models import tiny_model
from tiny_tokenizer import tiny_tokenizer
import test_auto
import test_compare

workspace = test_compare.workspace
EXAMPLES = test_auto.EXAMPLES


def test_the_alignment_loss_equals_a_hand_computation_and_ignores_the_scale():
    student = [torch.tensor([[[1.0, 0.0], [0.0, 2.0], [5.0, 5.0]]])]
    teacher = [torch.tensor([[[3.0, 0.0], [1.0, 1.0], [-1.0, 0.0]]])]
    mask = torch.tensor([[True, True, False]])  # the third position is padding
    expected = ((1 - 1.0) + (1 - 1 / math.sqrt(2))) / 2
    assert float(alignment_loss(student, teacher, mask)) == pytest.approx(expected, rel=1e-6)
    grown = [t * 40.0 for t in teacher]  # the residual stream's growth with depth
    assert float(alignment_loss(student, grown, mask)) == pytest.approx(expected, rel=1e-6)
    two = alignment_loss(student * 2, [teacher[0], -teacher[0]], mask)
    assert float(two) == pytest.approx((expected + (2 - expected)) / 2, rel=1e-6)  # mean over layers


def test_the_alignment_gradient_equals_a_direct_implementation():
    torch.manual_seed(0)
    student = [torch.randn(2, 5, 8, requires_grad=True) for _ in range(3)]
    teacher = [torch.randn(2, 5, 8) for _ in range(3)]
    mask = torch.rand(2, 5) > 0.3
    alignment_loss(student, teacher, mask).backward()
    ours = [s.grad.clone() for s in student]
    for s in student:
        s.grad = None
    direct = 0
    for s, t in zip(student, teacher):
        dot = (s * t).sum(-1)
        cos = dot / (s.norm(dim=-1) * t.norm(dim=-1))
        direct = direct + (1 - cos)[mask].sum() / mask.sum()
    (direct / 3).backward()
    for a, s in zip(ours, student):
        torch.testing.assert_close(a, s.grad)
        assert a[~mask].abs().sum() == 0  # padding gets no gradient


def test_the_all_position_kl_equals_a_hand_computation_and_its_gradient():
    torch.manual_seed(0)
    student = torch.randn(1, 3, 4, requires_grad=True)
    teacher = torch.randn(1, 3, 4)
    attention = torch.tensor([[1, 1, 0]])  # every real token, prompt and answer
    t = 2.0
    kl = distill_sum(student, teacher, attention.bool(), t) / 2
    expected = 0.0
    for pos in range(2):
        p = F.softmax(teacher[0, pos] / t, -1)
        q = F.softmax(student[0, pos].detach() / t, -1)
        expected += float((p * (p / q).log()).sum()) * t * t / 2
    assert float(kl) == pytest.approx(expected, rel=1e-5)
    kl.backward()
    ours = student.grad.clone()
    student.grad = None
    direct = F.kl_div(F.log_softmax(student[0, :2] / t, -1), F.log_softmax(teacher[0, :2] / t, -1),
                      log_target=True, reduction="sum") * t * t / 2
    direct.backward()
    torch.testing.assert_close(ours, student.grad)


def test_the_teacher_layer_of_each_kept_layer():
    assert matched_teacher_layers([0, 1, 2, 4, 5, 8], 10) == [0, 1, 3, 4, 7, 9]
    assert matched_teacher_layers([2, 3], 4) == [2, 3]  # the first layers removed: none before
    assert matched_teacher_layers(list(range(6)), 6) == list(range(6))  # dense: itself
    with pytest.raises(GradPrunerError):
        matched_teacher_layers([0, 7], 6)


def _identity_layers(model, layers: list[int]) -> None:
    """Make `layers` return their input (their attention and MLP write nothing to the residual)."""
    for i in layers:
        layer = decoder_layers(model)[i]
        torch.nn.init.zeros_(layer.self_attn.o_proj.weight)
        torch.nn.init.zeros_(layer.mlp.down_proj.weight)


@pytest.mark.parametrize("removed", [[1, 2], [0, 5], [3, 4, 5], [0, 2, 4]])
def test_a_kept_layer_matches_the_dense_layer_it_stands_for(removed):
    """Where the removed layers compute nothing, every kept layer's output equals the output of
    its matched dense layer exactly: the mapping puts each kept layer where the dense stream is."""
    teacher = tiny_model("llama", num_hidden_layers=6, seed=3).eval()
    _identity_layers(teacher, removed)
    student = tiny_model("llama", num_hidden_layers=6, seed=3).eval()
    student.load_state_dict(teacher.state_dict())
    cut_layers(student, removed)
    kept = [i for i in range(6) if i not in removed]
    distill = Distillation(teacher, weight=0.0, align=1.0,
                           teacher_layers=matched_teacher_layers(kept, 6))
    ids = torch.randint(0, 60, (2, 7))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    with torch.no_grad(), distill.student_states(student) as states:
        student(input_ids=ids)
        distill.teacher_logits(batch)
        for j, i in enumerate(distill.teacher_layers):
            torch.testing.assert_close(states[j], distill._teacher_states[i])
        aligned = distill.loss(torch.tensor(0.0), torch.zeros(2, 7, 60), batch, student_states=states)
    assert float(aligned) == pytest.approx(0.0, abs=1e-5)


def _layer_outputs_by_hand(model, batch) -> list[torch.Tensor]:
    """Every decoder layer's output: transformers' hidden states but for the last layer (whose
    entry there is after the final norm), taken by a hook of the test's own."""
    last = []
    handle = decoder_layers(model)[-1].register_forward_hook(
        lambda m, a, o: last.append(o[0] if isinstance(o, tuple) else o))
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                output_hidden_states=True)
    handle.remove()
    return [*out.hidden_states[1:-1], last[0]], out.logits


def test_the_trainer_mixes_the_task_loss_the_all_position_kl_and_the_alignment(tmp_path):
    tokenizer = tiny_tokenizer()
    teacher = tiny_model("llama", seed=1)
    student = tiny_model("llama", seed=0)
    total = len(decoder_layers(teacher))
    cut_layers(student, [1])  # layer 0 stands for the dense layers 0-1, the others for themselves
    kept = [i for i in range(total) if i != 1]
    distill = distillation(teacher, HealConfig(distill=0.3, distill_positions="all", align=0.8),
                           TrainConfig(steps=1, batch_size=4), 4, kept)
    assert distill.teacher_layers == list(range(1, total)) and distill.top_k is None
    cfg = TrainConfig(steps=1, batch_size=4, full=True)
    trainer = make_trainer(student, tokenizer, EXAMPLES[:4], cfg, str(tmp_path), distill=distill)
    batch = trainer.data_collator(training_features(tokenizer, EXAMPLES[:4]))
    assert "shift_labels" not in batch  # every position's logits, for the KL
    mixed = trainer.compute_loss(student, dict(batch))
    with torch.no_grad():
        task = student(**batch).loss
        mask = batch["attention_mask"].bool()
        s_states, s_logits = _layer_outputs_by_hand(student, batch)
        t_states, t_logits = _layer_outputs_by_hand(teacher, batch)
        kl = distill_sum(s_logits, t_logits, mask, 2.0) / mask.sum()
        cos = [(1 - F.cosine_similarity(s[mask], t_states[i][mask], dim=-1)).mean()
               for s, i in zip(s_states, range(1, total), strict=True)]
        align = torch.stack(cos).mean()
    assert float(align) > 0.01  # the models differ: the term is not trivially zero
    assert float(mixed) == pytest.approx(float(0.7 * task + 0.3 * kl + 0.8 * align), rel=1e-5)


def test_dense_supervision_runs_the_teacher_on_every_batch():
    train = TrainConfig(steps=10, batch_size=8)
    assert caches_teacher(HealConfig(distill=0.5), train, 60)  # answer positions: cached
    assert not caches_teacher(HealConfig(distill=0.5, distill_positions="all"), train, 60)
    assert not caches_teacher(HealConfig(distill=0.5, align=1.0, teacher_cache="on"), train, 60)
    assert HealConfig(align=1.0).distils and HealConfig(align=1.0).describe() == "lora+align1"
    assert HealConfig(distill=0.5, distill_positions="all").describe() == "lora+distill0.5-all"
    for bad in ({"distill_positions": "prompt"}, {"align": -1.0}, {"align": True}):
        with pytest.raises(GradPrunerError):
            HealConfig(**bad).validate()


@pytest.mark.parametrize("options", [
    ["--merge", "fold", "--criterion", "block_influence"],
    ["--rounds", "2", "--round-steps", "1", "--criterion", "block_influence", "--merge", "none"],
    ["--merge", "2"],
])
def test_run_heals_with_dense_supervision_mapped_by_the_record(workspace, tmp_path,
                                                                  monkeypatch, options):
    """Through `run`, with a fold, rounds or the paper's merge: the healing aligns each kept layer
    to the teacher layer of the record's kept layers, and the sidecar records it."""
    import gradpruner.workflows.recipe as recipe

    made = []
    original = recipe.distillation

    def keep(*args):
        made.append(original(*args))
        return made[-1]

    monkeypatch.setattr(recipe, "distillation", keep)
    out = tmp_path / "run"
    assert main(["run", "--model", str(workspace / "model"), "--data", str(workspace / "data.jsonl"),
                 "--out", str(out), "--probe-steps", "2", "--layers", "2", "--heldout", "8",
                 "--limit", "8", "--selection-budget", "none", "--steps", "2", "--batch-size", "4",
                 "--no-dense", "--distill", "0.5", "--distill-positions", "all", "--align", "1",
                 *options]) == 0
    sidecar = json.loads((out / "model" / "gradpruner.json").read_text())
    record = PruneRecord.from_json(sidecar)
    heal = sidecar["finetune"]["heal"]
    assert heal["align"] == 1.0 and heal["distill_positions"] == "all"
    assert heal["describe"] == "lora+distill0.5-all+align1"
    total = sidecar["num_layers_before"]
    assert made[-1].teacher_layers == matched_teacher_layers(record.kept_layers, total)
    assert len(record.kept_layers) == total - 2
