"""Faults of a whole run, reached in-process through ``runner.run`` on a tiny generated dataset: what is
refused before any data is loaded or any model built, and what a run leaves in its directory."""
from __future__ import annotations

import functools
import multiprocessing
import os
import shutil
import signal
import time

import pytest
import torch

from torchreid_scal import _torchreid, rundir, runner
from torchreid_scal.checkpoint import NonFiniteError, save_checkpoint
from torchreid_scal.config import ConfigError, load_config
from torchreid_scal.datasets import DataError
from torchreid_scal.datasets.demo import SCALDemo

DEMO = os.path.join(os.path.dirname(__file__), "..", "configs", "scal_demo.yaml")
TINY_DATASET = dict(num_train_ids=4, num_test_ids=3, train_per_id=4, gallery_per_id=3)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    _torchreid.image_dataset_table()["scal_demo_tiny"] = functools.partial(SCALDemo, **TINY_DATASET)
    return str(tmp_path_factory.mktemp("data"))


def tiny(data_root, save_dir, *opts):
    """The demo recipe on 4 identities at 64x32 with torchreid's ResNet-18 (what is tested here does not depend
    on the model; SCAL's is 3x slower): one epoch is two steps."""
    return load_config(DEMO, ["model.name", "resnet18", "loss.name", "softmax", "data.root", data_root,
                              "data.save_dir", str(save_dir), "data.sources",
                              "['scal_demo_tiny']", "data.targets", "['scal_demo_tiny']", "data.height", "64",
                              "data.width", "32", "data.workers", "0", "train.batch_size", "8",
                              "sampler.num_instances", "2", "train.max_epoch", "1", "train.warmup_epochs", "0",
                              "train.print_freq", "100", "test.eval_freq", "-1", *opts])


@pytest.mark.parametrize("opts, message", [
    (["train.fixbase_epoch", "1", "train.open_layers", "['foo']"],
     r"train.open_layers: 'foo' is not a layer of resnet18; its layers: \[.*'classifier'"),
    (["train.staged_lr", "True", "train.new_layers", "['foo', 'classifier']"],
     "train.new_layers: 'foo' is not a layer of resnet18"),
])
def test_unknown_layer_names_stop_before_training(data_root, tmp_path, monkeypatch, opts, message):
    monkeypatch.setattr(runner, "build_engine", lambda *args: pytest.fail("the engine was built"))
    with pytest.raises(ConfigError, match=message):
        runner.run(tiny(data_root, tmp_path, *opts))


def no_training(monkeypatch):
    """Replace the job itself, so that only what ``run`` does around it (and before it) happens."""
    calls = []
    monkeypatch.setattr(runner, "_run", calls.append)
    return calls


def hold_lock_in_child(save_dir):
    """A child process that takes ``save_dir``'s lock the way a run does and keeps it until killed."""
    ready = multiprocessing.get_context("fork").Event()

    def hold():
        with rundir.locked(str(save_dir)):
            ready.set()
            time.sleep(600)

    child = multiprocessing.get_context("fork").Process(target=hold, daemon=True)
    child.start()
    assert ready.wait(60)
    return child


def test_second_run_in_a_save_dir_is_refused_until_the_first_dies(data_root, tmp_path, monkeypatch):
    calls = no_training(monkeypatch)
    child = hold_lock_in_child(tmp_path)
    try:
        with pytest.raises(ConfigError, match=f"data.save_dir {tmp_path} is in use by another run "
                                              rf"\(process {child.pid}\)"):
            runner.run(tiny(data_root, tmp_path))
        assert not calls
    finally:
        os.kill(child.pid, signal.SIGKILL)  # a crash: the lock must not outlive the process
        child.join()
    runner.run(tiny(data_root, tmp_path))
    assert len(calls) == 1


def test_stale_partial_checkpoints_are_removed_by_the_run_that_owns_the_directory(data_root, tmp_path, monkeypatch,
                                                                                 capsys):
    no_training(monkeypatch)
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    stale, mine = model_dir / ".tmp-abc123", model_dir / "notes.txt"
    stale.write_bytes(b"x" * 1000)
    mine.write_text("kept")
    child = hold_lock_in_child(tmp_path)
    try:
        with pytest.raises(ConfigError):
            runner.run(tiny(data_root, tmp_path))
        assert stale.exists(), "another run may be writing it"
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.join()
    runner.run(tiny(data_root, tmp_path))
    assert not stale.exists() and mine.read_text() == "kept"
    assert f"removed {stale}" in capsys.readouterr().out


