"""How well critic values predict rewards: correlation, error and a reliability table."""
from __future__ import annotations

import torch


def pearson(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of two 1-D tensors, 0 where either is constant (no linear relation to measure)."""
    x, y = x.detach().float().flatten(), y.detach().float().flatten()
    dx, dy = x - x.mean(), y - y.mean()
    denom = (dx.square().sum() * dy.square().sum()).sqrt()
    return torch.where(denom > 0, (dx * dy).sum() / denom.clamp_min(1e-12), torch.zeros_like(denom))
