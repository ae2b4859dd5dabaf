"""ImageNet weights: the file torchreid's own loader uses, or a local file; a clear, fast error without either."""
from __future__ import annotations

import ast
import dataclasses
import os
import pathlib
import time

import pytest
import torch
import torchreid
import torchvision

from torchreid_scal.config import ConfigError, load_config
from torchreid_scal.models import BACKBONES, ImageNetWeights, create_model, load_imagenet_weights
from torchreid_scal.models.pretrained import PretrainedWeightsError
from torchreid_scal.runner import build_model

MODELS_DIR = pathlib.Path(__file__).resolve().parents[2] / "torchreid_scal" / "models"
DEMO = str(pathlib.Path(__file__).resolve().parents[2] / "configs" / "scal_demo.yaml")
UNREACHABLE = "http://127.0.0.1:9/"  # the discard port: the connection is refused at once


@pytest.fixture
def imagenet_file(tmp_path):
    torch.manual_seed(1)
    state = torchvision.models.resnet50().state_dict()
    path = tmp_path / "resnet50.pth"
    torch.save(state, path)
    return str(path), state


@pytest.fixture
def torch_home(monkeypatch, tmp_path):
    """An empty torch home: no cached weights, as on a fresh machine."""
    home = tmp_path / "torch"
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home


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


def test_an_imagenet_classifier_never_reaches_the_head(tmp_path):
    """OSNet's ImageNet file has a ``classifier``; with 1000 identities its shape would fit SCAL's classifier."""
    imagenet = torchreid.models.build_model("osnet_x0_25", 1000, pretrained=False)
    path = tmp_path / "osnet.pth"
    torch.save(imagenet.state_dict(), path)
    model = create_model("osnet_x0_25_scal", 1000, pretrained=False, height=64, width=32)
    head = model.classifier.weight.clone()
    report = load_imagenet_weights(model, str(path))
    assert torch.equal(model.classifier.weight, head) and "classifier.weight" in report["skipped"]
    assert torch.equal(model.conv2[0].conv1.conv.weight, imagenet.conv2[0].conv1.conv.weight)
    assert not any(k.startswith(("fc.", "agents.", "bottleneck.")) for k in report["loaded"])


# One backbone per torchreid loader: resnet.py, resnet_ibn_b.py, senet.py (torch's hub cache), osnet.py and
# osnet_ain.py ($TORCH_HOME/checkpoints).
LOADERS = {"resnet18": "conv1.weight", "resnet50_ibn_b": "conv1.weight", "se_resnet50": "layer0.conv1.weight",
           "osnet_x0_25": "conv1.conv.weight", "osnet_ain_x1_0": "conv1.conv.weight"}


@pytest.mark.parametrize("backbone", sorted(LOADERS))
def test_the_file_torchreids_loader_reads_is_the_one_used(backbone, torch_home):
    """A file put where the error message says is read, without network, by torchreid's own loader (its factory
    with pretrained=True) and by the SCAL model's; the two get the same tensor."""
    key = LOADERS[backbone]
    reference = torchreid.models.build_model(backbone, 1, pretrained=False).state_dict()[key]
    weights = torch.randn_like(reference)
    path = BACKBONES[backbone].weights.path()
    assert path.startswith(str(torch_home))
    os.makedirs(os.path.dirname(path))
    torch.save({key: weights}, path)
    theirs = torchreid.models.build_model(backbone, 1, pretrained=True).state_dict()[key]
    ours = create_model(f"{backbone}_scal", 3, pretrained=True, height=64, width=32).state_dict()[key]
    assert torch.equal(theirs, weights) and torch.equal(ours, weights)


@pytest.mark.parametrize("cache", ["hub", "checkpoints"])
def test_no_file_and_no_network_stops_in_seconds_saying_which_file_to_put_where(cache, torch_home):
    weights = ImageNetWeights(UNREACHABLE + "uc?id=abc", "osnet_x9_imagenet.pth", cache=cache)
    start = time.monotonic()
    with pytest.raises(PretrainedWeightsError) as err:
        weights.fetch("osnet_x9")
    assert time.monotonic() - start < 15
    message = str(err.value)
    assert "\n" not in message
    assert f"put osnet_x9_imagenet.pth (torchreid's ImageNet osnet_x9 file) at {weights.path()}" in message
    assert weights.path().startswith(str(torch_home)) and "model.pretrained_path" in message
    assert not os.path.exists(weights.path()) and os.listdir(os.path.dirname(weights.path())) == []


def test_missing_weights_are_a_config_error_when_the_model_is_built(torch_home, monkeypatch, tmp_path):
    spec = BACKBONES["osnet_x0_25"]
    unreachable = ImageNetWeights(UNREACHABLE + "osnet", spec.weights.filename, cache=spec.weights.cache)
    monkeypatch.setitem(BACKBONES, "osnet_x0_25", dataclasses.replace(spec, weights=unreachable))
    cfg = load_config(DEMO, ["model.name", "osnet_x0_25_scal", "model.pretrained", "True"])
    message = f"osnet_x0_25_scal: no ImageNet weights for osnet_x0_25: {spec.weights.path()} does not exist"
    with pytest.raises(ConfigError, match=message):
        build_model(cfg, 5)
    cfg = load_config(DEMO, ["model.name", "osnet_x0_25_scal", "model.pretrained", "True",
                             "model.pretrained_path", str(tmp_path / "nope.pth")])
    with pytest.raises(ConfigError, match="model.pretrained_path: no ImageNet weights file at"):
        build_model(cfg, 5)


def test_hub_cache_is_used_without_network(imagenet_file, torch_home):
    path, state = imagenet_file
    cached = BACKBONES["resnet50"].weights.path()
    os.makedirs(os.path.dirname(cached))
    os.replace(path, cached)
    model = torchreid.models.build_model("resnet50_scal_spatial", 5, pretrained=True)
    assert torch.equal(model.conv1.weight, state["conv1.weight"])


def test_a_file_of_another_network_is_refused(imagenet_file):
    path, _ = imagenet_file
    with pytest.raises(PretrainedWeightsError, match="no tensor in .* fits the backbone's modules"):
        create_model("osnet_x0_25_scal", 5, pretrained=True, pretrained_path=path, height=64, width=32)


def test_missing_local_file_names_the_key(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.pretrained_path"):
        create_model("resnet50_scal", 5, pretrained=True, pretrained_path=str(tmp_path / "nope.pth"))


def test_models_import_nothing_from_the_package_above_them():
    """Issue 23, item 8: models/ (pretrained.py included) needs only torchreid's adapter, not checkpoint.py or
    anything else that imports the models back."""
    for source in MODELS_DIR.glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level >= 2:
                assert node.module is None and [a.name for a in node.names] == ["_torchreid"], source.name
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                assert not (node.module or "").startswith("torchreid_scal"), source.name
