"""Critics: ``V = C(X_k, A_k)``, the predicted reward of one stage's attention, one scalar per image.

The paper does not give the critic's layers; these are this project's (see docs of the method).
No BatchNorm: each critic scores two sets of maps per step (for J_mse and J_cri), and running
statistics would be disturbed by whichever pass ran last. Each critic is an ``encode`` of the features
(shared by both passes: the features are the same) and a ``score`` of the encoding with a map.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.func import functional_call


class ChannelCritic(nn.Module):
    """``concat(LN(GAP(X)), A) -> FC(2C -> hidden) -> ReLU -> FC -> 1``."""

    def __init__(self, channels: int, hidden: int = 256) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels)
        self.fc1 = nn.Linear(2 * channels, hidden)
        self.fc2 = nn.Linear(hidden, 1)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.mean(dim=(2, 3)))

    def forward(self, x: torch.Tensor, a: torch.Tensor, encoded: bool = False) -> torch.Tensor:
        """V for features ``x`` (or, with ``encoded=True``, their :meth:`encode`) and map ``a``."""
        e = x if encoded else self.encode(x)
        h = torch.cat([e, a.flatten(1).to(e.dtype)], dim=1)
        return self.fc2(torch.relu(self.fc1(h))).squeeze(1)


class SpatialCritic(nn.Module):
    """``concat(GN(conv1x1(X) -> mid), A) -> conv3x3 s2 -> ReLU -> GAP -> FC -> 1``."""

    def __init__(self, channels: int, mid: int = 32) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, mid, kernel_size=1)
        self.norm = nn.GroupNorm(1, mid)
        self.conv = nn.Conv2d(mid + 1, mid, kernel_size=3, stride=2, padding=1)
        self.fc = nn.Linear(mid, 1)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.reduce(x))

    def forward(self, x: torch.Tensor, a: torch.Tensor, encoded: bool = False) -> torch.Tensor:
        """V for features ``x`` (or, with ``encoded=True``, their :meth:`encode`) and map ``a``."""
        e = x if encoded else self.encode(x)
        h = torch.cat([e, a.to(e.dtype)], dim=1)
        return self.fc(torch.relu(self.conv(h)).mean(dim=(2, 3))).squeeze(1)


CRITICS = {"channel": ChannelCritic, "spatial": SpatialCritic}


class StageCritics(nn.Module):
    """One critic per chosen attention stage; ``forward`` returns the values as a (K, B) tensor."""

    def __init__(self, attention: str, stage_channels: Sequence[int], stages: Sequence[int]) -> None:
        super().__init__()
        if attention not in CRITICS:
            raise ValueError(f"no critic for attention kind {attention!r}; expected one of {sorted(CRITICS)}")
        bad = [k for k in stages if not 0 <= k < len(stage_channels)]
        if bad or not stages:
            raise ValueError(
                f"scal.critic_stages={list(stages)} must be a non-empty subset of {list(range(len(stage_channels)))}"
            )
        self.stages = sorted(set(int(k) for k in stages))
        self.critics = nn.ModuleDict({str(k): CRITICS[attention](stage_channels[k]) for k in self.stages})

    def forward(self, features: Sequence[torch.Tensor], maps: Sequence[torch.Tensor],
                agent_maps: Optional[Sequence[torch.Tensor]] = None) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Values ``V_k`` of ``maps`` as a (K, B) tensor and, when ``agent_maps`` are given, their values under
        the critics' weights held fixed (gradients reach ``agent_maps`` only, never a critic). Lists are
        indexed by stage; each stage's features are encoded once for both."""
        values, fixed_values = [], []
        for k in self.stages:
            critic = self.critics[str(k)]
            encoding = critic.encode(features[k])
            values.append(critic(encoding, maps[k], encoded=True))
            if agent_maps is not None:
                fixed: Dict[str, torch.Tensor] = {n: p.detach() for n, p in critic.named_parameters()}
                fixed_values.append(functional_call(critic, fixed, (encoding.detach(), agent_maps[k]),
                                                    {"encoded": True}))
        return torch.stack(values), (torch.stack(fixed_values) if agent_maps is not None else None)
