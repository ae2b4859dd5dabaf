"""ImageNet ResNet-50 weights: from the torch hub cache (as torchreid does) or from a local file."""
from __future__ import annotations

import contextlib
import os
import socket
from typing import Dict, Iterator, List

import torch
from torch import nn

from ..checkpoint import load_weights

RESNET50_URL = "https://download.pytorch.org/models/resnet50-19c8e357.pth"
"""The file torchreid's own ``resnet50`` loads; torchvision's ResNet-50 files have the same keys."""
DOWNLOAD_TIMEOUT_S = 10.0


def hub_cache_path(url: str = RESNET50_URL) -> str:
    """Where torch's hub cache keeps ``url`` (``$TORCH_HOME/hub/checkpoints/<file>``)."""
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url))


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _fetch(url: str) -> str:
    path = hub_cache_path(url)
    if os.path.isfile(path):
        return path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        with _socket_timeout(DOWNLOAD_TIMEOUT_S):
            torch.hub.download_url_to_file(url, path, progress=False)
    except Exception as err:  # any network failure ends here with instructions
        raise RuntimeError(
            f"ImageNet ResNet-50 weights are not in the torch hub cache and could not be downloaded "
            f"from {url} ({type(err).__name__}: {err}). Without network: copy {os.path.basename(url)} "
            f"(or any torchvision ResNet-50 state dict) to {path}, or point model.pretrained_path "
            "(factory keyword pretrained_path=) at a local ResNet-50 file; or train from scratch with "
            "model.pretrained False."
        ) from err
    return path


def load_imagenet_weights(model: nn.Module, path: str = "", url: str = RESNET50_URL) -> Dict[str, List[str]]:
    """Copy every ResNet-50 tensor whose name and shape match into ``model``; report what was skipped.

    ``path`` empty means the hub cache (downloading there if the network allows). Loading is
    ``weights_only=True``: a file holding anything but tensors and plain containers is refused.
    """
    if path:
        path = os.path.expanduser(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"model.pretrained_path: no ImageNet weights file at {path!r}")
    else:
        path = _fetch(url)
    return load_weights(model, path)
