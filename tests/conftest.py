"""Shared test settings: small images so that ResNet-50 runs in seconds on a CPU; one trained SCAL checkpoint
per test module that asks for it."""
from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
import torch
from torch.utils.tensorboard import SummaryWriter

import torchreid_scal  # noqa: F401  (registers the models with torchreid)
from torchreid_scal import _torchreid
from torchreid_scal.config import load_config
from torchreid_scal.runner import build_datamanager, build_engine, build_model, build_scheduler

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
    opts = ["data.root", str(root), "data.height", str(HEIGHT), "data.width", str(WIDTH), "data.workers", "0"]
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
