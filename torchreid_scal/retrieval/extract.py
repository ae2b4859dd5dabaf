"""Features of every image under a folder (or of one image file) from a trained checkpoint, into a feature folder
(:mod:`.store`): batched through torchreid's test transform, on the configured device, optionally in mixed
precision, with a progress bar; unreadable images are listed and skipped; an interrupted run resumes after the
last batch it recorded, and a folder made by another checkpoint is never overwritten."""
from __future__ import annotations

import os
import re
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm
from yacs.config import CfgNode as CN

from ..checkpoint import CheckpointError
from ..config import ConfigError
from ..datasets import DataError
from ..datasets.checks import BadImageError, read_image
from ..datasets.custom import MARKET_NAME, is_image
from ..datasets.splits import eval_transform
from ..export import load_inference_model
from ..precision import Precision
from . import store


def list_images(images: str) -> Tuple[str, List[str]]:
    """The folder the paths are relative to, and every image file under ``images`` (recursively, in sorted
    order), or ``images`` itself when it is one image file."""
    images = os.path.abspath(os.path.expanduser(images))
    if os.path.isfile(images):
        return os.path.dirname(images), [os.path.basename(images)]
    if not os.path.isdir(images):
        raise DataError(f"{images} is neither an image file nor a folder")
    found = []
    for folder, dirs, files in os.walk(images):
        dirs.sort()
        found += [os.path.relpath(os.path.join(folder, name), images) for name in sorted(files) if is_image(name)]
    if not found:
        raise DataError(f"no image files (.jpg, .png, .bmp, .webp, ...) under {images}")
    return images, found


def labels_of(path: str, camera_pattern: str) -> store.Labels:
    """(pid, camid) where a path has them: from a Market-1501 file name (``0002_c1s1_...``), or from an identity
    folder named by a number with the camera by ``data.camera_pattern``; None where not."""
    name, parent = os.path.basename(path), os.path.basename(os.path.dirname(path))
    market = MARKET_NAME.match(name)
    if market:
        return int(market.group(1)), int(market.group(2))
    if parent.isdigit():
        camera = re.search(camera_pattern, name)
        return int(parent), int(camera.group(1)) if camera and camera.group(1).isdigit() else None
    return None, None


class ImageFiles(Dataset):
    """Images of a listing through ``transform``; an unreadable one gives a blank image and its reason."""

    def __init__(self, root: str, paths: List[str], transform, size: Tuple[int, int]) -> None:
        self.root, self.paths, self.transform, self.size = root, paths, transform, size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        try:
            img, error = self.transform(read_image(os.path.join(self.root, self.paths[index]))), ""
        except BadImageError as err:
            img, error = torch.zeros(3, *self.size), str(err)
        return {"img": img, "index": index, "error": error}


def _device(name: str, cfg: CN) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if cfg.use_gpu and torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: no CUDA device is available here; use --device cpu")
    return torch.device(name)


def _start(output: str, weights: str, digest: str, root: str, paths: List[str], cfg: CN,
           dtype: str) -> store.Manifest:
    """The manifest to continue from: the one in ``output`` when it was made by the same checkpoint from the same
    images, else a new one; errors instead of overwriting features of another checkpoint or other images."""
    manifest = store.load_manifest(output)
    features = os.path.join(output, store.FEATURES)
    if manifest is None:
        if os.path.exists(features):
            raise CheckpointError(f"{features} exists but was not written by tools/extract.py ({store.MANIFEST} is "
                                  "missing): refusing to overwrite it; choose another --output or delete it")
        manifest = store.Manifest(os.path.abspath(weights), digest, cfg.model.name, cfg.data.height, cfg.data.width,
                                  cfg.test.feature, dtype, root, len(paths))
        store.save_listing(output, paths)
        store.save_manifest(output, manifest)
        return manifest
    if manifest.checkpoint_sha256 != digest:
        raise CheckpointError(f"{features} holds features of {manifest.checkpoint} (SHA-256 "
                              f"{manifest.checkpoint_sha256[:12]}), not of {weights} ({digest[:12]}): refusing to "
                              "overwrite them; choose another --output or delete that folder")
    if manifest.images != root or store.load_listing(output) != paths:
        raise DataError(f"{output} holds features of the images under {manifest.images} as they were listed then; "
                        f"{root} now lists other files: choose another --output, or delete {output} to start anew")
    if manifest.dtype != dtype:
        raise ConfigError(f"--dtype {dtype}: {features} is being written as {manifest.dtype}; use --dtype "
                          f"{manifest.dtype} to continue it")
    return manifest


