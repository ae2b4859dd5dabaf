"""The run directory ``data.save_dir``: one run at a time owns it, and every place a run writes to is checked
before any data is loaded, so that a bad location fails in seconds rather than after an epoch."""
from __future__ import annotations

import contextlib
import fcntl
import glob
import os
import stat
import tempfile
from typing import Iterator

from yacs.config import CfgNode as CN

from .checkpoint import TMP_PREFIX
from .config import ConfigError

LOCK = ".lock"
"""The file in ``data.save_dir`` whose ``flock`` a run holds; it names the holder's process id."""


def writable_directory(path: str, key: str) -> None:
    """Create ``path`` if needed and prove that a file can be written in it; ConfigError naming ``key`` if not."""
    if os.path.lexists(path) and not os.path.isdir(path):
        raise ConfigError(f"config key {key}: cannot write to {path}: it is a file, not a directory")
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        raise ConfigError(f"config key {key}: cannot write to {path} ({err.strerror or err}); "
                          "choose a writable directory") from None


def check_locations(cfg: CN) -> None:
    """Every output location of the run (its directory, checkpoints, ranked pictures) is a writable directory,
    and ``data.root`` is not a file."""
    root = os.path.expanduser(cfg.data.root)
    if os.path.lexists(root) and not os.path.isdir(root):
        raise ConfigError(f"config key data.root: {root} is a file, not a directory")
    outputs = [cfg.data.save_dir]
    if not cfg.test.evaluate:
        outputs.append(os.path.join(cfg.data.save_dir, "model"))
    if cfg.test.visrank:
        outputs += [os.path.join(cfg.data.save_dir, f"visrank_{name}") for name in cfg.data.targets]
    for path in outputs:
        writable_directory(path, "data.save_dir")


def _open_lock(path: str) -> int:
    """The lock file, opened for writing without following a symbolic link: a ``.lock`` that links elsewhere (or a
    second name of another file) would have that file truncated and overwritten with the process id. ConfigError
    naming the path when it is a link, a folder or anything but a file of its own."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as err:
        if os.path.islink(path):
            kind = "a symbolic link (to " + os.readlink(path) + ")"
        elif os.path.isdir(path):
            kind = "a folder"
        else:
            raise ConfigError(f"data.save_dir: cannot open the run's lock file {path} ({err.strerror}); "
                              "choose a writable folder") from None
        raise ConfigError(f"data.save_dir: {path} is {kind}, not the run's lock file; a run never writes through it: "
                          "remove it, or set data.save_dir to another folder") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink > 1:
        os.close(fd)
        kind = "a file with other names (hard links)" if stat.S_ISREG(info.st_mode) else "not a regular file"
        raise ConfigError(f"data.save_dir: {path} is {kind}, not the run's lock file; a run never writes through it: "
                          "remove it, or set data.save_dir to another folder")
    return fd


@contextlib.contextmanager
def locked(save_dir: str) -> Iterator[None]:
    """Hold ``save_dir``'s lock: ConfigError when another run holds it. The lock is an ``flock`` that the
    operating system drops when the holding process ends, however it ends: a crashed run never leaves it stuck."""
    fd = _open_lock(os.path.join(save_dir, LOCK))
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise ConfigError(f"data.save_dir {save_dir} is in use by another run (process {holder}): wait for it "
                              "to end, or set data.save_dir to another folder") from None
        except OSError as err:
            raise ConfigError(f"data.save_dir {save_dir}: cannot lock it ({err.strerror}); its file system may not "
                              "support locks: choose a local folder") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def remove_partial_checkpoints(save_dir: str) -> None:
    """Delete the temporary files a save interrupted by a crash left in ``save_dir/model``; only safe while the
    directory's lock is held (another run's save in progress looks the same)."""
    for path in sorted(glob.glob(os.path.join(glob.escape(save_dir), "model", f"{TMP_PREFIX}*"))):
        if os.path.isfile(path):
            size = os.path.getsize(path)
            os.remove(path)
            print(f"removed {path} ({size / 2**20:.1f} MB), left by a save that was interrupted")


@contextlib.contextmanager
def claimed(cfg: CN) -> Iterator[None]:
    """For the run of ``cfg``: check its locations, hold ``data.save_dir``'s lock throughout, and clear what an
    interrupted save left behind."""
    check_locations(cfg)
    with locked(cfg.data.save_dir):
        remove_partial_checkpoints(cfg.data.save_dir)
        yield
