"""Checkpoints: plain types, atomic writes, safe loading, and torchreid's FeatureExtractor reading ours."""
from __future__ import annotations

import collections
import os
import pickle
import re
import time
import tracemalloc
import zipfile

import numpy as np
import pytest
import torch

from conftest import HEIGHT, WIDTH
from torchreid_scal import _torchreid
from torchreid_scal.checkpoint import (CheckpointError, SafeCheckpointing, latest_checkpoint, load_checkpoint,
                                       load_weights, save_checkpoint, to_plain)
from torchreid_scal.cli import run_tool
from torchreid_scal.models import StageCritics, create_model


def test_numpy_scalars_become_python_numbers():
    plain = to_plain({"rank1": np.float64(0.5), "nested": [np.int64(3)], "m": collections.Counter({40: 1})})
    assert type(plain["rank1"]) is float and type(plain["nested"][0]) is int
    assert isinstance(plain["m"], collections.Counter)


def test_saved_checkpoint_loads_with_weights_only(tmp_path):
    path = save_checkpoint({"state_dict": {"w": torch.ones(2)}, "rank1": np.float32(0.25), "epoch": 3},
                           str(tmp_path / "a" / "model.pth.tar-3"))
    state = torch.load(path, weights_only=True)
    assert state["rank1"] == 0.25 and state["epoch"] == 3
    assert [f for f in os.listdir(tmp_path / "a")] == ["model.pth.tar-3"]


def test_failed_save_keeps_the_previous_file(tmp_path):
    path = str(tmp_path / "model.pth")
    save_checkpoint({"epoch": 1}, path)

    class Unsaveable:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint({"epoch": 2, "bad": Unsaveable()}, path)
    assert load_checkpoint(path)["epoch"] == 1
    assert os.listdir(tmp_path) == ["model.pth"]


class Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": Payload()}, f)
    with pytest.raises(RuntimeError, match="weights_only"):
        load_checkpoint(str(path))


def test_other_number_of_classes_loads_the_backbone(tmp_path, capsys):
    trained = create_model("resnet50_scal", 9, pretrained=False)
    path = save_checkpoint({"state_dict": trained.state_dict()}, str(tmp_path / "m.pth"))
    model = create_model("resnet50_scal", 4, pretrained=False)
    report = load_weights(model, path)
    assert report["skipped"] == ["classifier.weight"]
    assert torch.equal(model.layer3[0].conv1.weight, trained.layer3[0].conv1.weight)
    assert "classifier.weight" in capsys.readouterr().out


def test_torchreid_feature_extractor_reads_our_checkpoint(tmp_path):
    model = create_model("resnet50_scal", 11, pretrained=False).eval()
    path = save_checkpoint({"state_dict": model.state_dict(), "epoch": 1, "rank1": np.float64(0.1)},
                           str(tmp_path / "model" / "model.pth.tar-1"))
    extractor = _torchreid.utils.FeatureExtractor(
        model_name="resnet50_scal", model_path=path, image_size=(HEIGHT, WIDTH), device="cpu", verbose=False
    )
    images = torch.randn(3, 3, HEIGHT, WIDTH)
    with torch.no_grad():
        expected = model(images)
    assert torch.allclose(extractor(images), expected, atol=1e-5)


def test_failed_write_is_a_checkpoint_error_with_exit_status_5(tmp_path, monkeypatch, capsys):
    def full_disk(obj, f):
        f.write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:664] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed")

    monkeypatch.setattr(torch, "save", full_disk)
    path = tmp_path / "model.pth.tar-1"
    with pytest.raises(CheckpointError, match=f"cannot write {path}: RuntimeError: .*file write failed"):
        save_checkpoint({"epoch": 1}, str(path))
    assert os.listdir(tmp_path) == []
    assert run_tool(lambda: save_checkpoint({"epoch": 1}, str(path))) == 5
    assert capsys.readouterr().err.startswith(f"checkpoint error: cannot write {path}")


class TinyEngine(SafeCheckpointing):
    """The checkpointing of an engine around one small layer (a real engine's checkpoint is 300 MB)."""

    def __init__(self, keep_last: int = 0) -> None:
        self.keep_last = keep_last
        self._models = {"model": torch.nn.Linear(2, 2)}
        self._optims, self._scheds = {"model": None}, {"model": None}

    def get_model_names(self):
        return list(self._models)


def test_resume_refuses_critics_built_with_another_activation(tmp_path):
    trained = TinyEngine()
    trained._models["critic"] = StageCritics("channel", [4], [0], activation="silu")
    trained._optims["critic"] = trained._scheds["critic"] = None
    trained.save_model(0, 0.0, str(tmp_path))
    other = TinyEngine()
    other._models["critic"] = StageCritics("channel", [4], [0], activation="relu")
    other._optims["critic"] = other._scheds["critic"] = None
    with pytest.raises(CheckpointError, match=r"cannot resume critic from .*model.pth.tar-1: it was trained as "
                                              r"\{'activation': 'silu'"):
        other.resume(str(tmp_path / "model" / "model.pth.tar-1"), str(tmp_path))
    other._models["critic"] = StageCritics("channel", [4], [0], activation="silu")
    assert other.resume(str(tmp_path / "model" / "model.pth.tar-1"), str(tmp_path)) == 1


