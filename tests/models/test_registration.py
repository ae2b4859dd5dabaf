"""Every public name builds through torchreid's factory; registering again changes nothing."""
from __future__ import annotations

import importlib

import pytest
import torch
import torchreid

import torchreid_scal
from torchreid_scal import _torchreid
from torchreid_scal.models import BACKBONES, DEFAULT_CFGS, MODEL_FACTORIES, VARIANTS, SCALNetwork, create_model

NAMES = list(MODEL_FACTORIES)


def test_names_are_listed_by_torchreid(capsys):
    torchreid.models.show_avai_models()
    listed = capsys.readouterr().out
    for name in NAMES:
        assert f"'{name}'" in listed


def test_four_names_per_backbone():
    assert len(NAMES) == 4 * len(BACKBONES)
    for backbone in BACKBONES:
        assert [DEFAULT_CFGS[f"{backbone}{suffix}"]["attention"] for suffix in VARIANTS] == [
            "channel", "channel", "spatial", None]
        assert DEFAULT_CFGS[f"{backbone}_scal"] == DEFAULT_CFGS[f"{backbone}_scal_channel"]


@pytest.mark.parametrize("name", NAMES)
def test_build_model_through_torchreid(name):
    """torchreid's factory builds every name with its defaults (the spatial agents sized for 256x128)."""
    model = torchreid.models.build_model(name, num_classes=7, loss="triplet", pretrained=False, use_gpu=False)
    assert isinstance(model, SCALNetwork)
    assert model.loss == "triplet" and model.backbone.name == DEFAULT_CFGS[name]["backbone"]
    assert model.attention == DEFAULT_CFGS[name]["attention"]
    assert len(model.agents) == (0 if name.endswith("_bnneck") else 5)
    assert model.classifier.out_features == 7 and model.image_size == (256, 128)
    if model.attention == "spatial":
        model.eval()
        with torch.no_grad():
            assert model(torch.randn(1, 3, 256, 128)).shape == (1, model.feature_dim)


def test_registration_is_idempotent():
    table = _torchreid.model_factory()
    size = len(table)
    torchreid_scal.register()
    torchreid_scal.register()
    importlib.reload(torchreid_scal)
    importlib.reload(importlib.import_module("torchreid_scal.models"))
    assert len(table) == size
    for name in NAMES:
        assert table[name].__name__ == name
    torchreid.models.build_model("resnet50_scal", 3, pretrained=False)


def test_factory_takes_configured_keywords():
    model = MODEL_FACTORIES["resnet50_scal_spatial"](
        5, loss="triplet", pretrained=False, height=64, width=32, last_stride=2, reduction=8,
        agent_bias_init=3.0, feature="pool",
    )
    assert model.image_size == (64, 32)
    assert model.agents[0].size == (16, 8)
    assert model.agents[4].size == (2, 1)
    assert model.agents[0].fc1.out_features == 16 * 8 // 8
    assert torch.allclose(model.agents[2].fc2.bias, torch.full_like(model.agents[2].fc2.bias, 3.0))
    assert model.feature == "pool"


def test_factory_rejects_unknown_keyword():
    with pytest.raises(TypeError, match="colour"):
        MODEL_FACTORIES["resnet50_scal"](5, pretrained=False, colour="red")
    with pytest.raises(TypeError, match="backbone"):  # fixed by the name
        MODEL_FACTORIES["resnet50_scal"](5, pretrained=False, backbone="osnet_x1_0")


def test_unsupported_backbone_lists_the_supported_ones():
    with pytest.raises(KeyError, match="supported backbones: .*'osnet_x1_0'.*'se_resnet50'"):
        create_model("hacnn_scal", 5, pretrained=False)


@pytest.mark.parametrize("kwargs, key", [({"loss": "arcface"}, "loss"), ({"feature": "fc"}, "feature"),
                                         ({"last_stride": 3}, "last_stride"), ({"reduction": 0}, "reduction")])
def test_bad_values_name_the_argument(kwargs, key):
    with pytest.raises(ValueError, match=key):
        MODEL_FACTORIES["resnet50_scal"](5, pretrained=False, **kwargs)
