"""The SCAL network over any backbone of :mod:`.backbones`: an attention agent after the stem and after each
stage, and SCAL's head (global average pooling, BNNeck, bias-free classifier).

``X_0 = stem(I)``, ``A_k = agent_k(X_k)``, ``X_{k+1} = stage_{k+1}(X_k * A_k)``; the attended last maps
``X_4 * A_4`` are pooled into the feature ``f`` (triplet loss), which the BNNeck normalises for the classifier
(cross-entropy) and for retrieval. Without agents the same class is the BNNeck baseline (``<backbone>_bnneck``).
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator, List, NamedTuple, Optional, Tuple, Union

import torch
from torch import nn

from .attention import ChannelAgent, SpatialAgent
from .backbones import BACKBONES, Backbone, Stage, stage_shapes
from .head import BNNeck, bias_free_classifier

LOSSES = ("softmax", "triplet")
TEST_FEATURES = ("bn", "pool")
ATTENTIONS = (None, "channel", "spatial")
MapFn = Callable[[int, torch.Tensor], torch.Tensor]


class SCALOutput(NamedTuple):
    """Everything one pass computes, for the engine: the head's outputs and each stage's ``X_k``, ``A_k``."""

    logits: torch.Tensor
    feature: torch.Tensor
    bn_feature: torch.Tensor
    features: List[torch.Tensor]
    maps: List[torch.Tensor]
    featuremaps: torch.Tensor


@contextlib.contextmanager
def frozen_bn_stats(module: nn.Module) -> Iterator[None]:
    """BatchNorm layers keep normalising with batch statistics but do not update their running ones."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    for m in norms:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in norms:
            m.track_running_stats = True


class SCALNetwork(nn.Module):
    """A torchreid backbone cut into stem + four stages, five stacked attention agents (or none), a BNNeck head.

    The backbone's modules are the network's own children under their torchreid names (``conv1``, ``layer1``, ...
    for ResNets, ``conv1`` ... ``conv5`` for OSNet), so its state-dict keys are the backbone's; its classification
    head is not used. Follows torchreid's forward contract: eval → features (``feature='bn'`` or ``'pool'``);
    train → logits (``loss='softmax'``) or ``(logits, f)`` (``loss='triplet'``); ``return_featuremaps=True`` → the
    last attended feature maps. ``return_stages=True`` returns a :class:`SCALOutput`; ``use_attention=False`` runs
    the same weights with every map forced to 1 and, in train mode, leaves BatchNorm running statistics untouched
    (the pass exists only to score attention). Spatial agents are sized by running the backbone once on a
    ``height×width`` image.
    """

    def __init__(
        self,
        num_classes: int,
        backbone: Union[str, Backbone] = "resnet50",
        loss: str = "softmax",
        attention: Optional[str] = "channel",
        height: int = 256,
        width: int = 128,
        last_stride: int = 1,
        reduction: int = 16,
        agent_bias_init: float = 0.0,
        feature: str = "bn",
    ) -> None:
        super().__init__()
        _check_choice("loss", loss, LOSSES)
        _check_choice("attention", attention, ATTENTIONS)
        _check_choice("feature (test.feature)", feature, TEST_FEATURES)
        if reduction < 1:
            raise ValueError(f"reduction (scal.reduction) must be >= 1, got {reduction}")
        if isinstance(backbone, str):
            _check_choice("backbone", backbone, BACKBONES)
            backbone = BACKBONES[backbone]
        self.loss, self.attention, self.feature = loss, attention, feature
        self.image_size = (int(height), int(width))
        self.backbone = backbone
        self.blocks: Tuple[Stage, ...] = backbone.blocks

        modules = backbone.modules(last_stride)
        for name, module in modules.items():
            self.add_module(name, module)
        self.backbone_modules = tuple(modules)
        shapes = stage_shapes(modules, self.blocks, height, width, backbone.name)
        self.stage_channels: Tuple[int, ...] = tuple(channels for channels, _ in shapes)
        self.stage_sizes: List[Tuple[int, int]] = [size for _, size in shapes]

        if attention == "channel":
            agents = [ChannelAgent(c, reduction, agent_bias_init) for c in self.stage_channels]
        elif attention == "spatial":
            agents = [SpatialAgent(h, w, reduction, agent_bias_init) for h, w in self.stage_sizes]
        else:
            agents = []
        self.agents = nn.ModuleList(agents)

        self.feature_dim = self.stage_channels[-1]
        self.global_avgpool = nn.AdaptiveAvgPool2d(1)
        self.bottleneck = BNNeck(self.feature_dim)
        self.classifier = bias_free_classifier(self.feature_dim, num_classes)

    def _block(self, k: int, x: torch.Tensor) -> torch.Tensor:
        """Block ``k`` of the backbone: 0 the stem, 1..4 the stages."""
        for name in self.blocks[k]:
            x = self._modules[name](x)
        return x

    def _check_size(self, x: torch.Tensor) -> None:
        if self.attention == "spatial" and tuple(x.shape[-2:]) != self.image_size:
            raise ValueError(
                f"this spatial-attention model was built for {self.image_size[0]}x{self.image_size[1]} images "
                f"(data.height x data.width) but received {x.shape[-2]}x{x.shape[-1]}; resize the images or "
                "build the model with the matching height/width"
            )

    def _run(self, x: torch.Tensor, use_attention: bool, keep_stages: bool, stem: Optional[torch.Tensor],
             map_fn: Optional[MapFn]) -> Tuple[List[torch.Tensor], List[torch.Tensor], torch.Tensor]:
        features: List[torch.Tensor] = []
        maps: List[torch.Tensor] = []
        attend = use_attention and len(self.agents) > 0
        in_place = not keep_stages and not torch.is_grad_enabled()  # nobody else holds X_k: multiply in place
        h = x
        for k in range(len(self.blocks)):
            given = k == 0 and stem is not None  # the caller's tensor: never written to
            h = stem if given else self._block(k, h)
            if keep_stages:
                features.append(h)
            if attend:
                a = self.agents[k](h)
                if map_fn is not None:
                    a = map_fn(k, a)
                h = h.mul_(a) if in_place and not given else h * a
                if keep_stages:
                    maps.append(a)
        return features, maps, h

    def forward(
        self,
        x: torch.Tensor,
        return_featuremaps: bool = False,
        return_stages: bool = False,
        use_attention: bool = True,
        stem: Optional[torch.Tensor] = None,
        map_fn: Optional[MapFn] = None,
    ):
        """``stem``: the stem's output for these same images (``X_0`` of an earlier pass), to skip recomputing
        it; the stem precedes every agent, so it is identical with and without attention. ``map_fn(k, A_k)``
        returns the map that stage ``k`` applies instead of its agent's ``A_k`` (e.g. a perturbed map, or a
        leaf tensor to differentiate with respect to); the returned ``maps`` are the applied ones."""
        self._check_size(x)
        bn_guard = frozen_bn_stats(self) if (self.training and not use_attention) else contextlib.nullcontext()
        with bn_guard:
            features, maps, last = self._run(x, use_attention, return_stages, stem, map_fn)
            if return_featuremaps and not return_stages:
                return last
            pooled = self.global_avgpool(last).flatten(1)
            bn_feature = self.bottleneck(pooled)
        if not self.training and not return_stages:
            return bn_feature if self.feature == "bn" else pooled
        logits = self.classifier(bn_feature)
        if return_stages:
            return SCALOutput(logits, pooled, bn_feature, features, maps, last)
        if self.loss == "softmax":
            return logits
        return logits, pooled


def _check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
