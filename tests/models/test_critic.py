"""Critics: one finite value per image; the frozen form passes gradients to maps only."""
from __future__ import annotations

import pytest
import torch

from conftest import HEIGHT, WIDTH
from torchreid_scal.models import ChannelCritic, SpatialCritic, StageCritics, create_model


@pytest.mark.parametrize("variant, critic", [("resnet50_scal_channel", ChannelCritic),
                                             ("resnet50_scal_spatial", SpatialCritic)])
def test_one_finite_value_per_image_at_every_stage(variant, critic, images):
    model = create_model(variant, 5, pretrained=False, height=HEIGHT, width=WIDTH)
    out = model(images, return_stages=True)
    critics = StageCritics(model.attention, model.stage_channels, [0, 1, 2, 3, 4])
    assert all(isinstance(c, critic) for c in critics.critics.values())
    values = critics(out.features, out.maps)
    assert values.shape == (5, images.size(0))
    assert torch.isfinite(values).all()


def test_frozen_values_route_gradients_to_maps_only():
    critics = StageCritics("channel", (8, 16), [1])
    x = torch.randn(3, 16, 4, 2)
    a = torch.rand(3, 16, 1, 1, requires_grad=True)
    frozen = critics.frozen([None, x], [None, a])
    assert torch.allclose(frozen, critics([None, x], [None, a]))
    frozen.sum().backward()
    assert a.grad is not None and a.grad.abs().sum() > 0
    assert all(p.grad is None for p in critics.parameters())


@pytest.mark.parametrize("stages", [[], [5], [-1]])
def test_invalid_stages_are_named(stages):
    with pytest.raises(ValueError, match="critic_stages"):
        StageCritics("channel", (8, 16, 32, 64, 128), stages)
