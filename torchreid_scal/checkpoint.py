"""Safe checkpoints: atomic writes, ``weights_only=True`` reads, plain Python scalars only.

A checkpoint written here holds tensors, numbers, strings and plain containers, so torch's safe
unpickler (and torchreid's own ``load_checkpoint`` on torch >= 2.6) reads it back; a file that
needs anything else to load is refused rather than executed.
"""
from __future__ import annotations

import os
import tempfile
from typing import Any, Dict, Mapping, Optional

import numpy as np
import torch
from torch import nn


def to_plain(value: Any) -> Any:
    """NumPy scalars and arrays become Python numbers and lists, recursively (torchreid saves ``rank1`` as one)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, dict):
        plain = value.copy()  # keeps the mapping's type: a scheduler's Counter must stay a Counter
        for key, item in value.items():
            plain[key] = to_plain(item)
        return plain
    if isinstance(value, (list, tuple)):
        return type(value)(to_plain(v) for v in value)
    return value


def save_checkpoint(state: Mapping[str, Any], path: str) -> str:
    """Write ``state`` to ``path`` atomically: a temporary file in the same directory, flushed to disk,
    then renamed over ``path``. A crash at any moment leaves either the old file or the new one."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pth", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(to_plain(dict(state)), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def load_checkpoint(path: str, map_location: Optional[str] = "cpu") -> Dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``; the error names the file and what went wrong."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise RuntimeError(
            f"refusing to load {path}: it is not a checkpoint that loads with weights_only=True "
            f"(tensors and plain containers only). {type(err).__name__}: {str(err).splitlines()[0]}"
        ) from err
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a checkpoint dictionary")
    return state


def state_dict_of(checkpoint: Mapping[str, Any]) -> Dict[str, torch.Tensor]:
    """The model weights inside a torchreid-style checkpoint (``{'state_dict': ...}``) or a bare state dict."""
    state = checkpoint.get("state_dict", checkpoint)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError("checkpoint holds no state dict of tensors")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


def load_weights(model: nn.Module, path: str) -> Dict[str, list]:
    """Load matching weights from ``path`` into ``model``; keys whose name or shape differ (e.g. a
    classifier trained for another number of identities) are skipped and reported."""
    state = state_dict_of(load_checkpoint(path))
    own = model.state_dict()
    matched = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    skipped = sorted(set(state) - set(matched))
    if not matched:
        raise ValueError(f"no weight in {path} matches this model; was it trained for another architecture?")
    model.load_state_dict(matched, strict=False)
    missing = sorted(set(own) - set(matched))
    print(f"Loaded {len(matched)} tensors from {path}" + (f"; skipped (name or shape differs): {skipped}" if skipped else "")
          + (f"; not in file: {missing}" if missing else ""))
    return {"loaded": sorted(matched), "skipped": skipped, "missing": missing}


def _entry(model: nn.Module, optimizer, scheduler) -> Dict[str, Any]:
    return {
        "state_dict": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
    }


class SafeCheckpointing:
    """Engine mixin replacing torchreid's ``save_model``, which crashes on a ``None`` scheduler and writes a
    NumPy ``rank1`` that torch >= 2.6 refuses to load.

    One file per epoch at torchreid's path ``save_dir/model/model.pth.tar-<epoch>`` holds the model in
    torchreid's format (so ``FeatureExtractor`` and ``load_pretrained_weights`` read it) and every other
    registered model (e.g. ``critic``) under its name, so model and critics can never get out of step.
    """

    def save_model(self, epoch: int, rank1: float, save_dir: str, is_best: bool = False) -> str:
        state: Dict[str, Any] = {"epoch": epoch + 1, "rank1": float(rank1)}
        for name in self.get_model_names():
            entry = _entry(self._models[name], self._optims[name], self._scheds[name])
            if name == "model":
                state.update(entry)
            else:
                state[name] = entry
        path = save_checkpoint(state, os.path.join(save_dir, "model", f"model.pth.tar-{epoch + 1}"))
        print(f'Checkpoint saved to "{path}"')
        return path

    def resume(self, path: str) -> int:
        """Restore every registered model, optimizer and scheduler from ``path``; return the next epoch."""
        state = load_checkpoint(path)
        for name in self.get_model_names():
            entry = state if name == "model" else state.get(name)
            if entry is None:
                raise KeyError(f"{path} has no entry for the registered model {name!r}")
            model = self._models[name]
            getattr(model, "module", model).load_state_dict(state_dict_of(entry))
            for obj, key in ((self._optims[name], "optimizer"), (self._scheds[name], "scheduler")):
                if obj is not None and entry.get(key) is not None:
                    obj.load_state_dict(entry[key])
        self.epoch = int(state["epoch"])
        print(f"Resumed from {path}: next epoch {self.epoch + 1}, last rank-1 {state.get('rank1', float('nan')):.1%}")
        return self.epoch
