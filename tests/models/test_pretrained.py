"""ImageNet weights: from the hub cache or a local file; a clear, fast error when neither is there."""
from __future__ import annotations

import os
import time

import pytest
import torch
import torchreid
import torchvision

from torchreid_scal.models import create_model, load_imagenet_weights
from torchreid_scal.models.pretrained import hub_cache_path


@pytest.fixture
def imagenet_file(tmp_path):
    torch.manual_seed(1)
    state = torchvision.models.resnet50().state_dict()
    path = tmp_path / "resnet50.pth"
    torch.save(state, path)
    return str(path), state


def test_local_file_loads_backbone_and_reports_skipped_keys(imagenet_file, capsys):
    path, state = imagenet_file
    model = create_model("resnet50_scal", 5, pretrained=False, pretrained_path=path)
    report = load_imagenet_weights(model, path)
    assert torch.equal(model.conv1.weight, state["conv1.weight"])
    assert torch.equal(model.layer4[2].bn3.running_var, state["layer4.2.bn3.running_var"])
    assert report["skipped"] == ["fc.bias", "fc.weight"]
    assert any(k.startswith("agents.") for k in report["missing"])
    assert "skipped" in capsys.readouterr().out


def test_factory_pretrained_path(imagenet_file):
    path, state = imagenet_file
    model = create_model("resnet50_bnneck", 5, pretrained=True, pretrained_path=path)
    assert torch.equal(model.layer1[0].conv1.weight, state["layer1.0.conv1.weight"])


def test_hub_cache_is_used_without_network(imagenet_file, monkeypatch, tmp_path):
    path, state = imagenet_file
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cached = hub_cache_path()
    os.makedirs(os.path.dirname(cached))
    os.replace(path, cached)
    model = torchreid.models.build_model("resnet50_scal_spatial", 5, pretrained=True)
    assert torch.equal(model.conv1.weight, state["conv1.weight"])


def test_no_cache_and_no_network_fails_fast_with_instructions(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    model = create_model("resnet50_scal", 5, pretrained=False)
    start = time.monotonic()
    with pytest.raises(RuntimeError) as err:
        load_imagenet_weights(model, url="http://127.0.0.1:9/resnet50-19c8e357.pth")
    assert time.monotonic() - start < 15
    message = str(err.value)
    assert os.path.join(str(tmp_path / "torch"), "hub", "checkpoints", "resnet50-19c8e357.pth") in message
    assert "model.pretrained_path" in message


def test_missing_local_file_names_the_key(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.pretrained_path"):
        create_model("resnet50_scal", 5, pretrained=True, pretrained_path=str(tmp_path / "nope.pth"))
