"""The user's own image datasets, named in ``data.sources`` / ``data.targets`` as ``LAYOUT:PATH``:

- ``market:ROOT``: ``ROOT/{bounding_box_train,query,bounding_box_test}`` with Market-1501's file names
  (``<pid>_c<camera>...``; pid -1 marks junk images, left out as torchreid does);
- ``folders:ROOT``: ``ROOT/{train,query,gallery}/<pid>/<image>``, the camera taken from each file name by the
  regular expression ``data.camera_pattern`` (one group, default ``c(\\d+)``);
- ``csv:FILE``: rows ``path,pid,camid,split`` (split: train, query or gallery; paths relative to the file's
  folder; an optional header row ``path,pid,camid,split``).

Each becomes a torchreid ``ImageDataset`` in torchreid's dataset table under that very name, so training,
evaluation and the tools use it as they use ``market1501``. Everything that cannot work is a DataError naming
the file (and, for a CSV, the line) before any training: an empty split the run needs, a query identity
without a gallery image from another camera, a pid or camera that does not parse, a listed file that is
missing, a path outside the root.
"""
from __future__ import annotations

import collections
import csv
import os
import re
from typing import Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple

from .. import _torchreid
from ..config import ConfigError
from .checks import DataError, DatasetNotFoundError

LAYOUTS = ("market", "folders", "csv")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
"""Image files the loaders read (PIL; 16-bit PNGs through :func:`torchreid_scal.datasets.checks.read_image`)."""
SPLITS = ("train", "query", "gallery")
MARKET_DIRS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
MARKET_NAME = re.compile(r"^(-?\d+)_c(\d+)")
"""Market-1501's file names: ``<pid>_c<camera>s<sequence>_<frame>_<box>.jpg``."""
DEFAULT_CAMERA_PATTERN = r"c(\d+)"
CSV_HEADER = ["path", "pid", "camid", "split"]
_BASE_KWARGS = ("transform", "k_tfm", "mode", "combineall", "verbose")  # what torchreid's Dataset takes


class Item(NamedTuple):
    """One image: its path, identity and camera, and where it was found (the file, or ``FILE:LINE`` of a CSV)."""

    path: str
    pid: int
    camid: int
    where: str


def parse_name(name: str) -> Optional[Tuple[str, str]]:
    """``(layout, path)`` of a dataset name written ``LAYOUT:PATH``; None for any other name (torchreid's)."""
    layout, colon, path = name.partition(":")
    return (layout, path) if colon else None


def check_name(key: str, name: str) -> None:
    """ConfigError naming ``key`` when ``name`` is written ``LAYOUT:PATH`` with an unknown layout or no path."""
    parsed = parse_name(name)
    if parsed is None:
        return
    layout, path = parsed
    if layout not in LAYOUTS:
        raise ConfigError(f"config key {key}: {name!r} names the unknown layout {layout!r}; write market:ROOT, "
                         "folders:ROOT or csv:FILE")
    if not path:
        raise ConfigError(f"config key {key}: {name!r} has no path after '{layout}:'")


def check_camera_pattern(pattern: str) -> None:
    """ConfigError naming ``data.camera_pattern`` unless it compiles with exactly one group."""
    try:
        groups = re.compile(pattern).groups
    except re.error as err:
        raise ConfigError(f"config key data.camera_pattern: '{pattern}' is not a regular expression ({err})") from None
    if groups != 1:
        raise ConfigError(f"config key data.camera_pattern: '{pattern}' has {groups} groups; it needs exactly one, "
                         r"the camera number, e.g. c(\d+)")


