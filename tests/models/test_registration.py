"""Every public name builds through torchreid's factory; registering again changes nothing."""
from __future__ import annotations

import importlib

import pytest
import torch
import torchreid

import torchreid_scal
from torchreid_scal import _torchreid
from torchreid_scal.models import DEFAULT_CFGS, MODEL_FACTORIES, SCALResNet

NAMES = ["resnet50_scal", "resnet50_scal_channel", "resnet50_scal_spatial", "resnet50_bnneck"]


def test_names_are_listed_by_torchreid(capsys):
    torchreid.models.show_avai_models()
    listed = capsys.readouterr().out
    for name in NAMES:
        assert f"'{name}'" in listed


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("loss", ["softmax", "triplet"])
def test_build_model_through_torchreid(name, loss):
    model = torchreid.models.build_model(name, num_classes=7, loss=loss, pretrained=False, use_gpu=False)
    assert isinstance(model, SCALResNet)
    assert model.loss == loss
    assert model.attention == DEFAULT_CFGS[name]["attention"]
    assert len(model.agents) == (0 if name == "resnet50_bnneck" else 5)
    model.train()
    out = model(torch.randn(2, 3, 256, 128))
    logits = out if loss == "softmax" else out[0]
    assert logits.shape == (2, 7)


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


@pytest.mark.parametrize("kwargs, key", [({"loss": "arcface"}, "loss"), ({"feature": "fc"}, "feature"),
                                         ({"last_stride": 3}, "last_stride"), ({"reduction": 0}, "reduction")])
def test_bad_values_name_the_argument(kwargs, key):
    with pytest.raises(ValueError, match=key):
        MODEL_FACTORIES["resnet50_scal"](5, pretrained=False, **kwargs)
