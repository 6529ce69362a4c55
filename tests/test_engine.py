"""The engine end to end on every tiny architecture: probe -> prune (with merge) -> save ->
reload with plain transformers -> generate with a cache, logits equal to the in-memory model."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from gradpruner.model import costs
from gradpruner.tasks.examples import MCExample
from gradpruner.workflows.recipe import prune_model
from gradpruner.model.surgery import count_parameters, save_pretrained_atomic
from gradpruner.training.trainer import TrainConfig, probe_gradients as probe
from tiny_models import ARCHS, tiny_model
from tiny_tokenizer import tiny_tokenizer

EXAMPLES = [MCExample.from_question(f"Question: color {i}? Answer:", ["blue", "green", "red"], i % 3)
            for i in range(24)]


def greedy_logits(model, ids):
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=4,
                             do_sample=False, use_cache=True, output_logits=True,
                             return_dict_in_generate=True, pad_token_id=0)
    return out.sequences, torch.stack(out.logits)


@pytest.mark.parametrize("arch", ARCHS)
def test_probe_prune_save_reload_generate(arch, tmp_path):
    model = tiny_model(arch)
    original = {n: p.detach().clone() for n, p in model.named_parameters()}
    tokenizer = tiny_tokenizer()
    cfg = TrainConfig(steps=20, batch_size=4, lr=5e-3)
    igia, stats = probe(model, tokenizer, EXAMPLES, cfg, steps=3)
    assert stats["steps"] == 3 and len(igia.layer_scores) == 6
    assert max(igia.layer_scores) > 0
    # the LoRA probe leaves the model's own weights as they were
    assert all(torch.equal(p, original[n]) for n, p in model.named_parameters())

    params_before = count_parameters(model)
    layer_types = getattr(model.config, "layer_types", None)
    record = prune_model(model, igia, criterion="gradpruner", count=2, merge=1, density=0.5).to_json()
    removed, kept = record["removed_layers"], record["kept_layers"]
    assert len(removed) == 2 and sorted(removed + kept) == list(range(6))
    order = sorted(range(6), key=lambda i: (igia.layer_scores[i], -i))
    assert removed == sorted(order[:2])
    (receiver, donors), = record["merged"].items()
    assert donors == [max(removed, key=lambda i: igia.layer_scores[i])]
    assert record["params_before"] == params_before
    assert record["params_after"] == costs.parameter_count(model.config) == count_parameters(model)
    assert model.config.num_hidden_layers == 4
    if layer_types:
        assert model.config.layer_types == [layer_types[i] for i in kept]

    save_pretrained_atomic(model, tokenizer, tmp_path / "out", record, source_dir=None)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    sidecar = json.loads((tmp_path / "out" / "gradpruner.json").read_text())
    assert sidecar["removed_layers"] == removed and sidecar["kept_layers"] == kept
    ids = torch.randint(4, 128, (2, 20), generator=torch.Generator().manual_seed(0))
    seq_mem, logits_mem = greedy_logits(model.eval(), ids)
    seq_new, logits_new = greedy_logits(reloaded, ids)
    assert torch.equal(seq_mem, seq_new)
    torch.testing.assert_close(logits_new, logits_mem, atol=1e-5, rtol=1e-5)
    # a merged receiver differs from its original weights; untouched kept layers do not
    new_index = kept.index(int(receiver))
    changed = [not torch.equal(p, original[n.replace(f"layers.{new_index}.", f"layers.{receiver}.")])
               for n, p in reloaded.named_parameters() if f"layers.{new_index}." in n and p.dim() == 2]
    assert any(changed)


def test_probe_follows_the_learning_rate_schedule_of_the_full_run(tmp_path):
    from gradpruner.training.trainer import make_trainer

    cfg = TrainConfig(steps=3, lr=1.0, warmup_ratio=0.0, scheduler="linear")
    trainer = make_trainer(tiny_model("llama"), tiny_tokenizer(), EXAMPLES, cfg, str(tmp_path),
                           max_steps=3, schedule_steps=100)
    trainer.create_optimizer_and_scheduler(num_training_steps=3)
    for _ in range(3):
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
    assert trainer.lr_scheduler.get_last_lr()[0] == pytest.approx(0.97)  # 1 - 3/100, not 1 - 3/3