def files(save_dir):
    return sorted(os.listdir(save_dir / "model"))


def test_pruning_never_deletes_the_new_runs_checkpoints(tmp_path):
    earlier = TinyEngine(keep_last=2)
    for epoch in range(3):
        earlier.save_model(epoch, 0.0, str(tmp_path))
    assert files(tmp_path) == ["latest", "model.pth.tar-2", "model.pth.tar-3"]
    fresh = TinyEngine(keep_last=2)
    fresh.save_model(0, 0.0, str(tmp_path))
    assert latest_checkpoint(str(tmp_path)) == str(tmp_path / "model" / "model.pth.tar-1")
    assert files(tmp_path) == ["latest", "model.pth.tar-1", "model.pth.tar-2", "model.pth.tar-3"]
    for epoch in (1, 2, 3):
        fresh.save_model(epoch, 0.0, str(tmp_path))
        assert os.path.isfile(latest_checkpoint(str(tmp_path)))
    assert files(tmp_path) == ["latest", "model.pth.tar-3", "model.pth.tar-4"]


def finished_run(save_dir, epochs=2):
    engine = TinyEngine()
    for epoch in range(epochs):
        engine.save_model(epoch, 0.0, str(save_dir))
    return engine


@pytest.mark.parametrize("pointer", [b"model.pth.tar-7\n", b"some text\n", b"\xff\xfe\x80 not utf-8", b"", None,
                                     b"../../etc/passwd"], ids=["deleted", "text", "binary", "empty", "missing",
                                                                 "outside"])
def test_resume_auto_without_a_usable_latest_takes_the_newest_checkpoint(tmp_path, pointer):
    trained = finished_run(tmp_path)
    latest = tmp_path / "model" / "latest"
    if pointer is None:
        latest.unlink()
    else:
        latest.write_bytes(pointer)
    resumed = TinyEngine()
    with pytest.warns(UserWarning, match=f"{latest} .*resuming from the newest checkpoint on disk, "
                                         f"{tmp_path / 'model' / 'model.pth.tar-2'}"):
        assert resumed.resume("auto", str(tmp_path)) == 2
    assert torch.equal(resumed._models["model"].weight, trained._models["model"].weight)


def test_resume_auto_skips_a_damaged_newest_checkpoint(tmp_path):
    finished_run(tmp_path)
    (tmp_path / "model" / "latest").write_text("gone\n")
    (tmp_path / "model" / "model.pth.tar-3").write_bytes(b"not a checkpoint")
    with pytest.warns(UserWarning) as warned:
        assert TinyEngine().resume("auto", str(tmp_path)) == 2
    assert any("skipping" in str(w.message) and "model.pth.tar-3" in str(w.message) for w in warned)


def test_resume_auto_falls_back_when_latest_names_a_damaged_checkpoint(tmp_path):
    finished_run(tmp_path)
    newest = tmp_path / "model" / "model.pth.tar-3"
    newest.write_bytes(b"not a checkpoint")
    (tmp_path / "model" / "latest").write_text("model.pth.tar-3\n")
    with pytest.warns(UserWarning) as warned:
        assert TinyEngine().resume("auto", str(tmp_path)) == 2
    messages = [str(w.message) for w in warned]
    assert any(f"skipping {newest}, which latest names" in m for m in messages)
    assert any(f"resuming from the newest checkpoint on disk, {tmp_path / 'model' / 'model.pth.tar-2'}" in m
               for m in messages)


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_checkpoints_get_the_permissions_of_the_umask(tmp_path, umask, mode):
    before = os.umask(umask)
    try:
        finished_run(tmp_path)
    finally:
        os.umask(before)
    written = sorted((tmp_path / "model").iterdir())
    assert [p.name for p in written] == ["latest", "model.pth.tar-1", "model.pth.tar-2"]
    assert all(p.stat().st_mode & 0o777 == mode for p in written)


def test_resume_auto_in_an_empty_directory_starts_at_epoch_1(tmp_path, capsys):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "latest").write_text("model.pth.tar-3\n")
    assert TinyEngine().resume("auto", str(tmp_path)) == 0
    assert "no checkpoint" in capsys.readouterr().out


def torchreid_style(path, **extra):
    """What torchreid's engines save: NumPy scalars left as they are (``rank1`` comes from its evaluation)."""
    torch.save({"state_dict": {"w": torch.ones(2)}, "epoch": 3, "rank1": np.float64(0.625), **extra}, path)
    return str(path)


def test_numpy_scalars_of_torchreids_checkpoints_load(tmp_path):
    path = torchreid_style(tmp_path / "model.pth.tar-3", mAP=np.float32(0.5), count=np.int64(7), ok=np.bool_(True))
    state = load_checkpoint(path)
    assert state["rank1"] == 0.625 and state["mAP"] == 0.5 and state["count"] == 7 and state["ok"]
    assert torch.equal(state["state_dict"]["w"], torch.ones(2))


