"""``scal_demo``: a small synthetic re-id dataset, generated on first use, for smoke tests and demos.

Identity lives ON the person (clothing colours, torso pattern, sleeves, shorts, hat, bag); the
cluttered background is drawn afresh for every image, so it carries no identity and is a pure
distractor that an attention model should learn to ignore. Three cameras differ in lighting and in
the scale and position of the figure. Files follow Market-1501's layout and naming.
"""
from __future__ import annotations

import contextlib
import fcntl
import functools
import glob
import json
import os
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass
from typing import Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple, TypeVar

import cv2
import numpy as np

from .. import _torchreid
from .checks import DataError

GENERATOR_VERSION = 3
HEIGHT, WIDTH = 128, 64
_SUPERSAMPLE = 2  # drawn at twice the size, then area-downsampled: cheap anti-aliasing
MARKER = ".complete"
SPLIT_DIRS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test",
              "heldout": "heldout_train"}
"""``heldout``: further images of the training identities, never trained on, where rewards are defined."""
_NAME = re.compile(r"^(\d{4})_c(\d)s1_(\d{6})\.png$")
_BASE_KWARGS = ("transform", "k_tfm", "mode", "combineall", "verbose")  # what torchreid's Dataset takes

T = TypeVar("T")
Colour = Tuple[int, int, int]
_PALETTE: Tuple[Colour, ...] = (
    (25, 25, 28), (235, 235, 230), (128, 128, 128), (200, 30, 35), (120, 20, 40), (240, 130, 20),
    (235, 210, 40), (40, 160, 60), (110, 120, 40), (20, 140, 140), (35, 80, 200), (25, 35, 90),
    (120, 180, 235), (120, 50, 160), (240, 130, 180), (110, 70, 35), (210, 190, 150),
)
_LOWER: Tuple[Colour, ...] = tuple(_PALETTE[i] for i in (0, 2, 11, 10, 16, 15, 8, 1, 3))
_SKIN: Tuple[Colour, ...] = ((240, 200, 170), (210, 160, 120), (160, 110, 75), (100, 65, 45))
_HAIR: Tuple[Colour, ...] = ((20, 15, 10), (90, 55, 25), (210, 180, 100), (150, 150, 150))
PATTERNS = ("plain", "hstripes", "vstripes", "checks", "dots")


class Camera(NamedTuple):
    """Per-camera lighting (RGB gain, offset) and where the figure stands (fractions of the frame)."""

    gain: Tuple[float, float, float]
    offset: float
    scale: float
    cx: float
    foot: float


CAMERAS = (
    Camera((1.05, 1.0, 0.95), 10.0, 0.86, 0.50, 0.96),  # daylight, centred
    Camera((0.8, 0.88, 1.0), 0.0, 0.70, 0.42, 0.90),  # dim and blue, far away, left
    Camera((1.0, 0.92, 0.78), 20.0, 0.95, 0.56, 0.99),  # warm, washed out, close, right
)


@dataclass(frozen=True)
class Identity:
    """What makes a person recognisable: the only thing shared by all images of one pid."""

    upper: Colour
    lower: Colour
    pattern: str
    accent: Optional[Colour]
    long_sleeves: bool
    shorts: bool
    skin: Colour
    hair: Colour
    hat: Optional[Colour]
    bag: Optional[Colour]
    bag_side: int


def _pick(rng: np.random.Generator, options: Sequence[T]) -> T:
    return options[int(rng.integers(len(options)))]


def sample_identities(count: int, rng: np.random.Generator) -> List[Identity]:
    """Draw ``count`` identities whose (upper, lower, pattern, accent) differ; single colours recur."""
    people: Dict[tuple, Identity] = {}
    while len(people) < count:
        upper, pattern = _pick(rng, _PALETTE), _pick(rng, PATTERNS)
        accent = None if pattern == "plain" else _pick(rng, [c for c in _PALETTE if c != upper])
        who = Identity(upper, _pick(rng, _LOWER), pattern, accent, bool(rng.random() < 0.5), bool(rng.random() < 0.3),
                       _pick(rng, _SKIN), _pick(rng, _HAIR), _pick(rng, _PALETTE) if rng.random() < 0.4 else None,
                       _pick(rng, _PALETTE) if rng.random() < 0.5 else None, _pick(rng, (-1, 1)))
        people.setdefault((who.upper, who.lower, who.pattern, who.accent), who)
    return list(people.values())


