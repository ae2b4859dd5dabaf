"""ImageSCALEngine through torchreid's data pipeline: a short run, evaluation, save and resume."""
from __future__ import annotations

import functools
import math
import os

import pytest
import torch

from conftest import HEIGHT, WIDTH
from torchreid_scal import _torchreid
from torchreid_scal.datasets.demo import SCALDemo
from torchreid_scal.engine import ImageSCALEngine
from torchreid_scal.models import StageCritics, create_model

TINY = dict(num_train_ids=4, num_test_ids=3, train_per_id=4, gallery_per_id=3)


@pytest.fixture(scope="module")
def datamanager(tmp_path_factory):
    _torchreid.image_dataset_table()["scal_demo_tiny"] = functools.partial(SCALDemo, **TINY)
    return _torchreid.data.ImageDataManager(
        root=str(tmp_path_factory.mktemp("data")), sources="scal_demo_tiny", height=HEIGHT, width=WIDTH,
        batch_size_train=8, batch_size_test=16, num_instances=2, train_sampler="RandomIdentitySampler",
        workers=0, use_gpu=False, transforms=["random_flip"],
    )


def build_engine(datamanager, critic_scheduler: bool = True) -> ImageSCALEngine:
    model = create_model("resnet50_scal_channel", datamanager.num_train_pids, loss="triplet", pretrained=False,
                         height=HEIGHT, width=WIDTH)
    optimizer = _torchreid.optim.build_optimizer(model, optim="adam", lr=3e-4)
    scheduler = _torchreid.optim.build_lr_scheduler(optimizer, lr_scheduler="multi_step", stepsize=[1])
    critics = StageCritics(model.attention, model.stage_channels, [2, 4])
    critic_optimizer = torch.optim.Adam(critics.parameters(), lr=1e-4)
    critic_sched = None
    if critic_scheduler:
        critic_sched = torch.optim.lr_scheduler.StepLR(critic_optimizer, step_size=1, gamma=0.5)
    return ImageSCALEngine(datamanager, model, optimizer, scheduler=scheduler, use_gpu=False, critics=critics,
                           critic_optimizer=critic_optimizer, critic_scheduler=critic_sched)


def record_summaries(engine):
    records = []
    step = engine.forward_backward

    def recording(data):
        records.append(step(data))
        return records[-1]

    engine.forward_backward = recording
    return records


def test_short_run_evaluates_saves_and_resumes(datamanager, tmp_path, capsys):
    engine = build_engine(datamanager)
    records = record_summaries(engine)
    save_dir = str(tmp_path / "run")
    engine.run(save_dir=save_dir, max_epoch=2, print_freq=1)
    out = capsys.readouterr().out
    assert len(records) == 4  # 2 epochs x 16 images / batch 8
    assert all(math.isfinite(v) for r in records for v in r.values())
    assert "mAP:" in out and "Rank-1" in out and "loss_cri" in out and "critic_corr" in out
    path = os.path.join(save_dir, "model", "model.pth.tar-2")
    saved = torch.load(path, weights_only=True)
    assert saved["epoch"] == 2 and type(saved["rank1"]) is float
    assert set(saved["critic"]) == {"state_dict", "optimizer", "scheduler"}

    fresh = build_engine(datamanager)
    assert fresh.resume(path) == 2
    for name in ("model", "critic"):
        mine, theirs = engine._models[name].state_dict(), fresh._models[name].state_dict()
        assert all(torch.equal(mine[k], theirs[k]) for k in mine)
        assert fresh._scheds[name].state_dict() == engine._scheds[name].state_dict()
        a, b = engine._optims[name].state_dict(), fresh._optims[name].state_dict()
        assert a["param_groups"] == b["param_groups"]
        for pid, state in a["state"].items():
            assert all(torch.equal(state[k], b["state"][pid][k]) for k in state)
    assert fresh.get_current_lr() == engine.get_current_lr()

    fresh.run(save_dir=save_dir, max_epoch=3, start_epoch=fresh.epoch, print_freq=1)
    assert torch.load(os.path.join(save_dir, "model", "model.pth.tar-3"), weights_only=True)["epoch"] == 3


def test_saving_without_critic_scheduler(datamanager, tmp_path):
    engine = build_engine(datamanager, critic_scheduler=False)
    path = engine.save_model(0, 0.5, str(tmp_path))
    saved = torch.load(path, weights_only=True)
    assert saved["critic"]["scheduler"] is None and saved["scheduler"] is not None
    build_engine(datamanager, critic_scheduler=False).resume(path)
