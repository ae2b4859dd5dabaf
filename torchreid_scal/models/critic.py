"""Critics: ``V = C(X_k, A_k)``, the predicted reward of one stage's attention, one scalar per image.

The paper does not give the critic's layers; these are this project's (see docs of the method).
No BatchNorm: each critic scores two sets of maps per step (for J_mse and J_cri), and running
statistics would be disturbed by whichever pass ran last. Each critic is an ``encode`` of the features
(shared by both passes: the features are the same) and a ``score`` of the encoding with a map.
"""
from __future__ import annotations

from typing import Callable, Dict, List, NamedTuple, Optional, Sequence

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
    """What the critics score: ``values`` and ``agent_values`` (K, B), one row per critic stage, one column per
    image; the compatible critics' ``advantage`` (B,) of a behaviour pass's offsets."""

    values: torch.Tensor
    agent_values: Optional[torch.Tensor]
    advantage: Optional[torch.Tensor] = None


class CriticContext(NamedTuple):
    """What a class-conditioned critic needs besides ``(X_k, A_k)``: each image's true class, the network's
    class probabilities for it, and the maps the advantage is measured from (the agents' own, one per stage)."""

    pids: torch.Tensor
    probs: torch.Tensor
    reference: Sequence[torch.Tensor]


def _check_stages(stages: Sequence[int], stage_channels: Sequence[int]) -> List[int]:
    bad = [k for k in stages if not 0 <= k < len(stage_channels)]
    if bad or not stages:
        raise ValueError(
            f"scal.critic_stages={list(stages)} must be a non-empty subset of {list(range(len(stage_channels)))}"
        )
    return sorted(set(int(k) for k in stages))


