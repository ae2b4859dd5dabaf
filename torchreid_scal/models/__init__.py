"""The ``resnet50_scal`` family: one factory per public name, and their registration with torchreid.

torchreid's ``build_model`` passes only ``num_classes, loss, pretrained, use_gpu``; the rest comes
from each variant's default config unless given as keyword arguments (``tools/main.py`` passes the
configured values by calling the factory itself).
"""
from __future__ import annotations

from typing import Callable, Dict

from .. import _torchreid
from .attention import ChannelAgent, SpatialAgent
from .critic import (ChannelCritic, CompatibleCritic, CompatibleCritics, CriticContext, SpatialCritic,
                     StageCritics)
from .pretrained import RESNET50_URL, load_imagenet_weights
from .scal_resnet import SCALOutput, SCALResNet, stage_sizes

_COMMON = dict(
    height=256, width=128, last_stride=1, reduction=16, agent_bias_init=0.0, feature="bn", pretrained_path=""
)
DEFAULT_CFGS: Dict[str, dict] = {
    "resnet50_scal": dict(_COMMON, attention="channel"),
    "resnet50_scal_channel": dict(_COMMON, attention="channel"),
    "resnet50_scal_spatial": dict(_COMMON, attention="spatial"),
    "resnet50_bnneck": dict(_COMMON, attention=None),
}
"""Per-variant defaults: the image size the spatial agents are built for, the head and the weights."""


def create_model(
    variant: str, num_classes: int, loss: str = "softmax", pretrained: bool = True, use_gpu: bool = True, **kwargs
) -> SCALResNet:
    """Build ``variant`` with its default config overridden by ``kwargs``; ``use_gpu`` is accepted for
    torchreid's signature only (the caller moves the model to its device)."""
    if variant not in DEFAULT_CFGS:
        raise KeyError(f"unknown variant {variant!r}; expected one of {sorted(DEFAULT_CFGS)}")
    unknown = set(kwargs) - set(DEFAULT_CFGS[variant])
    if unknown:
        raise TypeError(f"{variant}: unexpected keyword arguments {sorted(unknown)}")
    cfg = dict(DEFAULT_CFGS[variant], **kwargs)
    pretrained_path = cfg.pop("pretrained_path")
    model = SCALResNet(num_classes, loss=loss, **cfg)
    if pretrained:
        load_imagenet_weights(model, pretrained_path)
    return model


def resnet50_scal(num_classes: int, loss: str = "softmax", pretrained: bool = True, use_gpu: bool = True,
                  **kwargs) -> SCALResNet:
    """SCAL with channel attention, the paper's stronger variant."""
    return create_model("resnet50_scal", num_classes, loss, pretrained, use_gpu, **kwargs)


def resnet50_scal_channel(num_classes: int, loss: str = "softmax", pretrained: bool = True, use_gpu: bool = True,
                          **kwargs) -> SCALResNet:
    """SCAL with channel (squeeze-excitation form) attention agents."""
    return create_model("resnet50_scal_channel", num_classes, loss, pretrained, use_gpu, **kwargs)


def resnet50_scal_spatial(num_classes: int, loss: str = "softmax", pretrained: bool = True, use_gpu: bool = True,
                          **kwargs) -> SCALResNet:
    """SCAL with spatial attention agents, sized for ``height×width`` inputs."""
    return create_model("resnet50_scal_spatial", num_classes, loss, pretrained, use_gpu, **kwargs)


def resnet50_bnneck(num_classes: int, loss: str = "softmax", pretrained: bool = True, use_gpu: bool = True,
                    **kwargs) -> SCALResNet:
    """The same network and head without attention: the baseline for ablations."""
    return create_model("resnet50_bnneck", num_classes, loss, pretrained, use_gpu, **kwargs)


MODEL_FACTORIES: Dict[str, Callable[..., SCALResNet]] = {
    "resnet50_scal": resnet50_scal,
    "resnet50_scal_channel": resnet50_scal_channel,
    "resnet50_scal_spatial": resnet50_scal_spatial,
    "resnet50_bnneck": resnet50_bnneck,
}


def register_models() -> None:
    """Put every factory into torchreid's model table (assignment, so repeating it changes nothing)."""
    _torchreid.model_factory().update(MODEL_FACTORIES)


__all__ = [
    "ChannelAgent", "SpatialAgent", "ChannelCritic", "CompatibleCritic", "CompatibleCritics", "CriticContext",
    "SpatialCritic", "StageCritics", "SCALOutput", "SCALResNet",
    "DEFAULT_CFGS", "MODEL_FACTORIES", "RESNET50_URL", "create_model", "load_imagenet_weights", "register_models",
    "stage_sizes", *MODEL_FACTORIES,
]
