"""What a critic's signal is worth to the agents, measured per stage on a fixed batch of labelled images.

The agents learn from a critic only through ``dV_k/dA_k`` (J_cri's gradient), so a critic is judged here by
that gradient, not only by how well ``V`` tracks the reward:

- ``alignment_stage{k}``: the cosine between ``dV_k/dA_k`` and ``d log p_true/dA_k`` (the attention
  network's log-probability of the true class, differentiated by autograd with respect to the same map, the
  later agents reacting as they do in the network), averaged over images. Positive: moving the map the way
  the critic says raises the true class's probability. A random direction scores about 0; a critic whose
  gradient is exactly 0 scores 0.
- ``shared_stage{k}``: the alignment that a critic ignoring the image could reach at best: the cosine of each
  image's ``d log p_true/dA_k`` with the mean of the other images' (leave-one-out). Near 0, the useful
  direction differs from image to image and a critic has to learn it per image; near 1, one direction
  serves all.
- ``agreement_stage{k}``: how often the critic orders the agents' map and the all-ones map (no attention) of
  the same features ``X_k`` the way ``R_a`` orders the two networks (attention helped or not); equal values
  count as disagreement.
- ``critic_heldout_corr``: the correlation of the stage-mean critic value with the reward ``R`` of these
  images, to compare with the training images' ``critic_reward_corr``.
- ``alive_stage{k}``: the share of the critic's hidden units whose pre-activation is positive for at least
  one image (a ReLU unit that is never positive is dead: it passes no gradient at all).

Two passes of the network, because BatchNorm cannot serve both purposes at once. The gradients (alignment,
shared) come from the eval-mode network, the one that is deployed, in which every image's log-probability
depends on its own maps only: with batch statistics, the gradient of the batch's summed log-probability
would carry every other image's dependence through the batch mean (at the BNNeck, the images' gradients
sum to about zero). The rewards and the critics' values (agreement, held-out correlation, alive units) come
from the network as it trains, on the batch's statistics with the running ones untouched: in eval mode the
no-attention pass would be normalised with statistics gathered with attention, so attention would seem to
help nearly every image. The numbers depend only on the weights and the batch; the critics run in eval mode.
"""
from __future__ import annotations

from typing import Dict, List, Union

import torch
import torch.nn.functional as F

from .critic_metrics import pearson
from .models import CompatibleCritics, CriticContext, SCALOutput, SCALNetwork, StageCritics
from .models.network import frozen_bn_stats
from .rewards import compute_rewards

_EPS = 1e-12
Critics = Union[StageCritics, CompatibleCritics]


def _true_class_log_prob_grads(model: SCALNetwork, images: torch.Tensor, pids: torch.Tensor):
    """One pass of ``model`` as it is (eval mode, for per-image gradients) and ``d sum_i log p_true(i) / dA_k``
    for every stage k, in one backward.

    Each applied map is ``A_k + delta_k`` with a zero leaf ``delta_k``: the gradient with respect to
    ``delta_k`` is the total derivative with respect to ``A_k``, the later agents reacting to the change as
    they do in the network. In eval mode image i's log-probability depends on image i's maps only, so the
    summed gradient is the per-image gradient."""
    deltas: List[torch.Tensor] = []

    def shifted(k: int, a: torch.Tensor) -> torch.Tensor:
        deltas.append(torch.zeros_like(a, requires_grad=True))
        return a + deltas[-1]

    with torch.enable_grad():
        out = model(images, return_stages=True, map_fn=shifted)
        log_p = out.logits.float().log_softmax(dim=1).gather(1, pids.view(-1, 1)).sum()
        grads = torch.autograd.grad(log_p, deltas)
    return out, [g.detach() for g in grads]


