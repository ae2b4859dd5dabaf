"""Stopping on a signal in the middle of an epoch and resuming at that step, through torchreid's data pipeline."""
from __future__ import annotations

import os
import re
import signal

import pytest
import torch

from conftest import tiny_datamanager, tiny_scal_engine
from torchreid_scal import _torchreid
from torchreid_scal.cli import run_tool
from torchreid_scal.scal_engine import ImageSCALEngine
from torchreid_scal.preemption import Preempted, StopSignals

TINY = dict(num_train_ids=6, num_test_ids=3, train_per_id=4, gallery_per_id=3)
SEED = 7


@pytest.fixture(scope="module")
def datamanager(tmp_path_factory):
    """24 training images in 3 batches of 4 identities x 2, with augmentations that draw from Python's and torch's
    generators; ``workers`` 0, so that a resumed epoch can equal an uninterrupted one exactly."""
    return tiny_datamanager(tmp_path_factory.mktemp("data"), "scal_demo_preemption",
                            ["random_flip", "random_crop", "random_erase"], **TINY)


def build_engine(datamanager) -> ImageSCALEngine:
    _torchreid.utils.set_random_seed(SEED)
    return tiny_scal_engine(datamanager, critic_lr=1e-3)


def signal_during(engine: ImageSCALEngine, epoch: int, step: int, signum: int) -> None:
    """Send ``signum`` to this process while ``engine`` computes step ``step`` of epoch ``epoch`` (1-based)."""
    forward_backward = engine.forward_backward

    def stepping(data):
        if (engine.epoch + 1, engine.batch_idx + 1) == (epoch, step):
            os.kill(os.getpid(), signum)
        return forward_backward(data)

    engine.forward_backward = stepping


def weights(engine: ImageSCALEngine):
    return {**{f"model.{k}": v.clone() for k, v in engine.network.state_dict().items()},
            **{f"critic.{k}": v.clone() for k, v in engine.critic_net.state_dict().items()}}


def critic_line(out: str, epoch: int) -> str:
    return re.search(rf"^epoch {epoch} critic: .*$", out, re.M).group(0)


def test_signal_mid_epoch_then_resume_equals_an_uninterrupted_run(datamanager, tmp_path, capsys, monkeypatch):
    reference = build_engine(datamanager)
    reference.run(save_dir=str(tmp_path / "reference"), max_epoch=2, print_freq=1)
    expected, expected_out = weights(reference), capsys.readouterr().out

    save_dir = str(tmp_path / "victim")
    victim = build_engine(datamanager)
    signal_during(victim, epoch=2, step=2, signum=signal.SIGUSR1)
    with pytest.raises(Preempted, match=r"SIGUSR1 received after step 2 of epoch 2: checkpoint .*model\.pth\.tar-1\+2"):
        victim.run(save_dir=save_dir, max_epoch=2, print_freq=1)
    assert "epoch: [2/2][2/3]" in capsys.readouterr().out
    assert open(os.path.join(save_dir, "model", "latest")).read().strip() == "model.pth.tar-1+2"
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL  # handlers are removed with the exception

    train_paths = {item[0] for item in datamanager.train_loader.dataset.train}
    loaded = []
    dataset_module = _torchreid.submodule("data.datasets.dataset")
    read_image = dataset_module.read_image
    monkeypatch.setattr(dataset_module, "read_image", lambda path: loaded.append(path) or read_image(path))
    resumed = build_engine(datamanager)
    assert resumed.resume("auto", save_dir=save_dir) == 1
    resumed.run(save_dir=save_dir, max_epoch=2, start_epoch=1, print_freq=1)
    out = capsys.readouterr().out
    assert "continues after step 2" in out and "epoch: [2/2][3/3]" in out and "epoch: [2/2][2/3]" not in out
    assert len([p for p in loaded if p in train_paths]) == 8  # the one remaining batch; the done ones never loaded

    actual = weights(resumed)
    worst = max((expected[k].double() - actual[k].double()).abs().max().item() for k in expected)
    assert worst <= 1e-6, worst
    assert critic_line(out, 2) == critic_line(expected_out, 2)  # the epoch's statistics cover all of its images
    assert sorted(os.listdir(os.path.join(save_dir, "model"))) == ["latest", "model.pth.tar-1", "model.pth.tar-2"]


@pytest.mark.parametrize("first", [signal.SIGTERM, signal.SIGUSR1, signal.SIGINT])
def test_stop_signals_raise_a_flag_and_a_second_ctrl_c_interrupts(first):
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)}
    with StopSignals() as stop:
        assert not stop.requested(torch.device("cpu"))
        os.kill(os.getpid(), first)
        assert stop.requested(torch.device("cpu")) and stop.name == first.name
        with pytest.raises(KeyboardInterrupt, match="without a checkpoint"):
            os.kill(os.getpid(), signal.SIGINT)
    assert {sig: signal.getsignal(sig) for sig in before} == before


def test_forked_workers_ignore_the_stop_signals():
    with StopSignals() as stop:
        pid = os.fork()
        if pid == 0:  # the child, as a DataLoader worker is forked: it must outlive the signals
            for signum in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT, signal.SIGINT):
                os.kill(os.getpid(), signum)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0 and stop.received is None


def test_tools_exit_6_when_stopped_and_130_when_interrupted(capsys):
    def stopped():
        raise Preempted("SIGTERM received after step 3 of epoch 2: checkpoint x written")

    def interrupted():
        raise KeyboardInterrupt

    assert run_tool(stopped) == 6
    assert capsys.readouterr().err == "stopped: SIGTERM received after step 3 of epoch 2: checkpoint x written\n"
    assert run_tool(interrupted) == 130 and capsys.readouterr().err == "interrupted\n"
