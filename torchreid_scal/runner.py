"""The job ``tools/main.py`` runs: build torchreid's pieces and this package's from a config, then train
and/or evaluate. Every builder is a function here so that tests reach all of it."""
from __future__ import annotations

import contextlib
import os
import sys
import time
import warnings
from typing import Dict, Optional, TextIO

import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader
from yacs.config import CfgNode as CN

from . import __version__, _torchreid, distributed, rundir
from .checkpoint import CheckpointError, load_weights
from .config import (ConfigError, engine_run_kwargs, imagedata_kwargs, lr_scheduler_kwargs, model_kwargs,
                     optimizer_kwargs)
from .datasets import DATASETS, check_available, checked_datasets
from .datasets.custom import register_custom
from .datasets.demo import demo_options
from .datasets.splits import diagnostic_dataset, fixed_batch
from .engine import ImageSoftmaxEngine, ImageTripletEngine
from .models import MODEL_FACTORIES, PretrainedWeightsError
from .retrieval.postprocess import PostProcess
from .scal_engine import ImageSCALEngine, build_critics


def select_device(cfg: CN) -> torch.device:
    """CUDA when the config allows it (``use_gpu``) and a GPU is there (this process's, under torchrun),
    else the CPU."""
    if cfg.use_gpu and torch.cuda.is_available():
        return torch.device("cuda", distributed.world().local_rank)
    return torch.device("cpu")


def build_datamanager(cfg: CN, device: torch.device):
    """torchreid's ``ImageDataManager``, after checking that every dataset is where torchreid will look, and
    with the checks of :func:`checked_datasets` on the lists it builds. Its train loader keeps its workers
    across epochs and, under torchrun, feeds this process its share of every P x K batch."""
    names = list(cfg.data.sources) + list(cfg.data.targets)
    custom = register_custom(names, cfg.data.camera_pattern)
    check_available(cfg.data.root, names, generated=list(DATASETS) + custom)
    # An evaluation draws no training batch: nothing checks that the training split can fill one (torchreid's
    # identity sampler would assert it).
    identity_sampling = cfg.sampler.train_sampler == "RandomIdentitySampler" and not cfg.test.evaluate
    kwargs = imagedata_kwargs(cfg, use_gpu=device.type == "cuda")
    if cfg.test.evaluate:
        kwargs["train_sampler"] = "RandomSampler"
    with demo_options(num_test_ids=cfg.scal_demo.num_test_ids), \
            checked_datasets(names, cfg.data.sources, skip_bad_images=cfg.data.skip_bad_images,
                             check_images=cfg.data.check_images,
                             num_instances=cfg.sampler.num_instances if identity_sampling else None,
                             ids_per_batch=cfg.train.batch_size // cfg.sampler.num_instances):
        datamanager = _torchreid.data.ImageDataManager(**kwargs)
    loader = datamanager.train_loader
    sampler, batch_size = loader.sampler, loader.batch_size
    here = distributed.world()
    if here.size > 1 and not cfg.test.evaluate:
        if not identity_sampling:
            raise ConfigError("distributed training shards P x K batches: "
                              "set sampler.train_sampler RandomIdentitySampler")
        sampler = distributed.DistributedIdentitySampler(loader.dataset.train, cfg.train.batch_size,
                                                         cfg.sampler.num_instances, here.rank, here.size,
                                                         cfg.train.seed)
        batch_size //= here.size
        print(f"Distributed: {here.size} processes, {batch_size} images each per step")
    if here.size > 1 or loader.num_workers > 0:  # torchreid's loader starts its workers anew every epoch
        datamanager.train_loader = DataLoader(loader.dataset, sampler=sampler, batch_size=batch_size,
                                              num_workers=loader.num_workers, pin_memory=loader.pin_memory,
                                              drop_last=True, persistent_workers=loader.num_workers > 0)
    return datamanager


def build_model(cfg: CN, num_classes: int) -> nn.Module:
    """This package's models through their registered factory with the configured keywords (ConfigError when a
    configured value does not fit the model or its ImageNet weights cannot be had); any other name through
    torchreid's ``build_model``."""
    loss = "softmax" if cfg.loss.name == "softmax" else "triplet"
    if cfg.model.name in MODEL_FACTORIES:
        factory = MODEL_FACTORIES[cfg.model.name]
        try:
            return factory(num_classes, loss=loss, pretrained=cfg.model.pretrained, **model_kwargs(cfg))
        except (PretrainedWeightsError, ValueError) as err:  # a value or a file the config names: one line, exit 2
            raise ConfigError(f"{cfg.model.name}: {err}") from None
    return _torchreid.models.build_model(cfg.model.name, num_classes, loss=loss, pretrained=cfg.model.pretrained)


def check_layers(cfg: CN, model: nn.Module) -> None:
    """ConfigError naming the key when ``train.open_layers`` (used when ``train.fixbase_epoch`` > 0) or
    ``train.new_layers`` (used with ``train.staged_lr``) names no layer of ``model``: torchreid would fail
    with a bare assertion at the first epoch, or silently train every layer at the base learning rate."""
    children = [name for name, _ in model.named_children()]
    for key, used in (("open_layers", cfg.train.fixbase_epoch > 0), ("new_layers", cfg.train.staged_lr)):
        unknown = [name for name in cfg.train[key] if name not in children] if used else []
        if unknown:
            raise ConfigError(f"config key train.{key}: {unknown[0]!r} is not a layer of {cfg.model.name}; "
                              f"its layers: {children}")


def build_trained_model(cfg: CN, state: Dict[str, torch.Tensor], source: str) -> nn.Module:
    """The configured model with the trained weights ``state`` (read from ``source``), sized by their classifier
    and without ImageNet weights, in eval mode; CheckpointError naming ``source`` when they do not fit."""
    classes = state["classifier.weight"].shape[0] if "classifier.weight" in state else 1
    cfg = cfg.clone()
    cfg.defrost()
    cfg.model.pretrained = False
    model = build_model(cfg, classes)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise CheckpointError(f"{source} does not fit {cfg.model.name} at {cfg.data.height}x{cfg.data.width}: "
                              f"{str(err).splitlines()[0]}") from None
    return model.eval()


def build_optimizer(cfg: CN, model: nn.Module) -> torch.optim.Optimizer:
    """torchreid's optimizer for the network itself, unwrapped from DistributedDataParallel (torchreid unwraps only
    DataParallel), so that ``train.staged_lr`` finds ``train.new_layers`` by the network's own names."""
    return _torchreid.optim.build_optimizer(getattr(model, "module", model), **optimizer_kwargs(cfg))


def build_scheduler(cfg: CN, optimizer: torch.optim.Optimizer, warmup: bool = True):
    """torchreid's scheduler, preceded by a linear warm-up (PyTorch's ``LinearLR``) over ``train.warmup_epochs``.

    ``ChainedScheduler`` multiplies the two, so step milestones stay absolute epochs (40 means epoch 40).
    """
    scheduler = _torchreid.optim.build_lr_scheduler(optimizer, **lr_scheduler_kwargs(cfg))
    if not warmup or cfg.train.warmup_epochs == 0:
        return scheduler
    warm = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=cfg.train.warmup_factor,
                                             total_iters=cfg.train.warmup_epochs)
    return torch.optim.lr_scheduler.ChainedScheduler([warm, scheduler])


