"""Shared test settings: small images so that ResNet-50 runs in seconds on a CPU; one trained SCAL checkpoint
per test module that asks for it."""
from __future__ import annotations

import functools
import os
from types import SimpleNamespace
from typing import Callable, Optional, Sequence

import pytest
import torch
from torch.utils.tensorboard import SummaryWriter

import torchreid_scal  # noqa: F401  (registers the models with torchreid)
from torchreid_scal import _torchreid
from torchreid_scal.config import load_config
from torchreid_scal.datasets.demo import SCALDemo
from torchreid_scal.scal_engine import ImageSCALEngine
from torchreid_scal.models import StageCritics, create_model
from torchreid_scal.runner import build_datamanager, build_engine, build_model, build_scheduler

if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    # Test processes share the cores: each, and every tool it starts, gets its share of threads.
    THREADS = max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ["OMP_NUM_THREADS"] = str(THREADS)
    torch.set_num_threads(THREADS)

HEIGHT, WIDTH = 64, 32
NUM_CLASSES = 6


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(4, 3, HEIGHT, WIDTH)


REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
DEMO = os.path.join(REPO, "configs", "scal_demo.yaml")
CPU = torch.device("cpu")
EPOCH_SCALARS = ("mean_reward", "classification_rate", "attention_helped_rate", "critic_mse", "critic_reward_corr")


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A SCAL checkpoint of the demo config after one training step at 64x32, saved by the engine, with
    ``Epoch/*`` TensorBoard scalars beside it. Built once per module, directly (tools/main.py takes minutes
    on a busy CPU); the generated dataset is shared by the modules of a session."""
    root = tmp_path_factory.getbasetemp() / "reid-data"
    save_dir = str(tmp_path_factory.mktemp("run"))
    opts = ["data.root", str(root), "scal_demo.num_test_ids", "50", "data.height", str(HEIGHT), "data.width", str(WIDTH), "data.workers", "0"]
    train_cfg = load_config(DEMO, opts + ["data.save_dir", save_dir, "train.batch_size", "8",
                                          "sampler.num_instances", "2"])
    datamanager = build_datamanager(train_cfg, CPU)
    model = build_model(train_cfg, datamanager.num_train_pids)
    optimizer = _torchreid.optim.build_optimizer(model, optim="adam", lr=3e-4)
    engine = build_engine(train_cfg, datamanager, model, optimizer, build_scheduler(train_cfg, optimizer), CPU)
    engine.forward_backward(next(iter(datamanager.train_loader)))
    weights = engine.save_model(0, 0.0, save_dir)
    with SummaryWriter(save_dir) as writer:
        for epoch in (1, 2, 3):
            for name in EPOCH_SCALARS:
                writer.add_scalar(f"Epoch/{name}", 0.1 * epoch, epoch)
    return SimpleNamespace(opts=opts, cfg=load_config(DEMO, opts), weights=weights, save_dir=save_dir,
                           datamanager=datamanager)


def tiny_datamanager(root, name: str, transforms: Sequence[str], **sizes):
    """torchreid's ImageDataManager over a small generated ``scal_demo`` registered as ``name``: batches of
    4 identities x 2 at 64x32, no worker processes (so that runs can be repeated exactly)."""
    _torchreid.image_dataset_table()[name] = functools.partial(SCALDemo, **sizes)
    return _torchreid.data.ImageDataManager(
        root=str(root), sources=name, height=HEIGHT, width=WIDTH, batch_size_train=8, batch_size_test=16,
        num_instances=2, train_sampler="RandomIdentitySampler", workers=0, use_gpu=False, transforms=list(transforms),
    )


def tiny_scal_engine(datamanager, critic_lr: float, critic_scheduler: Optional[Callable] = None) -> ImageSCALEngine:
    """A channel SCAL engine with critics at stages 2 and 4 and the model's learning rate stepped after epoch 1;
    ``critic_scheduler(optimizer)`` builds the critics' scheduler."""
    model = create_model("resnet50_scal_channel", datamanager.num_train_pids, loss="triplet", pretrained=False,
                         height=HEIGHT, width=WIDTH)
    optimizer = _torchreid.optim.build_optimizer(model, optim="adam", lr=3e-4)
    scheduler = _torchreid.optim.build_lr_scheduler(optimizer, lr_scheduler="multi_step", stepsize=[1])
    critics = StageCritics(model.attention, model.stage_channels, [2, 4])
    critic_optimizer = torch.optim.Adam(critics.parameters(), lr=critic_lr)
    return ImageSCALEngine(datamanager, model, optimizer, scheduler=scheduler, use_gpu=False, critics=critics,
                           critic_optimizer=critic_optimizer,
                           critic_scheduler=critic_scheduler(critic_optimizer) if critic_scheduler else None)
