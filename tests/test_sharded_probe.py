"""The probe under FSDP2 (two processes, gloo, CPU): every rank gathers the full LoRA gradients
and holds the IGIA of one process with the same global batch; rank 0's output prunes. FSDP1 and
DeepSpeed are refused with one line that names the alternative."""

import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForCausalLM, TrainerControl, TrainerState

from gradpruner.cli import main
from gradpruner.distributed import refuse_sharded_probe
from gradpruner.errors import GradPrunerError
from gradpruner.training.igia import IGIA, IGIACallback
import processes
from sharded_probe import STEPS, lora_model, probe
from tiny_models import save_tiny_model, tiny_model


def torchrun_script(*args) -> subprocess.CompletedProcess:
    return processes.torchrun(Path(__file__).with_name("sharded_probe.py"), *args)


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    root = tmp_path_factory.mktemp("fsdp")
    save_tiny_model(root / "model", "qwen3")
    (root / "out").mkdir()
    done = torchrun_script(root / "model", root / "out")
    assert done.returncode == 0, done.stderr[-3000:]
    return root


def test_fsdp2_probe_equals_one_process_on_every_rank(sharded):
    one = probe(lora_model(sharded / "model")).result()
    assert float(one.sq_norms.min()) > 0  # B starts nonzero: every step of every module counts
    saved = IGIA.load(sharded / "out" / "probe")
    assert saved.steps == one.steps == STEPS
    assert saved.module_names == one.module_names
    assert torch.allclose(saved.sq_norms, one.sq_norms, rtol=1e-4, atol=0)
    assert saved.layer_scores == pytest.approx(one.layer_scores, rel=1e-4)
    for name in one.module_names[:3]:
        assert torch.allclose(saved.matrix(name), one.matrix(name), rtol=1e-3, atol=1e-12)
    ranks = [torch.load(sharded / "out" / f"rank{r}.pt") for r in (0, 1)]
    assert ranks[0]["module_names"] == ranks[1]["module_names"] == one.module_names
    assert torch.equal(ranks[0]["sq_norms"], ranks[1]["sq_norms"])
    written = sorted(p.name for p in (sharded / "out").iterdir())
    assert written == ["probe", "rank0.pt", "rank1.pt"]  # rank 1 wrote no probe, nothing is left over


def test_the_fsdp2_probe_prunes_to_a_loadable_model(sharded):
    out = sharded / "pruned"
    assert main(["prune", "--scores", str(sharded / "out" / "probe"), "--model",
                 str(sharded / "model"), "--criterion", "gradpruner", "--merge", "none",
                 "--ratio", "0.34", "--out", str(out)]) == 0
    pruned = AutoModelForCausalLM.from_pretrained(out)
    assert pruned.config.num_hidden_layers == 4 and len(pruned.model.layers) == 4


def test_the_probe_refuses_fsdp1_and_deepspeed_at_start_and_accepts_fsdp2(monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(GradPrunerError, match="FSDP1 keeps .* use FSDP2"):
        refuse_sharded_probe()
    monkeypatch.setenv("FSDP_VERSION", "2")
    refuse_sharded_probe()
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(GradPrunerError, match="DeepSpeed .* use FSDP2"):
        refuse_sharded_probe()


def test_the_callback_refuses_a_model_holding_an_fsdp1_wrapper():
    # FSDP1 needs an accelerator to wrap a model; a bare wrapper instance stands in for one
    from torch.distributed.fsdp import FullyShardedDataParallel

    model = tiny_model("llama")
    wrapper = FullyShardedDataParallel.__new__(FullyShardedDataParallel)
    torch.nn.Module.__init__(wrapper)
    model.model.layers[0].add_module("fsdp", wrapper)
    with pytest.raises(GradPrunerError) as refused:
        IGIACallback(max_steps=3).on_train_begin(SimpleNamespace(max_steps=3), TrainerState(),
                                                 TrainerControl(), model=model)
    message = str(refused.value)
    assert "FSDP1" in message and "use FSDP2" in message and "DDP" in message
    assert len(message.splitlines()) == 1


def test_the_callback_refuses_deepspeed_in_the_trainers_arguments():
    args = SimpleNamespace(deepspeed="ds_config.json", max_steps=3)
    with pytest.raises(GradPrunerError, match="DeepSpeed"):
        IGIACallback(max_steps=3).on_train_begin(args, TrainerState(), TrainerControl(),
                                                 model=tiny_model("llama"))
