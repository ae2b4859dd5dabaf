"""Safe checkpoints: atomic writes, ``weights_only=True`` reads, plain Python scalars only.

A checkpoint written here holds tensors, numbers, strings and plain containers, so torch's safe
unpickler (and torchreid's own ``load_checkpoint`` on torch >= 2.6) reads it back; a file that
needs anything else to load is refused rather than executed.
"""
from __future__ import annotations

import math
import os
import pickle
import random
import re
import secrets
import warnings
from typing import Any, BinaryIO, Callable, Dict, List, Mapping, Optional, Tuple, Union

import numpy as np
import torch
from torch import nn

from . import distributed


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used; the message names the file and the reason."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """No file at the given checkpoint path."""


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


TMP_PREFIX = ".tmp-"
"""Names of the temporary files :func:`write_atomically` renames into place."""


def _new_temporary_file(directory: str) -> Tuple[int, str]:
    """A new, empty ``TMP_PREFIX`` file in ``directory``, open for writing, with the permissions the umask gives any
    new file (``tempfile.mkstemp`` makes it 0600: checkpoints renamed from it were unreadable to the group)."""
    for _ in range(100):
        path = os.path.join(directory, TMP_PREFIX + secrets.token_hex(8))
        try:
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666), path
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary file name in {directory}")


def write_atomically(path: str, write: Callable[[BinaryIO], None]) -> str:
    """Call ``write`` on a temporary file in ``path``'s directory, flush it to disk, then rename it over
    ``path``. A crash at any moment leaves either the old file or the new one; a failed write (a full disk, say)
    is a CheckpointError naming ``path``."""
    directory = os.path.dirname(os.path.abspath(path))
    tmp = ""
    try:
        os.makedirs(directory, exist_ok=True)
        fd, tmp = _new_temporary_file(directory)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        if tmp and os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(err, (OSError, RuntimeError)) and not isinstance(err, CheckpointError):
            raise CheckpointError(f"cannot write {path}: {type(err).__name__}: {' '.join(str(err).split())}") from err
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def save_checkpoint(state: Mapping[str, Any], path: str) -> str:
    """Write ``state`` (in plain types) to ``path`` atomically."""
    return write_atomically(path, lambda f: torch.save(to_plain(dict(state)), f))


NUMPY_NUMBER_KINDS = "biufc"
"""NumPy dtype kinds a checkpoint may hold scalars of: booleans, integers, unsigned integers, floats and complex
numbers, each at most 32 bytes. Other kinds (void, bytes, strings, objects, structured or sub-array dtypes) have a
size the file chooses: NumPy's scalar reconstruction allocates and zeroes that size, so a 1 KB file could ask for
gigabytes."""


_NUMBERS_ONLY = "a checkpoint may hold NumPy numbers (booleans, integers, floats, complex) only"


def _number_dtype(dtype: np.dtype, source: Any) -> np.dtype:
    if dtype.kind not in NUMPY_NUMBER_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise pickle.UnpicklingError(f"refusing NumPy dtype {source!r}: {_NUMBERS_ONLY}")
    return dtype


def _numpy_dtype(spec: Any, align: bool = False, copy: bool = False) -> np.dtype:
    """``numpy.dtype`` as an unpickled checkpoint may call it: the dtype of a NumPy number, named by a type code
    such as ``'f8'``, and nothing else."""
    if not isinstance(spec, str) or len(spec) > 8:
        raise pickle.UnpicklingError(f"refusing NumPy dtype {spec!r}: {_NUMBERS_ONLY}")
    try:
        dtype = np.dtype(spec)
    except TypeError as err:
        raise pickle.UnpicklingError(f"refusing NumPy dtype {spec!r}: {err}") from None
    return np.dtype(_number_dtype(dtype, spec), copy=True)  # a copy: unpickling then sets its byte order


def _numpy_scalar(dtype: Any, data: Any = None) -> np.generic:
    """NumPy's scalar reconstruction for numbers only, from exactly their bytes."""
    if not isinstance(dtype, np.dtype):
        raise pickle.UnpicklingError(f"refusing a NumPy scalar of {type(dtype).__name__}: it needs a dtype")
    _number_dtype(dtype, str(dtype))
    if not isinstance(data, bytes) or len(data) != dtype.itemsize:
        raise pickle.UnpicklingError(f"refusing a NumPy {dtype} scalar: it needs {dtype.itemsize} bytes of data")
    return _SCALAR(dtype, data)


_SCALAR = np.float64(0).__reduce__()[0]


