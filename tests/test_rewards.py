"""Rewards from hand-built logits."""
from __future__ import annotations


import torch

from torchreid_scal.rewards import compute_rewards, true_class_probability


def test_rewards_per_image():
    labels = torch.tensor([0, 1, 2, 0])
    logits = torch.tensor([
        [3.0, 0.0, 0.0],  # right, and more confident than without attention -> R_c=1, R_a=1
        [2.0, 1.0, 0.0],  # wrong, but the true class gained probability   -> R_c=0, R_a=1
        [0.0, 0.0, 1.0],  # right, equal probabilities (a tie)               -> R_c=1, R_a=0
        [0.0, 2.0, 0.0],  # wrong and worse                                  -> R_c=0, R_a=0
    ])
    plain = torch.tensor([
        [1.0, 0.0, 0.0],
        [3.0, 0.0, 0.0],
        [0.0, 0.0, 1.0],
        [0.0, 1.0, 0.0],
    ])
    r = compute_rewards(logits, plain, labels)
    assert r.classification.tolist() == [1.0, 0.0, 1.0, 0.0]
    assert r.amelioration.tolist() == [1.0, 1.0, 0.0, 0.0]
    assert r.total.tolist() == [2.0, 1.0, 1.0, 0.0]


def test_probabilities_are_compared_in_float32():
    labels = torch.tensor([0])
    logits = torch.tensor([[2.0, 0.0]], dtype=torch.float16)
    plain = torch.tensor([[2.0, 0.001]], dtype=torch.float16)
    assert true_class_probability(logits, labels).dtype == torch.float32
    assert compute_rewards(logits, plain, labels).amelioration.item() == 1.0


def test_rewards_carry_no_gradient():
    logits = torch.randn(3, 4, requires_grad=True)
    r = compute_rewards(logits, torch.randn(3, 4), torch.tensor([0, 1, 2]))
    assert not r.total.requires_grad