def _colour(rng: np.random.Generator, low: int = 0, high: int = 256) -> Colour:
    return tuple(int(c) for c in rng.integers(low, high, 3))  # type: ignore[return-value]


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Clutter: a wall and floor, random rectangles, bars and blobs, and blotchy low-frequency noise."""
    img = np.empty((h, w, 3), np.uint8)
    wall = np.asarray(_colour(rng, 40, 220))
    img[:] = wall
    img[int(rng.uniform(0.55, 0.8) * h):] = _colour(rng, 30, 200)
    for _ in range(int(rng.integers(6, 15))):
        (x1, x2), (y1, y2) = rng.integers(-w // 4, w + w // 4, 2), rng.integers(-h // 8, h, 2)
        kind = int(rng.integers(3))
        colour = tuple(int(c) for c in (np.asarray(_colour(rng)) + wall) // 2)  # muted towards the wall
        if kind == 0:
            cv2.rectangle(img, (int(x1), int(y1)), (int(x2), int(y2)), colour, -1)
        elif kind == 1:
            cv2.line(img, (int(x1), int(y1)), (int(x2), int(y2)), colour, int(rng.integers(2, 10)), cv2.LINE_AA)
        else:
            axes = (int(rng.integers(4, w // 3)), int(rng.integers(4, h // 5)))
            cv2.ellipse(img, (int(x1), int(y1)), axes, float(rng.uniform(0, 180)), 0, 360, colour, -1, cv2.LINE_AA)
    blotches = cv2.resize(rng.normal(0, 12, (8, 4, 3)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    return np.clip(img + blotches, 0, 255).astype(np.uint8)


def _pattern_mask(pattern: str, shape: Tuple[int, int], origin: Tuple[int, int], period: int) -> np.ndarray:
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    yy, xx = yy - origin[1], xx - origin[0]
    if pattern == "hstripes":
        return (yy // period) % 2 == 0
    if pattern == "vstripes":
        return (xx // period) % 2 == 0
    if pattern == "checks":
        return (yy // period + xx // period) % 2 == 0
    if pattern == "dots":
        return ((yy % period) - period / 2) ** 2 + ((xx % period) - period / 2) ** 2 < (period / 3) ** 2
    return np.zeros(shape, bool)


def _draw_person(img: np.ndarray, who: Identity, cam: Camera, rng: np.random.Generator) -> None:
    """Legs, torso (with the identity's pattern), arms, head and extras, placed by the camera plus jitter."""
    (H, W), h = img.shape[:2], cam.scale * rng.uniform(0.95, 1.04) * img.shape[0]
    cx, y0 = (cam.cx + rng.uniform(-0.05, 0.05)) * W, (cam.foot + rng.uniform(-0.02, 0.01)) * H - h
    spread, sway, aa = rng.uniform(0.0, 0.12), rng.uniform(-0.08, 0.08), cv2.LINE_AA

    def p(u: float, v: float) -> Tuple[int, int]:  # figure coordinates: units of h from the top centre
        return int(round(cx + u * h)), int(round(y0 + v * h))

    def t(f: float) -> int:
        return max(1, int(round(f * h)))

    def limb(u: float, v: float, angles: tuple, colours: tuple, width: float) -> Tuple[float, float]:
        for ang, colour in zip(angles, colours):
            u2, v2 = u + 0.2 * np.sin(ang), v + 0.2 * np.cos(ang)
            cv2.line(img, p(u, v), p(u2, v2), colour, t(width), aa)
            u, v = u2, v2
        return u, v

    for side in (-1, 1):
        ang = side * spread + sway
        u, v = limb(side * 0.055, 0.53, (ang, ang), (who.lower, who.skin if who.shorts else who.lower), 0.09)
        cv2.ellipse(img, p(u + side * 0.02, v + 0.04), (t(0.045), t(0.022)), 0, 0, 360, (30, 25, 25), -1, aa)
    torso = np.array([p(-0.13, 0.16), p(0.13, 0.16), p(0.115, 0.54), p(-0.115, 0.54)])
    cv2.fillConvexPoly(img, torso, who.upper, aa)
    cv2.ellipse(img, p(0, 0.18), (t(0.13), t(0.035)), 0, 180, 360, who.upper, -1, aa)
    if who.accent is not None:
        inside = cv2.fillConvexPoly(np.zeros((H, W), np.uint8), torso, 1) > 0
        img[inside & _pattern_mask(who.pattern, (H, W), p(0, 0.16), t(0.06) + 1)] = who.accent
    for side in (-1, 1):
        ang, bend = side * rng.uniform(0.05, 0.35), side * rng.uniform(-0.3, 0.15)
        forearm = who.upper if who.long_sleeves else who.skin
        u, v = limb(side * 0.135, 0.185, (ang, ang + bend), (who.upper, forearm), 0.06)
        cv2.circle(img, p(u, v), t(0.03), who.skin, -1, aa)
    cv2.rectangle(img, p(-0.025, 0.11), p(0.025, 0.17), who.skin, -1)
    cv2.ellipse(img, p(0, 0.075), (t(0.052), t(0.065)), 0, 0, 360, who.skin, -1, aa)
    cv2.ellipse(img, p(0, 0.065), (t(0.056), t(0.058)), 0, 180, 360, who.hat or who.hair, -1, aa)
    if who.hat is not None:
        cv2.line(img, p(-0.07, 0.065), p(0.07, 0.065), who.hat, t(0.02), aa)
    if who.bag is not None:
        side = who.bag_side
        cv2.line(img, p(-side * 0.1, 0.16), p(side * 0.16, 0.46), who.bag, t(0.02), aa)
        cv2.rectangle(img, p(side * 0.16 - 0.06, 0.44), p(side * 0.16 + 0.06, 0.56), who.bag, -1, aa)


def render(who: Identity, camid: int, rng: np.random.Generator) -> np.ndarray:
    """One ``HEIGHT×WIDTH`` RGB uint8 image of ``who`` seen by camera ``camid`` (0-based)."""
    cam = CAMERAS[camid]
    canvas = _background(rng, HEIGHT * _SUPERSAMPLE, WIDTH * _SUPERSAMPLE)
    _draw_person(canvas, who, cam, rng)
    small = cv2.resize(canvas, (WIDTH, HEIGHT), interpolation=cv2.INTER_AREA).astype(np.float64)
    lit = small * (np.asarray(cam.gain) * rng.uniform(0.88, 1.12)) + cam.offset + rng.normal(0, 3, small.shape)
    return np.clip(lit, 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class DemoConfig:
    """Everything the generated files depend on; stored in the marker to decide on reuse."""

    seed: int = 0
    num_train_ids: int = 50
    num_test_ids: int = 1000
    train_per_id: int = 8
    gallery_per_id: int = 6
    heldout_per_id: int = 2

    def __post_init__(self) -> None:
        if min(self.num_train_ids, self.num_test_ids, self.train_per_id) < 1:
            raise ValueError(f"scal_demo needs identities in both splits and training images: {self}")
        if self.num_train_ids + self.num_test_ids > 9999:
            raise ValueError(f"pids are written with four digits: {self}")
        if self.gallery_per_id < len(CAMERAS):
            raise ValueError(f"gallery_per_id must be >= {len(CAMERAS)} so that every camera is covered: {self}")

    def layout(self) -> List[Tuple[str, int, int]]:
        """``(split, pid, camid)`` per image, in file order; pids 1-based, train before test ids."""
        ncam, items = len(CAMERAS), []
        for pid in range(1, self.num_train_ids + 1):
            items += [("train", pid, (pid + k) % ncam) for k in range(self.train_per_id)]
        for pid in range(self.num_train_ids + 1, self.num_train_ids + self.num_test_ids + 1):
            items.append(("query", pid, pid % ncam))
            items += [("gallery", pid, k % ncam) for k in range(self.gallery_per_id)]
        for pid in range(1, self.num_train_ids + 1):
            items += [("heldout", pid, (pid + k) % ncam) for k in range(self.heldout_per_id)]
        return items

    def marker(self) -> Dict[str, object]:
        counts = {split: sum(s == split for s, _, _ in self.layout()) for split in SPLIT_DIRS}
        return dict(asdict(self), version=GENERATOR_VERSION, counts=counts)


def generate(out_dir: str, config: DemoConfig) -> None:
    """Write every image of ``config`` plus the marker into the (new, empty) directory ``out_dir``."""
    people = sample_identities(config.num_train_ids + config.num_test_ids, np.random.default_rng(config.seed))
    for sub in SPLIT_DIRS.values():
        os.makedirs(os.path.join(out_dir, sub))
    for frame, (split, pid, camid) in enumerate(config.layout()):
        rgb = render(people[pid - 1], camid, np.random.default_rng([config.seed, frame]))
        path = os.path.join(out_dir, SPLIT_DIRS[split], f"{pid:04d}_c{camid + 1}s1_{frame:06d}.png")
        _, png = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        with open(path, "wb") as f:  # Python's open takes any path (cv2.imwrite crashes on non-UTF-8 bytes)
            f.write(png.tobytes())
    with open(os.path.join(out_dir, MARKER), "w") as f:
        json.dump(config.marker(), f, sort_keys=True)


def foreign_files(dataset_dir: str) -> List[str]:
    """Everything in ``dataset_dir`` that the generator does not write: all but the marker and, in the split
    folders, files named like its images."""
    if not os.path.isdir(dataset_dir) or os.path.islink(dataset_dir):
        return [dataset_dir] if os.path.lexists(dataset_dir) else []
    foreign = []
    for entry in os.scandir(dataset_dir):
        if entry.name == MARKER and entry.is_file(follow_symlinks=False):
            continue
        if entry.name in SPLIT_DIRS.values() and entry.is_dir(follow_symlinks=False):
            foreign += [image.path for image in os.scandir(entry.path)
                        if not (_NAME.match(image.name) and image.is_file(follow_symlinks=False))]
        else:
            foreign.append(entry.path)
    return sorted(foreign)


def _marker_matches(dataset_dir: str, config: DemoConfig) -> bool:
    try:
        with open(os.path.join(dataset_dir, MARKER)) as f:
            return json.load(f) == config.marker()
    except (OSError, ValueError):
        return False  # missing or unreadable marker: (re)generate


@contextlib.contextmanager
def _generator_lock(parent: str) -> Iterator[bool]:
    """Hold an exclusive ``flock`` on the folder ``parent`` while generating in it: another generator waits, and a
    temporary folder seen meanwhile was left by one that was killed. Yields False where the file system has no
    locks (nothing is then known to be stale)."""
    try:
        fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        yield False
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            locked = True
        except OSError:
            locked = False
        yield locked
    finally:
        os.close(fd)


def _remove_stale_temporaries(parent: str, prefix: str) -> None:
    """Delete the temporary folders (``prefix*`` holding only ``new`` and ``stale``) of generations that were killed
    before they could clean up (SIGTERM, SIGKILL); only safe while holding :func:`_generator_lock`."""
    for entry in os.scandir(parent):
        if entry.name.startswith(prefix) and entry.is_dir(follow_symlinks=False):
            if set(os.listdir(entry.path)) <= {"new", "stale"}:
                shutil.rmtree(entry.path, ignore_errors=True)
                print(f"removed {entry.path}, left by an interrupted scal_demo generation")


def ensure_generated(dataset_dir: str, config: DemoConfig) -> bool:
    """Generate ``dataset_dir`` unless its marker matches ``config``; return whether it was generated.

    Images go to a temporary sibling that is renamed into place once complete, so an interrupted run
    never leaves a directory that looks finished; a stale directory is moved aside and removed, but only
    when it holds nothing but the generator's own files (DataError naming the others otherwise). One process
    generates at a time in a folder, and removes what killed generations left there.
    """
    if _marker_matches(dataset_dir, config):
        return False
    parent = os.path.dirname(os.path.abspath(dataset_dir))
    prefix = f".{os.path.basename(dataset_dir)}-"
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as err:
        raise DataError(f"cannot generate scal_demo in {dataset_dir} ({err.strerror or err}); "
                        "set data.root to a writable folder") from None
    with _generator_lock(parent) as exclusive:
        if _marker_matches(dataset_dir, config):  # another process generated it while this one waited
            return False
        foreign = foreign_files(dataset_dir)
        if foreign:
            raise DataError(f"{dataset_dir} holds files the scal_demo generator did not write: {foreign[:5]}; its "
                            f"marker {MARKER} is missing, damaged or of another generator version, so the folder would "
                            "be regenerated: move those files elsewhere (or delete the folder) and run again")
        if exclusive:
            _remove_stale_temporaries(parent, prefix)
        try:
            tmp = tempfile.mkdtemp(prefix=prefix, dir=parent)
        except OSError as err:
            raise DataError(f"cannot generate scal_demo in {dataset_dir} ({err.strerror or err}); "
                            "set data.root to a writable folder") from None
        try:
            generate(os.path.join(tmp, "new"), config)
            if os.path.lexists(dataset_dir):
                os.rename(dataset_dir, os.path.join(tmp, "stale"))
            os.rename(os.path.join(tmp, "new"), dataset_dir)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return True


def read_split(directory: str, relabel: bool = False) -> List[Tuple[str, int, int]]:
    """``(img_path, pid, camid)`` from Market-style names; ``relabel`` maps pids to 0..N-1."""
    items = []
    for path in sorted(glob.glob(os.path.join(directory, "*.png"))):
        match = _NAME.match(os.path.basename(path))
        if match:
            items.append((path, int(match.group(1)), int(match.group(2)) - 1))
    if relabel:
        label = {pid: i for i, pid in enumerate(sorted({pid for _, pid, _ in items}))}
        items = [(path, label[pid], camid) for path, pid, camid in items]
    return items


@contextlib.contextmanager
def demo_options(**options) -> Iterator[None]:
    """While the block runs, torchreid builds ``scal_demo`` with these generation options (e.g.
    ``num_test_ids``): its data manager passes a dataset a fixed set of keywords only."""
    table = _torchreid.image_dataset_table()
    registered = table.get("scal_demo")
    table["scal_demo"] = type("SCALDemo", (SCALDemo,), {"__init__": functools.partialmethod(SCALDemo.__init__,
                                                                                           **options)})
    try:
        yield
    finally:
        table["scal_demo"] = registered


class SCALDemo(_torchreid.data.ImageDataset):
    """torchreid dataset ``scal_demo``: generated under ``root/scal_demo`` on first use (seconds on CPU).

    Generation options are :class:`DemoConfig`'s fields; of the other keyword arguments torchreid's
    data manager passes, those ``ImageDataset`` understands are forwarded and the rest ignored.
    ``heldout`` lists further images of the training identities, labelled like ``train`` but never in it.
    """

    dataset_dir = "scal_demo"

    def __init__(self, root: str = "", seed: int = 0, num_train_ids: int = 50,
                 num_test_ids: int = DemoConfig.num_test_ids, train_per_id: int = 8, gallery_per_id: int = 6,
                 heldout_per_id: int = 2, **kwargs) -> None:
        self.root = os.path.abspath(os.path.expanduser(root))
        self.dataset_dir = os.path.join(self.root, self.dataset_dir)
        ensure_generated(self.dataset_dir, DemoConfig(seed, num_train_ids, num_test_ids, train_per_id, gallery_per_id,
                                                      heldout_per_id))
        split = {name: os.path.join(self.dataset_dir, sub) for name, sub in SPLIT_DIRS.items()}
        train = read_split(split["train"], relabel=True)
        query, gallery = read_split(split["query"]), read_split(split["gallery"])
        self.heldout = [(*item, 0) for item in read_split(split["heldout"], relabel=True)]
        super().__init__(train, query, gallery, **{k: v for k, v in kwargs.items() if k in _BASE_KWARGS})
