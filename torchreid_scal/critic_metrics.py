"""How well critic values predict rewards: correlation, error and a reliability table."""
from __future__ import annotations

from typing import Dict, List, Sequence

import torch


def pearson(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of two 1-D tensors, 0 where either is constant (no linear relation to measure)."""
    x, y = x.detach().float().flatten(), y.detach().float().flatten()
    dx, dy = x - x.mean(), y - y.mean()
    denom = (dx.square().sum() * dy.square().sum()).sqrt()
    return torch.where(denom > 0, (dx * dy).sum() / denom.clamp_min(1e-12), torch.zeros_like(denom))


def critic_summary(values: torch.Tensor, reward: torch.Tensor, reward_c: torch.Tensor, reward_a: torch.Tensor,
                   stages: Sequence[int]) -> Dict[str, float]:
    """Statistics of critic values ``(K, N)`` (one row per critic stage) against the rewards ``(N,)`` of the
    same N images: reward rates, the critics' MSE, and the correlation of the stage-mean value with R."""
    values, reward = values.detach().float().cpu(), reward.detach().float().cpu()
    value = values.mean(dim=0)
    summary = {
        "mean_reward": reward.mean(),
        "classification_rate": reward_c.float().mean(),
        "attention_helped_rate": reward_a.float().mean(),
        "critic_mse": (values - reward).square().mean(),
        "critic_value": value.mean(),
        "critic_reward_corr": pearson(value, reward),
    }
    for k, row in zip(stages, values):
        summary[f"critic_value_stage{k}"] = row.mean()
        summary[f"critic_reward_corr_stage{k}"] = pearson(row, reward)
    return {key: float(v) for key, v in summary.items()}


def reliability_table(value: torch.Tensor, reward: torch.Tensor, bins: int = 5) -> List[Dict[str, float]]:
    """Mean reward per bin of critic value: equal-width bins over the observed range of ``value``.

    A critic that predicts the reward well has mean rewards rising with the bins and close to their centres.
    """
    value, reward = value.detach().float().flatten().cpu(), reward.detach().float().flatten().cpu()
    low, high = float(value.min()), float(value.max())
    width = (high - low) / bins or 1.0
    index = ((value - low) / width).floor().clamp(0, bins - 1).long()
    table = []
    for b in range(bins):
        mask = index == b
        count = int(mask.sum())
        table.append({
            "low": low + b * width, "high": low + (b + 1) * width, "count": count,
            "mean_value": float(value[mask].mean()) if count else float("nan"),
            "mean_reward": float(reward[mask].mean()) if count else float("nan"),
        })
    return table
