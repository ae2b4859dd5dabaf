"""SCAL's models: one factory per public name, their default configs, and their registration with torchreid.

Every backbone of :data:`~.backbones.BACKBONES` gives four names, following torchreid's own: ``<backbone>_scal``
(channel attention, the paper's stronger variant), ``<backbone>_scal_channel`` (the same), ``<backbone>_scal_spatial``
and ``<backbone>_bnneck`` (the same network without attention, the ablation baseline).

torchreid's ``build_model`` passes only ``num_classes, loss, pretrained, use_gpu``; the rest comes from each
variant's default config unless given as keyword arguments (``tools/main.py`` passes the configured values by
calling the factory itself).
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Tuple

from .. import _torchreid
from .attention import ChannelAgent, SpatialAgent
from .backbones import BACKBONES, Backbone, stage_sizes
from .critic import (ChannelCritic, CompatibleCritic, CompatibleCritics, CriticContext, SpatialCritic,
                     StageCritics)
from .network import SCALNetwork, SCALOutput, frozen_bn_stats
from .pretrained import ImageNetWeights, PretrainedWeightsError, load_imagenet_weights

VARIANTS: Dict[str, Optional[str]] = {"_scal": "channel", "_scal_channel": "channel", "_scal_spatial": "spatial",
                                      "_bnneck": None}
"""Name suffix → attention kind."""

_COMMON = dict(
    height=256, width=128, last_stride=1, reduction=16, agent_bias_init=0.0, feature="bn", pretrained_path=""
)
DEFAULT_CFGS: Dict[str, dict] = {f"{backbone}{suffix}": dict(_COMMON, backbone=backbone, attention=attention)
                                 for backbone in BACKBONES for suffix, attention in VARIANTS.items()}
"""Per-variant defaults: the backbone and attention kind (fixed by the name), the image size the spatial agents
are built for, the last stage's stride (1: a ResNet's last stage keeps the map size; OSNet's always does), the
agents' reduction (16, as torchreid's own OSNet gates and SE blocks), the head's test feature and the weights."""


def split_name(name: str) -> Optional[Tuple[str, str]]:
    """``(backbone, suffix)`` when ``name`` has the form of a SCAL model name (whether or not the backbone is
    supported), else None."""
    for suffix in sorted(VARIANTS, key=len, reverse=True):
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)], suffix
    return None


def create_model(
    variant: str, num_classes: int, loss: str = "softmax", pretrained: bool = True, use_gpu: bool = True, **kwargs
) -> SCALNetwork:
    """Build ``variant`` with its default config overridden by ``kwargs``; ``use_gpu`` is accepted for
    torchreid's signature only (the caller moves the model to its device)."""
    if variant not in DEFAULT_CFGS:
        raise KeyError(f"unknown variant {variant!r}; supported backbones: {sorted(BACKBONES)}, "
                       f"each as <backbone>{', <backbone>'.join(VARIANTS)}")
    unknown = set(kwargs) - (set(DEFAULT_CFGS[variant]) - {"backbone"})
    if unknown:
        raise TypeError(f"{variant}: unexpected keyword arguments {sorted(unknown)}")
    cfg = dict(DEFAULT_CFGS[variant], **kwargs)
    pretrained_path = cfg.pop("pretrained_path")
    model = SCALNetwork(num_classes, loss=loss, **cfg)
    if pretrained:
        load_imagenet_weights(model, pretrained_path)
    return model


def _factory(name: str) -> Callable[..., SCALNetwork]:
    backbone, attention = DEFAULT_CFGS[name]["backbone"], DEFAULT_CFGS[name]["attention"]

    def factory(num_classes: int, loss: str = "softmax", pretrained: bool = True, use_gpu: bool = True,
                **kwargs) -> SCALNetwork:
        return create_model(name, num_classes, loss, pretrained, use_gpu, **kwargs)

    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = (f"SCAL with {attention} attention agents on torchreid's {backbone}." if attention else
                       f"torchreid's {backbone} with SCAL's head and no attention: the baseline for ablations.")
    return factory


MODEL_FACTORIES: Dict[str, Callable[..., SCALNetwork]] = {name: _factory(name) for name in DEFAULT_CFGS}
globals().update(MODEL_FACTORIES)  # one importable factory per public name, e.g. models.osnet_x1_0_scal


def attention_of(name: str) -> Optional[str]:
    """The attention kind of model ``name`` (None for a ``_bnneck`` or for a model that is not this package's)."""
    return DEFAULT_CFGS.get(name, {}).get("attention")


def register_models() -> None:
    """Put every factory into torchreid's model table (assignment, so repeating it changes nothing)."""
    _torchreid.model_factory().update(MODEL_FACTORIES)


__all__: List[str] = [
    "BACKBONES", "Backbone", "ChannelAgent", "SpatialAgent", "ChannelCritic", "CompatibleCritic", "CompatibleCritics",
    "CriticContext", "SpatialCritic", "StageCritics", "SCALOutput", "SCALNetwork", "DEFAULT_CFGS", "ImageNetWeights",
    "MODEL_FACTORIES", "PretrainedWeightsError", "VARIANTS", "attention_of", "create_model", "frozen_bn_stats",
    "load_imagenet_weights", "register_models", "split_name", "stage_sizes", *MODEL_FACTORIES,
]
