"""The ``scal_demo`` dataset: deterministic generation, split structure, torchreid integration, reuse."""
from __future__ import annotations

import hashlib
import importlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Dict

import numpy as np
import pytest
from PIL import Image

import torchreid_scal
from torchreid_scal import _torchreid
from torchreid_scal.datasets import DataError, demo
from torchreid_scal.datasets.demo import MARKER, DemoConfig, SCALDemo, ensure_generated

SMALL = dict(num_train_ids=4, num_test_ids=3, train_per_id=3, gallery_per_id=3)


def _hashes(directory: Path) -> Dict[str, str]:
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def default_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("default")
    SCALDemo(root=str(root), verbose=False)
    return root


@pytest.fixture(scope="module")
def registered() -> None:
    from torchreid_scal.datasets import register_datasets

    register_datasets()


def test_same_seed_is_byte_identical(default_root: Path, tmp_path: Path) -> None:
    SCALDemo(root=str(tmp_path), verbose=False)
    first, second = _hashes(default_root / "scal_demo"), _hashes(tmp_path / "scal_demo")
    assert len(first) == 400 + 1000 + 6000 + 100 + 1  # train, query, gallery, held-out, marker
    assert first == second


def test_the_large_test_split_leaves_the_training_images_as_they_were(default_root: Path, tmp_path: Path) -> None:
    """The 1000-identity test split (1000 queries) only adds identities: the training images, and the first 50
    test identities' images, are those of the earlier 50-identity split."""
    SCALDemo(root=str(tmp_path), num_test_ids=50, verbose=False)
    small, large = _hashes(tmp_path / "scal_demo"), _hashes(default_root / "scal_demo")
    kept = [name for name in small if not name.startswith(("heldout_train", "."))]
    assert len(kept) == 400 + 50 + 300
    assert all(large[name] == small[name] for name in kept)


def test_other_seed_gives_other_images(tmp_path: Path) -> None:
    SCALDemo(root=str(tmp_path / "a"), seed=0, verbose=False, **SMALL)
    SCALDemo(root=str(tmp_path / "b"), seed=1, verbose=False, **SMALL)
    a, b = _hashes(tmp_path / "a" / "scal_demo"), _hashes(tmp_path / "b" / "scal_demo")
    assert sorted(a) == sorted(b)
    assert all(a[name] != b[name] for name in a)


def test_split_structure(default_root: Path) -> None:
    data = SCALDemo(root=str(default_root), verbose=False)
    assert (len(data.train), len(data.query), len(data.gallery)) == (400, 1000, 6000)
    train_pids = {pid for _, pid, _, _ in data.train}
    query_pids = {pid for _, pid, _, _ in data.query}
    gallery_pids = {pid for _, pid, _, _ in data.gallery}
    assert train_pids == set(range(50))
    assert len(query_pids) == 1000 and query_pids <= gallery_pids
    names = {os.path.basename(path) for path, _, _, _ in data.train}
    original_train = {int(name[:4]) for name in names}
    assert len(original_train) == 50 and not original_train & gallery_pids
    assert all(re.fullmatch(r"\d{4}_c[123]s1_\d{6}\.png", name) for name in names)
    assert {cam for _, _, cam, _ in data.train + data.query + data.gallery} == {0, 1, 2}
    gallery_cams = defaultdict(list)
    for _, pid, cam, _ in data.gallery:
        gallery_cams[pid].append(cam)
    for _, pid, cam, _ in data.query:
        assert sum(c != cam for c in gallery_cams[pid]) >= 2
        assert cam in gallery_cams[pid]  # same-camera distractors exist too


def test_images_are_128x64_rgb_png(default_root: Path) -> None:
    data = SCALDemo(root=str(default_root), verbose=False)
    for path, _, _, _ in data.train[:5] + data.query[:5] + data.gallery[:5]:
        with Image.open(path) as img:
            assert (img.format, img.mode, img.size) == ("PNG", "RGB", (64, 128))


def test_image_data_manager(default_root: Path, registered: None, capsys: pytest.CaptureFixture) -> None:
    manager = _torchreid.data.ImageDataManager(
        root=str(default_root), sources="scal_demo", height=64, width=32, batch_size_train=8,
        num_instances=2, train_sampler="RandomIdentitySampler", workers=0, use_gpu=False,
    )
    out = capsys.readouterr().out
    assert re.search(r"train\s+\|\s+50 \|\s+400 \|\s+3\b", out)
    assert re.search(r"query\s+\|\s+1000 \|\s+1000 \|\s+3\b", out)
    assert re.search(r"gallery\s+\|\s+1000 \|\s+6000 \|\s+3\b", out)
    assert re.search(r"# source ids\s+: 50\b", out) and re.search(r"# source images\s+: 400\b", out)
    assert manager.num_train_pids == 50 and manager.num_train_cams == 3
    batch = next(iter(manager.train_loader))
    assert tuple(batch["img"].shape) == (8, 3, 64, 32)
    assert tuple(batch["pid"].shape) == (8,) and len(set(batch["pid"].tolist())) == 4


