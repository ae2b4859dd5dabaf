"""Dataset problems caught where they start, each with a message that names the culprit and the fix.

torchreid looks for datasets only once it builds them (and tries downloads that cannot work offline),
retries an unreadable image forever, and fails with bare assertions on samplers it cannot fill.
"""
from __future__ import annotations

import collections
import contextlib
import os
import warnings
from typing import Dict, Iterable, Iterator, List, Optional, Sequence

import numpy as np
from PIL import Image, ImageOps

from .. import _torchreid

LAYOUTS = {
    "market1501": "Market-1501-v15.09.15/{bounding_box_train,bounding_box_test,query}/*.jpg",
    "dukemtmcreid": "DukeMTMC-reID/{bounding_box_train,bounding_box_test,query}/*.jpg",
    "cuhk03": "cuhk03_release/cuhk-03.mat and cuhk03_new_protocol_config_{detected,labeled}.mat",
    "msmt17": "MSMT17_V1/{train,test,list_train.txt,list_val.txt,list_query.txt,list_gallery.txt}",
}
"""What torchreid expects under ``data.root/<dataset_dir>/`` for the benchmarks the configs use."""
GUIDE = "https://kaiyangzhou.github.io/deep-person-reid/datasets.html"


class DataError(ValueError):
    """A dataset cannot be used as configured; the message says which and what to do."""


class DatasetNotFoundError(DataError, FileNotFoundError):
    """A dataset is missing from ``data.root``; the message says where to put it."""


class BadImageError(DataError, OSError):
    """An image file cannot be decoded."""


def check_available(root: str, names: Iterable[str], generated: Sequence[str] = ()) -> None:
    """Fail fast, before torchreid tries a download that cannot work offline, when a dataset that is not
    ``generated`` by this package has no (or an empty) folder under ``root``."""
    table = _torchreid.image_dataset_table()
    for name in names:
        if name not in table:
            raise DatasetNotFoundError(f"unknown dataset {name!r} in data.sources/data.targets; available: "
                                       f"{sorted(n for n in table if ':' not in n)}, or your own images as "
                                       "market:ROOT, folders:ROOT or csv:FILE")
        cls = table[name]
        folder = getattr(cls, "dataset_dir", None)
        if name in generated or not isinstance(folder, str):
            continue
        path = os.path.join(os.path.abspath(os.path.expanduser(root)), folder)
        if not os.path.isdir(path) or not os.listdir(path):
            layout = LAYOUTS.get(name, "the files of the original release")
            state = "is empty" if os.path.isdir(path) else "does not exist"
            raise DatasetNotFoundError(
                f"dataset {name}: {path} {state}. Download {cls.__name__} and unpack it so that torchreid finds "
                f"{path}/{layout} (see {GUIDE}), or set data.root to the folder that holds {folder}/."
            )


SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
"""PIL's modes of 16-bit grayscale files (``I`` in older Pillow, and for 32-bit integer TIFFs); its
``convert("RGB")`` clips them to white."""
_TIFF_BITS_PER_SAMPLE, _TIFF_SAMPLE_FORMAT, _TIFF_SIGNED = 258, 339, 2


def _white_level(img: Image.Image) -> int:
    """The largest value of a deep grayscale image's range: 65535 for 16 bits; for an integer TIFF, what its
    BitsPerSample and SampleFormat tags say (2**31 - 1 for signed 32-bit samples)."""
    tags = getattr(img, "tag_v2", {})

    def first(tag: int, default: int) -> int:
        value = tags.get(tag, default)
        return int(value[0] if isinstance(value, tuple) else value)

    signed = first(_TIFF_SAMPLE_FORMAT, 1) == _TIFF_SIGNED
    return 2 ** (first(_TIFF_BITS_PER_SAMPLE, 16) - signed) - 1


def _to_rgb(img: Image.Image) -> Image.Image:
    """Upright (EXIF orientation applied: phone photos are stored sideways) and RGB, deep grayscale scaled to
    8 bits."""
    white = _white_level(img)  # from the file's tags, which the upright copy does not keep
    img = ImageOps.exif_transpose(img)
    if img.mode in SIXTEEN_BIT_MODES:
        scaled = np.rint(np.asarray(img, dtype=np.float64) * (255 / white))
        img = Image.fromarray(np.clip(scaled, 0, 255).astype(np.uint8))
    return img.convert("RGB")


def read_image(path: str) -> Image.Image:
    """An RGB image (16-bit grayscale scaled to 8 bits), or :class:`BadImageError` naming the file: torchreid's
    reader retries forever. A header claiming more pixels than PIL's ``MAX_IMAGE_PIXELS`` (a decompression
    bomb, which PIL would otherwise allocate or refuse with an error that is not an ``OSError``) is one too."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                return _to_rgb(img)
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as err:
        raise BadImageError(f"cannot read image {path} ({type(err).__name__}: {err}); replace or delete the file, "
                            "or set data.skip_bad_images True to leave unreadable images out") from err


def install_image_reader() -> None:
    """Make torchreid's datasets read images with :func:`read_image`."""
    _torchreid.submodule("data.datasets.dataset").read_image = read_image