def rename_globals(path, old: bytes, new: bytes) -> None:
    """Rewrite the pickle inside a torch zip checkpoint, as if written where the module had another name."""
    with zipfile.ZipFile(path) as archive:
        entries = [(info.filename, archive.read(info)) for info in archive.infolist()]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for name, data in entries:
            archive.writestr(name, data.replace(old, new) if name.endswith("data.pkl") else data)


def test_checkpoints_written_by_numpy_1_load(tmp_path):
    path = torchreid_style(tmp_path / "old.pth")
    rename_globals(path, b"numpy._core.multiarray\nscalar", b"numpy.core.multiarray\nscalar")
    assert load_checkpoint(path)["rank1"] == 0.625


def test_numpy_arrays_and_objects_stay_refused_with_the_reason(tmp_path):
    array = torchreid_style(tmp_path / "array.pth", extra=np.arange(3))
    reason = r"Unsupported global: GLOBAL numpy\._core\.multiarray\._reconstruct"
    with pytest.raises(CheckpointError, match=reason) as refused:
        load_checkpoint(array)
    assert "\x1b" not in str(refused.value) and "\n" not in str(refused.value)
    evil = tmp_path / "evil.pth"
    torch.save({"rank1": np.float64(0.5), "payload": Payload()}, evil)
    with pytest.raises(CheckpointError) as refused:
        load_checkpoint(str(evil))
    message = str(refused.value)
    assert "weights_only=True" in message and re.search(r"unsupported GLOBAL (os|posix)\.system", message, re.I)
    assert "\x1b" not in message and "\n" not in message and "add_safe_globals" not in message


def _text(value: str) -> bytes:
    data = value.encode()
    return b"X" + len(data).to_bytes(4, "little") + data


def numpy_scalar_checkpoint(path, spec: str, data=None) -> str:
    """A torch checkpoint ``{'rank1': scalar(dtype(spec)[, data])}`` whose pickle is written by hand, the way a
    crafted file can be: without the dtype's state and, when ``data`` is None, without the scalar's bytes."""
    value = b"cnumpy._core.multiarray\nscalar\ncnumpy\ndtype\n" + _text(spec) + b"\x89\x88\x87R"
    if data is None:
        value += b"\x85R"
    else:
        value += b"c_codecs\nencode\n" + _text(data.decode("latin1")) + _text("latin1") + b"\x86R\x86R"
    torchreid_style(path)
    with zipfile.ZipFile(path) as archive:
        entries = [(info.filename, archive.read(info)) for info in archive.infolist()]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for name, content in entries:
            archive.writestr(name, b"\x80\x02}" + _text("rank1") + value + b"s." if name.endswith("data.pkl")
                             else content)
    return str(path)


def test_a_crafted_numpy_scalar_cannot_allocate_memory(tmp_path):
    """A 1 KB file whose scalar has a 256 MB void dtype: NumPy would allocate and zero all of it."""
    path = numpy_scalar_checkpoint(tmp_path / "bomb.pth", f"V{2**28}")
    assert os.path.getsize(path) < 1100
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(CheckpointError, match=f"refusing NumPy dtype 'V{2**28}': a checkpoint may hold NumPy "
                                                  r"numbers \(booleans, integers, floats, complex\) only"):
            load_checkpoint(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**24 and time.perf_counter() - started < 5


@pytest.mark.parametrize("spec, data", [("U100", None), ("S8", b"12345678"), ("O", None), ("(4,)f8", None),
                                        ("f8,i8", None), ("f8", None), ("f8", b"\x00" * 4), ("xyz", None)])
def test_only_numpy_numbers_from_their_own_bytes_are_allowed(tmp_path, spec, data):
    with pytest.raises(CheckpointError, match="refusing (NumPy dtype|a NumPy float64 scalar)"):
        load_checkpoint(numpy_scalar_checkpoint(tmp_path / "x.pth", spec, data))


@pytest.mark.parametrize("spec, value", [("f8", np.float64(0.625)), ("<f4", np.float32(0.5)), ("i8", np.int64(-7)),
                                         ("u1", np.uint8(200)), ("b1", np.bool_(True)), ("c8", np.complex64(1j))])
def test_hand_written_numpy_numbers_load(tmp_path, spec, value):
    loaded = load_checkpoint(numpy_scalar_checkpoint(tmp_path / "x.pth", spec, value.tobytes()))["rank1"]
    assert loaded == value and loaded.dtype == value.dtype


def test_the_numpy_allowance_is_scoped_to_our_loads(tmp_path):
    path = torchreid_style(tmp_path / "model.pth.tar-3")
    load_checkpoint(path)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)


def test_empty_checkpoint_file_is_named(tmp_path):
    path = tmp_path / "model.pth.tar-1"
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match=f"{path} is empty"):
        load_checkpoint(str(path))


def test_checkpoint_path_that_is_a_directory_says_so(tmp_path):
    with pytest.raises(CheckpointError, match=f"{tmp_path} is a directory") as refused:
        load_checkpoint(str(tmp_path))
    assert not isinstance(refused.value, FileNotFoundError)