def _value_grads(critics: Critics, features: List[torch.Tensor], maps: List[torch.Tensor],
                 context: CriticContext) -> Dict[int, torch.Tensor]:
    """``dV_k/dA_k`` of every critic stage at ``(features, maps)``, per image (each ``V_k`` depends on its
    own image and map only), indexed by stage."""
    with torch.enable_grad():
        leaves = [a.detach().requires_grad_(True) for a in maps]
        values = critics.score([x.detach() for x in features], leaves, context).float()
        grads = torch.autograd.grad(values.sum(), [leaves[k] for k in critics.stages])
    return dict(zip(critics.stages, grads))


def _context(out: SCALOutput, pids: torch.Tensor) -> CriticContext:
    """What a class-conditioned critic is given for a pass: the true classes, the pass's probabilities and its
    maps as the reference."""
    return CriticContext(pids, out.logits.detach().float().softmax(dim=1), [a.detach() for a in out.maps])


def _shared_direction(grads: torch.Tensor) -> float:
    """Mean cosine of each row with the mean of the other rows (0 for a single row)."""
    flat = grads.flatten(1).float()
    if len(flat) < 2:
        return 0.0
    others = (flat.sum(dim=0, keepdim=True) - flat) / (len(flat) - 1)
    return float(F.cosine_similarity(flat, others, dim=1, eps=_EPS).mean())


def _alive_share(critic: torch.nn.Module, features: torch.Tensor, a: torch.Tensor) -> float:
    """Share of hidden units positive somewhere on this batch (NaN for a critic without ``hidden``, such as
    the compatible critic, whose gradient does not pass through hidden units)."""
    if not hasattr(critic, "hidden"):
        return float("nan")
    pre = critic.hidden(critic.encode(features), a).float()
    positive = (pre > 0).transpose(0, 1).flatten(1).any(dim=1)
    return float(positive.float().mean())


@torch.no_grad()
def diagnose_critics(model: SCALNetwork, critics: Critics, images: torch.Tensor,
                     pids: torch.Tensor) -> Dict[str, float]:
    """``alignment``, ``shared``, ``agreement`` and ``alive`` per critic stage (``<name>_stage{k}``), their means
    over the stages (``critic_<name>``) and ``critic_heldout_corr``, on ``images`` whose ``pids`` are classes.
    Restores the train/eval mode of both modules."""
    modes = model.training, critics.training
    critics.eval()
    try:
        model.eval()
        deployed, targets = _true_class_log_prob_grads(model, images, pids)
        maps = [a.detach() for a in deployed.maps]  # A_k + 0
        value_grads = _value_grads(critics, deployed.features, maps, _context(deployed, pids))
        model.train()
        with frozen_bn_stats(model):
            out = model(images, return_stages=True)
            plain = model(images, return_stages=True, use_attention=False, stem=out.features[0]).logits
        rewards = compute_rewards(out.logits, plain, pids)
        helped = rewards.amelioration.bool()
        context = _context(out, pids)
        with_maps = critics.score(out.features, out.maps, context).float()
        without = critics.score(out.features, [torch.ones_like(a) for a in out.maps], context).float()
        stats: Dict[str, float] = {}
        for row, k in enumerate(critics.stages):
            grad = value_grads[k]
            cosine = F.cosine_similarity(grad.flatten(1).float(), targets[k].flatten(1).float(), dim=1, eps=_EPS)
            agree = (((with_maps[row] > without[row]) & helped) | ((with_maps[row] < without[row]) & ~helped))
            stats[f"alignment_stage{k}"] = float(cosine.mean())
            stats[f"shared_stage{k}"] = _shared_direction(targets[k])
            stats[f"agreement_stage{k}"] = float(agree.float().mean())
            stats[f"alive_stage{k}"] = _alive_share(critics.critics[str(k)], out.features[k], out.maps[k])
        stats["critic_heldout_corr"] = float(pearson(with_maps.mean(dim=0), rewards.total))
    finally:
        model.train(modes[0])
        critics.train(modes[1])
    for name in ("alignment", "shared", "agreement", "alive"):
        per_stage = [stats[f"{name}_stage{k}"] for k in critics.stages]
        stats[f"critic_{name}"] = sum(per_stage) / len(per_stage)
    return stats
