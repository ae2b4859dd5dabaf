"""Checkpoints: plain types, atomic writes, safe loading, and torchreid's FeatureExtractor reading ours."""
from __future__ import annotations

import collections
import os
import pickle

import numpy as np
import pytest
import torch

from conftest import HEIGHT, WIDTH
from torchreid_scal import _torchreid
from torchreid_scal.checkpoint import CheckpointError, load_checkpoint, load_weights, save_checkpoint, to_plain
from torchreid_scal.cli import run_tool
from torchreid_scal.models import create_model


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
