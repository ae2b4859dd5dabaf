"""ImageSCALEngine: torchreid's triplet engine plus SCAL's critics, rewards and critic losses.

One training step (``forward_backward``), top to bottom:
forward with attention → the same weights without attention (no graph, BN statistics untouched) →
[a behaviour pass with perturbed maps] → rewards → the four losses, each routed to the parameters it may move
→ one backward, two optimizers.

What the agents learn from besides the re-id losses (``critic_form``), always through ``J_cri``'s routing (only
the agents move, by ``w_c``):

- ``paper``: the paper's critics ``V_k(X_k, A_k)``, regressed on the reward ``R`` (:class:`StageCritics`);
- ``compatible``: critics linear in the map around the agents' own, class-conditioned, fitted on a separate
  behaviour pass whose maps are perturbed (:class:`CompatibleCritics`);
- ``oracle``: no critic; the gradient an ideal critic would give, ``d log p(true class)/dA_k``, taken from
  the training pass itself. It bounds what any critic can add.
"""
from __future__ import annotations

from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from . import _torchreid, distributed
from .critic_diagnostics import diagnose_critics
from .critic_metrics import critic_summary, pearson
from .engine import ImageTripletEngine, _accuracy
from .models import CompatibleCritics, CriticContext, StageCritics
from .models.network import frozen_bn_stats
from .rewards import Rewards, compute_rewards, true_class_log_probability

CRITIC_FORMS = ("paper", "compatible", "oracle")
CRITIC_TARGETS = ("reward", "logp")
Critics = Union[StageCritics, CompatibleCritics]


def build_critics(network: nn.Module, form: str = "paper", stages: Sequence[int] = (0, 1, 2, 3, 4),
                  activation: str = "relu", seed: int = 0) -> Optional[Critics]:
    """The critics of ``form`` for ``network`` (None for the oracle, which has none), initialised from their
    own generator seeded by ``seed``: building them draws nothing from the global one, so that runs of one
    seed with and without critics sample the same batches and augmentations."""
    if form not in CRITIC_FORMS:
        raise ValueError(f"scal.critic_form {form!r} is not one of {list(CRITIC_FORMS)}")
    if form == "oracle":
        return None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if form == "compatible":
            return CompatibleCritics(network.attention, network.stage_channels, stages,
                                     network.classifier.out_features, activation=activation)
        return StageCritics(network.attention, network.stage_channels, stages, activation=activation)


class Behaviour(NamedTuple):
    """The no-grad behaviour pass: the offsets ``dA_k`` its noise added to the agents' maps (zero at stages
    without a critic), and its logits."""

    offsets: List[torch.Tensor]
    logits: torch.Tensor


class SCALLosses(NamedTuple):
    """The terms of one step. ``model_objective`` and ``critic_objective`` are what gets minimised; ``values``
    (K, B) and ``rewards`` are None for the oracle, which has no critic."""

    triplet: torch.Tensor
    classification: torch.Tensor
    critic: torch.Tensor
    mse: Optional[torch.Tensor]
    model_objective: torch.Tensor
    critic_objective: torch.Tensor
    rewards: Optional[Rewards]
    values: Optional[torch.Tensor]
    logits: torch.Tensor