def build_engine(cfg: CN, datamanager, model: nn.Module, optimizer, scheduler, device: torch.device):
    """The engine chosen by ``loss.name``: torchreid's softmax and triplet engines, or ``ImageSCALEngine``."""
    common = dict(scheduler=scheduler, use_gpu=device.type == "cuda", label_smooth=cfg.loss.softmax.label_smooth,
                  amp=cfg.train.amp, test_amp=cfg.test.amp, channels_last=cfg.model.channels_last,
                  checkpoint_freq=cfg.train.checkpoint_freq, keep_last=cfg.train.keep_last,
                  evaluator=cfg.test.evaluator, eval_memory_mb=cfg.test.eval_memory_mb, model_name=cfg.model.name,
                  postprocess=PostProcess.from_config(cfg))
    if cfg.loss.name == "softmax":
        return ImageSoftmaxEngine(datamanager, model, optimizer, **common)
    triplet = dict(common, margin=cfg.loss.triplet.margin, weight_t=cfg.loss.triplet.weight_t,
                   weight_x=cfg.loss.triplet.weight_x)
    if cfg.loss.name == "triplet":
        return ImageTripletEngine(datamanager, model, optimizer, **triplet)
    scal = cfg.scal
    critics = build_critics(getattr(model, "module", model), scal.critic_form, list(scal.critic_stages),
                            scal.critic_activation, seed=cfg.train.seed)
    critic_optimizer = critic_scheduler = None
    if critics is not None:
        critics = critics.to(device)
        critic_optimizer = _torchreid.optim.build_optimizer(critics, optim=scal.critic_optim, lr=scal.critic_lr,
                                                            weight_decay=0.0)
        critic_scheduler = build_scheduler(cfg, critic_optimizer, warmup=False)
    return ImageSCALEngine(
        datamanager, model, optimizer, **triplet, critic_weight=scal.critic_weight, critics=critics,
        critic_optimizer=critic_optimizer, critic_scheduler=critic_scheduler, critic_form=scal.critic_form,
        critic_stages=list(scal.critic_stages), critic_warmup_epochs=scal.critic_warmup_epochs,
        critic_explore_std=scal.critic_explore_std, critic_target=scal.critic_target, critic_seed=cfg.train.seed,
        diagnostic_batch=(fixed_batch(diagnostic_dataset(datamanager), scal.diagnostic_images)
                          if scal.diagnostic_images and critics is not None else None),
    )


