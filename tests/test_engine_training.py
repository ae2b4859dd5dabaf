"""ImageSCALEngine through torchreid's data pipeline: a short run, evaluation, save and resume."""
from __future__ import annotations

import functools
import math
import os

import pytest
import torch

from conftest import tiny_datamanager, tiny_scal_engine
from torchreid_scal.scal_engine import ImageSCALEngine

TINY = dict(num_train_ids=4, num_test_ids=3, train_per_id=4, gallery_per_id=3)


@pytest.fixture(scope="module")
def datamanager(tmp_path_factory):
    return tiny_datamanager(tmp_path_factory.mktemp("data"), "scal_demo_tiny", ["random_flip"], **TINY)


def build_engine(datamanager, critic_scheduler: bool = True) -> ImageSCALEngine:
    halving = functools.partial(torch.optim.lr_scheduler.StepLR, step_size=1, gamma=0.5)
    return tiny_scal_engine(datamanager, critic_lr=1e-4, critic_scheduler=halving if critic_scheduler else None)


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
    assert set(saved["critic"]) == {"state_dict", "optimizer", "scheduler", "architecture"}

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
