"""The SCAL network: ResNet-50 stages with an attention agent after each, and a BNNeck head.

``X_0 = stem(I)``, ``A_k = agent_k(X_k)``, ``X_{k+1} = stage_{k+1}(X_k * A_k)``; the attended last
maps ``X_4 * A_4`` are pooled into the feature ``f`` (triplet loss), which a BatchNorm1d with a frozen
zero bias normalises for the bias-free classifier (cross-entropy) and for retrieval.
Without agents the same class is the BNNeck baseline (``resnet50_bnneck``).
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator, List, NamedTuple, Optional, Tuple

import torch
import torchvision
from torch import nn

from .attention import ChannelAgent, SpatialAgent

STAGE_CHANNELS: Tuple[int, ...] = (64, 256, 512, 1024, 2048)
FEATURE_DIM = STAGE_CHANNELS[-1]
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


def _zero_bias_buffer(norm: nn.modules.batchnorm._BatchNorm) -> None:
    del norm.bias
    norm.register_buffer("bias", torch.zeros(norm.num_features))


class BNNeck(nn.BatchNorm1d):
    """BatchNorm1d whose bias is a fixed zero buffer (the BNNeck of Luo et al., 2019).

    A buffer rather than ``requires_grad=False``: torchreid's ``open_all_layers`` turns gradients back
    on for every parameter at each epoch, which would silently unfreeze the bias.
    """

    def __init__(self, num_features: int) -> None:
        super().__init__(num_features)
        _zero_bias_buffer(self)


class SyncBNNeck(nn.SyncBatchNorm):
    """:class:`BNNeck` with batch statistics over all processes (``train.sync_bn``): the same parameters,
    buffers and state-dict keys, the bias still a fixed zero buffer."""

    def __init__(self, num_features: int, process_group=None) -> None:
        super().__init__(num_features, process_group=process_group)
        _zero_bias_buffer(self)

    @classmethod
    def from_bnneck(cls, neck: BNNeck, process_group=None) -> "SyncBNNeck":
        """``neck`` converted, sharing its weight and buffers (as torch's ``convert_sync_batchnorm`` shares them)."""
        sync = cls(neck.num_features, process_group)
        sync.eps, sync.momentum = neck.eps, neck.momentum
        sync.weight = neck.weight
        for name, buffer in neck.named_buffers(recurse=False):
            setattr(sync, name, buffer)
        return sync.train(neck.training)


def _conv_out(size: int) -> int:
    """Output length of a stride-2 ResNet convolution or pooling (kernel 3 pad 1, or kernel 7 pad 3)."""
    return (size - 1) // 2 + 1


def stage_sizes(height: int, width: int, last_stride: int = 1) -> List[Tuple[int, int]]:
    """Feature-map size after the stem and after each of layer1..layer4 for an input of ``height×width``."""
    h, w = _conv_out(_conv_out(height)), _conv_out(_conv_out(width))
    sizes = [(h, w), (h, w)]
    for stride in (2, 2, last_stride):
        if stride == 2:
            h, w = _conv_out(h), _conv_out(w)
        sizes.append((h, w))
    return sizes


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


class SCALResNet(nn.Module):
    """ResNet-50 with five stacked attention agents (or none) and a BNNeck head.

    Follows torchreid's forward contract: eval → features (``feature='bn'`` or ``'pool'``); train →
    logits (``loss='softmax'``) or ``(logits, f)`` (``loss='triplet'``); ``return_featuremaps=True`` →
    the last attended feature maps. ``return_stages=True`` returns a :class:`SCALOutput`;
    ``use_attention=False`` runs the same weights with every map forced to 1 and, in train mode,
    leaves BatchNorm running statistics untouched (the pass exists only to score attention).
    """

    def __init__(
        self,
        num_classes: int,
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
        _check_choice("last_stride (model.last_stride)", last_stride, (1, 2))
        if reduction < 1:
            raise ValueError(f"reduction (scal.reduction) must be >= 1, got {reduction}")
        self.loss, self.attention, self.feature = loss, attention, feature
        self.image_size = (int(height), int(width))
        self.stage_channels = STAGE_CHANNELS

        resnet = torchvision.models.resnet50()
        if last_stride == 1:
            resnet.layer4[0].conv2.stride = (1, 1)
            resnet.layer4[0].downsample[0].stride = (1, 1)
        self.conv1, self.bn1, self.relu, self.maxpool = resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4

        if attention == "channel":
            agents = [ChannelAgent(c, reduction, agent_bias_init) for c in STAGE_CHANNELS]
        elif attention == "spatial":
            sizes = stage_sizes(height, width, last_stride)
            agents = [SpatialAgent(h, w, reduction, agent_bias_init) for h, w in sizes]
        else:
            agents = []
        self.agents = nn.ModuleList(agents)

        self.global_avgpool = nn.AdaptiveAvgPool2d(1)
        self.bottleneck = BNNeck(FEATURE_DIM)
        self.classifier = nn.Linear(FEATURE_DIM, num_classes, bias=False)
        nn.init.normal_(self.classifier.weight, std=0.001)

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def stages(self) -> Tuple[Callable[[torch.Tensor], torch.Tensor], ...]:
        """The five feature extractors that the agents follow: stem, layer1..layer4."""
        return (self._stem, self.layer1, self.layer2, self.layer3, self.layer4)

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
        for k, stage in enumerate(self.stages()):
            given = k == 0 and stem is not None  # the caller's tensor: never written to
            h = stem if given else stage(h)
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
