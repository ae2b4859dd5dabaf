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
    values, fixed, ones = critics(out.features, out.maps)
    assert fixed is None and ones is None
    assert values.shape == (5, images.size(0))
    assert torch.isfinite(values).all()


@pytest.mark.parametrize("kind, shape", [("channel", (3, 16, 1, 1)), ("spatial", (3, 1, 4, 2))])
def test_fixed_weight_values_route_gradients_to_agent_maps_only(kind, shape):
    critics = StageCritics(kind, (8, 16), [1])
    x = torch.randn(3, 16, 4, 2)
    a = torch.rand(*shape)
    agent_map = a.clone().requires_grad_(True)
    values, fixed, _ = critics([None, x], [None, a], [None, agent_map])
    assert torch.allclose(fixed, values) and fixed.shape == (1, 3)
    fixed.sum().backward()
    assert agent_map.grad is not None and agent_map.grad.abs().sum() > 0
    assert all(p.grad is None for p in critics.parameters())
    values.sum().backward()
    assert all(p.grad is not None for p in critics.parameters())


@pytest.mark.parametrize("stages", [[], [5], [-1]])
def test_invalid_stages_are_named(stages):
    with pytest.raises(ValueError, match="critic_stages"):
        StageCritics("channel", (8, 16, 32, 64, 128), stages)


@pytest.mark.parametrize("kind, shape", [("channel", (3, 16, 1, 1)), ("spatial", (3, 1, 4, 2))])
def test_all_ones_values_score_the_same_features_without_attention(kind, shape):
    critics = StageCritics(kind, (8, 16), [1])
    x, a = torch.randn(3, 16, 4, 2), torch.rand(*shape)
    ones = critics([None, x], [None, a], ones=True).ones_values
    assert torch.allclose(ones, critics([None, x], [None, torch.ones(*shape)]).values)


@pytest.mark.parametrize("activation", ["relu", "leaky_relu", "silu"])
def test_activation_is_configurable_and_unknown_ones_are_named(activation):
    critics = StageCritics("channel", (8, 16), [0, 1], activation=activation)
    assert type(critics.critics["1"].act).__name__.lower().replace("_", "") == activation.replace("_", "")
    with pytest.raises(ValueError, match="critic_activation"):
        StageCritics("channel", (8, 16), [0], activation="tanh")
