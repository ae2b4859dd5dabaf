"""Checkpoints: plain types, atomic writes, safe loading, and torchreid's FeatureExtractor reading ours."""
from __future__ import annotations

import collections
import os
import pickle
import re
import zipfile

import numpy as np
import pytest
import torch

from conftest import HEIGHT, WIDTH
from torchreid_scal import _torchreid
from torchreid_scal.checkpoint import CheckpointError, load_checkpoint, load_weights, save_checkpoint, to_plain
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