@pytest.mark.parametrize("kind", ["symlink", "hardlink", "folder"])
def test_a_lock_path_that_is_not_the_runs_own_file_is_never_written_through(data_root, tmp_path, monkeypatch, kind):
    calls = no_training(monkeypatch)
    save_dir, victim = tmp_path / "run", tmp_path / "precious.txt"
    save_dir.mkdir()
    victim.write_text("keep me")
    lock = save_dir / rundir.LOCK
    if kind == "symlink":
        lock.symlink_to(victim)
    elif kind == "hardlink":
        os.link(victim, lock)
    else:
        lock.mkdir()
    expected = {"symlink": rf"a symbolic link \(to {victim}\)", "hardlink": r"a file with other names \(hard links\)",
                "folder": "a folder"}[kind]
    with pytest.raises(ConfigError, match=f"data.save_dir: {lock} is {expected}, not the run's lock file"):
        runner.run(tiny(data_root, save_dir))
    assert victim.read_text() == "keep me" and not calls


@pytest.mark.parametrize("make, opts, message", [
    (lambda d: (d / "run").write_text(""), [], r"data.save_dir: cannot write to .*/run: it is a file"),
    (lambda d: (d / "run").mkdir() or (d / "run" / "model").write_text(""), [],
     r"data.save_dir: cannot write to .*/run/model: it is a file"),
    (lambda d: (d / "run").mkdir() or (d / "run" / "visrank_scal_demo_tiny").write_text(""),
     ["test.evaluate", "True", "test.visrank", "True"], r"data.save_dir: cannot write to .*/visrank_scal_demo_tiny"),
    (lambda d: (d / "root").write_text(""), ["data.root", "ROOT"], r"data.root: .*/root is a file, not a directory"),
])
def test_unusable_output_or_data_locations_stop_before_any_work(data_root, tmp_path, monkeypatch, make, opts,
                                                                message):
    calls = no_training(monkeypatch)
    make(tmp_path)
    opts = [str(tmp_path / "root") if o == "ROOT" else o for o in opts]
    with pytest.raises(ConfigError, match=message):
        runner.run(tiny(data_root, tmp_path / "run", *opts))
    assert not calls


def test_save_dir_under_the_home_folder_is_not_a_literal_tilde(data_root, tmp_path, monkeypatch):
    calls = no_training(monkeypatch)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    runner.run(tiny(data_root, "~/x"))
    assert calls and (tmp_path / "home" / "x" / rundir.LOCK).is_file() and not (tmp_path / "~").exists()


def test_a_log_that_cannot_be_written_is_one_warning_and_the_run_goes_on(data_root, tmp_path, monkeypatch, capsys):
    """/dev/full fails every write, as a full disk does."""
    calls = []
    monkeypatch.setattr(runner, "_run", lambda cfg: calls.append(print("line\n" * 2000, end="the end")))
    runner.run(tiny(data_root, tmp_path), log_file="/dev/full")
    captured = capsys.readouterr()
    assert calls and captured.out == "line\n" * 2000 + "the end"
    assert captured.err == ("warning: cannot write the log /dev/full (No space left on device); it ends here, the "
                            "console shows the rest\n")


def test_the_log_holds_every_line_printed_so_far(data_root, tmp_path, monkeypatch):
    logged = []
    log_file = tmp_path / "train.log"
    monkeypatch.setattr(runner, "_run", lambda cfg: (print("first line"), logged.append(log_file.read_text())))
    runner.run(tiny(data_root, tmp_path), log_file=str(log_file))
    assert logged == ["first line\n"]


def test_save_dir_where_nothing_can_be_written(data_root, monkeypatch):
    calls = no_training(monkeypatch)
    with pytest.raises(ConfigError, match="data.save_dir: cannot write to /proc/x"):
        runner.run(tiny(data_root, "/proc/x"))
    assert not calls