def _check_kinds(attention: str, activation: str) -> None:
    if attention not in CRITICS:
        raise ValueError(f"no critic for attention kind {attention!r}; expected one of {sorted(CRITICS)}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"scal.critic_activation {activation!r} is not one of {sorted(ACTIVATIONS)}")


class StageCritics(nn.Module):
    """The paper's critics, one per chosen attention stage: ``V_k = C_k(X_k, A_k)``, values as a (K, B) tensor."""

    form = "paper"

    def __init__(self, attention: str, stage_channels: Sequence[int], stages: Sequence[int],
                 activation: str = "relu") -> None:
        super().__init__()
        _check_kinds(attention, activation)
        self.stages = _check_stages(stages, stage_channels)
        self.activation = activation
        self.critics = nn.ModuleDict({str(k): CRITICS[attention](stage_channels[k], activation=activation)
                                       for k in self.stages})

    def architecture(self) -> Dict[str, object]:
        """What the weights do not tell, for checkpoints: the hidden non-linearity and the stages (no ``form``
        key: checkpoints without one hold the paper's critics)."""
        return {"activation": self.activation, "stages": list(self.stages)}

    def score(self, features: Sequence[torch.Tensor], maps: Sequence[torch.Tensor],
              context: Optional[CriticContext] = None) -> torch.Tensor:
        """``V_k`` of ``maps`` on ``features`` (lists indexed by stage), (K, B); ``context`` is not used."""
        return torch.stack([self.critics[str(k)](features[k], maps[k]) for k in self.stages])

    def forward(self, features: Sequence[torch.Tensor], maps: Sequence[torch.Tensor],
                agent_maps: Optional[Sequence[torch.Tensor]] = None,
                context: Optional[CriticContext] = None) -> CriticValues:
        """Values ``V_k`` of ``maps`` as a (K, B) tensor; when ``agent_maps`` are given, also their values under
        the critics' weights held fixed (gradients reach ``agent_maps`` only, never a critic). Each stage's
        features are encoded once for both."""
        values, fixed_values = [], []
        for k in self.stages:
            critic = self.critics[str(k)]
            encoding = critic.encode(features[k])
            values.append(critic(encoding, maps[k], encoded=True))
            if agent_maps is not None:
                fixed: Dict[str, torch.Tensor] = {n: p.detach() for n, p in critic.named_parameters()}
                fixed_values.append(functional_call(critic, fixed, (encoding.detach(), agent_maps[k]),
                                                    {"encoded": True}))
        return CriticValues(torch.stack(values), torch.stack(fixed_values) if fixed_values else None)


class CompatibleCritic(nn.Module):
    """One stage's critic in the compatible form of deterministic policy gradients (Silver et al., 2014):
    ``V(X, A) = b(X) + <A - A_ref, u(X, y, p)>``, linear in the map around the agent's own ``A_ref``.

    ``u`` is the learned action-gradient, conditioned on the true class ``y`` through a class embedding
    ``E`` (one row of the stage's width per class): ``u = reduce(X * (E[y] - sum_j p_j E[j] + c))``, the
    mean over the axes the map does not have (space for channel maps, channels for spatial ones). At the
    last stage with channel attention this form holds the exact ``d log p_y / dA``, ``GAP(X) * gamma/sigma
    * (w_y - sum_j p_j w_j)``. ``b`` (the value of the agent's own map) does not see the map."""

    def __init__(self, attention: str, channels: int, num_classes: int, hidden: int = 256,
                 activation: str = "relu") -> None:
        super().__init__()
        self.reduce_dims = (2, 3) if attention == "channel" else (1,)
        self.embedding = nn.Parameter(torch.zeros(num_classes, channels))
        self.shared = nn.Parameter(torch.zeros(channels))
        self.baseline = nn.Sequential(nn.LayerNorm(channels), nn.Linear(channels, hidden), ACTIVATIONS[activation](),
                                      nn.Linear(hidden, 1))

    def value(self, x: torch.Tensor) -> torch.Tensor:
        """``b(X)``, (B,)."""
        return self.baseline(x.mean(dim=(2, 3))).squeeze(1)

    def direction(self, x: torch.Tensor, pids: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        """``u(X, y, p)``, shaped like the stage's maps (B, C, 1, 1) or (B, 1, H, W)."""
        e = self.embedding.index_select(0, pids) - probs.to(self.embedding.dtype) @ self.embedding + self.shared
        return (x * e[:, :, None, None].to(x.dtype)).mean(dim=self.reduce_dims, keepdim=True)

    def forward(self, x: torch.Tensor, a: torch.Tensor, context: CriticContext, k: int) -> torch.Tensor:
        u = self.direction(x, context.pids, context.probs)
        return self.value(x) + ((a - context.reference[k]) * u).flatten(1).sum(dim=1)


class CompatibleCritics(nn.Module):
    """Compatible critics (:class:`CompatibleCritic`), one per chosen stage. They learn ``u`` from a
    behaviour pass whose maps are perturbed around the agents': ``sum_k <dA_k, u_k>`` regresses the change of
    the target that the perturbations ``dA_k`` caused (``advantage``), and ``b`` regresses ``R``."""

    form = "compatible"

    def __init__(self, attention: str, stage_channels: Sequence[int], stages: Sequence[int], num_classes: int,
                 activation: str = "relu") -> None:
        super().__init__()
        _check_kinds(attention, activation)
        self.stages = _check_stages(stages, stage_channels)
        self.activation = activation
        self.critics = nn.ModuleDict({str(k): CompatibleCritic(attention, stage_channels[k], num_classes,
                                                               activation=activation) for k in self.stages})

    def architecture(self) -> Dict[str, object]:
        """What the weights do not tell, for checkpoints: the form, the hidden non-linearity and the stages."""
        return {"form": self.form, "activation": self.activation, "stages": list(self.stages)}

    def score(self, features: Sequence[torch.Tensor], maps: Sequence[torch.Tensor],
              context: Optional[CriticContext] = None) -> torch.Tensor:
        """``V_k(X_k, A_k)`` as a (K, B) tensor; needs the ``context`` (class, probabilities, reference maps)."""
        if context is None:
            raise ValueError("compatible critics score a map relative to the agents' own: give a CriticContext")
        return torch.stack([self.critics[str(k)](features[k], maps[k], context, k) for k in self.stages])

    def forward(self, features: Sequence[torch.Tensor], maps: Sequence[torch.Tensor],
                agent_maps: Optional[Sequence[torch.Tensor]] = None,
                context: Optional[CriticContext] = None,
                offsets: Optional[Sequence[torch.Tensor]] = None) -> CriticValues:
        """``b_k`` (the value of the agents' own maps ``maps``) as a (K, B) tensor; with ``agent_maps``, also
        ``b_k + <A'_k - A_k, u_k>`` with every critic weight held fixed (gradients reach ``agent_maps`` only);
        with a behaviour pass's ``offsets`` ``dA_k``, the ``advantage`` ``sum_k <dA_k, u_k>`` per image: the
        predicted change of the target that those offsets cause."""
        if context is None:
            raise ValueError("compatible critics need a CriticContext (class, probabilities, reference maps)")
        values = torch.stack([self.critics[str(k)].value(features[k]) for k in self.stages])
        directions = [self.critics[str(k)].direction(features[k], context.pids, context.probs) for k in self.stages]
        fixed = advantage = None
        if agent_maps is not None:
            fixed = values.detach() + torch.stack([((agent_maps[k] - context.reference[k]) * u.detach()).flatten(1)
                                                   .sum(dim=1) for k, u in zip(self.stages, directions)])
        if offsets is not None:
            advantage = torch.stack([(offsets[k] * u).flatten(1).sum(dim=1)
                                     for k, u in zip(self.stages, directions)]).sum(dim=0)
        return CriticValues(values, fixed, advantage)
