"""Stopping on a signal and continuing within the epoch.

Clusters send SIGTERM (or SIGUSR1, e.g. SLURM's ``--signal``) shortly before they kill a job, and Ctrl-C sends
SIGINT. While :class:`StopSignals` is active they only raise a flag; training checks it after every step, writes
a checkpoint that records how far the epoch got, and raises :class:`Preempted`. :func:`resumed_loader` then
replays that epoch from the next batch.
"""
from __future__ import annotations

import itertools
import os
import signal
import threading
from typing import Callable, Dict, Iterable, Iterator, List, Optional

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Sampler

from . import distributed

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


class Preempted(Exception):
    """Training stopped on a signal after writing a checkpoint; the message says where and how to continue."""


class StopSignals:
    """Context manager: while active, SIGTERM, SIGUSR1 and SIGINT set :attr:`received` instead of ending the
    process; a SIGINT after any of them ends it at once (KeyboardInterrupt). Forked children (DataLoader
    workers, which also get Ctrl-C and a cluster's signals) ignore them and keep loading until the process that
    entered it stops them. Outside the main thread, where Python cannot install handlers, it does nothing."""

    def __init__(self) -> None:
        self.received: Optional[int] = None
        self._previous: Dict[int, object] = {}
        self._pid = os.getpid()

    def __enter__(self) -> "StopSignals":
        self.received, self._pid = None, os.getpid()
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in STOP_SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            if handler is not None:
                signal.signal(sig, handler)
        self._previous = {}

    def _handle(self, signum: int, frame) -> None:
        if os.getpid() != self._pid:  # a forked worker: the main process decides when to stop
            return
        if signum == signal.SIGINT and self.received is not None:
            raise KeyboardInterrupt("second stop signal (Ctrl-C): stopped at once, without a checkpoint")
        self.received = signum

    def requested(self, device: torch.device) -> bool:
        """Whether a stop signal arrived here or, under torchrun, in any process (so that all stop at one step)."""
        if distributed.world().size == 1:
            return self.received is not None
        flag = torch.tensor([float(self.received is not None)], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    @property
    def name(self) -> str:
        """The received signal's name (or 'a stop signal' when it reached another process only)."""
        return signal.Signals(self.received).name if self.received is not None else "a stop signal"


class _SkipBatches(Sampler):
    """A batch sampler yielding ``batches``' batches after the first ``skip``; ``then`` runs once those are
    drawn (so the sampler's own random draws for the epoch happen as usual) and before the first batch is
    handed out (so before any image of it is loaded)."""

    def __init__(self, batches: Iterable[List[int]], skip: int, then: Callable[[], None]) -> None:
        self.batches, self.skip, self.then = batches, skip, then

    def __iter__(self) -> Iterator[List[int]]:
        remaining = iter(self.batches)
        for _ in itertools.islice(remaining, self.skip):
            pass
        self.then()
        yield from remaining

    def __len__(self) -> int:
        return max(len(self.batches) - self.skip, 0)


def resumed_loader(loader: DataLoader, skip: int, then: Callable[[], None]) -> DataLoader:
    """``loader``'s epoch without its first ``skip`` batches, whose images are never loaded; ``then`` runs right
    before the first remaining batch is loaded (with ``num_workers`` 0, before its random augmentations)."""
    return DataLoader(loader.dataset, batch_sampler=_SkipBatches(loader.batch_sampler, skip, then),
                      num_workers=loader.num_workers, collate_fn=loader.collate_fn, pin_memory=loader.pin_memory,
                      timeout=loader.timeout, worker_init_fn=loader.worker_init_fn, generator=loader.generator,
                      multiprocessing_context=loader.multiprocessing_context)
