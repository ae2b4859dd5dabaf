"""ImageSCALEngine: torchreid's triplet engine plus SCAL's critics, rewards and critic losses.

One training step (``forward_backward``), top to bottom:
forward with attention → the same weights without attention (no graph, BN statistics untouched) →
rewards → the four losses, each routed to the parameters it may move → one backward, two optimizers.
"""
from __future__ import annotations

import datetime
import math
import os
import random
import time
from typing import Any, Dict, Iterable, List, NamedTuple, NoReturn, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from . import _torchreid, distributed
from .checkpoint import NonFiniteError, SafeCheckpointing, rng_state, set_rng_state
from .critic_diagnostics import diagnose_critics
from .critic_metrics import critic_summary, pearson
from .evaluation import distance_matrix, evaluate, evaluate_distances, evaluate_rows
from .models import StageCritics
from .precision import Precision
from .preemption import Preempted, StopSignals, resumed_loader
from .retrieval.postprocess import PostProcess
from .rewards import Rewards, compute_rewards


EVALUATORS = ("fast", "torchreid")


class EngineMixin(SafeCheckpointing):
    """What this package adds to torchreid's engines: checkpoints that reload safely
    (:class:`SafeCheckpointing`), stopping on SIGTERM, SIGUSR1 or SIGINT with a checkpoint that resumes within
    the epoch, mixed precision for training (``amp``) and feature extraction (``test_amp``), channels-last
    inputs, the ``fast`` evaluator (:mod:`torchreid_scal.evaluation`, in chunks of ``eval_memory_mb``;
    ``evaluator='torchreid'`` keeps torchreid's), and a result printout that does not raise IndexError when the
    gallery is smaller than the largest requested rank."""

    def __init__(self, *args, amp: bool = False, test_amp: bool = False, channels_last: bool = False,
                 checkpoint_freq: int = 1, keep_last: int = 0, evaluator: str = "fast", eval_memory_mb: float = 256,
                 postprocess: Optional[PostProcess] = None, **kwargs) -> None:
        if evaluator not in EVALUATORS:
            raise ValueError(f"evaluator {evaluator!r} is not one of {list(EVALUATORS)}")
        super().__init__(*args, **kwargs)
        self.evaluator = evaluator
        self.eval_memory_mb = eval_memory_mb
        self.postprocess = postprocess or PostProcess(memory_mb=eval_memory_mb)
        self.device = torch.device("cuda" if self.use_gpu else "cpu")
        self.precision = Precision(self.device, amp, key="train.amp")
        self.test_precision = Precision(self.device, test_amp, key="test.amp")
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.checkpoint_freq = checkpoint_freq
        self.keep_last = keep_last
        self.save_dir = ""
        self.stop_signals = StopSignals()
        self._epoch_rng: Dict[str, Any] = {}

    @property
    def network(self) -> nn.Module:
        """The model itself, unwrapped from DataParallel/DistributedDataParallel."""
        return getattr(self.model, "module", self.model)

    def run(self, save_dir: str = "log", max_epoch: int = 0, start_epoch: int = 0, test_only: bool = False,
            **kwargs) -> None:
        """torchreid's ``run``. While training, SIGTERM, SIGUSR1 and SIGINT stop it after the step in progress,
        with a checkpoint of that position (:meth:`train`), and raise :class:`Preempted`. When training would
        start at or after ``max_epoch`` (a finished run resumed), the model is evaluated as it is, and nothing is
        saved: torchreid would write its weights again as a checkpoint of one epoch more than was trained."""
        self.save_dir = save_dir
        if not distributed.world().is_main:
            self.writer = distributed.NullWriter()
        if not test_only and start_epoch >= max_epoch:
            print(f"nothing to train: the model is at epoch {start_epoch} of train.max_epoch {max_epoch}; "
                  "evaluating it (raise train.max_epoch to train further)")
            test_only = True
        if test_only:
            super().run(save_dir=save_dir, max_epoch=max_epoch, start_epoch=start_epoch, test_only=True, **kwargs)
            return
        with self.stop_signals:
            try:
                super().run(save_dir=save_dir, max_epoch=max_epoch, start_epoch=start_epoch, **kwargs)
            except Preempted:
                if self.writer is not None:
                    self.writer.close()
                raise

    def train(self, print_freq: int = 10, fixbase_epoch: int = 0, open_layers=None) -> None:
        """One epoch as torchreid's ``Engine.train`` runs it (same printout and TensorBoard scalars), then a
        checkpoint every ``checkpoint_freq`` epochs. After a stop signal it writes a checkpoint after the step
        in progress and raises :class:`Preempted` (a signal during evaluation or saving takes effect after the
        next step); resumed from that checkpoint, it continues with the next step exactly as the uninterrupted
        epoch would have (see :meth:`_epoch_batches`)."""
        self.set_model_mode("train")
        self.two_stepped_transfer_learning(self.epoch, fixbase_epoch, open_layers)
        sampler = getattr(self.train_loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(self.epoch)
        self.num_batches = len(self.train_loader)
        start, batches = self._epoch_batches()
        losses = _torchreid.utils.MetricMeter()
        batch_time, data_time = _torchreid.utils.AverageMeter(), _torchreid.utils.AverageMeter()
        end = time.time()
        for self.batch_idx, data in enumerate(batches, start):
            data_time.update(time.time() - end)
            losses.update(self.forward_backward(data))
            batch_time.update(time.time() - end)
            self._report_step(losses, batch_time, data_time, print_freq)
            if self.stop_signals.requested(self.device):
                self._stop(self.batch_idx + 1)
            end = time.time()
        self.update_lr()
        if self.save_dir and self.checkpoint_freq > 0 and (self.epoch + 1) % self.checkpoint_freq == 0:
            self.save_model(self.epoch, float("nan"), self.save_dir)

    def _epoch_batches(self) -> Tuple[int, Iterable]:
        """The step this epoch starts at and its batches from there: normally 0 and the train loader. Resumed
        from a mid-epoch checkpoint: the steps done, and the loader's epoch without their batches, drawn with
        the random generators as they were when the epoch began (so the sampler draws the same order) and
        continued with them as they were at the interruption (so the augmentations are the same too)."""
        position, self.resume_position = self.resume_position, None
        if position is None:
            self._epoch_rng = rng_state()
            return 0, self.train_loader
        self._epoch_rng = position["epoch_rng"]
        self.restore_epoch_progress(position["progress"])
        set_rng_state(self._epoch_rng)
        return position["step"], resumed_loader(self.train_loader, position["step"],
                                                lambda: set_rng_state(position["rng"]))

    def _stop(self, step: int) -> NoReturn:
        """Write a checkpoint after ``step`` batches of this epoch and raise :class:`Preempted`."""
        position = {"step": step, "epoch_rng": self._epoch_rng, "progress": self.epoch_progress()}
        path = self.save_within_epoch(position, self.save_dir)
        written = f"checkpoint {path} written" if path else "rank 0 wrote the checkpoint"
        raise Preempted(f"{self.stop_signals.name} received after step {step} of epoch {self.epoch + 1}: {written}; "
                        "continue with model.resume auto")

    def epoch_progress(self) -> Dict[str, Any]:
        """What the engine has gathered over the epoch so far, beyond the weights, for a mid-epoch checkpoint."""
        return {}

    def restore_epoch_progress(self, progress: Dict[str, Any]) -> None:
        """Take back what :meth:`epoch_progress` returned, when resuming within that epoch."""

    def _report_step(self, losses, batch_time, data_time, print_freq: int) -> None:
        """torchreid's per-step printout (every ``print_freq`` steps) and TensorBoard scalars."""
        step = self.batch_idx + 1
        if step % print_freq == 0:
            remaining = self.num_batches - step + (self.max_epoch - self.epoch - 1) * self.num_batches
            eta = datetime.timedelta(seconds=int(batch_time.avg * remaining))
            print(f"epoch: [{self.epoch + 1}/{self.max_epoch}][{step}/{self.num_batches}]\t"
                  f"time {batch_time.val:.3f} ({batch_time.avg:.3f})\tdata {data_time.val:.3f} ({data_time.avg:.3f})\t"
                  f"eta {eta}\t{losses}\tlr {self.get_current_lr():.6f}")
        if self.writer is not None:
            n_iter = self.epoch * self.num_batches + self.batch_idx
            self.writer.add_scalar("Train/time", batch_time.avg, n_iter)
            self.writer.add_scalar("Train/data", data_time.avg, n_iter)
            for name, meter in losses.meters.items():
                self.writer.add_scalar("Train/" + name, meter.avg, n_iter)
            self.writer.add_scalar("Train/lr", self.get_current_lr(), n_iter)

    def two_stepped_transfer_learning(self, epoch: int, fixbase_epoch: int, open_layers, model=None) -> None:
        """torchreid's ``fixbase_epoch``, applied to the network itself: torchreid's ``open_specified_layers``
        unwraps DataParallel but not DistributedDataParallel."""
        super().two_stepped_transfer_learning(epoch, fixbase_epoch, open_layers,
                                              model=self.network if model is None else model)

    def test(self, *args, **kwargs):
        """torchreid's evaluation, on rank 0 only (the others wait), run on a copy of the random generators:
        evaluating must not change what the next training epoch draws, or a resumed run would differ from an
        uninterrupted one."""
        rank1 = 0.0
        if distributed.world().is_main:
            python, numpy = random.getstate(), np.random.get_state()
            with torch.random.fork_rng(devices=range(torch.cuda.device_count()) if self.use_gpu else []):
                try:
                    rank1 = super().test(*args, **kwargs)
                finally:
                    random.setstate(python)
                    np.random.set_state(numpy)
        distributed.barrier()
        return rank1

    def summarize(self, stats: Dict[str, torch.Tensor]) -> Dict[str, float]:
        """The step's logged scalars as floats, fetched from the device in one transfer; stops at the first
        NaN or infinite one, naming the step and the term."""
        summary = dict(zip(stats, torch.stack([v.float().reshape(()) for v in stats.values()]).tolist()))
        bad = {k: v for k, v in summary.items() if not math.isfinite(v)}
        if bad:
            raise NonFiniteError(
                f"non-finite loss at epoch {self.epoch + 1}, step {getattr(self, 'batch_idx', 0) + 1}: "
                + ", ".join(f"{k} = {v}" for k, v in bad.items())
                + "; training stopped (lower train.lr or check the data); no checkpoint of this state was written"
            )
        return summary

    def _images(self, imgs: torch.Tensor) -> torch.Tensor:
        return imgs.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)

    def parse_data_for_train(self, data):
        imgs, pids = super().parse_data_for_train(data)
        return self._images(imgs), pids.to(self.device, non_blocking=True)

    def parse_data_for_eval(self, data):
        imgs, pids, camids = super().parse_data_for_eval(data)
        return self._images(imgs), pids, camids

    def compute_loss(self, criterion, outputs, targets):
        """torchreid's loss on float32 outputs, outside autocast: in bf16 the triplet loss's distances
        (``|a|^2 + |b|^2 - 2ab``) are off by more than the margin, and pick wrong hardest negatives."""
        with torch.autocast(self.device.type, enabled=False):
            return super().compute_loss(criterion, _float(outputs), targets)

    def update(self, objective: torch.Tensor) -> None:
        """Zero the gradients of every registered optimizer, backward (scaled for float16), step them all."""
        optimizers = [self._optims[name] for name in self.get_model_names() if self._optims[name] is not None]
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        self.precision.backward_step(objective, optimizers)

    def extract_features(self, input: torch.Tensor) -> torch.Tensor:
        with self.test_precision.autocast():
            return self.network(input).float()

    def _evaluate(self, *args, ranks: Sequence[int] = (1, 5, 10, 20), gallery_loader=None, **kwargs):
        size = len(gallery_loader.dataset)
        evaluate_with = super()._evaluate if self.evaluator == "torchreid" else self._evaluate_fast
        return evaluate_with(*args, ranks=[r for r in ranks if r <= size] or [1], gallery_loader=gallery_loader,
                             **kwargs)

    def _features(self, loader):
        features, pids, camids = [], [], []
        for data in loader:
            imgs, pid, camid = self.parse_data_for_eval(data)
            features.append(self.extract_features(imgs))
            pids.append(pid)
            camids.append(camid)
        return torch.cat(features), torch.cat(pids), torch.cat(camids)

    @torch.no_grad()
    def _evaluate_fast(self, dataset_name: str = "", query_loader=None, gallery_loader=None,
                       dist_metric: str = "euclidean", normalize_feature: bool = False, visrank: bool = False,
                       visrank_topk: int = 10, save_dir: str = "", use_metric_cuhk03: bool = False,
                       ranks: Sequence[int] = (1, 5, 10, 20), rerank: bool = False):
        """torchreid's ``_evaluate`` with :func:`evaluate`: the features stay on the device and are ranked in
        chunks, after query expansion and k-reciprocal re-ranking (``postprocess``) where asked for; a full distance
        matrix is built only for ranked pictures (``visrank``)."""
        print("Extracting features from query set ...")
        qf, q_pids, q_camids = self._features(query_loader)
        print(f"Done, obtained {qf.size(0)}-by-{qf.size(1)} matrix")
        print("Extracting features from gallery set ...")
        gf, g_pids, g_camids = self._features(gallery_loader)
        print(f"Done, obtained {gf.size(0)}-by-{gf.size(1)} matrix")
        if normalize_feature:
            print("Normalizing features with L2 norm ...")
            qf, gf = F.normalize(qf, p=2, dim=1), F.normalize(gf, p=2, dim=1)
        if self.postprocess.query_expansion:
            print("Applying alpha-query expansion ...")
            qf, gf = self.postprocess.expand(qf, gf)
        labels = (q_pids, g_pids, q_camids, g_camids)
        options = dict(max_rank=max(ranks), cuhk03=use_metric_cuhk03, memory_mb=self.eval_memory_mb)
        print(f"Computing CMC, mAP and mINP with metric={dist_metric} ...")
        distmat = reranked = None
        if rerank:
            print("Applying person re-ranking ...")
            reranked = self.postprocess.rerank(qf, gf, dist_metric)
        if visrank:
            distmat = reranked.matrix() if reranked else distance_matrix(qf, gf, dist_metric).cpu().numpy()
        if distmat is not None:
            result = evaluate_distances(distmat, *labels, **options)
        elif reranked is not None:
            result = evaluate_rows(reranked.rows, *reranked.shape, *labels, **options)
        else:
            result = evaluate(qf, gf, *labels, dist_metric=dist_metric, **options)
        print("** Results **")
        print(f"mAP: {result.mAP:.1%}")
        print(f"mINP: {result.mINP:.1%}")
        print("CMC curve")
        for r in ranks:
            print(f"Rank-{r:<3}: {result.cmc[r - 1]:.1%}")
        if result.num_skipped:
            print(f"{result.num_skipped} queries without a match in another camera were skipped")
        if self.writer is not None:
            self.writer.add_scalar(f"Test/{dataset_name}/mINP", result.mINP, self.epoch)
        if visrank:
            _torchreid.utils.visualize_ranked_results(
                distmat, self.datamanager.fetch_test_loaders(dataset_name), self.datamanager.data_type,
                width=self.datamanager.width, height=self.datamanager.height,
                save_dir=os.path.join(save_dir, "visrank_" + dataset_name), topk=visrank_topk)
        return float(result.cmc[0]), result.mAP


