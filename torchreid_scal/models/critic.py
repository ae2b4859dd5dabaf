"""Critics: ``V = C(X_k, A_k)``, the predicted reward of one stage's attention, one scalar per image.

The paper does not give the critic's layers; these are this project's (see docs of the method).
No BatchNorm: each critic scores two sets of maps per step (for J_mse and J_cri), and running
statistics would be disturbed by whichever pass ran last. Each critic is an ``encode`` of the features
(shared by both passes: the features are the same) and a ``score`` of the encoding with a map.
"""
from __future__ import annotations

from typing import Callable, Dict, NamedTuple, Optional, Sequence

import torch
from torch import nn
from torch.func import functional_call


ACTIVATIONS: Dict[str, Callable[[], nn.Module]] = {"relu": nn.ReLU, "leaky_relu": lambda: nn.LeakyReLU(0.1),
                                                   "silu": nn.SiLU}
"""The critics' hidden non-linearity (``scal.critic_activation``): ReLU units can die (never fire again);
the others keep a gradient on both sides of zero."""


class ChannelCritic(nn.Module):
    """``concat(LN(GAP(X)), A) -> FC(2C -> hidden) -> act -> FC -> 1``."""

    def __init__(self, channels: int, hidden: int = 256, activation: str = "relu") -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels)
        self.fc1 = nn.Linear(2 * channels, hidden)
        self.act = ACTIVATIONS[activation]()
        self.fc2 = nn.Linear(hidden, 1)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.mean(dim=(2, 3)))

    def hidden(self, e: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """Pre-activations of the hidden units, (B, hidden), for an encoding ``e`` and a map ``a``."""
        return self.fc1(torch.cat([e, a.flatten(1).to(e.dtype)], dim=1))

    def forward(self, x: torch.Tensor, a: torch.Tensor, encoded: bool = False) -> torch.Tensor:
        """V for features ``x`` (or, with ``encoded=True``, their :meth:`encode`) and map ``a``."""
        e = x if encoded else self.encode(x)
        return self.fc2(self.act(self.hidden(e, a))).squeeze(1)


class SpatialCritic(nn.Module):
    """``concat(GN(conv1x1(X) -> mid), A) -> conv3x3 s2 -> act -> GAP -> FC -> 1``."""

    def __init__(self, channels: int, mid: int = 32, activation: str = "relu") -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, mid, kernel_size=1)
        self.norm = nn.GroupNorm(1, mid)
        self.conv = nn.Conv2d(mid + 1, mid, kernel_size=3, stride=2, padding=1)
        self.act = ACTIVATIONS[activation]()
        self.fc = nn.Linear(mid, 1)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.reduce(x))

    def hidden(self, e: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """Pre-activations of the hidden units, (B, mid, h, w), for an encoding ``e`` and a map ``a``."""
        return self.conv(torch.cat([e, a.to(e.dtype)], dim=1))

    def forward(self, x: torch.Tensor, a: torch.Tensor, encoded: bool = False) -> torch.Tensor:
        """V for features ``x`` (or, with ``encoded=True``, their :meth:`encode`) and map ``a``."""
        e = x if encoded else self.encode(x)
        return self.fc(self.act(self.hidden(e, a)).mean(dim=(2, 3))).squeeze(1)


CRITICS = {"channel": ChannelCritic, "spatial": SpatialCritic}


class CriticValues(NamedTuple):
    """What :class:`StageCritics` scores, each (K, B): one row per critic stage, one column per image."""

    values: torch.Tensor
    agent_values: Optional[torch.Tensor]
    ones_values: Optional[torch.Tensor]


class StageCritics(nn.Module):
    """One critic per chosen attention stage; ``forward`` returns the values as a (K, B) tensor."""

    def __init__(self, attention: str, stage_channels: Sequence[int], stages: Sequence[int],
                 activation: str = "relu") -> None:
        super().__init__()
        if attention not in CRITICS:
            raise ValueError(f"no critic for attention kind {attention!r}; expected one of {sorted(CRITICS)}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"scal.critic_activation {activation!r} is not one of {sorted(ACTIVATIONS)}")
        bad = [k for k in stages if not 0 <= k < len(stage_channels)]
        if bad or not stages:
            raise ValueError(
                f"scal.critic_stages={list(stages)} must be a non-empty subset of {list(range(len(stage_channels)))}"
            )
        self.stages = sorted(set(int(k) for k in stages))
        self.activation = activation
        self.critics = nn.ModuleDict({str(k): CRITICS[attention](stage_channels[k], activation=activation)
                                       for k in self.stages})

    def architecture(self) -> Dict[str, object]:
        """What the weights do not tell, for checkpoints: the hidden non-linearity (and the stages)."""
        return {"activation": self.activation, "stages": list(self.stages)}

    def forward(self, features: Sequence[torch.Tensor], maps: Sequence[torch.Tensor],
                agent_maps: Optional[Sequence[torch.Tensor]] = None, ones: bool = False) -> CriticValues:
        """Values ``V_k`` of ``maps`` as a (K, B) tensor; when ``agent_maps`` are given, also their values under
        the critics' weights held fixed (gradients reach ``agent_maps`` only, never a critic); with ``ones``,
        also the values of the all-ones map (no attention) on the same features. Lists are indexed by stage;
        each stage's features are encoded once for all."""
        values, fixed_values, ones_values = [], [], []
        for k in self.stages:
            critic = self.critics[str(k)]
            encoding = critic.encode(features[k])
            values.append(critic(encoding, maps[k], encoded=True))
            if agent_maps is not None:
                fixed: Dict[str, torch.Tensor] = {n: p.detach() for n, p in critic.named_parameters()}
                fixed_values.append(functional_call(critic, fixed, (encoding.detach(), agent_maps[k]),
                                                    {"encoded": True}))
            if ones:
                ones_values.append(critic(encoding, torch.ones_like(maps[k]), encoded=True))
        return CriticValues(torch.stack(values), torch.stack(fixed_values) if fixed_values else None,
                            torch.stack(ones_values) if ones_values else None)
