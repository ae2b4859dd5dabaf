"""Distributed training: the identity sampler's sharding, gradient averaging across gloo processes, and a
real torchrun run of tools/main.py on the demo dataset."""
from __future__ import annotations

import copy
import os
import socket
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from conftest import HEIGHT, WIDTH
from torchreid_scal.checkpoint import save_checkpoint
from torchreid_scal.config import ConfigError
from torchreid_scal.distributed import DistributedIdentitySampler, convert_sync_batchnorm, wrap
from torchreid_scal.scal_engine import ImageSCALEngine
from torchreid_scal.models import create_model

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


def fake_data(num_ids: int = 12, per_id: tuple = (2, 3, 5, 8)):
    return [(f"img{pid}_{i}", pid, i % 2) for pid in range(num_ids) for i in range(per_id[pid % len(per_id)])]


def test_ranks_see_disjoint_identities_that_make_up_the_global_batch():
    data = fake_data()
    ranks = [DistributedIdentitySampler(data, 8, 2, rank, 2, seed=3) for rank in range(2)]
    whole = DistributedIdentitySampler(data, 8, 2, 0, 1, seed=3)
    for sampler in ranks + [whole]:
        sampler.set_epoch(4)
    parts = [list(s) for s in ranks]
    full = list(whole)
    assert len(parts[0]) == len(parts[1]) == len(full) // 2 == len(ranks[0])
    for step in range(len(full) // 8):
        a, b = (p[step * 4:(step + 1) * 4] for p in parts)
        ids_a, ids_b = {data[i][1] for i in a}, {data[i][1] for i in b}
        assert len(ids_a) == len(ids_b) == 2 and not ids_a & ids_b
        assert sorted(a + b) == sorted(full[step * 8:(step + 1) * 8])
    ranks[0].set_epoch(5)
    assert list(ranks[0]) != parts[0]


def test_batch_must_split_across_processes():
    with pytest.raises(ValueError, match="divisible by the 2 processes"):
        DistributedIdentitySampler(fake_data(), 6, 2, 0, 2)


def _engine(lr: float = 0.1):
    torch.manual_seed(0)
    model = create_model("resnet50_scal_channel", 4, loss="triplet", pretrained=False, height=HEIGHT, width=WIDTH)
    model = wrap(model, torch.device("cpu"))
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    engine = ImageSCALEngine(SimpleNamespace(train_loader=None, test_loader={}, num_train_pids=4, sources=["x"]),
                             model, optimizer, weight_t=0.0, weight_x=1.0, use_gpu=False,
                             critic_optimizer=None, critic_lr=0.1, critic_optim="sgd")
    engine.set_model_mode("train")
    for module in engine.network.modules():  # batch statistics would make the halves differ from the whole
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()
    return engine


def _batch():
    generator = torch.Generator().manual_seed(1)
    return {"img": torch.randn(8, 3, HEIGHT, WIDTH, generator=generator), "pid": torch.arange(4).repeat_interleave(2)}


def _params(engine):
    return {**{f"model.{k}": v.detach().clone() for k, v in engine.network.named_parameters()},
            **{f"critic.{k}": v.detach().clone() for k, v in engine.critic_net.named_parameters()}}


def _rank(rank: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        engine = _engine()
        data = _batch()
        half = slice(rank * 4, (rank + 1) * 4)
        engine.forward_backward({"img": data["img"][half], "pid": data["pid"][half]})
        torch.save(_params(engine), f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_on_halves_equal_one_process_on_the_whole(tmp_path):
    out = str(tmp_path / "params")
    mp.spawn(_rank, args=(free_port(), out), nprocs=2, join=True)
    start = _params(_engine())
    whole = _engine()
    whole.forward_backward(_batch())
    expected = _params(whole)
    ranks = [torch.load(f"{out}.{r}", weights_only=True) for r in range(2)]
    for key in expected:
        assert torch.equal(ranks[0][key], ranks[1][key]), key
    moved = [k for k in expected if not torch.equal(expected[k], start[k])]
    assert any(k.startswith("model.agents") for k in moved) and any(k.startswith("critic.") for k in moved)
    assert any(k.startswith("model.layer4") for k in moved)
    worst = max((ranks[0][k] - expected[k]).abs().max().item() for k in expected)
    change = max((expected[k] - start[k]).abs().max().item() for k in moved)
    assert worst < 1e-5 < change, (worst, change)


def torchrun(tmp_path, *opts: str) -> subprocess.CompletedProcess:
    """tools/main.py in two gloo processes: one epoch of the demo job at 64x32, saved to ``tmp_path/log``."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         os.path.join(REPO, "tools", "main.py"), "--config-file", os.path.join(REPO, "configs", "scal_demo.yaml"),
         "data.root", str(tmp_path / "data"), "scal_demo.num_test_ids", "50", "data.save_dir", str(tmp_path / "log"), "data.height", "64",
         "data.width", "32", "data.workers", "0", "train.max_epoch", "1", "train.warmup_epochs", "0",
         "train.print_freq", "2", *opts],
        capture_output=True, text=True, timeout=900, env=env, cwd=REPO,
    )


def test_torchrun_trains_on_the_demo_dataset(tmp_path):
    result = torchrun(tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Distributed: 2 processes, 16 images each per step" in result.stdout
    assert result.stdout.count("Show configuration") == 1 and "mAP:" in result.stdout
    state = torch.load(tmp_path / "log" / "model" / "model.pth.tar-1", weights_only=True)
    assert not any(k.startswith("module.") for k in state["state_dict"]) and "critic" in state


def _sync_bn_rank(rank: int, port: int, out: str) -> None:
    """What ``train.sync_bn`` does to the SCAL network in a process of a two-process group, as facts to check."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        model = create_model("resnet50_scal_channel", 4, loss="triplet", pretrained=False, height=HEIGHT, width=WIDTH)
        facts = {}
        try:
            wrap(model, torch.device("cpu"), sync_bn=True)
        except ConfigError as err:
            facts["cpu"] = str(err)
        plain = copy.deepcopy(model).eval()
        synced = convert_sync_batchnorm(model).eval()  # eval: SyncBatchNorm's training forward is GPU-only
        norms = [m for m in synced.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        facts["all_sync"] = all(isinstance(m, nn.SyncBatchNorm) for m in norms) and len(norms) > 50
        facts["neck"] = type(synced.bottleneck).__name__
        facts["bias_is_buffer"] = "bias" in synced.bottleneck._buffers and synced.bottleneck.bias is not None
        facts["params"] = [n for n, _ in synced.named_parameters()] == [n for n, _ in plain.named_parameters()]
        facts["state"] = synced.state_dict()
        images = _batch()["img"][:4]
        with torch.no_grad():
            facts["same_output"] = torch.allclose(synced(images), plain(images), atol=1e-6)
        optimizer = torch.optim.SGD(synced.parameters(), lr=0.1)
        synced.train()
        for m in norms:
            m.eval()
        logits, _ = synced(images)
        logits.square().sum().backward()
        optimizer.step()
        facts["stepped"] = not torch.equal(synced.bottleneck.weight, plain.bottleneck.weight)
        facts["bias_after_step"] = synced.bottleneck.bias.clone()
        torch.save(facts, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_sync_bn_keeps_the_bnneck_bias_a_frozen_buffer(tmp_path):
    """Finding 2 of issue 14: torch's conversion made the BNNeck's bias buffer a parameter and crashed."""
    out = str(tmp_path / "facts")
    mp.spawn(_sync_bn_rank, args=(free_port(), out), nprocs=2, join=True)
    plain_keys = create_model("resnet50_scal_channel", 4, loss="triplet", pretrained=False, height=HEIGHT,
                              width=WIDTH).state_dict().keys()
    for rank in range(2):
        facts = torch.load(f"{out}.{rank}", weights_only=True)
        assert "train.sync_bn True needs GPUs" in facts["cpu"]
        assert facts["all_sync"] and facts["neck"] == "SyncBNNeck" and facts["bias_is_buffer"] and facts["params"]
        assert facts["same_output"] and facts["stepped"]
        assert torch.count_nonzero(facts["bias_after_step"]) == 0
        assert list(facts["state"].keys()) == list(plain_keys)
        fresh = create_model("resnet50_scal_channel", 4, loss="triplet", pretrained=False, height=HEIGHT, width=WIDTH)
        fresh.load_state_dict(facts["state"])
        synced = convert_sync_batchnorm(fresh)
        synced.load_state_dict(facts["state"])


def test_fixbase_epoch_and_staged_lr_under_torchrun(tmp_path):
    """Findings 3 and 4 of issue 14: under DDP, fixbase_epoch crashed (torchreid unwraps only DataParallel) and
    staged_lr gave the new layers the base learning rate (every name began with ``module.``)."""
    initial = create_model("resnet50_scal", 50, loss="triplet", pretrained=False, height=64, width=32).state_dict()
    start = save_checkpoint({"state_dict": initial}, str(tmp_path / "initial.pth"))
    result = torchrun(tmp_path, "model.load_weights", start, "train.fixbase_epoch", "1",
                      "train.open_layers", "['classifier']", "train.staged_lr", "True",
                      "train.new_layers", "['classifier']", "train.base_lr_mult", "0.1")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "* Only train ['classifier'] (epoch: 1/1)" in result.stdout
    state = torch.load(tmp_path / "log" / "model" / "model.pth.tar-1", weights_only=True)
    assert {k for k, v in initial.items() if not torch.equal(v, state["state_dict"][k])} == {"classifier.weight"}
    base, new = state["optimizer"]["param_groups"]
    assert len(new["params"]) == 1 and len(base["params"]) > 100
    assert base["lr"] == pytest.approx(0.1 * new["lr"]) and new["lr"] == pytest.approx(3.5e-4)