class ImageSoftmaxEngine(EngineMixin, _torchreid.engine.ImageSoftmaxEngine):
    """torchreid's softmax engine with this package's additions (:class:`EngineMixin`); its step is torchreid's
    with the forward in mixed precision and the loss in float32."""

    def forward_backward(self, data: Dict[str, torch.Tensor]) -> Dict[str, float]:
        imgs, pids = self.parse_data_for_train(data)
        with self.precision.autocast():
            logits = self.model(imgs)
        loss = self.compute_loss(self.criterion, logits, pids)
        self.update(loss)
        return self.summarize({"loss": loss.detach(), "acc": _accuracy(logits, pids)})


class ImageTripletEngine(EngineMixin, _torchreid.engine.ImageTripletEngine):
    """torchreid's triplet engine with this package's additions (:class:`EngineMixin`); its step is torchreid's
    with the forward in mixed precision and the losses in float32."""

    def forward_backward(self, data: Dict[str, torch.Tensor]) -> Dict[str, float]:
        imgs, pids = self.parse_data_for_train(data)
        with self.precision.autocast():
            logits, features = self.model(imgs)
        objective, stats = torch.zeros((), device=imgs.device), {}
        if self.weight_t > 0:
            stats["loss_t"] = self.compute_loss(self.criterion_t, features, pids)
            objective = objective + self.weight_t * stats["loss_t"]
        if self.weight_x > 0:
            stats["loss_x"] = self.compute_loss(self.criterion_x, logits, pids)
            objective = objective + self.weight_x * stats["loss_x"]
            stats["acc"] = _accuracy(logits, pids)
        self.update(objective)
        return self.summarize({k: v.detach() for k, v in stats.items()})


