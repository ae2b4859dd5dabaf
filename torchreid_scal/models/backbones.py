"""Backbones' stage adapters: how each torchreid backbone is cut into a stem and four stages.

SCAL puts an attention agent after the stem and after each stage. A :class:`Backbone` names, for one torchreid
backbone, the top-level modules that make up its stem and each stage (in the order ``featuremaps`` runs them),
how to build it, and where torchreid's loader finds its ImageNet weights. The network adopts those modules
under their own names, so its state-dict keys are the backbone's (torchreid's ImageNet files load as they are)
and its classification head (``fc``, ``classifier``) is left out. Channels and map sizes are measured by running
the modules (:func:`stage_shapes`), never derived from a formula of one family.

The plain ResNets and ResNeXt are built with torchvision's constructors: torchreid's ``resnet.py`` is the same
code with the same module names and the same ImageNet files, and building ``resnet50`` exactly as this package
always has keeps seeded runs (and the initial weights of ``resnet50_scal``) unchanged.
"""
from __future__ import annotations

import functools
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Dict, List, Sequence, Tuple

import torch
import torchvision
from torch import nn

from .. import _torchreid
from .pretrained import ImageNetWeights

Stage = Tuple[str, ...]
"""The names of the top-level modules one stage runs, in order."""


@dataclass(frozen=True)
class Backbone:
    """One torchreid backbone as SCAL uses it. ``stem`` and ``stages`` name the modules (``blocks`` is both, stem
    first); ``strided_last_stage``: the last stage's first block halves the map, so ``last_stride=1`` can keep
    it (ResNets), else the last stages keep the map size already (OSNet)."""

    name: str
    build: Callable[[], nn.Module]
    stem: Stage
    stages: Tuple[Stage, ...]
    weights: ImageNetWeights
    strided_last_stage: bool = True

    @property
    def blocks(self) -> Tuple[Stage, ...]:
        """The stem and the four stages: after each of them SCAL places an agent."""
        return (self.stem, *self.stages)

    @property
    def module_names(self) -> Tuple[str, ...]:
        """Every module the network adopts, in running order."""
        return tuple(name for block in self.blocks for name in block)

    def last_strides(self) -> Tuple[int, ...]:
        """The ``last_stride`` values this backbone takes."""
        return (1, 2) if self.strided_last_stage else (1,)

    def modules(self, last_stride: int = 1) -> "OrderedDict[str, nn.Module]":
        """A freshly built backbone's stem and stage modules by name, with the last stage's stride set."""
        if last_stride not in self.last_strides():
            detail = "" if self.strided_last_stage else " (its last stages keep the map size: it has no stride to set)"
            raise ValueError(f"last_stride (model.last_stride) must be one of {list(self.last_strides())} for "
                             f"{self.name}{detail}, got {last_stride!r}")
        net = self.build()
        if self.strided_last_stage and last_stride == 1:
            _unstride_first_block(getattr(net, self.stages[-1][0]), self.name)
        return OrderedDict((name, getattr(net, name)) for name in self.module_names)


def _unstride_first_block(stage: nn.Module, name: str) -> None:
    """Stride 1 for the convolutions of the stage's first block that have stride 2 (its main path and its
    downsampling shortcut), so that the stage keeps the map size."""
    first = next(iter(stage.children()))
    strided = [m for m in first.modules() if isinstance(m, nn.Conv2d) and m.stride == (2, 2)]
    if not strided:
        raise ValueError(f"{name}: the last stage's first block has no stride-2 convolution to set to 1")
    for conv in strided:
        conv.stride = (1, 1)


def stage_shapes(modules: Dict[str, nn.Module], blocks: Sequence[Stage], height: int, width: int,
                 backbone: str = "the backbone") -> List[Tuple[int, Tuple[int, int]]]:
    """``(channels, (h, w))`` after each block for one ``height×width`` image, measured by running the modules
    (in eval mode, without gradients; their modes are restored)."""
    modes = {name: m.training for name, m in modules.items()}
    shapes = []
    try:
        with torch.no_grad():
            x = torch.zeros(1, 3, height, width)
            for block in blocks:
                for name in block:
                    x = modules[name].eval()(x)
                shapes.append((int(x.shape[1]), (int(x.shape[2]), int(x.shape[3]))))
    except RuntimeError as err:
        raise ValueError(f"{height}x{width} images are too small for {backbone}'s stages (data.height, data.width): "
                         f"{str(err).splitlines()[0]}") from None
    finally:
        for name, m in modules.items():
            m.train(modes[name])
    return shapes


