"""Attention agents: ``X -> A`` with ``A`` in (0, 1), nothing else (paper, Sec. 3.2).

Both agents are two fully connected layers with a ReLU between them and a sigmoid at the end;
they differ in what they look at and what shape of map they return.
"""
from __future__ import annotations

import torch
from torch import nn


class _Agent(nn.Module):
    """Shared two-layer MLP ``sigmoid(W2 relu(W1 x))``; subclasses choose the input and output shape."""

    def __init__(self, in_dim: int, reduction: int, bias_init: float) -> None:
        super().__init__()
        hidden = max(in_dim // reduction, 1)
        self.fc1 = nn.Linear(in_dim, hidden)
        self.fc2 = nn.Linear(hidden, in_dim)
        nn.init.constant_(self.fc2.bias, bias_init)

    def _mlp(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.fc2(torch.relu(self.fc1(x))))


class ChannelAgent(_Agent):
    """``A_c = sigmoid(W2 relu(W1 GAP(X)))``: one weight per channel, shape (B, C, 1, 1)."""

    kind = "channel"

    def __init__(self, channels: int, reduction: int = 16, bias_init: float = 0.0) -> None:
        super().__init__(channels, reduction, bias_init)
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._mlp(x.mean(dim=(2, 3))).view(x.size(0), self.channels, 1, 1)


class SpatialAgent(_Agent):
    """``A_s = sigmoid(W2 relu(W1 mean_c(X)))``: one weight per position, shape (B, 1, H, W).

    The layers act on the flattened H×W map, so the agent is built for one feature-map size.
    """

    kind = "spatial"

    def __init__(self, height: int, width: int, reduction: int = 16, bias_init: float = 0.0) -> None:
        super().__init__(height * width, reduction, bias_init)
        self.size = (height, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != self.size:
            raise ValueError(
                f"spatial attention was built for {self.size[0]}x{self.size[1]} feature maps but got "
                f"{x.shape[-2]}x{x.shape[-1]}; build the model for the image size you feed it"
            )
        return self._mlp(x.mean(dim=1).flatten(1)).view(x.size(0), 1, *self.size)