def _float(outputs):
    """Network outputs (a tensor, or torchreid's list/tuple of them) in float32."""
    if isinstance(outputs, (tuple, list)):
        return type(outputs)(o.float() for o in outputs)
    return outputs.float()


def _accuracy(logits: torch.Tensor, pids: torch.Tensor) -> torch.Tensor:
    return _torchreid.metrics.accuracy(logits.detach().float(), pids)[0]


class SCALLosses(NamedTuple):
    """The terms of one step. ``model_objective`` and ``critic_objective`` are what gets minimised."""

    triplet: torch.Tensor
    classification: torch.Tensor
    critic: torch.Tensor
    mse: torch.Tensor
    model_objective: torch.Tensor
    critic_objective: torch.Tensor
    rewards: Rewards
    values: torch.Tensor
    logits: torch.Tensor


class ImageSCALEngine(ImageTripletEngine):
    """Self-critical attention learning on top of torchreid's ``ImageTripletEngine``.

    Takes the triplet engine's arguments plus the critic's: ``critic_weight`` (``w_c``), its optimizer
    and scheduler (or ``critic_optim``/``critic_lr`` to build an optimizer with torchreid's builder),
    ``critic_warmup_epochs`` (the agents follow the critic from that epoch on), ``critic_stages`` and
    ``critic_activation``; ``critics`` may be given ready-made (with an optimizer and scheduler built on them).
    How the critics learn ``dV/dA``: ``critic_counterfactual`` also regresses each image's all-ones map (no
    attention) on the reward of the no-attention pass, and ``critic_explore_std`` perturbs the agents' maps of
    the training pass in logit space (a behaviour policy around the agents', as in deterministic actor-critic
    methods), so that the critics see, for similar features, maps that differ and rewards that follow.
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
        critic_stages: Sequence[int] = (0, 1, 2, 3, 4),
        critic_activation: str = "relu",
        critic_counterfactual: bool = False,
        critic_explore_std: float = 0.0,
        critics: Optional[StageCritics] = None,
        diagnostic_batch: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
        **engine_options,
    ) -> None:
        super().__init__(datamanager, model, optimizer, margin=margin, weight_t=weight_t, weight_x=weight_x,
                         scheduler=scheduler, use_gpu=use_gpu, label_smooth=label_smooth, **engine_options)
        net = self.network
        if len(getattr(net, "agents", ())) == 0:
            raise ValueError(
                f"ImageSCALEngine needs a model with attention agents (resnet50_scal*), got {type(net).__name__} "
                "without agents; train resnet50_bnneck with loss.name 'triplet' instead"
            )
        if critics is None:
            critics = StageCritics(net.attention, net.stage_channels, critic_stages,
                                   activation=critic_activation).to(self.device)
        critics = distributed.wrap(critics, self.device)
        if critic_optimizer is None:
            critic_optimizer = _torchreid.optim.build_optimizer(critics, optim=critic_optim, lr=critic_lr,
                                                                weight_decay=0.0)
        self.critics = critics
        self.critic_optimizer = critic_optimizer
        self.critic_scheduler = critic_scheduler
        self.critic_weight = critic_weight
        self.critic_warmup_epochs = critic_warmup_epochs
        self.counterfactual = critic_counterfactual
        self.explore_std = critic_explore_std
        self.diagnostic_batch = diagnostic_batch
        self.register_model("critic", critics, critic_optimizer, critic_scheduler)
        self._epoch_record: List[torch.Tensor] = []

    @property
    def critic_net(self) -> StageCritics:
        """The critics themselves, unwrapped from DistributedDataParallel."""
        return getattr(self.critics, "module", self.critics)

    @property
    def critic_active(self) -> bool:
        """Whether the agents follow the critic (J_cri) in the current epoch."""
        return self.epoch >= self.critic_warmup_epochs

    def explore(self, k: int, a: torch.Tensor) -> torch.Tensor:
        """The behaviour policy's map: the agent's ``a`` moved by Gaussian noise of ``explore_std`` in logit
        space (so it stays in (0, 1)); gradients reach the agent through ``a``."""
        logit = torch.special.logit(a.float(), eps=1e-6)
        return torch.sigmoid(logit + self.explore_std * torch.randn_like(logit)).to(a.dtype)

    def compute_losses(self, imgs: torch.Tensor, pids: torch.Tensor) -> SCALLosses:
        """Every SCAL quantity of one batch; the gradient routing of the four losses lives here.

        The network's two passes run in mixed precision when it is enabled; rewards, critics and losses in
        float32."""
        with self.precision.autocast():
            out = self.model(imgs, return_stages=True, map_fn=self.explore if self.explore_std > 0 else None)
            with torch.no_grad():  # the same weights without attention, from the shared stem output X_0
                stem = out.features[0].detach()
                plain_logits = self.model(imgs, return_stages=True, use_attention=False, stem=stem).logits
        logits = out.logits.float()
        rewards = compute_rewards(logits, plain_logits, pids)

        # J_tri, J_cls → backbone, agents and head (torchreid's criteria, as its triplet engine computes them).
        loss_t = self.compute_loss(self.criterion_t, out.feature, pids)
        loss_x = self.compute_loss(self.criterion_x, logits, pids)

        # J_mse → critics only: their inputs X_k, A_k are cut from the network's graph. With the counterfactual,
        # the all-ones map of the same features is regressed on the no-attention pass's reward too.
        # J_cri → agents only: A'_k = agent_k(X_k.detach()) keeps the backbone out, and the critics score A'_k
        # with their weights held fixed, so that J_cri cannot move them (only after the critic warm-up).
        features = [x.detach().float() for x in out.features]
        maps = [a.detach().float() for a in out.maps]
        agent_maps = [agent(x) for agent, x in zip(self.network.agents, features)] if self.critic_active else None
        scored = self.critics(features, maps, agent_maps, ones=self.counterfactual)
        errors = (scored.values - rewards.total).square()
        if scored.ones_values is not None:
            plain_rewards = compute_rewards(plain_logits, logits, pids)  # the no-attention pass's own reward
            errors = torch.cat([errors, (scored.ones_values - plain_rewards.total).square()], dim=1)
        loss_mse = errors.mean()
        if scored.agent_values is not None:
            loss_cri = -scored.agent_values.mean()
        else:
            loss_cri = -scored.values.detach().mean()  # reported during the warm-up, not optimised

        model_objective = self.weight_t * loss_t + self.weight_x * loss_x
        if self.critic_active:
            model_objective = model_objective + self.critic_weight * loss_cri
        return SCALLosses(loss_t, loss_x, loss_cri, loss_mse, model_objective, loss_mse, rewards, scored.values,
                          logits)

    def step(self, model_objective: torch.Tensor, critic_objective: torch.Tensor) -> None:
        """One backward through both objectives (their graphs share no parameter), then both optimizers."""
        self.update(model_objective + critic_objective)

    def forward_backward(self, data: Dict[str, torch.Tensor]) -> Dict[str, float]:
        imgs, pids = self.parse_data_for_train(data)
        losses = self.compute_losses(imgs, pids)
        self.step(losses.model_objective, losses.critic_objective)
        self._epoch_record.append(torch.cat([losses.values.detach(), torch.stack(losses.rewards)]))
        value = losses.values.detach().mean(dim=0)
        rewards = losses.rewards
        return self.summarize({
            "loss_t": losses.triplet.detach(),
            "loss_x": losses.classification.detach(),
            "loss_cri": losses.critic.detach(),
            "loss_mse": losses.mse.detach(),
            "acc": _accuracy(losses.logits, pids),
            "reward": rewards.total.mean(),
            "reward_c": rewards.classification.mean(),
            "reward_a": rewards.amelioration.mean(),
            "critic_value": value.mean(),
            "critic_corr": pearson(value, rewards.total),
        })

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