def stage_sizes(height: int, width: int, last_stride: int = 1, backbone: str = "resnet50") -> List[Tuple[int, int]]:
    """Feature-map size after the stem and after each stage of ``backbone`` for ``height×width`` images."""
    spec = BACKBONES[backbone]
    return [size for _, size in stage_shapes(spec.modules(last_stride), spec.blocks, height, width, backbone)]


def _build_torchreid_model(name: str) -> nn.Module:
    """torchreid's own ``name``, without ImageNet weights (this package loads them, see :mod:`.pretrained`)."""
    return _torchreid.models.build_model(name, 1, pretrained=False, use_gpu=False)


def _torchreid_model(name: str) -> Callable[[], nn.Module]:
    return functools.partial(_build_torchreid_model, name)


def _torchvision_model(name: str) -> Callable[[], nn.Module]:
    return getattr(torchvision.models, name)


RESNET_STEM: Stage = ("conv1", "bn1", "relu", "maxpool")
RESNET_STAGES: Tuple[Stage, ...] = (("layer1",), ("layer2",), ("layer3",), ("layer4",))
OSNET_STEM: Stage = ("conv1", "maxpool")
OSNET_STAGES: Tuple[Stage, ...] = (("conv2",), ("conv3",), ("conv4",), ("conv5",))
OSNET_AIN_STAGES: Tuple[Stage, ...] = (("conv2", "pool2"), ("conv3", "pool3"), ("conv4",), ("conv5",))
"""OSNet-AIN keeps the transition after conv2 and conv3 in modules of their own (``pool2``, ``pool3``)."""


def _hub(url: str) -> ImageNetWeights:
    return ImageNetWeights(url, url.rsplit("/", 1)[-1], cache="hub")


def _table() -> Dict[str, Backbone]:
    resnet_urls = _torchreid.submodule("models.resnet").model_urls
    ibn_url = _torchreid.submodule("models.resnet_ibn_a").model_urls["resnet50"]
    senet_url = _torchreid.submodule("models.senet").pretrained_settings["se_resnet50"]["imagenet"]["url"]
    osnet_urls = {**_torchreid.submodule("models.osnet").pretrained_urls,
                  **_torchreid.submodule("models.osnet_ain").pretrained_urls}
    table = [
        *(Backbone(name, _torchvision_model(name), RESNET_STEM, RESNET_STAGES, _hub(resnet_urls[name]))
          for name in ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")),
        Backbone("resnext50_32x4d", _torchvision_model("resnext50_32x4d"), RESNET_STEM, RESNET_STAGES,
                 _hub(resnet_urls["resnext50_32x4d"])),
        # torchreid's IBN loaders read the plain ResNet-50 ImageNet file (the IN layers keep their initialisation).
        *(Backbone(name, _torchreid_model(name), RESNET_STEM, RESNET_STAGES, _hub(ibn_url))
          for name in ("resnet50_ibn_a", "resnet50_ibn_b")),
        Backbone("se_resnet50", _torchreid_model("se_resnet50"), ("layer0",), RESNET_STAGES,
                 _hub(senet_url)),
        *(Backbone(name, _torchreid_model(name), OSNET_STEM,
                   OSNET_AIN_STAGES if name.startswith("osnet_ain") else OSNET_STAGES,
                   ImageNetWeights(osnet_urls[name], f"{name}_imagenet.pth", cache="checkpoints"),
                   strided_last_stage=False)
          for name in ("osnet_x1_0", "osnet_x0_75", "osnet_x0_5", "osnet_x0_25", "osnet_ibn_x1_0", "osnet_ain_x1_0")),
    ]
    return {backbone.name: backbone for backbone in table}


BACKBONES: Dict[str, Backbone] = _table()
"""Every backbone SCAL supports, by torchreid's name."""
