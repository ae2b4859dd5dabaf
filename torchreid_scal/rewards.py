"""SCAL's rewards (paper, Sec. 3.1), per image and without gradient.

``R_c``: 1 when the attention model classifies the image correctly. ``R_a``: 1 when attention raised
the softmax probability of the true class over the same network without attention (a tie gives 0).
``R = R_c + R_a`` in {0, 1, 2}. Probabilities are compared in float32, even under mixed precision.
"""
from __future__ import annotations

from typing import NamedTuple

import torch


class Rewards(NamedTuple):
    classification: torch.Tensor
    amelioration: torch.Tensor
    total: torch.Tensor


def true_class_probability(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Softmax probability of each image's true class, computed in float32."""
    return logits.detach().float().softmax(dim=1).gather(1, labels.view(-1, 1)).squeeze(1)


def true_class_log_probability(logits: torch.Tensor, labels: torch.Tensor, detach: bool = True) -> torch.Tensor:
    """Log-softmax probability of each image's true class, computed in float32 (differentiable unless
    ``detach``)."""
    logits = logits.float()
    return (logits.detach() if detach else logits).log_softmax(dim=1).gather(1, labels.view(-1, 1)).squeeze(1)


@torch.no_grad()
def compute_rewards(logits: torch.Tensor, plain_logits: torch.Tensor, labels: torch.Tensor) -> Rewards:
    """Rewards of the attention model's ``logits`` against the no-attention ``plain_logits``, shape (B,)."""
    classification = (logits.argmax(dim=1) == labels).float()
    amelioration = (true_class_probability(logits, labels) > true_class_probability(plain_logits, labels)).float()
    return Rewards(classification, amelioration, classification + amelioration)