def _numpy_scalar_globals() -> List[Union[Callable, Tuple[Callable, str]]]:
    """What unpickling a NumPy number needs, and nothing more: NumPy's scalar reconstruction and ``numpy.dtype``,
    each behind a guard that lets only numbers of :data:`NUMPY_NUMBER_KINDS` through (under the scalar function's
    name in this NumPy and the other major version's: ``numpy._core`` was ``numpy.core`` before NumPy 2), and the
    dtype classes of those numbers. Arrays and objects stay refused."""
    names = {f"{_SCALAR.__module__}.{_SCALAR.__name__}", "numpy.core.multiarray.scalar",
             "numpy._core.multiarray.scalar"}
    codes = "?" + np.typecodes["AllInteger"] + np.typecodes["AllFloat"]
    kinds = {type(np.dtype(code)) for code in codes}
    return ([(_numpy_scalar, name) for name in sorted(names)] + [(_numpy_dtype, "numpy.dtype")]
            + sorted(kinds, key=str))


_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _load_failure(err: BaseException) -> str:
    """Why torch could not load a file, on one line: torch's reason without its terminal colour codes, and without
    its advice to allowlist globals or load unsafely (neither is right for a file that this tool refuses)."""
    text = _ESCAPE.sub("", str(err))
    if "Weights only load failed" in text:
        paragraphs = [p for p in re.split(r"\n\s*\n", text.split("WeightsUnpickler error:")[-1])
                      if p.strip() and not p.strip().startswith("Check the documentation")]
        text = paragraphs[-1].split(" Please use `torch.serialization", 1)[0] if paragraphs else text
    reason = " ".join(text.split())
    return f"{type(err).__name__}: {reason}" if reason else type(err).__name__


def load_checkpoint(path: str, map_location: Optional[str] = "cpu") -> Dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``, allowing only NumPy numbers beyond torch's own safe types
    (torchreid's engines save ``rank1`` as one); the error names the file and what went wrong."""
    if os.path.isdir(path):
        raise CheckpointError(f"checkpoint path {path} is a directory: give a checkpoint file in it "
                              "(e.g. model/model.pth.tar-N), or model.resume auto with data.save_dir")
    if not os.path.isfile(path):
        raise CheckpointNotFoundError(f"checkpoint not found: {path}")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"{path} is empty (0 bytes), probably from an interrupted copy or save; "
                              "use another checkpoint")
    try:
        with torch.serialization.safe_globals(_numpy_scalar_globals()):
            state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise CheckpointError(
            f"refusing to load {path}: it is not a checkpoint that loads with weights_only=True (tensors, plain "
            f"containers and NumPy numbers only). {_load_failure(err)}"
        ) from err
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not a checkpoint dictionary")
    return state


def state_dict_of(checkpoint: Mapping[str, Any], source: str = "the checkpoint") -> Dict[str, torch.Tensor]:
    """The model weights inside a torchreid-style checkpoint (``{'state_dict': ...}``) or a bare state dict."""
    state = checkpoint.get("state_dict", checkpoint)
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{source} holds no state dict of tensors (expected {{'state_dict': {{name: tensor}}}})")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


def load_weights(model: nn.Module, path: str) -> Dict[str, list]:
    """Load matching weights from ``path`` into ``model``; keys whose name or shape differ (e.g. a
    classifier trained for another number of identities) are skipped and reported."""
    state = state_dict_of(load_checkpoint(path), source=path)
    own = model.state_dict()
    matched = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    skipped = sorted(set(state) - set(matched))
    if not matched:
        raise CheckpointError(f"no weight in {path} matches this model; was it trained for another architecture?")
    model.load_state_dict(matched, strict=False)
    missing = sorted(set(own) - set(matched))
    print(f"Loaded {len(matched)} tensors from {path}"
          + (f"; skipped (name or shape differs): {skipped}" if skipped else "")
          + (f"; not in file: {missing}" if missing else ""))
    return {"loaded": sorted(matched), "skipped": skipped, "missing": missing}