def test_register_twice_and_reload(registered: None) -> None:
    from torchreid_scal import datasets

    datasets.register_datasets()
    assert _torchreid.image_dataset_table()["scal_demo"] is datasets.SCALDemo
    importlib.reload(demo)
    reloaded = importlib.reload(datasets)
    reloaded.register_datasets()
    reloaded.register_datasets()
    assert _torchreid.image_dataset_table()["scal_demo"] is reloaded.SCALDemo
    assert torchreid_scal.datasets is reloaded


def test_reuse_and_regeneration(tmp_path: Path) -> None:
    target = tmp_path / "scal_demo"
    config = DemoConfig(**SMALL)
    assert ensure_generated(str(target), config)
    assert not ensure_generated(str(target), config)  # matching marker: reused
    assert os.listdir(tmp_path) == ["scal_demo"]  # no temporary siblings left behind
    assert json.loads((target / MARKER).read_text())["counts"] == {"train": 12, "query": 3, "gallery": 9, "heldout": 8}

    (target / MARKER).unlink()  # a lost marker: the generator's own files are regenerated
    (target / "query" / "0009_c1s1_000099.png").write_bytes(b"half written")
    data = SCALDemo(root=str(tmp_path), verbose=False, **SMALL)
    assert (target / MARKER).is_file() and not (target / "query" / "0009_c1s1_000099.png").exists()
    assert (len(data.train), len(data.query), len(data.gallery), len(data.heldout)) == (12, 3, 9, 8)
    assert {pid for _, pid, *_ in data.heldout} == {pid for _, pid, *_ in data.train} == set(range(4))
    assert not {path for path, *_ in data.heldout} & {path for path, *_ in data.train}

    assert ensure_generated(str(target), DemoConfig(seed=5, **SMALL))  # marker of another seed
    assert json.loads((target / MARKER).read_text())["seed"] == 5


def test_torchreid_options_are_accepted(tmp_path: Path) -> None:
    data = SCALDemo(
        root=str(tmp_path), transform=None, k_tfm=1, mode="gallery", combineall=False, verbose=False, split_id=0,
        cuhk03_labeled=False, cuhk03_classic_split=False, market1501_500k=False, **SMALL,
    )
    assert len(data) == 9
    with pytest.raises(ValueError):
        DemoConfig(gallery_per_id=2)
    rgb = demo.render(demo.sample_identities(1, np.random.default_rng(0))[0], 1, np.random.default_rng(0))
    assert rgb.shape == (128, 64, 3) and rgb.dtype == np.uint8


@pytest.mark.parametrize("marker", [b"{not json", b"\xff\xfe\x00", b'{"seed": 0}', None],
                         ids=["truncated", "binary", "other", "missing"])
def test_damaged_marker_never_deletes_files_the_generator_did_not_write(tmp_path: Path, marker) -> None:
    target = tmp_path / "scal_demo"
    ensure_generated(str(target), DemoConfig(**SMALL))
    (target / "notes.txt").write_text("mine")
    (target / "query" / "my_photo.jpg").write_bytes(b"also mine")
    if marker is None:
        (target / MARKER).unlink()
    else:
        (target / MARKER).write_bytes(marker)
    before = _hashes(target)
    with pytest.raises(DataError, match=f"{target} holds files the scal_demo generator did not write: "
                                        r"\[.*notes.txt.*my_photo.jpg"):
        SCALDemo(root=str(tmp_path), verbose=False, **SMALL)
    assert _hashes(target) == before


def test_generation_where_nothing_can_be_written_is_a_data_error() -> None:
    with pytest.raises(DataError, match="cannot generate scal_demo in /proc/x/scal_demo"):
        SCALDemo(root="/proc/x", verbose=False, **SMALL)


def generate_in_child(root: str, **sizes) -> str:
    return ("import sys; from torchreid_scal.datasets.demo import SCALDemo; from torchreid_scal.datasets.checks "
            f"import read_image; data = SCALDemo(root=sys.argv[1], verbose=False, **{sizes!r}); "
            "read_image(data.train[0][0]); print(len(data.train))")


def test_a_root_whose_name_is_not_utf_8(tmp_path: Path) -> None:
    """cv2.imwrite crashed the process (SIGSEGV) on such a path and left its temporary folder behind."""
    root = os.fsdecode(os.fsencode(str(tmp_path)) + b"/data\xff\xfe")
    result = subprocess.run([sys.executable, "-c", generate_in_child("", **SMALL), root], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["12"]
    assert os.listdir(os.fsencode(root)) == [b"scal_demo"]


def test_what_a_killed_generation_leaves_is_removed_by_the_next(tmp_path: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", generate_in_child(""), str(tmp_path)], stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not list(tmp_path.glob(".scal_demo-*/new/bounding_box_train/*.png")):
        assert child.poll() is None and time.monotonic() < deadline, "the generation ended before it was stopped"
        time.sleep(0.05)
    child.send_signal(signal.SIGTERM)
    assert child.wait(60) == -signal.SIGTERM
    left = [p.name for p in tmp_path.iterdir()]
    assert len(left) == 1 and left[0].startswith(".scal_demo-")  # SIGTERM runs no clean-up
    data = SCALDemo(root=str(tmp_path), verbose=False, **SMALL)
    assert len(data.train) == 12 and [p.name for p in tmp_path.iterdir()] == ["scal_demo"]