def test_an_evaluation_is_not_refused_by_the_training_batch_checks(data_root, tmp_path, capsys):
    """4 identities of 4 images cannot fill a batch of 16 identities x 8, but evaluating draws no batch."""
    with pytest.warns(UserWarning, match="evaluating the model as initialised"):
        runner.run(tiny(data_root, tmp_path, "test.evaluate", "True", "train.batch_size", "128",
                        "sampler.num_instances", "8"))
    assert "mAP:" in capsys.readouterr().out


class SameCameraDemo(SCALDemo):
    """``scal_demo`` whose gallery keeps, of each identity, only the images of its query's camera: no query has a
    match that the protocol counts."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        camera = {pid: camid for _, pid, camid, *_ in self.query}
        self.gallery = [item for item in self.gallery if camera.get(item[1]) == item[2]]
        if kwargs.get("mode") == "gallery":
            self.data = self.gallery


@pytest.mark.parametrize("evaluator", ["fast", "torchreid"])
def test_a_test_set_without_a_valid_query_is_one_line(data_root, tmp_path, capsys, evaluator):
    _torchreid.image_dataset_table()["scal_demo_same_camera"] = functools.partial(SameCameraDemo, **TINY_DATASET)
    cfg = tiny(data_root, tmp_path, "test.evaluate", "True", "test.evaluator", evaluator,
               "data.targets", "['scal_demo_same_camera']")
    with pytest.warns(UserWarning, match="as initialised"), pytest.raises(
            DataError, match=r"dataset scal_demo_same_camera: none of its 3 queries has a gallery image of its identity "
                             r"from another camera \(3 gallery images\)"):
        runner.run(cfg)
    out = capsys.readouterr().out
    assert "Extracting features" not in out and "mAP" not in out


@pytest.mark.parametrize("evaluator", ["fast", "torchreid"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), 1e30])
def test_non_finite_features_stop_before_any_metric(data_root, tmp_path, capsys, evaluator, value):
    cfg = tiny(data_root, tmp_path, "test.evaluate", "True", "test.evaluator", evaluator)
    model = runner.build_model(cfg, TINY_DATASET["num_train_ids"])
    with torch.no_grad():
        model.conv1.weight.fill_(value)  # 1e30: finite features whose float32 distances overflow
    weights = save_checkpoint({"state_dict": model.state_dict()}, str(tmp_path / "bad.pth"))
    cfg = tiny(data_root, tmp_path, "test.evaluate", "True", "test.evaluator", evaluator, "model.load_weights", weights)
    with pytest.raises(NonFiniteError, match=r"resnet18 gives non-finite features .* for \d+ of \d+ images of "
                                             r"scal_demo_tiny, e.g. .*\.png; no metric was computed"):
        runner.run(cfg)
    assert "mAP" not in capsys.readouterr().out


@pytest.fixture(scope="module")
def finished(data_root, tmp_path_factory):
    """A run that trained its one epoch."""
    save_dir = tmp_path_factory.mktemp("finished")
    runner.run(tiny(data_root, save_dir))
    return save_dir


def written(save_dir):
    return {p.name: p.stat().st_mtime_ns for p in (save_dir / "model").iterdir()}


def test_resuming_a_finished_run_evaluates_it_and_writes_no_checkpoint(data_root, finished, tmp_path, capsys):
    save_dir = shutil.copytree(finished, tmp_path / "run")
    before = written(save_dir)
    runner.run(tiny(data_root, save_dir, "model.resume", "auto"))
    out = capsys.readouterr().out
    assert "nothing to train: the model is at epoch 1 of train.max_epoch 1" in out and "mAP:" in out
    assert written(save_dir) == before, "no checkpoint of an epoch that was never trained"


def test_resume_auto_with_a_dangling_latest_continues_from_the_checkpoint(data_root, finished, tmp_path, capsys):
    save_dir = shutil.copytree(finished, tmp_path / "run")
    (save_dir / "model" / "latest").write_text("model.pth.tar-9\n")
    with pytest.warns(UserWarning, match="resuming from the newest checkpoint on disk"):
        runner.run(tiny(data_root, save_dir, "model.resume", "auto", "train.max_epoch", "2"))
    assert f"Resumed from {save_dir / 'model' / 'model.pth.tar-1'}: next epoch 2" in capsys.readouterr().out
    assert torch.load(save_dir / "model" / "model.pth.tar-2", weights_only=True)["epoch"] == 2
    assert (save_dir / "model" / "latest").read_text() == "model.pth.tar-2\n"
