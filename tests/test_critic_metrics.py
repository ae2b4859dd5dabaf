"""Correlation, summary and reliability table on hand-built examples."""
from __future__ import annotations

import math

import pytest
import torch

from torchreid_scal.critic_metrics import critic_summary, pearson, reliability_table


def test_pearson():
    x = torch.tensor([0.0, 1.0, 2.0, 3.0])
    assert pearson(x, 2 * x + 1).item() == pytest.approx(1.0, abs=1e-6)
    assert pearson(x, -x).item() == pytest.approx(-1.0, abs=1e-6)
    assert pearson(x, torch.ones(4)).item() == 0.0
    y = torch.tensor([1.0, 0.0, 1.0, 0.0])
    expected = float(torch.corrcoef(torch.stack([x, y]))[0, 1])
    assert math.isclose(pearson(x, y).item(), expected, rel_tol=1e-5)


def test_reliability_table_by_hand():
    value = torch.tensor([0.0, 0.1, 0.9, 1.0, 1.9, 2.0])
    reward = torch.tensor([0.0, 1.0, 1.0, 1.0, 2.0, 2.0])
    table = reliability_table(value, reward, bins=2)
    assert [row["count"] for row in table] == [3, 3]
    assert table[0]["low"] == 0.0 and table[0]["high"] == 1.0 and table[1]["high"] == 2.0
    assert table[0]["mean_reward"] == pytest.approx(2 / 3) and table[1]["mean_reward"] == pytest.approx(5 / 3)
    assert table[0]["mean_value"] == pytest.approx(1.0 / 3)


def test_reliability_table_keeps_empty_bins():
    table = reliability_table(torch.tensor([0.0, 0.0, 3.0]), torch.tensor([0.0, 1.0, 2.0]), bins=3)
    assert [row["count"] for row in table] == [2, 0, 1]
    assert math.isnan(table[1]["mean_reward"])


def test_critic_summary_by_hand():
    values = torch.tensor([[0.0, 1.0, 2.0, 1.0], [0.0, 1.0, 2.0, 3.0]])
    reward_c = torch.tensor([0.0, 1.0, 1.0, 0.0])
    reward_a = torch.tensor([0.0, 0.0, 1.0, 1.0])
    reward = reward_c + reward_a
    s = critic_summary(values, reward, reward_c, reward_a, stages=[3, 4])
    assert s["mean_reward"] == pytest.approx(1.0)
    assert s["classification_rate"] == 0.5 and s["attention_helped_rate"] == 0.5
    assert s["critic_mse"] == pytest.approx(((values - reward) ** 2).mean().item())
    assert s["critic_reward_corr_stage3"] == pytest.approx(1.0, abs=1e-6)
    assert s["critic_value_stage4"] == pytest.approx(1.5)
    assert s["critic_reward_corr"] == pytest.approx(pearson(values.mean(0), reward).item())
