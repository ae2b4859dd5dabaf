"""Critics: one finite value per image; the frozen form passes gradients to maps only."""
from __future__ import annotations

import pytest
import torch

from conftest import HEIGHT, WIDTH
from torchreid_scal.models import (ChannelCritic, CompatibleCritics, CriticContext, SpatialCritic, StageCritics,
                                   create_model)


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
def test_compatible_critic_is_linear_in_the_map_around_the_reference(kind, shape):
    """V(X, A) = b(X) + <A - A_ref, u(X, y, p)>, with u the class embedding's row for y, minus the
    probability-weighted rows, plus the shared part, applied to X and averaged over the axes the map lacks."""
    critics = CompatibleCritics(kind, (8, 16), [1], num_classes=4)
    stage = critics.critics["1"]
    torch.nn.init.normal_(stage.embedding)
    torch.nn.init.normal_(stage.shared)
    x, a, ref = torch.randn(3, 16, 4, 2), torch.rand(*shape), torch.rand(*shape)
    pids, probs = torch.tensor([0, 3, 1]), torch.rand(3, 4).softmax(dim=1)
    context = CriticContext(pids, probs, [None, ref])
    e = stage.embedding[pids] - probs @ stage.embedding + stage.shared
    u = (x * e[:, :, None, None]).mean(dim=(2, 3) if kind == "channel" else (1,), keepdim=True)
    expected = stage.value(x) + ((a - ref) * u).flatten(1).sum(dim=1)
    assert torch.allclose(critics.score([None, x], [None, a], context)[0], expected, atol=1e-5)
    offsets = [None, torch.randn(*shape)]
    scored = critics([None, x], [None, ref], context=context, offsets=offsets)
    assert torch.allclose(scored.values[0], stage.value(x))
    assert torch.allclose(scored.advantage, (offsets[1] * u).flatten(1).sum(dim=1), atol=1e-5)


def test_compatible_critics_value_of_agent_maps_reaches_the_maps_only():
    critics = CompatibleCritics("channel", (8, 16), [0, 1], num_classes=3)
    torch.nn.init.normal_(critics.critics["1"].embedding)
    features = [torch.randn(2, 8, 4, 2), torch.randn(2, 16, 4, 2)]
    maps = [torch.rand(2, 8, 1, 1), torch.rand(2, 16, 1, 1)]
    agent_maps = [m.clone().requires_grad_(True) for m in maps]
    context = CriticContext(torch.tensor([0, 2]), torch.full((2, 3), 1 / 3), maps)
    fixed = critics(features, maps, agent_maps, context=context).agent_values
    fixed.sum().backward()
    assert all(p.grad is None for p in critics.parameters())
    assert agent_maps[1].grad.abs().sum() > 0


def test_compatible_critics_record_their_form():
    assert CompatibleCritics("channel", (8,), [0], num_classes=2).architecture()["form"] == "compatible"
    assert "form" not in StageCritics("channel", (8,), [0]).architecture()  # old checkpoints: paper critics


@pytest.mark.parametrize("activation", ["relu", "leaky_relu", "silu"])
def test_activation_is_configurable_and_unknown_ones_are_named(activation):
    critics = StageCritics("channel", (8, 16), [0, 1], activation=activation)
    assert type(critics.critics["1"].act).__name__.lower().replace("_", "") == activation.replace("_", "")
    with pytest.raises(ValueError, match="critic_activation"):
        StageCritics("channel", (8, 16), [0], activation="tanh")