def rng_state() -> Dict[str, Any]:
    """Every random generator training draws from (Python, NumPy, torch CPU and CUDA), in plain types."""
    state: Dict[str, Any] = {"python": random.getstate(), "numpy": list(np.random.get_state()),
                             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` captured (as read back from a checkpoint)."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


CHECKPOINT_PREFIX = "model.pth.tar-"
"""``model.pth.tar-<E>``: after epoch E; ``model.pth.tar-<E>+<S>``: after epoch E and S steps of the next."""
LATEST = "latest"


_CHECKPOINT_NAME = re.compile(re.escape(CHECKPOINT_PREFIX) + r"(\d+)(\+\d+)?")


def checkpoint_files(directory: str, mid_epoch: bool = False) -> List[Tuple[int, str]]:
    """``(epoch, path)`` of every ``model.pth.tar-<epoch>`` file in ``directory`` (``mid_epoch``: of every
    ``model.pth.tar-<epoch>+<step>`` file instead), by epoch."""
    names = os.listdir(directory) if os.path.isdir(directory) else []
    found = []
    for name in names:
        match = _CHECKPOINT_NAME.fullmatch(name)
        if match and bool(match.group(2)) == mid_epoch and os.path.isfile(os.path.join(directory, name)):
            found.append((int(match.group(1)), os.path.join(directory, name)))
    return sorted(found)


def _is_checkpoint_name(name: str) -> bool:
    return _CHECKPOINT_NAME.fullmatch(name) is not None


def latest_checkpoint(save_dir: str) -> Optional[str]:
    """The checkpoint named by ``save_dir/model/latest``, or None when that pointer is missing, unreadable or
    names no checkpoint file there."""
    pointer = os.path.join(save_dir, "model", LATEST)
    try:
        with open(pointer, "rb") as f:
            name = f.read(256).decode().strip()
    except (OSError, UnicodeDecodeError):
        return None
    path = os.path.join(save_dir, "model", name)
    return path if _is_checkpoint_name(name) and os.path.isfile(path) else None


def newest_checkpoint(save_dir: str) -> Tuple[Optional[str], Optional[Dict[str, Any]]]:
    """The checkpoint ``model.resume auto`` continues from, and its contents: the one ``latest`` names; when
    ``latest`` is unusable or names a checkpoint that does not load, with a warning, the most recently written
    checkpoint file that loads. ``(None, None)`` when there is none."""
    named = latest_checkpoint(save_dir)
    if named is not None:
        try:
            return named, load_checkpoint(named)
        except CheckpointError as err:
            warnings.warn(f"model.resume auto: skipping {named}, which {LATEST} names: {err}")
    directory = os.path.join(save_dir, "model")
    found = sorted(checkpoint_files(directory) + checkpoint_files(directory, mid_epoch=True),
                   key=lambda item: (os.stat(item[1]).st_mtime_ns, item[0]), reverse=True)
    for _, path in found:
        if path == named:
            continue
        try:
            state = load_checkpoint(path)
        except CheckpointError as err:
            warnings.warn(f"model.resume auto: skipping {path}: {err}")
            continue
        warnings.warn(f"model.resume auto: {os.path.join(save_dir, 'model', LATEST)} is missing or names no "
                      f"checkpoint file that loads; resuming from the newest checkpoint on disk, {path}")
        return path, state
    return None, None


class NonFiniteError(FloatingPointError):
    """Training produced a NaN or infinite value; the message names where."""


def _entry(model: nn.Module, optimizer, scheduler) -> Dict[str, Any]:
    entry = {
        "state_dict": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
    }
    if hasattr(model, "architecture"):  # e.g. the critics' activation, which no weight records
        entry["architecture"] = model.architecture()
    return entry


class SafeCheckpointing:
    """Engine mixin replacing torchreid's ``save_model``, which crashes on a ``None`` scheduler and writes a
    NumPy ``rank1`` that torch >= 2.6 refuses to load.

    One file per epoch at torchreid's path ``save_dir/model/model.pth.tar-<epoch>`` holds the model in
    torchreid's format (so ``FeatureExtractor`` and ``load_pretrained_weights`` read it), every other
    registered model (e.g. ``critic``) under its name, the random generators' states and the AMP scaler,
    so that resuming continues exactly. Files are written atomically, then ``save_dir/model/latest`` names
    the newest; only the last ``keep_last`` epochs up to the one just written are kept (0 keeps all).
    Non-finite weights are never written.
    """

    keep_last: int = 0
    resume_position: Optional[Dict[str, Any]] = None
    """Set by :meth:`resume` from a mid-epoch checkpoint: ``step`` (batches done), the random generators'
    states when the epoch began (``epoch_rng``) and at the interruption (``rng``), the engine's ``progress``."""

    def engine_state(self) -> Dict[str, Any]:
        """What the engine itself must carry over a resume beyond models and the global generators (e.g. a
        generator of its own); tensors and plain types only."""
        return {}

    def load_engine_state(self, state: Mapping[str, Any]) -> None:
        """Take back what :meth:`engine_state` returned."""

    def save_model(self, epoch: int, rank1: float, save_dir: str, is_best: bool = False) -> Optional[str]:
        """Write the checkpoint of ``epoch`` (0-based) on rank 0; every process waits for it."""
        return self._on_main_process(lambda: self._write_checkpoint(epoch, rank1, save_dir))

    def save_within_epoch(self, position: Mapping[str, Any], save_dir: str) -> Optional[str]:
        """Write a checkpoint in the middle of epoch ``self.epoch`` (0-based) on rank 0, every process waiting:
        ``position`` holds ``step`` (the batches done), ``epoch_rng`` and ``progress`` (see ``resume_position``).
        Its ``epoch`` field counts the finished epochs, as in torchreid's checkpoints."""
        return self._on_main_process(lambda: self._write_checkpoint(self.epoch - 1, float("nan"), save_dir, position))

    @staticmethod
    def _on_main_process(write: Callable[[], str]) -> Optional[str]:
        path = write() if distributed.world().is_main else None
        distributed.barrier()
        return path

    def _write_checkpoint(self, epoch: int, rank1: float, save_dir: str,
                          position: Optional[Mapping[str, Any]] = None) -> str:
        state: Dict[str, Any] = {"epoch": epoch + 1, "rank1": float(rank1), "rng": rng_state(),
                                 "engine": self.engine_state(), **(position or {})}
        precision = getattr(self, "precision", None)
        if precision is not None:
            state["amp_scaler"] = precision.state_dict()
        for name in self.get_model_names():
            model = getattr(self._models[name], "module", self._models[name])
            bad = [k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()]
            if bad:
                raise NonFiniteError(f"refusing to save epoch {epoch + 1}: {name} has non-finite values in {bad[:5]}")
            entry = _entry(model, self._optims[name], self._scheds[name])
            if name == "model":
                state.update(entry)
            else:
                state[name] = entry
        directory = os.path.join(save_dir, "model")
        name = f"{CHECKPOINT_PREFIX}{epoch + 1}" + (f"+{position['step']}" if position else "")
        path = save_checkpoint(state, os.path.join(directory, name))
        write_atomically(os.path.join(directory, LATEST), lambda f: f.write(f"{os.path.basename(path)}\n".encode()))
        if position is None:  # this epoch's checkpoint supersedes the mid-epoch ones before it
            for number, old in checkpoint_files(directory, mid_epoch=True):
                if number <= epoch:
                    os.remove(old)
        if self.keep_last > 0:  # by epoch, so that later epochs of an earlier run in this directory stay
            for number, old in checkpoint_files(directory):
                if number <= epoch + 1 - self.keep_last:
                    os.remove(old)
        print(f'Checkpoint saved to "{path}"')
        return path

    def resume(self, path: str, save_dir: str = "") -> int:
        """Restore models, optimizers, schedulers, AMP scaler and random generators from ``path`` (``'auto'``:
        the latest checkpoint in ``save_dir``); return the next epoch."""
        if path == "auto":
            found, state = newest_checkpoint(save_dir)
            if found is None or state is None:
                print(f"model.resume auto: no checkpoint in {save_dir}, starting from epoch 1")
                return 0
            path = found
        else:
            state = load_checkpoint(path)
        for name in self.get_model_names():
            entry = state if name == "model" else state.get(name)
            if entry is None:
                raise CheckpointError(f"{path} has no entry for {name!r}: it was not written by this engine")
            model = getattr(self._models[name], "module", self._models[name])
            recorded = entry.get("architecture") if isinstance(entry, Mapping) else None
            if recorded is not None and hasattr(model, "architecture") and recorded != model.architecture():
                raise CheckpointError(f"cannot resume {name} from {path}: it was trained as {recorded}, the "
                                      f"configuration builds {model.architecture()}; use the run's configuration")
            try:
                model.load_state_dict(state_dict_of(entry, source=path))
            except RuntimeError as err:
                raise CheckpointError(f"cannot resume {name} from {path}: it was trained with another configuration "
                                 f"(e.g. number of identities or model). {str(err).splitlines()[0]}") from err
            for obj, key in ((self._optims[name], "optimizer"), (self._scheds[name], "scheduler")):
                if obj is not None and entry.get(key) is not None:
                    obj.load_state_dict(entry[key])
        precision = getattr(self, "precision", None)
        if precision is not None and state.get("amp_scaler"):
            precision.load_state_dict(state["amp_scaler"])
        if "rng" in state:
            set_rng_state(state["rng"])
        self.load_engine_state(state.get("engine", {}))
        self.epoch = int(state["epoch"])
        self.resume_position = None
        where = f"next epoch {self.epoch + 1}"
        if "step" in state:
            self.resume_position = {key: state[key] for key in ("step", "epoch_rng", "rng", "progress")}
            where = f"epoch {self.epoch + 1} continues after step {state['step']}"
        rank1 = state.get("rank1", float("nan"))
        print(f"Resumed from {path}: {where}" + (f", last rank-1 {rank1:.1%}" if math.isfinite(rank1) else ""))
        return self.epoch
