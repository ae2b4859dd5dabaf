"""The names earlier code imports from here, when the network had a ResNet-50 backbone only: the network is
now :class:`~.network.SCALNetwork` over any backbone of :mod:`.backbones`, the head's layers are in :mod:`.head`."""
from __future__ import annotations

from .head import BNNeck, SyncBNNeck
from .network import SCALNetwork as SCALResNet
from .network import SCALOutput, frozen_bn_stats

__all__ = ["BNNeck", "SCALOutput", "SCALResNet", "SyncBNNeck", "frozen_bn_stats"]
