"""Which critic forms can learn a useful ``dV/dA`` at all, measured offline on a frozen trained network.

The network's passes are cached once: for every training image its features ``X_k``, the agents' maps
``A_k``, the reward ``R`` and ``log p(true class)`` (in fixed batches, BatchNorm on the batch's statistics as in
training, running statistics untouched), and, for several draws of behaviour noise (Gaussian in logit space
around the agents' maps, the later agents reacting), the offsets ``dA_k`` and that pass's ``R`` and
``log p``. Stage critics of each form are then fitted to that data alone and scored by
:func:`diagnose_critics` on held-out images: the alignment of their ``dV_k/dA_k`` with ``d log p/dA_k``,
beside ``shared`` (the best an image-blind direction reaches).

Forms (:data:`FORMS`): ``paper`` (the paper's critic on the agents' own maps, what SCAL trains), ``paper_explore``
(the same critic also regressing the behaviour maps' reward), ``conditioned`` (``paper_explore`` with a learned
class embedding added to its encoding of ``X``), ``compatible`` and ``compatible_logp``
(:class:`CompatibleCritics` regressing the change of ``R`` or of ``log p``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn

from .critic_diagnostics import diagnose_critics
from .models import CompatibleCritics, CriticContext, StageCritics
from .models.network import frozen_bn_stats
from .rewards import compute_rewards, true_class_log_probability

FORMS = ("paper", "paper_explore", "conditioned", "compatible", "compatible_logp")


@dataclass
class ProbeData:
    """Cached passes of the frozen network over N images: per stage ``features`` (N, ...) and ``maps``; the
    class ``pids``, probabilities ``probs``, reward and ``log_p`` of the agents' pass; per behaviour draw d,
    ``offsets[d][k]`` and that pass's ``explored_reward[d]`` and ``explored_log_p[d]``."""

    features: List[torch.Tensor]
    maps: List[torch.Tensor]
    pids: torch.Tensor
    probs: torch.Tensor
    reward: torch.Tensor
    log_p: torch.Tensor
    offsets: List[List[torch.Tensor]]
    explored_reward: torch.Tensor
    explored_log_p: torch.Tensor


@torch.no_grad()
def collect(model: nn.Module, images: torch.Tensor, pids: torch.Tensor, draws: int, explore_std: float,
            stages: Sequence[int], batch_size: int = 32, seed: int = 0) -> ProbeData:
    """Run the frozen ``model`` over ``images`` in batches of ``batch_size``: the agents' pass, the no-attention
    pass (for ``R_a``) and ``draws`` behaviour passes with noise at ``stages`` from a generator seeded by
    ``seed``."""
    noise = torch.Generator(images.device).manual_seed(seed)
    model.train()
    parts: Dict[str, List] = {key: [] for key in ("features", "maps", "probs", "reward", "log_p", "offsets",
                                                   "explored_reward", "explored_log_p")}
    with frozen_bn_stats(model):
        for start in range(0, len(images), batch_size):
            x, y = images[start:start + batch_size], pids[start:start + batch_size]
            out = model(x, return_stages=True)
            plain = model(x, return_stages=True, use_attention=False, stem=out.features[0]).logits
            parts["features"].append([f.float() for f in out.features])
            parts["maps"].append([a.float() for a in out.maps])
            parts["probs"].append(out.logits.float().softmax(dim=1))
            parts["reward"].append(compute_rewards(out.logits, plain, y).total)
            parts["log_p"].append(true_class_log_probability(out.logits, y))
            draws_offsets, draws_reward, draws_log_p = [], [], []
            for _ in range(draws):
                offsets = [torch.zeros_like(a) for a in out.maps]

                def perturb(k: int, a: torch.Tensor) -> torch.Tensor:
                    if k not in stages:
                        return a
                    shift = explore_std * torch.randn(a.shape, generator=noise, device=a.device)
                    moved = torch.sigmoid(torch.special.logit(a.float(), eps=1e-6) + shift)
                    offsets[k] = moved - a.float()
                    return moved.to(a.dtype)

                logits = model(x, return_stages=True, stem=out.features[0], map_fn=perturb).logits
                draws_offsets.append(offsets)
                draws_reward.append(compute_rewards(logits, plain, y).total)
                draws_log_p.append(true_class_log_probability(logits, y))
            parts["offsets"].append(draws_offsets)
            parts["explored_reward"].append(torch.stack(draws_reward))
            parts["explored_log_p"].append(torch.stack(draws_log_p))
    num_stages = len(parts["features"][0])
    return ProbeData(
        features=[torch.cat([b[k] for b in parts["features"]]) for k in range(num_stages)],
        maps=[torch.cat([b[k] for b in parts["maps"]]) for k in range(num_stages)],
        pids=pids, probs=torch.cat(parts["probs"]), reward=torch.cat(parts["reward"]),
        log_p=torch.cat(parts["log_p"]),
        offsets=[[torch.cat([b[d][k] for b in parts["offsets"]]) for k in range(num_stages)] for d in range(draws)],
        explored_reward=torch.cat(parts["explored_reward"], dim=1),
        explored_log_p=torch.cat(parts["explored_log_p"], dim=1),
    )


