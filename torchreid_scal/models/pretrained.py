"""ImageNet weights of a backbone: the file torchreid's own loader uses, or a local file.

torchreid's loaders know where each backbone's ImageNet file lives (its URL tables) and where they keep it
(``model_zoo.load_url`` in torch's hub cache; OSNet's ``gdown`` download in ``$TORCH_HOME/checkpoints``). This
module reads the same file from the same place, so weights a torchreid user already has are used, and fetches
it the same way when the network allows, but within seconds: without network and without the file it stops
with one line saying which file to put where (torchreid's own OSNet loader retries and ends in a traceback).
Files are read with ``weights_only=True``, and only into the backbone's modules (never the head).
"""
from __future__ import annotations

import contextlib
import os
import socket
import tempfile
from dataclasses import dataclass
from typing import Collection, Dict, Iterator, List

import torch
from torch import nn

DOWNLOAD_TIMEOUT_S = 10.0


class PretrainedWeightsError(RuntimeError):
    """ImageNet weights cannot be loaded; the message says which file to put where, or what is wrong with it."""


class PretrainedFileNotFoundError(PretrainedWeightsError, FileNotFoundError):
    """``model.pretrained_path`` names no file."""


def torch_home() -> str:
    """``$TORCH_HOME`` (default ``$XDG_CACHE_HOME/torch``, ``~/.cache/torch``), as torch and torchreid read it."""
    default = os.path.join(os.getenv("XDG_CACHE_HOME", "~/.cache"), "torch")
    return os.path.expanduser(os.getenv("TORCH_HOME", default))


@dataclass(frozen=True)
class ImageNetWeights:
    """Where torchreid's loader gets a backbone's ImageNet weights: ``url``, kept as ``filename`` in torch's hub
    cache (``cache='hub'``, downloaded by ``model_zoo.load_url``) or in ``$TORCH_HOME/checkpoints``
    (``cache='checkpoints'``, downloaded from Google Drive by ``gdown``, as torchreid's OSNet loaders do)."""

    url: str
    filename: str
    cache: str = "hub"

    def path(self) -> str:
        """The local file torchreid's loader reads (and this module too)."""
        if self.cache == "hub":
            return os.path.join(torch.hub.get_dir(), "checkpoints", self.filename)
        return os.path.join(torch_home(), "checkpoints", self.filename)

    def fetch(self, backbone: str) -> str:
        """The local file, downloaded first if it is missing; PretrainedWeightsError in seconds when it cannot be."""
        path = self.path()
        if os.path.isfile(path):
            return path
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with _socket_timeout(DOWNLOAD_TIMEOUT_S):
                self._download(path)
        except Exception as err:  # any network or disk failure ends here, with what to do instead
            raise PretrainedWeightsError(
                f"no ImageNet weights for {backbone}: {path} does not exist and {self.url} could not be downloaded "
                f"({type(err).__name__}: {_one_line(err)}). Without network, put {self.filename} (torchreid's "
                f"ImageNet {backbone} file) at {path}, or set model.pretrained_path (factory keyword pretrained_path) "
                "to a local state dict of the backbone, or train from scratch with model.pretrained False"
            ) from None
        return path

    def _download(self, path: str) -> None:
        if self.cache == "hub":
            torch.hub.download_url_to_file(self.url, path, progress=False)
            return
        import gdown

        fd, partial = tempfile.mkstemp(prefix=".tmp-", dir=os.path.dirname(path))
        os.close(fd)
        try:
            if not gdown.download(self.url, partial, quiet=True):
                raise OSError("gdown returned no file")
            os.replace(partial, path)
        finally:
            if os.path.exists(partial):
                os.remove(partial)


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


def read_state_dict(path: str) -> Dict[str, torch.Tensor]:
    """The tensors of a weights file (a bare state dict or ``{'state_dict': ...}``, ``module.`` prefixes removed),
    read with ``weights_only=True``."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise PretrainedWeightsError(f"cannot read ImageNet weights from {path} with weights_only=True: "
                                     f"{type(err).__name__}: {_one_line(err)[:300]}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PretrainedWeightsError(f"{path} holds no state dict of tensors")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


def load_backbone_weights(model: nn.Module, path: str, modules: Collection[str]) -> Dict[str, List[str]]:
    """Copy the tensors of ``path`` whose name and shape match into ``model``'s ``modules`` (its backbone's
    top-level modules: an ImageNet classifier never reaches the re-id head); report what was loaded, what the
    file had that did not fit (``skipped``) and what the model kept as initialised (``missing``)."""
    state = read_state_dict(path)
    own = model.state_dict()
    matched = {k: v for k, v in state.items()
               if k.split(".", 1)[0] in modules and k in own and own[k].shape == v.shape}
    if not matched:
        raise PretrainedWeightsError(f"no tensor in {path} fits the backbone's modules {sorted(modules)}: "
                                     "is it a state dict of this backbone?")
    model.load_state_dict(matched, strict=False)
    skipped = sorted(set(state) - set(matched))
    missing = sorted(set(own) - set(matched))
    print(f"Loaded {len(matched)} ImageNet tensors from {path}"
          + (f"; skipped (name or shape differs, or not the backbone's): {skipped}" if skipped else "")
          + (f"; {len(missing)} tensors not in the file keep their initialisation" if missing else ""))
    return {"loaded": sorted(matched), "skipped": skipped, "missing": missing}


def load_imagenet_weights(model: nn.Module, path: str = "") -> Dict[str, List[str]]:
    """ImageNet weights into ``model``'s backbone (a :class:`~torchreid_scal.models.network.SCALNetwork`):
    from ``path`` (``model.pretrained_path``) when given, else from the file torchreid's loader uses."""
    if path:
        path = os.path.expanduser(path)
        if not os.path.isfile(path):
            raise PretrainedFileNotFoundError(f"model.pretrained_path: no ImageNet weights file at {path!r}")
    else:
        path = model.backbone.weights.fetch(model.backbone.name)
    return load_backbone_weights(model, path, model.backbone_modules)