@torch.no_grad()
def extract(cfg: CN, weights: str, images: str, output: str, device: str = "auto", amp: bool = False,
            batch_size: Optional[int] = None, dtype: str = "float32", progress: bool = True) -> store.Manifest:
    """Extract (or continue extracting) the features of ``images`` into the folder ``output``; return its
    finished manifest."""
    if dtype not in store.DTYPES:
        raise ConfigError(f"--dtype {dtype!r} is not one of {list(store.DTYPES)}")
    root, paths = list_images(images)
    target = _device(device, cfg)
    model = load_inference_model(cfg, weights)  # a checkpoint that cannot be used stops before anything is written
    os.makedirs(output, exist_ok=True)
    manifest = _start(output, weights, store.file_sha256(weights), root, paths, cfg, dtype)
    if manifest.complete:
        print(f"{output}: all {manifest.count} images were extracted already ({manifest.rows} features)")
        return manifest
    if manifest.done:
        print(f"resuming {output} after {manifest.done} of {manifest.count} images")
    model = model.to(target, memory_format=torch.channels_last if cfg.model.channels_last else torch.preserve_format)
    precision = Precision(target, amp, key="--amp")
    dataset = ImageFiles(root, paths[manifest.done:], eval_transform(cfg), (cfg.data.height, cfg.data.width))
    loader = DataLoader(dataset, batch_size=batch_size or cfg.test.batch_size, num_workers=cfg.data.workers,
                        pin_memory=target.type == "cuda")
    features: Optional[np.memmap] = None
    bar = tqdm(total=manifest.count, initial=manifest.done, unit="img", desc="extracting", disable=not progress,
               mininterval=1.0, smoothing=0.1)
    for batch in loader:
        imgs = batch["img"].to(target, non_blocking=True)
        if cfg.model.channels_last:
            imgs = imgs.contiguous(memory_format=torch.channels_last)
        with precision.autocast():
            out = model(imgs).float().cpu().numpy()
        if features is None:
            manifest.dim = out.shape[1]
            features = store.open_features(output, manifest.count, manifest.dim, dtype)
        ok = [i for i, error in enumerate(batch["error"]) if not error]
        for i, error in enumerate(batch["error"]):
            if error:
                manifest.unreadable[paths[manifest.done + i]] = error
        features[manifest.rows:manifest.rows + len(ok)] = out[ok].astype(dtype)
        features.flush()  # the rows are on disk before the manifest says they are
        manifest.rows += len(ok)
        manifest.done += len(batch["error"])
        store.save_manifest(output, manifest)
        bar.update(len(batch["error"]))
    bar.close()
    del features
    _finish(output, manifest, paths, cfg)
    return manifest


def _finish(output: str, manifest: store.Manifest, paths: List[str], cfg: CN) -> None:
    readable = [p for p in paths if p not in manifest.unreadable]
    if manifest.dim:
        store.truncate_features(output, manifest.rows)
    store.save_index(output, readable, [labels_of(p, cfg.data.camera_pattern) for p in readable])
    manifest.complete = True
    store.save_manifest(output, manifest)
    print(f"wrote {manifest.rows} x {manifest.dim} {manifest.dtype} features of {manifest.images} to "
          f"{os.path.join(output, store.FEATURES)} and their files to {os.path.join(output, store.INDEX)}")
    if manifest.unreadable:
        print(f"skipped {len(manifest.unreadable)} unreadable images:")
        for path, reason in sorted(manifest.unreadable.items()):
            print(f"  {path}: {reason}")
