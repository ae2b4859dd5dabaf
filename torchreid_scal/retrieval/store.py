"""A folder of features as ``tools/extract.py`` writes it and ``tools/search.py`` reads it:

- ``features.npy``: N x D float32 or float16 in NumPy's format (``np.load(..., mmap_mode="r")`` reads it without
  loading it), written through a memory map, so a gallery larger than memory can be extracted;
- ``index.csv``: ``row,path,pid,camid``, one line per row of the features (paths relative to the images folder;
  pid and camid empty where the file name has none);
- ``listing.txt``: every image file found, in extraction order; ``extract.json``: how the features were made
  (checkpoint and its SHA-256, model, input size, dtype) and how far the extraction got (``done`` files of the
  listing, ``rows`` written, the unreadable files and why), updated atomically after every batch, so that an
  interrupted extraction resumes where it stopped.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np

from ..checkpoint import write_atomically

FEATURES, INDEX, LISTING, MANIFEST = "features.npy", "index.csv", "listing.txt", "extract.json"
DTYPES = ("float32", "float16")


def file_sha256(path: str) -> str:
    """The SHA-256 of a file, read in 1 MB pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for piece in iter(lambda: f.read(2**20), b""):
            digest.update(piece)
    return digest.hexdigest()


@dataclass
class Manifest:
    """What ``extract.json`` records; ``done`` counts listing entries processed, ``rows`` features written."""

    checkpoint: str
    checkpoint_sha256: str
    model: str
    height: int
    width: int
    feature: str
    dtype: str
    images: str
    count: int
    dim: int = 0
    done: int = 0
    rows: int = 0
    unreadable: Dict[str, str] = field(default_factory=dict)
    complete: bool = False


def _write_text(path: str, text: str) -> None:
    write_atomically(path, lambda f: f.write(text.encode()))


def save_manifest(folder: str, manifest: Manifest) -> None:
    _write_text(os.path.join(folder, MANIFEST), json.dumps(asdict(manifest), indent=1) + "\n")


def load_manifest(folder: str) -> Optional[Manifest]:
    """The manifest in ``folder``, or None when there is none."""
    path = os.path.join(folder, MANIFEST)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return Manifest(**json.load(f))


def save_listing(folder: str, paths: List[str]) -> None:
    _write_text(os.path.join(folder, LISTING), "".join(p + "\n" for p in paths))


def load_listing(folder: str) -> List[str]:
    with open(os.path.join(folder, LISTING)) as f:
        return f.read().splitlines()


def open_features(folder: str, rows: int, dim: int, dtype: str) -> np.memmap:
    """The features file of ``folder`` as a writable memory map of ``rows`` x ``dim``: created (sparse, so nothing
    is written for rows not yet extracted), or opened as it is when it already has that shape."""
    path = os.path.join(folder, FEATURES)
    if os.path.exists(path):
        features = np.load(path, mmap_mode="r+")
        if features.shape == (rows, dim) and features.dtype == np.dtype(dtype):
            return features
    return np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=(rows, dim))


def truncate_features(folder: str, rows: int) -> None:
    """Shorten ``features.npy`` to its first ``rows`` rows in place: the header is rewritten at the same length (NumPy
    pads it with spaces) and the file cut after the last row."""
    path = os.path.join(folder, FEATURES)
    with open(path, "r+b") as f:
        version = np.lib.format.read_magic(f)
        preamble = f.tell() + (2 if version == (1, 0) else 4)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(f)
        offset = f.tell()
        header = repr({"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": fortran,
                       "shape": (rows, *shape[1:])}).encode("latin1")
        f.seek(preamble)
        f.write(header.ljust(offset - preamble - 1) + b"\n")
        f.flush()
        os.fsync(f.fileno())
    os.truncate(path, offset + rows * int(np.prod(shape[1:])) * dtype.itemsize)


Labels = Tuple[Optional[int], Optional[int]]


def save_index(folder: str, paths: List[str], labels: List[Labels]) -> None:
    """``index.csv``: row, path, pid, camid (empty where unknown)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["row", "path", "pid", "camid"])
    for row, (path, (pid, camid)) in enumerate(zip(paths, labels)):
        writer.writerow([row, path, "" if pid is None else pid, "" if camid is None else camid])
    _write_text(os.path.join(folder, INDEX), buffer.getvalue())


def load_index(folder: str) -> Tuple[List[str], List[Labels]]:
    """Paths and (pid, camid) of every row of a folder's features."""
    paths, labels = [], []
    with open(os.path.join(folder, INDEX), newline="") as f:
        for record in csv.DictReader(f):
            paths.append(record["path"])
            labels.append(tuple(int(record[k]) if record[k] != "" else None for k in ("pid", "camid")))
    return paths, labels
