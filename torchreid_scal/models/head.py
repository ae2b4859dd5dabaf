"""SCAL's head on any backbone: the BNNeck (Luo et al., 2019) and a bias-free classifier.

The pooled feature ``f`` feeds the triplet loss; a BatchNorm1d with a frozen zero bias normalises it for the
classifier (cross-entropy) and for retrieval.
"""
from __future__ import annotations

import torch
from torch import nn


def _zero_bias_buffer(norm: nn.modules.batchnorm._BatchNorm) -> None:
    del norm.bias
    norm.register_buffer("bias", torch.zeros(norm.num_features))


class BNNeck(nn.BatchNorm1d):
    """BatchNorm1d whose bias is a fixed zero buffer.

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


def bias_free_classifier(feature_dim: int, num_classes: int) -> nn.Linear:
    """The identity classifier after the BNNeck: no bias (the BNNeck centres the feature), small initial weights."""
    classifier = nn.Linear(feature_dim, num_classes, bias=False)
    nn.init.normal_(classifier.weight, std=0.001)
    return classifier