class _Log:
    """The run's log file, line-buffered so that it holds every line printed so far. A write that fails (a full disk)
    ends the log with one warning on the console, which keeps everything; it never stops the run."""

    def __init__(self, path: str, console: TextIO) -> None:
        self.path, self.console = path, console
        self.file: Optional[TextIO] = open(path, "a", buffering=1)

    def write(self, text: str) -> None:
        if self.file is not None:
            self._do(lambda file: file.write(text))

    def flush(self) -> None:
        if self.file is not None:
            self._do(lambda file: file.flush())

    def close(self) -> None:
        if self.file is not None:
            self._do(lambda file: file.close())
            self.file = None

    def _do(self, action) -> None:
        try:
            action(self.file)
        except OSError as err:
            file, self.file = self.file, None
            with contextlib.suppress(OSError):
                file.close()
            self.console.write(f"warning: cannot write the log {self.path} ({err.strerror or err}); it ends here, "
                               "the console shows the rest\n")


class _Tee:
    """Writes to the console stream and to the run's log."""

    def __init__(self, console: TextIO, log: _Log) -> None:
        self.console, self.log = console, log

    def write(self, text: str) -> int:
        self.console.write(text)
        self.log.write(text)
        return len(text)

    def flush(self) -> None:
        self.console.flush()
        self.log.flush()

    def isatty(self) -> bool:
        return False


def describe_environment(device: torch.device) -> str:
    """Versions and device, printed at the start of every run."""
    gpu = f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""
    return (f"torch {torch.__version__}, torchvision {torchvision.__version__}, torchreid {_torchreid.VERSION} "
            f"({_torchreid.LAYOUT} layout), torchreid_scal {__version__}; device {device}{gpu}")


def run(cfg: CN, log_file: Optional[str] = None) -> None:
    """Train and evaluate (or only evaluate, with ``test.evaluate``) as configured; everything printed also
    goes to ``data.save_dir/<train|test>.log-<time>``, TensorBoard events and checkpoints to ``data.save_dir``,
    which the run holds locked (:mod:`rundir`) after checking every location it writes to. Under torchrun,
    every process trains its share and rank 0 alone prints, logs, evaluates and saves."""
    if not distributed.init_from_env(cfg.use_gpu).is_main:
        with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
            _run(cfg)
        return
    name = ("test.log" if cfg.test.evaluate else "train.log") + time.strftime("-%Y-%m-%d-%H-%M-%S")
    log_file = log_file or os.path.join(cfg.data.save_dir, name)
    stdout, stderr = sys.stdout, sys.stderr
    with rundir.claimed(cfg):
        log = _Log(log_file, stderr)
        sys.stdout, sys.stderr = _Tee(stdout, log), _Tee(stderr, log)
        try:
            _run(cfg)
        finally:
            sys.stdout, sys.stderr = stdout, stderr
            log.close()


def _run(cfg: CN) -> None:
    _torchreid.utils.set_random_seed(cfg.train.seed)
    device = select_device(cfg)
    print(f"Show configuration\n{cfg.dump()}")
    print(describe_environment(device))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    datamanager = build_datamanager(cfg, device)
    print(f"Building model: {cfg.model.name}")
    model = build_model(cfg, datamanager.num_train_pids)
    check_layers(cfg, model)
    params, flops = _torchreid.utils.compute_model_complexity(model, (1, 3, cfg.data.height, cfg.data.width))
    print(f"Model complexity: params={params:,} flops={flops:,}")
    if cfg.model.load_weights:
        load_weights(model, cfg.model.load_weights)
    elif cfg.test.evaluate:
        warnings.warn("test.evaluate is set but model.load_weights is empty: evaluating the model as initialised")
    model = model.to(device, memory_format=torch.channels_last if cfg.model.channels_last else torch.preserve_format)
    if distributed.world().size > 1:
        model = distributed.wrap(model, device, sync_bn=cfg.train.sync_bn, frozen_layers=cfg.train.fixbase_epoch > 0)
    elif device.type == "cuda" and torch.cuda.device_count() > 1:
        model = nn.DataParallel(model)

    optimizer = build_optimizer(cfg, model)
    scheduler = build_scheduler(cfg, optimizer)
    print(f"Building {cfg.loss.name} engine")
    engine = build_engine(cfg, datamanager, model, optimizer, scheduler, device)
    run_kwargs = engine_run_kwargs(cfg)
    if cfg.model.resume:
        run_kwargs["start_epoch"] = engine.resume(cfg.model.resume, save_dir=cfg.data.save_dir)
    engine.run(**run_kwargs)