def unreadable(paths: Iterable[str]) -> Dict[str, str]:
    """Every image of ``paths`` that :func:`read_image` cannot decode, with the reason."""
    bad = {}
    for path in paths:
        try:
            read_image(path)
        except BadImageError as err:
            bad[path] = str(err)
    return bad


class _Options:
    def __init__(self, sources: Sequence[str], skip_bad_images: bool, check_images: bool,
                 num_instances: Optional[int], ids_per_batch: Optional[int]) -> None:
        self.sources, self.skip_bad_images, self.check_images = set(sources), skip_bad_images, check_images
        self.num_instances, self.ids_per_batch = num_instances, ids_per_batch
        self.bad: Dict[str, Dict[str, str]] = {}


def _relabel(train: List[tuple]) -> List[tuple]:
    label = {pid: i for i, pid in enumerate(sorted({item[1] for item in train}))}
    return [(item[0], label[item[1]], *item[2:]) for item in train]


class _Checked(_torchreid.data.ImageDataset):
    """Placed between a dataset class and ``ImageDataset`` in the MRO, it sees the lists the dataset built
    before torchreid does: it decodes every image when asked (and drops or reports the unreadable ones) and
    checks what the sampler needs."""

    _name = ""
    _options: _Options

    def __init__(self, train: List[tuple], query: List[tuple], gallery: List[tuple], **kwargs) -> None:
        name, opts = self._name, self._options
        if opts.skip_bad_images or opts.check_images:
            if name not in opts.bad:
                opts.bad[name] = unreadable(item[0] for item in train + query + gallery)
            bad = opts.bad[name]
            shown = sorted(bad)[:5]
            if bad and not opts.skip_bad_images:
                raise DataError(f"dataset {name}: {len(bad)} unreadable images: {shown}; the first: {bad[shown[0]]}")
            if bad:
                warnings.warn(f"dataset {name}: skipping {len(bad)} unreadable images, e.g. {shown}")
            train, query, gallery = ([i for i in items if i[0] not in bad] for items in (train, query, gallery))
            train = _relabel(train)
        for split, items in (("query", query), ("gallery", gallery)):
            if not items:
                raise DataError(f"dataset {name}: the {split} split is empty; check the files under data.root")
        if name in opts.sources:
            self._check_train(name, train, opts)
        super().__init__(train, query, gallery, **kwargs)

    @staticmethod
    def _check_train(name: str, train: List[tuple], opts: _Options) -> None:
        if not train:
            raise DataError(f"dataset {name}: the training split is empty; check the files under data.root")
        if opts.num_instances is None:
            return
        counts = collections.Counter(item[1] for item in train)
        if max(counts.values()) < opts.num_instances:
            raise DataError(
                f"dataset {name}: sampler.num_instances={opts.num_instances} but no training identity has more than "
                f"{max(counts.values())} images; lower sampler.num_instances"
            )
        if len(counts) < opts.ids_per_batch:
            raise DataError(
                f"dataset {name}: a batch needs train.batch_size / sampler.num_instances = {opts.ids_per_batch} "
                f"identities but the training split has {len(counts)}; lower train.batch_size"
            )


@contextlib.contextmanager
def checked_datasets(names: Iterable[str], sources: Sequence[str], skip_bad_images: bool = False,
                     check_images: bool = False, num_instances: Optional[int] = None,
                     ids_per_batch: Optional[int] = None) -> Iterator[None]:
    """While torchreid builds its data manager, the datasets ``names`` are built through :class:`_Checked`
    subclasses: every image is decoded first with ``check_images`` (DataError listing the unreadable ones) or
    ``skip_bad_images`` (they are left out); identity sampling checks apply when ``num_instances`` is given.
    Market-1501 and DukeMTMC-reID read each file's identity and camera from its own name (:mod:`.names`)."""
    from .names import name_readers  # names.py raises this module's DataError

    table = _torchreid.image_dataset_table()
    saved = {name: table[name] for name in set(names)}
    options = _Options(sources, skip_bad_images, check_images, num_instances, ids_per_batch)
    try:
        for name, cls in saved.items():
            if isinstance(cls, type) and issubclass(cls, _torchreid.data.ImageDataset):
                table[name] = type(cls.__name__, (*name_readers(cls), cls, _Checked),
                                   {"_name": name, "_options": options, "_dataset_name": name,
                                    "_skip_bad_names": skip_bad_images})
        yield
    finally:
        table.update(saved)
