"""What every engine of this package shares, apart from any method: torchreid's softmax and triplet engines
with safe checkpoints, preemption, mixed precision, channels-last inputs and the fast evaluator.

The SCAL step itself lives in :mod:`torchreid_scal.scal_engine`.
"""
from __future__ import annotations

import datetime
import math
import os
import random
import time
from typing import Any, Dict, Iterable, List, NoReturn, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from . import _torchreid, distributed
from .checkpoint import NonFiniteError, SafeCheckpointing, rng_state, set_rng_state, write_atomically
from .datasets import DataError
from .evaluation import RankMetrics, count_valid_queries, distance_matrix, evaluate, evaluate_distances, evaluate_rows
from .precision import Precision
from .preemption import Preempted, StopSignals, resumed_loader
from .retrieval.postprocess import PostProcess


EVALUATORS = ("fast", "torchreid")
MAX_SQUARED_NORM = 2.0 ** 124
"""Largest squared L2 norm of a feature: float32 distances ``|q|^2 + |g|^2 - 2 q.g`` of two such stay finite."""


class EngineMixin(SafeCheckpointing):
    """What this package adds to torchreid's engines: checkpoints that reload safely
    (:class:`SafeCheckpointing`), stopping on SIGTERM, SIGUSR1 or SIGINT with a checkpoint that resumes within
    the epoch, mixed precision for training (``amp``) and feature extraction (``test_amp``), channels-last
    inputs, the ``fast`` evaluator (:mod:`torchreid_scal.evaluation`, in chunks of ``eval_memory_mb``;
    ``evaluator='torchreid'`` keeps torchreid's), and a result printout that does not raise IndexError when the
    gallery is smaller than the largest requested rank. Under both evaluators, a test set without a valid query
    and non-finite features stop with one line (``model_name`` names the model) before any metric is printed."""

    def __init__(self, *args, amp: bool = False, test_amp: bool = False, channels_last: bool = False,
                 checkpoint_freq: int = 1, keep_last: int = 0, evaluator: str = "fast", eval_memory_mb: float = 256,
                 model_name: str = "", postprocess: Optional[PostProcess] = None, **kwargs) -> None:
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
        self.model_name = model_name or type(self.network).__name__
        self._eval_dataset = ""
        self._batch_paths: List[str] = []

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
        self._batch_paths = list(data.get("impath", ())) if isinstance(data, dict) else []
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
        """The network's features in float32; NonFiniteError naming the model, the dataset and an image when any is
        NaN, infinite or too large for float32 distances (before, torchreid's evaluator printed metrics of them)."""
        with self.test_precision.autocast():
            features = self.network(input).float()
        bad = ~(features.square().sum(dim=1) <= MAX_SQUARED_NORM)  # NaN compares False
        if bool(bad.any()):
            paths = self._batch_paths
            example = f", e.g. {paths[int(bad.nonzero()[0])]}" if len(paths) == len(bad) else ""
            raise NonFiniteError(
                f"{self.model_name} gives non-finite features (NaN, infinite, or a squared norm above 2^124 where "
                f"float32 distances overflow) for {int(bad.sum())} of {len(bad)} images of "
                f"{self._eval_dataset or 'the batch'}{example}; no metric was computed: check the weights "
                "(model.load_weights) and, with test.amp, try without it")
        return features

    def _evaluate(self, *args, ranks: Sequence[int] = (1, 5, 10, 20), gallery_loader=None, **kwargs):
        self._eval_dataset = kwargs.get("dataset_name", "")
        self._check_queries(kwargs.get("query_loader"), gallery_loader)
        size = len(gallery_loader.dataset)
        evaluate_with = super()._evaluate if self.evaluator == "torchreid" else self._evaluate_fast
        return evaluate_with(*args, ranks=[r for r in ranks if r <= size] or [1], gallery_loader=gallery_loader,
                             **kwargs)

    def _check_queries(self, query_loader, gallery_loader) -> None:
        """DataError when no query has a gallery image of its identity from another camera: nothing can be ranked
        (both evaluators stopped with a traceback). Checked on the datasets' labels, before any feature is extracted."""
        items = [getattr(getattr(loader, "dataset", None), "data", None) for loader in (query_loader, gallery_loader)]
        if any(not isinstance(split, list) for split in items):
            return
        (query, gallery) = ([(item[1], item[2]) for item in split] for split in items)
        if query and gallery and count_valid_queries(*zip(*query), *zip(*gallery)) == 0:
            raise DataError(f"dataset {self._eval_dataset}: none of its {len(query)} queries has a gallery image of its "
                            f"identity from another camera ({len(gallery)} gallery images), so there is nothing to rank; "
                            "query and gallery must share identities seen by different cameras")

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
        if self.save_dir:  # evaluation runs on rank 0 only
            write_per_query(os.path.join(self.save_dir, f"{PER_QUERY_PREFIX}{dataset_name}.csv"), query_loader.dataset,
                            q_pids, q_camids, result)
        if self.writer is not None:
            self.writer.add_scalar(f"Test/{dataset_name}/mINP", result.mINP, self.epoch)
        if visrank:
            _torchreid.utils.visualize_ranked_results(
                distmat, self.datamanager.fetch_test_loaders(dataset_name), self.datamanager.data_type,
                width=self.datamanager.width, height=self.datamanager.height,
                save_dir=os.path.join(save_dir, "visrank_" + dataset_name), topk=visrank_topk)
        return float(result.cmc[0]), result.mAP


PER_QUERY_PREFIX = "per_query-"
"""``data.save_dir/per_query-<dataset>.csv``: each query's AP and first-match rank from the latest evaluation."""


def write_per_query(path: str, dataset, pids: torch.Tensor, camids: torch.Tensor, result: RankMetrics) -> None:
    """One row per query, in query order (its image, pid, camid, average precision and the rank of its first
    true match; an empty AP and rank 0 for a query without a match in another camera), written atomically."""
    items = getattr(dataset, "data", None) or [("",)] * len(pids)
    lines = ["query,pid,camid,ap,first_match"]
    for item, pid, camid, ap, first in zip(items, pids.tolist(), camids.tolist(), result.ap, result.first_match):
        lines.append(f"{os.path.basename(str(item[0]))},{pid},{camid},{'' if np.isnan(ap) else f'{ap:.6f}'},{first}")
    write_atomically(path, lambda f: f.write(("\n".join(lines) + "\n").encode()))


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