class ConditionedCritics(StageCritics):
    """The paper's stage critics with a learned class embedding added to each stage's encoding of ``X_k``,
    so that the value, and its gradient in the map, can depend on the true class."""

    form = "conditioned"

    def __init__(self, attention: str, stage_channels: Sequence[int], stages: Sequence[int], num_classes: int,
                 activation: str = "relu") -> None:
        super().__init__(attention, stage_channels, stages, activation)
        width = {k: self.critics[str(k)].encode(torch.zeros(1, stage_channels[k], 4, 4)).shape[1] for k in self.stages}
        self.embeddings = nn.ModuleDict({str(k): nn.Embedding(num_classes, width[k]) for k in self.stages})
        for embedding in self.embeddings.values():
            nn.init.zeros_(embedding.weight)

    def score(self, features: Sequence[torch.Tensor], maps: Sequence[torch.Tensor],
              context: Optional[CriticContext] = None) -> torch.Tensor:
        values = []
        for k in self.stages:
            critic = self.critics[str(k)]
            encoding = critic.encode(features[k])
            shift = self.embeddings[str(k)](context.pids)
            values.append(critic(encoding + shift.view(*shift.shape, *[1] * (encoding.dim() - 2)), maps[k],
                                 encoded=True))
        return torch.stack(values)


def build_form(form: str, attention: str, stage_channels: Sequence[int], stages: Sequence[int],
               num_classes: int, activation: str = "relu") -> nn.Module:
    """A fresh critic module of ``form`` (see :data:`FORMS`)."""
    if form in ("paper", "paper_explore"):
        return StageCritics(attention, stage_channels, stages, activation)
    if form == "conditioned":
        return ConditionedCritics(attention, stage_channels, stages, num_classes, activation)
    if form in ("compatible", "compatible_logp"):
        return CompatibleCritics(attention, stage_channels, stages, num_classes, activation)
    raise ValueError(f"unknown critic form {form!r}; expected one of {list(FORMS)}")


def _loss(form: str, critics: nn.Module, data: ProbeData, index: torch.Tensor, draw: int) -> torch.Tensor:
    """The form's regression loss on images ``index`` with behaviour draw ``draw``."""
    features = [x[index] for x in data.features]
    maps = [a[index] for a in data.maps]
    context = CriticContext(data.pids[index], data.probs[index], maps)
    reward = data.reward[index]
    values = critics.score(features, maps, context)
    loss = (values - reward).square().mean()
    if form == "paper":
        return loss
    offsets = [o[index] for o in data.offsets[draw]]
    if form in ("paper_explore", "conditioned"):
        explored = critics.score(features, [a + o for a, o in zip(maps, offsets)], context)
        return loss + (explored - data.explored_reward[draw, index]).square().mean()
    change = (data.explored_reward[draw, index] - reward if form == "compatible"
              else data.explored_log_p[draw, index] - data.log_p[index])
    advantage = critics(features, maps, context=context, offsets=offsets).advantage
    return loss + (advantage - change).square().mean()


def fit(form: str, critics: nn.Module, data: ProbeData, epochs: int, lr: float = 1e-3, batch_size: int = 64,
        seed: int = 0) -> List[float]:
    """Fit ``critics`` to ``data`` with Adam: ``epochs`` passes over every (image, behaviour draw) pair, in
    shuffled mini-batches; return the mean loss of each epoch."""
    optimizer = torch.optim.Adam(critics.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    num, draws = len(data.pids), len(data.offsets)
    history = []
    critics.train()
    for _ in range(epochs):
        total, count = 0.0, 0
        for draw in torch.randperm(draws, generator=generator).tolist():
            for index in torch.randperm(num, generator=generator).split(batch_size):
                loss = _loss(form, critics, data, index.to(data.pids.device), draw)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total, count = total + loss.item(), count + 1
        history.append(total / count)
    return history


def probe(model: nn.Module, train: Sequence[torch.Tensor], heldout: Sequence[torch.Tensor],
          forms: Sequence[str] = FORMS, stages: Sequence[int] = (0, 1, 2, 3, 4), draws: int = 8,
          explore_std: float = 0.5, epochs: int = 20, activation: str = "relu", seed: int = 0,
          log=print) -> Dict[str, Dict[str, float]]:
    """Fit each form on ``train`` = (images, pids) and return, per form, :func:`diagnose_critics` on ``heldout``
    plus its final training loss. ``model`` is left as it was (frozen: nothing of it is trained)."""
    data = collect(model, *train, draws=draws, explore_std=explore_std, stages=stages, seed=seed)
    results: Dict[str, Dict[str, float]] = {}
    for form in forms:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            critics = build_form(form, model.attention, model.stage_channels, stages,
                                 model.classifier.out_features, activation).to(train[0].device)
        history = fit(form, critics, data, epochs, seed=seed)
        results[form] = {"final_loss": history[-1], **diagnose_critics(model, critics, *heldout)}
        log(f"[probe] {form}: loss {history[0]:.4f} -> {history[-1]:.4f}, "
            f"alignment {results[form]['critic_alignment']:+.3f}, shared {results[form]['critic_shared']:+.3f}")
    return results
