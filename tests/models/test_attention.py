"""Attention agents: map shapes, range and the configurable starting point."""
from __future__ import annotations

import pytest
import torch

from torchreid_scal.models import ChannelAgent, SpatialAgent


def test_channel_agent_gives_one_weight_per_channel():
    a = ChannelAgent(64, reduction=16)(torch.randn(3, 64, 8, 4))
    assert a.shape == (3, 64, 1, 1)
    assert 0 < a.min() and a.max() < 1


def test_spatial_agent_gives_one_weight_per_position():
    agent = SpatialAgent(8, 4, reduction=4)
    a = agent(torch.randn(3, 64, 8, 4))
    assert a.shape == (3, 1, 8, 4)
    assert agent.fc1.out_features == 8


def test_spatial_agent_looks_at_the_channel_mean():
    agent = SpatialAgent(4, 2)
    x = torch.randn(2, 16, 4, 2)
    shuffled = x[:, torch.randperm(16)]
    assert torch.allclose(agent(x), agent(shuffled), atol=1e-6)


def test_bias_init_moves_the_starting_maps():
    x = torch.randn(2, 32, 4, 2)
    assert ChannelAgent(32, bias_init=0.0)(x).mean().item() == pytest.approx(0.5, abs=0.15)
    assert ChannelAgent(32, bias_init=6.0)(x).min().item() > 0.95


def test_spatial_agent_names_both_sizes_on_mismatch():
    with pytest.raises(ValueError, match=r"4x2.*8x4"):
        SpatialAgent(4, 2)(torch.randn(1, 8, 8, 4))