def is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _integer(text: str, what: str, where: str, hint: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise DataError(f"{where}: {what} {text!r} is not an integer; {hint}") from None


def camera_of(filename: str, pattern: "re.Pattern[str]", where: str) -> int:
    """The camera number in ``filename`` by ``pattern`` (``data.camera_pattern``); DataError naming ``where``."""
    match = pattern.search(filename)
    if match is None:
        raise DataError(f"{where}: no camera in the file name by data.camera_pattern '{pattern.pattern}'; rename the "
                        "file or set data.camera_pattern to a regular expression whose group is its camera number")
    return _integer(match.group(1), "the camera", where, "set data.camera_pattern so that its group is a number")


def _images(folder: str) -> List[str]:
    return sorted(entry.path for entry in os.scandir(folder) if entry.is_file() and is_image(entry.name))


def read_market(root: str) -> Dict[str, List[Item]]:
    """Market-1501's three folders under ``root``; a missing folder is an empty split."""
    splits: Dict[str, List[Item]] = {}
    for split, sub in MARKET_DIRS.items():
        folder = os.path.join(root, sub)
        splits[split] = []
        for path in _images(folder) if os.path.isdir(folder) else []:
            match = MARKET_NAME.match(os.path.basename(path))
            if match is None:
                raise DataError(f"{path}: not a Market-1501 file name (<pid>_c<camera>..., e.g. 0002_c1s1_000451_03.jpg)"
                                f"; rename the file or move it out of {folder}")
            pid, camid = int(match.group(1)), int(match.group(2))
            if pid != -1:  # junk images, as torchreid leaves them out
                splits[split].append(Item(path, pid, camid, path))
    return splits


def read_folders(root: str, camera_pattern: str) -> Dict[str, List[Item]]:
    """``root/<split>/<pid>/<image>``; a missing split folder is an empty split."""
    pattern = re.compile(camera_pattern)
    splits: Dict[str, List[Item]] = {}
    for split in SPLITS:
        folder = os.path.join(root, split)
        splits[split] = []
        if not os.path.isdir(folder):
            continue
        for entry in sorted(os.scandir(folder), key=lambda e: e.name):
            if not entry.is_dir():
                if is_image(entry.name):
                    raise DataError(f"{entry.path}: images go into a folder named by their identity, "
                                    f"{folder}/<pid>/{entry.name}")
                continue
            pid = _integer(entry.name, "the identity folder", entry.path,
                           "name each identity's folder by its pid, a number such as 0001")
            for path in _images(entry.path):
                splits[split].append(Item(path, pid, camera_of(os.path.basename(path), pattern, path), path))
    return splits


def _inside(root: str, path: str) -> bool:
    return os.path.commonpath([root, path]) == root


def read_csv(file: str) -> Dict[str, List[Item]]:
    """Rows ``path,pid,camid,split`` of ``file``, paths relative to its folder."""
    root = os.path.dirname(file)
    splits: Dict[str, List[Item]] = {split: [] for split in SPLITS}
    with open(file, newline="") as f:
        for line, row in enumerate(csv.reader(f), 1):
            where = f"{file}:{line}"
            if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
                continue
            if line == 1 and [cell.strip().lower() for cell in row] == CSV_HEADER:
                continue
            if len(row) != 4:
                raise DataError(f"{where}: expected 4 fields path,pid,camid,split, got {len(row)}: {row}")
            name, pid_text, camid_text, split = (cell.strip() for cell in row)
            pid = _integer(pid_text, "the pid", where, "write an integer identity")
            camid = _integer(camid_text, "the camid", where, "write an integer camera")
            if split not in SPLITS:
                raise DataError(f"{where}: split {split!r} is not one of {list(SPLITS)}")
            path = os.path.normpath(os.path.join(root, name))
            if not _inside(root, path):
                raise DataError(f"{where}: {name} is outside {root}; list files in the CSV's folder or below it")
            if not os.path.isfile(path):
                raise DataError(f"{where}: {path} does not exist; correct the path or remove the row")
            splits[split].append(Item(path, pid, camid, where))
    return splits


def read_dataset(layout: str, location: str, camera_pattern: str = DEFAULT_CAMERA_PATTERN) -> Dict[str, List[Item]]:
    """Every split of the dataset ``layout:location`` (an absolute path); DatasetNotFoundError when it is missing."""
    if layout == "csv":
        if not os.path.isfile(location):
            raise DatasetNotFoundError(f"dataset csv:{location}: no such file; give a CSV file of rows "
                                       "path,pid,camid,split")
        return read_csv(location)
    if not os.path.isdir(location):
        folders = "bounding_box_train, query and bounding_box_test" if layout == "market" else "train, query and gallery"
        raise DatasetNotFoundError(f"dataset {layout}:{location}: no such folder; give the folder that holds {folders}")
    return read_market(location) if layout == "market" else read_folders(location, camera_pattern)


def _split_hint(layout: str, location: str, split: str) -> str:
    if layout == "market":
        return f"no images in {os.path.join(location, MARKET_DIRS[split])}"
    if layout == "folders":
        return f"no images in {os.path.join(location, split)}/<pid>/"
    return f"no row of {location} has the split {split}"


def check_matches(query: Sequence[Item], gallery: Sequence[Item], name: str) -> None:
    """DataError naming the first query whose identity has no gallery image from another camera: it could never
    be evaluated (torchreid's protocol removes the gallery images of its own camera)."""
    cameras = collections.defaultdict(set)
    for item in gallery:
        cameras[item.pid].add(item.camid)
    lonely = [item for item in query if not cameras[item.pid] - {item.camid}]
    if lonely:
        first = lonely[0]
        raise DataError(f"dataset {name}: {first.where}: query pid {first.pid} (camera {first.camid}) has no gallery "
                        f"image from another camera ({len(lonely)} such queries); add such gallery images or remove "
                        "those queries")


def _relabel(items: Iterable[Item]) -> List[Tuple[str, int, int]]:
    items = list(items)
    label = {pid: i for i, pid in enumerate(sorted({item.pid for item in items}))}
    return [(item.path, label[item.pid], item.camid) for item in items]


class CustomDataset(_torchreid.data.ImageDataset):
    """A ``LAYOUT:PATH`` dataset (see the module docstring); subclasses made by :func:`dataset_class` fix the layout,
    location and camera pattern. Only the splits the data manager asks for (``mode``; all three with
    ``combineall``) must be there: torchreid's base class needs three non-empty lists, so an absent split the run
    does not use is given one image of another as a stand-in, which nothing reads."""

    spec = ""
    layout = ""
    location = ""
    camera_pattern = DEFAULT_CAMERA_PATTERN

    def __init__(self, mode: str = "train", combineall: bool = False, **kwargs) -> None:
        splits = read_dataset(self.layout, self.location, self.camera_pattern)
        needed = SPLITS if combineall else ("train",) if mode == "train" else ("query", "gallery")
        for split in needed:
            if not splits[split]:
                raise DataError(f"dataset {self.spec}: the {split} split is empty ({_split_hint(self.layout, self.location, split)})")
        if "query" in needed:
            check_matches(splits["query"], splits["gallery"], self.spec)
        self.counts = {split: (len({item.pid for item in items}), len(items), len({item.camid for item in items}))
                       for split, items in splits.items()}
        stand_in = next(items[0] for items in splits.values() if items)
        train = _relabel(splits["train"] or [stand_in])
        query, gallery = ([item[:3] for item in splits[s] or [stand_in]] for s in ("query", "gallery"))
        options = {k: v for k, v in kwargs.items() if k in _BASE_KWARGS}
        super().__init__(train, query, gallery, mode=mode, combineall=combineall, **options)

    def show_summary(self) -> None:
        print(f"=> Loaded {self.spec}")
        print("  ----------------------------------------")
        print("  subset   | # ids | # images | # cameras")
        print("  ----------------------------------------")
        for split in SPLITS:
            ids, images, cameras = self.counts[split]
            print(f"  {split:<8} | {ids:5d} | {images:8d} | {cameras:9d}")
        print("  ----------------------------------------")


def dataset_class(name: str, camera_pattern: str = DEFAULT_CAMERA_PATTERN) -> type:
    """The torchreid dataset class of the name ``LAYOUT:PATH`` (PATH made absolute from the current folder)."""
    parsed = parse_name(name)
    if parsed is None or parsed[0] not in LAYOUTS:
        raise ValueError(f"{name!r} is not a LAYOUT:PATH dataset name")
    layout, path = parsed
    location = os.path.abspath(os.path.expanduser(path))
    return type(f"{layout.capitalize()}Dataset", (CustomDataset,),
                {"spec": name, "layout": layout, "location": location, "camera_pattern": camera_pattern})


def register_custom(names: Iterable[str], camera_pattern: str = DEFAULT_CAMERA_PATTERN) -> List[str]:
    """Put every ``LAYOUT:PATH`` name of ``names`` into torchreid's dataset table (replacing an earlier entry, so a
    changed ``data.camera_pattern`` takes effect); return those names."""
    custom = [name for name in dict.fromkeys(names) if parse_name(name) is not None]
    table = _torchreid.image_dataset_table()
    for name in custom:
        table[name] = dataset_class(name, camera_pattern)
    return custom