class ImageSCALEngine(ImageTripletEngine):
    """Self-critical attention learning on top of torchreid's ``ImageTripletEngine``.

    Takes the triplet engine's arguments plus the critic's: ``critic_weight`` (``w_c``), its optimizer
    and scheduler (or ``critic_optim``/``critic_lr`` to build an optimizer with torchreid's builder),
    ``critic_warmup_epochs`` (the agents follow the critic from that epoch on), ``critic_form`` (see the module),
    ``critic_stages`` and ``critic_activation``; ``critics`` may be given ready-made (with an optimizer and
    scheduler built on them). The compatible critics learn from a behaviour pass, without gradient, whose maps
    are the agents' moved by Gaussian noise of ``critic_explore_std`` in logit space; ``critic_target`` is what
    their advantage regresses: the change of the paper's reward ``R`` (``reward``) or of ``log p(true class)``
    (``logp``) from the training pass to the behaviour pass.
    ``critic_seed`` seeds the critics' initialisation and the behaviour noise, apart from the global generators.
    ``diagnostic_batch`` (images, pids) are labelled images scored by :func:`diagnose_critics` after every
    epoch. ``engine_options`` are :class:`EngineMixin`'s (``amp``, ``test_amp``, ``channels_last``,
    ``checkpoint_freq``, ``keep_last``). The critics are registered as ``'critic'``: torchreid switches
    their mode, steps their scheduler each epoch, and they are checkpointed with the model.
    """

    def __init__(
        self,
        datamanager,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        margin: float = 0.3,
        weight_t: float = 1,
        weight_x: float = 1,
        scheduler=None,
        use_gpu: bool = True,
        label_smooth: bool = True,
        critic_weight: float = 1.0,
        critic_optimizer: Optional[torch.optim.Optimizer] = None,
        critic_scheduler=None,
        critic_optim: str = "adam",
        critic_lr: float = 1e-4,
        critic_warmup_epochs: int = 0,
        critic_form: str = "paper",
        critic_stages: Sequence[int] = (0, 1, 2, 3, 4),
        critic_activation: str = "relu",
        critic_explore_std: float = 0.0,
        critic_target: str = "reward",
        critic_seed: int = 0,
        critics: Optional[Critics] = None,
        diagnostic_batch: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
        **engine_options,
    ) -> None:
        super().__init__(datamanager, model, optimizer, margin=margin, weight_t=weight_t, weight_x=weight_x,
                         scheduler=scheduler, use_gpu=use_gpu, label_smooth=label_smooth, **engine_options)
        net = self.network
        if len(getattr(net, "agents", ())) == 0:
            raise ValueError(
                f"ImageSCALEngine needs a model with attention agents (<backbone>_scal*), got {type(net).__name__} "
                "without agents; train resnet50_bnneck with loss.name 'triplet' instead"
            )
        if critic_target not in CRITIC_TARGETS:
            raise ValueError(f"scal.critic_target {critic_target!r} is not one of {list(CRITIC_TARGETS)}")
        if critics is None:
            critics = build_critics(net, critic_form, critic_stages, critic_activation, critic_seed)
            critics = critics.to(self.device) if critics is not None else None
        self.form = critic_form if critics is None else critics.form
        if (self.form == "compatible") != (critic_explore_std > 0):
            raise ValueError("scal.critic_explore_std sets the noise of the compatible critics' behaviour pass: "
                             f"> 0 for scal.critic_form compatible, 0 otherwise (got {critic_explore_std} with "
                             f"{self.form})")
        self.stages = list(critic_stages) if critics is None else critics.stages
        self.critic_weight = critic_weight
        self.critic_warmup_epochs = critic_warmup_epochs
        self.explore_std = critic_explore_std
        self.target = critic_target
        self.diagnostic_batch = diagnostic_batch
        self.noise = torch.Generator(self.device).manual_seed(critic_seed + distributed.world().rank)
        self.critics = distributed.wrap(critics, self.device) if critics is not None else None
        if self.critics is not None:
            if critic_optimizer is None:
                critic_optimizer = _torchreid.optim.build_optimizer(critics, optim=critic_optim, lr=critic_lr,
                                                                    weight_decay=0.0)
            self.register_model("critic", self.critics, critic_optimizer, critic_scheduler)
        self.critic_optimizer, self.critic_scheduler = critic_optimizer, critic_scheduler
        self._epoch_record: List[torch.Tensor] = []

    @property
    def critic_net(self) -> Optional[Critics]:
        """The critics themselves, unwrapped from DistributedDataParallel (None for the oracle)."""
        return getattr(self.critics, "module", self.critics)

    @property
    def critic_active(self) -> bool:
        """Whether the agents follow the critic (J_cri) in the current epoch."""
        return self.epoch >= self.critic_warmup_epochs

    def behaviour(self, imgs: torch.Tensor, stem: torch.Tensor, maps: Sequence[torch.Tensor]) -> Behaviour:
        """The behaviour pass: the same weights without gradient and without touching BatchNorm statistics,
        each critic stage's agent map moved by Gaussian noise of ``explore_std`` in logit space (so it stays in
        (0, 1)), the later agents reacting to the changed features as in the network. The noise comes from the
        engine's own generator."""
        offsets: List[torch.Tensor] = [torch.zeros_like(a) for a in maps]

        def perturb(k: int, a: torch.Tensor) -> torch.Tensor:
            if k not in self.stages:
                return a
            noise = torch.randn(a.shape, generator=self.noise, device=a.device, dtype=torch.float32)
            moved = torch.sigmoid(torch.special.logit(a.float(), eps=1e-6) + self.explore_std * noise)
            offsets[k] = moved - a.float()
            return moved.to(a.dtype)

        with torch.no_grad(), frozen_bn_stats(self.network):
            logits = self.model(imgs, return_stages=True, stem=stem, map_fn=perturb).logits
        return Behaviour(offsets, logits.float())

    def compute_losses(self, imgs: torch.Tensor, pids: torch.Tensor) -> SCALLosses:
        """Every SCAL quantity of one batch; the gradient routing of the four losses lives here.

        The network's passes run in mixed precision when it is enabled; rewards, critics and losses in float32."""
        with self.precision.autocast():
            out = self.model(imgs, return_stages=True)
            if self.form != "oracle":
                with torch.no_grad():  # the same weights without attention, from the shared stem output X_0
                    stem = out.features[0].detach()
                    plain_logits = self.model(imgs, return_stages=True, use_attention=False, stem=stem).logits
                    behaviour = self.behaviour(imgs, stem, out.maps) if self.explore_std > 0 else None
        logits = out.logits.float()

        # J_tri, J_cls → backbone, agents and head (torchreid's criteria, as its triplet engine computes them).
        loss_t = self.compute_loss(self.criterion_t, out.feature, pids)
        loss_x = self.compute_loss(self.criterion_x, logits, pids)
        model_objective = self.weight_t * loss_t + self.weight_x * loss_x

        # J_cri → agents only: A'_k = agent_k(X_k.detach()) keeps the backbone out, and what scores A'_k (the
        # critics' weights, or the oracle's gradient) is held fixed, so that J_cri cannot move it.
        features = [x.detach().float() for x in out.features]
        agent_maps = ([self.network.agents[k](features[k]) for k in range(len(features))]
                      if self.critic_active else None)
        if self.form == "oracle":
            loss_cri = self._oracle_loss(logits, pids, out.maps, agent_maps)
            if self.critic_active:
                model_objective = model_objective + self.critic_weight * loss_cri
            zero = torch.zeros((), device=logits.device)
            return SCALLosses(loss_t, loss_x, loss_cri, None, model_objective, zero, None, None, logits)

        # J_mse → critics only: their inputs X_k, A_k (and the behaviour pass's) are cut from the network's graph.
        rewards = compute_rewards(logits, plain_logits, pids)
        maps = [a.detach().float() for a in out.maps]
        context = CriticContext(pids, logits.detach().softmax(dim=1), maps)
        if behaviour is None:
            scored = self.critics(features, maps, agent_maps, context=context)
            loss_mse = (scored.values - rewards.total).square().mean()
        else:  # compatible: b_k regresses R; the advantage, the behaviour pass's change of the target
            scored = self.critics(features, maps, agent_maps, context=context, offsets=behaviour.offsets)
            if self.target == "reward":
                change = compute_rewards(behaviour.logits, plain_logits, pids).total - rewards.total
            else:
                change = true_class_log_probability(behaviour.logits, pids) - true_class_log_probability(logits, pids)
            loss_mse = (scored.values - rewards.total).square().mean() + (scored.advantage - change).square().mean()
        if scored.agent_values is not None:
            loss_cri = -scored.agent_values.mean()
            model_objective = model_objective + self.critic_weight * loss_cri
        else:
            loss_cri = -scored.values.detach().mean()  # reported during the warm-up, not optimised
        return SCALLosses(loss_t, loss_x, loss_cri, loss_mse, model_objective, loss_mse, rewards, scored.values,
                          logits)

    def _oracle_loss(self, logits: torch.Tensor, pids: torch.Tensor, maps: Sequence[torch.Tensor],
                     agent_maps: Optional[Sequence[torch.Tensor]]) -> torch.Tensor:
        """``-mean_k mean_i <A'_k, g_k>`` with ``g_k = d sum_i log p(true class)_i / dA_k`` of the training
        pass (the later agents reacting), held fixed: its gradient moves each agent along ``g_k``, as a
        critic's ``dV/dA`` would. ``-mean log p(true class)`` is reported during the warm-up."""
        log_p = true_class_log_probability(logits, pids, detach=False)
        if agent_maps is None:
            return -log_p.detach().mean()
        grads = torch.autograd.grad(log_p.sum(), [maps[k] for k in self.stages], retain_graph=True)
        terms = [(agent_maps[k] * g.detach().float()).flatten(1).sum(dim=1) for k, g in zip(self.stages, grads)]
        return -torch.stack(terms).mean()

    def step(self, model_objective: torch.Tensor, critic_objective: torch.Tensor) -> None:
        """One backward through both objectives (their graphs share no parameter), then both optimizers."""
        self.update(model_objective + critic_objective)

    def forward_backward(self, data: Dict[str, torch.Tensor]) -> Dict[str, float]:
        imgs, pids = self.parse_data_for_train(data)
        losses = self.compute_losses(imgs, pids)
        self.step(losses.model_objective, losses.critic_objective)
        stats = {"loss_t": losses.triplet.detach(), "loss_x": losses.classification.detach(),
                 "loss_cri": losses.critic.detach(), "acc": _accuracy(losses.logits, pids)}
        if losses.values is not None:
            rewards = losses.rewards
            self._epoch_record.append(torch.cat([losses.values.detach(), torch.stack(rewards)]))
            value = losses.values.detach().mean(dim=0)
            stats.update({"loss_mse": losses.mse.detach(), "reward": rewards.total.mean(),
                          "reward_c": rewards.classification.mean(), "reward_a": rewards.amelioration.mean(),
                          "critic_value": value.mean(), "critic_corr": pearson(value, rewards.total)})
        return self.summarize(stats)

    def train(self, *args, **kwargs) -> None:
        """torchreid's epoch, then the critics' statistics: over all of the epoch's images (how well they
        predict the reward) and on the ``diagnostic_batch`` (:func:`diagnose_critics`: what their gradient is
        worth to the agents; computed by every process, as with ``train.sync_bn`` its training-mode passes
        synchronise the batch statistics across them); printed and written to TensorBoard as ``Epoch/<name>``."""
        self._epoch_record = []
        super().train(*args, **kwargs)
        if not self._epoch_record:
            return
        record = torch.cat(self._epoch_record, dim=1)
        values, (reward_c, reward_a, reward) = record[:-3], record[-3:]
        stats = critic_summary(values, reward, reward_c, reward_a, self.critic_net.stages)
        if self.diagnostic_batch is not None:
            images, pids = self.diagnostic_batch
            stats.update(diagnose_critics(self.network, self.critic_net, self._images(images),
                                          pids.to(self.device)))
        print(f"epoch {self.epoch + 1} critic: " + "  ".join(f"{k} {v:.4f}" for k, v in stats.items()
                                                             if "stage" not in k))
        if self.writer is not None:
            for key, value in stats.items():
                self.writer.add_scalar(f"Epoch/{key}", value, self.epoch + 1)

    def epoch_progress(self) -> Dict[str, Any]:
        """The epoch's critic record so far, so that after resuming within the epoch its statistics still cover
        all of its images."""
        return {"critic_record": torch.cat(self._epoch_record, dim=1)} if self._epoch_record else {}

    def restore_epoch_progress(self, progress: Dict[str, Any]) -> None:
        record = progress.get("critic_record")
        self._epoch_record = [record.to(self.device)] if record is not None else []

    def engine_state(self) -> Dict[str, Any]:
        """The behaviour noise generator's state, so that a resumed run draws what the uninterrupted one would."""
        return {"behaviour_noise": self.noise.get_state()}

    def load_engine_state(self, state: Dict[str, Any]) -> None:
        if "behaviour_noise" in state:
            self.noise.set_state(state["behaviour_noise"])
