"""DistributedDataParallel training under ``torchrun``: process group, identity-balanced sharding, wrapping.

Without torchrun (no ``WORLD_SIZE`` in the environment) every function here is a no-op, so one config
runs unchanged on one process or many.
"""
from __future__ import annotations

import os
import random
from collections import defaultdict
from typing import Dict, Iterator, List, NamedTuple, Sequence

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Sampler

from .config import ConfigError
from .models.head import BNNeck, SyncBNNeck


class World(NamedTuple):
    rank: int
    size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def world() -> World:
    """This process's place among torchrun's processes (rank 0 of 1 without torchrun)."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    return World(0, 1, 0)


def init_from_env(use_gpu: bool) -> World:
    """Join torchrun's process group (NCCL on GPUs, gloo on CPU) when ``WORLD_SIZE`` > 1."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        cuda = use_gpu and torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return world()


class NullWriter:
    """Stands in for TensorBoard's writer on processes other than rank 0."""

    def add_scalar(self, *args, **kwargs) -> None:
        pass

    def close(self) -> None:
        pass


def barrier() -> None:
    """Wait for every process (no-op on one)."""
    if world().size > 1:
        dist.barrier()


def convert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """torch's ``SyncBatchNorm.convert_sync_batchnorm``, except that a :class:`BNNeck` becomes a
    :class:`SyncBNNeck` (torch's would try to make its frozen zero bias, a buffer, a parameter and fail)."""
    if isinstance(module, BNNeck):
        return SyncBNNeck.from_bnneck(module)
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in module.named_children():
        module.add_module(name, convert_sync_batchnorm(child))
    return module


def wrap(module: nn.Module, device: torch.device, sync_bn: bool = False, frozen_layers: bool = False) -> nn.Module:
    """``module`` in DistributedDataParallel when there are several processes (with SyncBatchNorm if asked,
    which PyTorch implements for GPUs only). ``frozen_layers``: some parameters will get no gradient in some
    steps (torchreid's ``fixbase_epoch``), which DDP must look for in every step (``find_unused_parameters``)."""
    if world().size == 1:
        return module
    if sync_bn:
        if device.type != "cuda":
            raise ConfigError(f"train.sync_bn True needs GPUs (PyTorch's SyncBatchNorm has no {device.type} "
                              "implementation): set train.sync_bn False to train on this device")
        module = convert_sync_batchnorm(module)
    return nn.parallel.DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None,
                                               find_unused_parameters=frozen_layers)


class DistributedIdentitySampler(Sampler):
    """torchreid's RandomIdentitySampler across processes: every process draws the same sequence of global
    P×K batches (seeded by ``seed`` and the epoch), and process r takes identities
    ``r·P/W .. (r+1)·P/W`` of each, so within a step the processes see disjoint identities and together
    exactly the global batch. Set the epoch with :meth:`set_epoch` before iterating."""

    def __init__(self, data_source: Sequence[tuple], batch_size: int, num_instances: int, rank: int,
                 world_size: int, seed: int = 0) -> None:
        ids_per_batch = batch_size // num_instances
        if batch_size % num_instances or ids_per_batch % world_size:
            raise ValueError(f"train.batch_size {batch_size} must be P x sampler.num_instances {num_instances} "
                             f"with P divisible by the {world_size} processes")
        self.num_instances, self.ids_per_batch = num_instances, ids_per_batch
        self.rank, self.world_size, self.seed, self.epoch = rank, world_size, seed, 0
        self.index: Dict[int, List[int]] = defaultdict(list)
        for i, item in enumerate(data_source):
            self.index[item[1]].append(i)
        self.pids = sorted(self.index)
        if len(self.pids) < ids_per_batch:
            raise ValueError(f"a batch needs {ids_per_batch} identities; the training set has {len(self.pids)}")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _global_batches(self) -> List[List[List[int]]]:
        """Each global batch as a list of P identity groups of K indices."""
        rng = random.Random(self.seed * 100003 + self.epoch)
        chunks: Dict[int, List[List[int]]] = {}
        for pid in self.pids:
            idxs = list(self.index[pid])
            if len(idxs) < self.num_instances:
                idxs = [rng.choice(idxs) for _ in range(self.num_instances)]
            rng.shuffle(idxs)
            chunks[pid] = [idxs[i:i + self.num_instances]
                           for i in range(0, len(idxs) - self.num_instances + 1, self.num_instances)]
        available, batches = list(self.pids), []
        while len(available) >= self.ids_per_batch:
            chosen = rng.sample(available, self.ids_per_batch)
            batches.append([chunks[pid].pop(0) for pid in chosen])
            available = [pid for pid in available if chunks[pid]]
        return batches

    def __iter__(self) -> Iterator[int]:
        share = self.ids_per_batch // self.world_size
        for groups in self._global_batches():
            for group in groups[self.rank * share:(self.rank + 1) * share]:
                yield from group

    def __len__(self) -> int:
        return len(self._global_batches()) * self.ids_per_batch // self.world_size * self.num_instances

