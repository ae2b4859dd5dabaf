"""Faults, each tried for real through tools/main.py: a SIGKILL mid-training, bad data, bad checkpoints."""
from __future__ import annotations

import os
import pickle
import shutil
import signal
import subprocess
import sys
from types import SimpleNamespace
from typing import Tuple

import numpy as np
import pytest
import torch

from torchreid_scal import _torchreid
from torchreid_scal.config import load_config, optimizer_kwargs
from torchreid_scal.datasets.demo import SCALDemo
from torchreid_scal.runner import build_datamanager, build_engine, build_model, build_scheduler

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
MAIN = os.path.join(REPO, "tools", "main.py")
DEMO = os.path.join(REPO, "configs", "scal_demo.yaml")
TINY = ["scal_demo.num_test_ids", "50", "data.height", "64", "data.width", "32", "data.workers", "0",
        "train.warmup_epochs", "0", "train.print_freq", "100", "test.eval_freq", "-1"]


def command(root, save_dir, *opts):
    return [sys.executable, MAIN, "--config-file", DEMO, "data.root", str(root), "data.save_dir", str(save_dir),
            *TINY, *opts]


def main_py(root, save_dir, *opts) -> subprocess.CompletedProcess:
    return subprocess.run(command(root, save_dir, *opts), capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    root = tmp_path_factory.mktemp("template")
    SCALDemo(root=str(root), verbose=False)
    return root


@pytest.fixture
def data_root(template, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(template, root)
    return root


def weights(path):
    state = torch.load(path, weights_only=True)
    return {**{f"model.{k}": v for k, v in state["state_dict"].items()},
            **{f"critic.{k}": v for k, v in state["critic"]["state_dict"].items()}}


RESUMABLE = ["train.max_epoch", "2", "train.seed", "7"]


@pytest.fixture(scope="module")
def reference(template, tmp_path_factory):
    """The checkpoints of an uninterrupted two-epoch run, which every interrupted and resumed run must equal."""
    save_dir = tmp_path_factory.mktemp("reference")
    result = main_py(template, save_dir, *RESUMABLE)
    assert result.returncode == 0, result.stderr[-2000:]
    return save_dir / "model"


def assert_same_weights(expected_path, actual_path):
    expected, actual = weights(expected_path), weights(actual_path)
    assert expected.keys() == actual.keys()
    worst = max((expected[k].double() - actual[k].double()).abs().max().item() for k in expected)
    assert worst <= 1e-6, worst


def resumable_copy(reference, tmp_path):
    """A run folder whose first epoch is the reference's, as if this run had written it."""
    model_dir = tmp_path / "victim" / "model"
    model_dir.mkdir(parents=True)
    shutil.copy(reference / "model.pth.tar-1", model_dir)
    (model_dir / "latest").write_text("model.pth.tar-1\n")
    return model_dir


def interrupt_at_step(root, save_dir, opts, step: int, sig: signal.Signals) -> Tuple[int, str]:
    """tools/main.py, sent ``sig`` once it prints step ``step`` of epoch 2 of 2: its exit status and stderr."""
    victim = subprocess.Popen(command(root, save_dir, *opts), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    for line in victim.stdout:
        if line.startswith(f"epoch: [2/2][{step}/12]"):
            victim.send_signal(sig)
            break
    _, stderr = victim.communicate(timeout=600)
    return victim.returncode, stderr


RESUME = [*RESUMABLE, "train.print_freq", "1", "model.resume", "auto"]


def test_sigkill_then_resume_ends_with_the_weights_of_an_uninterrupted_run(template, reference, tmp_path):
    model_dir = resumable_copy(reference, tmp_path)
    files = {p.name: p.read_bytes() for p in model_dir.iterdir()}
    status, _ = interrupt_at_step(template, model_dir.parent, RESUME, 5, signal.SIGKILL)
    assert status == -signal.SIGKILL
    assert {p.name: p.read_bytes() for p in model_dir.iterdir()} == files  # nothing written, nothing broken

    resumed = main_py(template, model_dir.parent, *RESUME)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "Resumed from" in resumed.stdout and "next epoch 2" in resumed.stdout
    assert_same_weights(reference / "model.pth.tar-2", model_dir / "model.pth.tar-2")


def test_sigterm_mid_epoch_then_resume_ends_with_the_weights_of_an_uninterrupted_run(template, reference, tmp_path):
    model_dir = resumable_copy(reference, tmp_path)
    status, stderr = interrupt_at_step(template, model_dir.parent, RESUME, 3, signal.SIGTERM)
    assert status == 6, stderr[-2000:]
    latest = (model_dir / "latest").read_text().strip()
    finished, step = latest[len("model.pth.tar-"):].split("+")
    assert finished == "1" and 3 <= int(step) < 12, latest
    assert f"stopped: SIGTERM received after step {step} of epoch 2: checkpoint {model_dir}" in stderr

    resumed = main_py(template, model_dir.parent, *RESUME)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"epoch 2 continues after step {step}" in resumed.stdout and "epoch: [2/2][1/12]" not in resumed.stdout
    assert_same_weights(reference / "model.pth.tar-2", model_dir / "model.pth.tar-2")
    assert sorted(os.listdir(model_dir)) == ["latest", "model.pth.tar-1", "model.pth.tar-2"]


def test_corrupt_image_is_named(data_root, tmp_path):
    bad = sorted((data_root / "scal_demo" / "bounding_box_train").iterdir())[3]
    bad.write_bytes(b"not a png at all")
    result = main_py(data_root, tmp_path / "log", "train.max_epoch", "1")
    assert result.returncode == 3, result.stderr[-2000:]
    assert f"cannot read image {bad}" in result.stderr and "data.skip_bad_images" in result.stderr


def test_corrupt_image_can_be_skipped(data_root, tmp_path):
    bad = sorted((data_root / "scal_demo" / "query").iterdir())[0]
    bad.write_bytes(b"\x89PNG truncated")
    result = main_py(data_root, tmp_path / "log", "test.evaluate", "True", "data.skip_bad_images", "True")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "skipping 1 unreadable images" in result.stderr and str(bad) in result.stderr
    assert "Done, obtained 49-by-2048 matrix" in result.stdout


def test_num_instances_larger_than_any_identity(template, tmp_path):
    result = main_py(template, tmp_path / "log", "sampler.num_instances", "9", "train.batch_size", "18")
    assert result.returncode == 3
    assert "sampler.num_instances=9 but no training identity has more than 8 images" in result.stderr


def test_empty_query_split(data_root, tmp_path):
    for image in (data_root / "scal_demo" / "query").iterdir():
        image.unlink()
    result = main_py(data_root, tmp_path / "log", "train.max_epoch", "1")
    assert result.returncode == 3 and "the query split is empty" in result.stderr


class Payload:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


@pytest.mark.parametrize("content, message", [
    (lambda path: pickle.dump({"state_dict": Payload()}, open(path, "wb")), "weights_only"),
    (lambda path: torch.save([1, 2, 3], path), "not a checkpoint dictionary"),
    (lambda path: torch.save({"epoch": 3}, path), "holds no state dict"),
])
def test_bad_weight_files_are_refused(template, tmp_path, content, message):
    path = tmp_path / "weights.pth"
    content(path)
    result = main_py(template, tmp_path / "log", "test.evaluate", "True", "model.load_weights", str(path))
    assert result.returncode == 5 and message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "pwned").exists() and not os.path.exists(os.path.join(REPO, "pwned"))


def test_resume_from_another_configuration_touches_nothing(template, reference, tmp_path):
    save_dir = tmp_path / "run"
    shutil.copytree(reference, save_dir / "model")
    files = {p: p.read_bytes() for p in (save_dir / "model").iterdir()}
    result = main_py(template, save_dir, "train.max_epoch", "2", "model.name", "resnet50_scal_spatial",
                     "model.resume", "auto")
    assert result.returncode == 5 and "cannot resume model" in result.stderr
    assert {p: p.read_bytes() for p in (save_dir / "model").iterdir()} == files


def torchreid_saved(save_dir, cfg):
    """A checkpoint written by torchreid's own ``ImageTripletEngine.save_model`` (its ``save_checkpoint``, with
    ``rank1`` a NumPy scalar as its evaluation returns it), of the model and optimizer ``cfg`` describes."""
    model = build_model(cfg, 50)
    optimizer = _torchreid.optim.build_optimizer(model, **optimizer_kwargs(cfg))
    datamanager = SimpleNamespace(train_loader=None, test_loader={}, num_train_pids=50)
    scheduler = build_scheduler(cfg, optimizer)
    stock = _torchreid.engine.ImageTripletEngine(datamanager, model, optimizer, scheduler=scheduler, use_gpu=False)
    stock.save_model(0, np.float64(0.25), str(save_dir))
    return save_dir / "model" / "model.pth.tar-1", model


def test_torchreids_own_checkpoints_load_and_resume(template, tmp_path):
    opts = ["model.name", "resnet50_bnneck", "loss.name", "triplet", "train.max_epoch", "2"]
    cfg = load_config(DEMO, ["data.root", str(template), "data.save_dir", str(tmp_path / "run"), *TINY, *opts])
    path, trained = torchreid_saved(tmp_path / "torchreid", cfg)

    evaluated = main_py(template, tmp_path / "eval", *opts, "test.evaluate", "True", "model.load_weights", str(path))
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    assert f"from {path}" in evaluated.stdout and "mAP:" in evaluated.stdout

    device = torch.device("cpu")
    model = build_model(cfg, 50)
    optimizer = _torchreid.optim.build_optimizer(model, **optimizer_kwargs(cfg))
    scheduler = build_scheduler(cfg, optimizer)
    engine = build_engine(cfg, build_datamanager(cfg, device), model, optimizer, scheduler, device)
    assert engine.resume(str(path)) == 1
    assert all(torch.equal(v, trained.state_dict()[k]) for k, v in model.state_dict().items())
