"""The GPU check, ``python -m pytest tests/gpu``: the CUDA paths of what the CPU suite tests (mixed precision,
channels-last, SyncBatchNorm, NCCL under torchrun, the benchmark). Every test is skipped without CUDA."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from conftest import HEIGHT, NUM_CLASSES, WIDTH
from torchreid_scal.distributed import convert_sync_batchnorm
from torchreid_scal.scal_engine import ImageSCALEngine
from torchreid_scal.models import create_model
from torchreid_scal.models.head import SyncBNNeck

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
CUDA = torch.device("cuda")


def scal_model(channels_last: bool = False) -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model("resnet50_scal_channel", NUM_CLASSES, loss="triplet", pretrained=False, height=HEIGHT,
                         width=WIDTH)
    return model.to(CUDA, memory_format=torch.channels_last if channels_last else torch.preserve_format)


def cuda_engine(model: torch.nn.Module, **options) -> ImageSCALEngine:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    datamanager = SimpleNamespace(train_loader=None, test_loader={}, num_train_pids=NUM_CLASSES, sources=["gpu"])
    engine = ImageSCALEngine(datamanager, model, optimizer, use_gpu=True, critic_lr=1e-3, **options)
    engine.set_model_mode("train")
    return engine


def batch():
    generator = torch.Generator().manual_seed(1)
    return {"img": torch.randn(6, 3, HEIGHT, WIDTH, generator=generator), "pid": torch.arange(3).repeat_interleave(2)}


def step(engine: ImageSCALEngine):
    """One training step: its logged values and the network's top-level modules whose parameters moved."""
    before = {n: p.detach().clone() for n, p in engine.network.named_parameters()}
    summary = engine.forward_backward(batch())
    moved = {n.split(".")[0] for n, p in engine.network.named_parameters() if not torch.equal(p, before[n])}
    assert all(math.isfinite(v) for v in summary.values()), summary
    return summary, moved


def test_scal_steps_in_float16_with_a_grad_scaler(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)  # a GPU before Ampere
    engine = cuda_engine(scal_model(), amp=True)
    assert engine.precision.dtype == torch.float16 and engine.precision.scaler.is_enabled()
    for _ in range(20):  # the scaler skips the network's update (and halves its scale) while gradients overflow
        _, moved = step(engine)
        if moved:
            break
    assert {"agents", "layer4", "classifier"} <= moved
    assert 0 < engine.precision.scaler.get_scale() < float("inf")


@pytest.mark.skipif(not torch.cuda.is_available() or not torch.cuda.is_bf16_supported(including_emulation=False),
                    reason="no CUDA device computing in bfloat16")
def test_scal_step_in_bfloat16():
    engine = cuda_engine(scal_model(), amp=True)
    assert engine.precision.dtype == torch.bfloat16 and not engine.precision.scaler.is_enabled()
    _, moved = step(engine)
    assert {"agents", "layer4", "classifier"} <= moved


def test_channels_last_step_equals_the_contiguous_one():
    contiguous = step(cuda_engine(scal_model()))[0]
    engine = cuda_engine(scal_model(channels_last=True), channels_last=True)
    assert engine._images(batch()["img"]).is_contiguous(memory_format=torch.channels_last)
    channels_last = step(engine)[0]
    for key in ("loss_t", "loss_x", "loss_mse"):
        assert channels_last[key] == pytest.approx(contiguous[key], rel=1e-2, abs=1e-3), key


def test_sync_bn_network_steps_on_cuda():
    """One process without a process group: SyncBatchNorm normalises with this process's batch."""
    model = convert_sync_batchnorm(scal_model())
    assert isinstance(model.bottleneck, SyncBNNeck) and isinstance(model.bn1, torch.nn.SyncBatchNorm)
    _, moved = step(cuda_engine(model))
    assert {"agents", "layer4", "bottleneck", "classifier"} <= moved
    assert "bias" in model.bottleneck._buffers and torch.count_nonzero(model.bottleneck.bias) == 0


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_two_gpus_under_torchrun_with_sync_bn_amp_and_channels_last(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         os.path.join(REPO, "tools", "main.py"), "--config-file", os.path.join(REPO, "configs", "scal_demo.yaml"),
         "data.root", str(tmp_path / "data"), "scal_demo.num_test_ids", "50", "data.save_dir", str(tmp_path / "log"), "data.height", "64",
         "data.width", "32", "data.workers", "0", "train.max_epoch", "1", "train.warmup_epochs", "0",
         "use_gpu", "True", "train.sync_bn", "True", "train.amp", "True", "model.channels_last", "True"],
        capture_output=True, text=True, timeout=900, cwd=REPO,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Distributed: 2 processes" in result.stdout and "device cuda:0" in result.stdout
    state = torch.load(tmp_path / "log" / "model" / "model.pth.tar-1", weights_only=True)["state_dict"]
    create_model("resnet50_scal", 50, loss="triplet", pretrained=False).load_state_dict(state)
    assert torch.count_nonzero(state["bottleneck.bias"]) == 0


@pytest.mark.parametrize("options", [[], ["--amp", "--channels-last"]])
def test_benchmark_on_cuda(tmp_path, options):
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "tools", "benchmark.py"), "--device", "cuda", "--batch-size", "4",
         "--num-instances", "2", "--height", "64", "--width", "32", "--steps", "2", "--warmup", "1",
         "--json", str(out), *options],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    for figure in ("train_step_s", "extract_images_per_s", "peak_mem_mb"):
        assert len(report[figure]) == 4 and all(value > 0 for value in report[figure].values())
