"""Datasets of one's own images from the config (``market:ROOT``, ``folders:ROOT``, ``csv:FILE``): each layout
as torchreid's data manager loads it, and every bad input as one error naming the file (and line)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from torchreid_scal.config import ConfigError, load_config
from torchreid_scal.datasets import DataError
from torchreid_scal.datasets.custom import read_dataset
from torchreid_scal.runner import build_datamanager

REPO = Path(__file__).parents[2]
DEMO = str(REPO / "configs" / "scal_demo.yaml")
CPU = torch.device("cpu")
# (split, pid, camera): 3 training identities on 2 cameras, 2 test identities with a query on camera 1 and
# gallery images on cameras 1 and 2.
LAYOUT = ([("train", pid, cam) for pid in (1, 2, 3) for cam in (1, 2, 1, 2)]
          + [("query", pid, 1) for pid in (7, 8)] + [("gallery", pid, cam) for pid in (7, 8) for cam in (1, 2, 2)])


def image(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (16, 8, 3), dtype=np.uint8)).save(path)


def make_folders(root: Path, layout=LAYOUT) -> Path:
    """``root/<split>/<pid>/c<cam>_<n>.png`` for every entry of ``layout``."""
    for n, (split, pid, cam) in enumerate(layout):
        image(root / split / f"{pid:04d}" / f"c{cam}_{n:03d}.png", n)
    return root


def make_market(root: Path, layout=LAYOUT) -> Path:
    dirs = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
    for n, (split, pid, cam) in enumerate(layout):
        image(root / dirs[split] / f"{pid:04d}_c{cam}s1_{n:06d}_00.jpg", n)
    image(root / "bounding_box_test" / "-1_c1s1_000000_00.jpg", 99)  # junk: left out as torchreid does
    return root


def make_csv(root: Path, layout=LAYOUT, header: bool = True) -> Path:
    lines = ["path,pid,camid,split"] if header else []
    for n, (split, pid, cam) in enumerate(layout):
        image(root / "img" / f"{n:03d}.png", n)
        lines.append(f"img/{n:03d}.png,{pid},{cam},{split}")
    (root / "list.csv").write_text("\n".join(lines) + "\n")
    return root / "list.csv"


def config(tmp_path: Path, name: str, *opts: str):
    return load_config(DEMO, ["data.root", str(tmp_path / "reid-data"), "data.sources", repr([name]),
                              "data.targets", repr([name]), "data.workers", "0", "train.batch_size", "4",
                              "sampler.num_instances", "2", *opts])


@pytest.mark.parametrize("layout", ["market", "folders", "csv"])
def test_each_layout_loads_like_a_torchreid_dataset(tmp_path, layout):
    path = {"market": make_market, "folders": make_folders, "csv": make_csv}[layout](tmp_path / "mine")
    name = f"{layout}:{path}"
    dm = build_datamanager(config(tmp_path, name), CPU)
    assert dm.num_train_pids == 3 and dm.num_train_cams == 2
    train = dm.train_loader.dataset.train
    assert sorted({pid for _, pid, _, _ in train}) == [0, 1, 2] and len(train) == 12  # relabelled 0..N-1
    query, gallery = (dm.test_loader[name][s].dataset.data for s in ("query", "gallery"))
    assert [(pid, cam) for _, pid, cam, _ in query] == [(7, 1), (8, 1)]
    assert sorted((pid, cam) for _, pid, cam, _ in gallery) == sorted((p, c) for s, p, c in LAYOUT if s == "gallery")
    batch = next(iter(dm.test_loader[name]["query"]))
    assert tuple(batch["img"].shape) == (2, 3, 64, 32)


def test_folders_camera_pattern_is_the_users(tmp_path):
    root = tmp_path / "mine"
    for n, (split, pid, cam) in enumerate(LAYOUT):
        image(root / split / str(pid) / f"frame{n}-cam{cam}.png", n)
    with pytest.raises(DataError, match=r"frame0-cam1.png: no camera in the file name by data.camera_pattern"):
        build_datamanager(config(tmp_path, f"folders:{root}"), CPU)
    dm = build_datamanager(config(tmp_path, f"folders:{root}", "data.camera_pattern", r"cam(\d+)"), CPU)
    assert dm.num_train_cams == 2


def test_a_test_only_dataset_needs_no_training_split(tmp_path):
    test_only = [entry for entry in LAYOUT if entry[0] != "train"]
    train, target = make_folders(tmp_path / "train"), make_folders(tmp_path / "test", test_only)
    targets = [f"csv:{make_csv(tmp_path / 'c', test_only)}", f"folders:{target}"]
    cfg = load_config(DEMO, ["data.sources", repr([f"folders:{train}"]), "data.targets", repr(targets),
                             "data.workers", "0", "train.batch_size", "4", "sampler.num_instances", "2"])
    dm = build_datamanager(cfg, CPU)
    assert len(dm.test_loader) == 2 and all(len(t["gallery"].dataset) == 6 for t in dm.test_loader.values())
    with pytest.raises(DataError, match=r"the train split is empty \(no images in .*/test/train/<pid>/\)"):
        build_datamanager(config(tmp_path, f"folders:{target}"), CPU)


BAD_FOLDERS = [
    ("no_query", lambda root: [p.unlink() for p in (root / "query").rglob("*.png")],
     r"folders:.*: the query split is empty \(no images in .*/query/<pid>/\)"),
    ("lonely_query", lambda root: [p.unlink() for p in (root / "gallery" / "0008").glob("c2_*.png")],
     r"query/0008/c1_\d+.png: query pid 8 \(camera 1\) has no gallery image from another camera \(1 such"),
    ("pid", lambda root: (root / "train" / "0003").rename(root / "train" / "alice"),
     r"train/alice: the identity folder 'alice' is not an integer; name each identity's folder by its pid"),
    ("camera", lambda root: image(root / "gallery" / "0007" / "nocamera.png", 1),
     r"gallery/0007/nocamera.png: no camera in the file name by data.camera_pattern 'c\(\\d\+\)'"),
    ("loose_image", lambda root: image(root / "train" / "c1_x.png", 1),
     r"train/c1_x.png: images go into a folder named by their identity"),
]


@pytest.mark.parametrize("case, damage, message", BAD_FOLDERS, ids=[c[0] for c in BAD_FOLDERS])
def test_bad_folders_are_data_errors_naming_the_file(tmp_path, case, damage, message):
    root = make_folders(tmp_path / "mine")
    damage(root)
    with pytest.raises(DataError, match=message):
        build_datamanager(config(tmp_path, f"folders:{root}"), CPU)


BAD_ROWS = [
    ("img/000.png,x1,1,train", r"list.csv:3: the pid 'x1' is not an integer"),
    ("img/000.png,1,c1,train", r"list.csv:3: the camid 'c1' is not an integer"),
    ("img/000.png,1,1,validation", r"list.csv:3: split 'validation' is not one of \['train', 'query', 'gallery'\]"),
    ("img/gone.png,1,1,train", r"list.csv:3: .*img/gone.png does not exist"),
    ("../outside.png,1,1,train", r"list.csv:3: ../outside.png is outside .*/mine"),
    ("/etc/hostname,1,1,train", r"list.csv:3: /etc/hostname is outside .*/mine"),
    ("img/000.png,1,1", r"list.csv:3: expected 4 fields path,pid,camid,split, got 3"),
]


@pytest.mark.parametrize("row, message", BAD_ROWS)
def test_bad_csv_rows_name_the_file_and_line(tmp_path, row, message):
    csv_file = make_csv(tmp_path / "mine")
    (tmp_path / "outside.png").write_bytes((tmp_path / "mine" / "img" / "000.png").read_bytes())
    lines = csv_file.read_text().splitlines()
    csv_file.write_text("\n".join(lines[:2] + [row] + lines[2:]) + "\n")
    with pytest.raises(DataError, match=message):
        read_dataset("csv", str(csv_file))


def test_bad_market_file_name_and_missing_folder(tmp_path):
    root = make_market(tmp_path / "mine")
    image(root / "query" / "person7.jpg", 3)
    with pytest.raises(DataError, match=r"query/person7.jpg: not a Market-1501 file name"):
        build_datamanager(config(tmp_path, f"market:{root}"), CPU)
    with pytest.raises(DataError, match=r"dataset market:.*/nowhere: no such folder"):
        build_datamanager(config(tmp_path, f"market:{tmp_path / 'nowhere'}"), CPU)


@pytest.mark.parametrize("opts, message", [
    (["data.sources", "['folder:/x']"], r"config key data.sources: 'folder:/x' names the unknown layout 'folder'"),
    (["data.targets", "['csv:']"], r"config key data.targets: 'csv:' has no path after 'csv:'"),
    (["data.camera_pattern", "cam\\d+"], r"config key data.camera_pattern: 'cam\\d\+' has 0 groups"),
    (["data.camera_pattern", "c(\\d"], r"config key data.camera_pattern: .* is not a regular expression"),
])
def test_bad_names_and_patterns_are_config_errors(opts, message):
    with pytest.raises(ConfigError, match=message):
        load_config(DEMO, opts)


def test_main_stops_with_exit_status_3_and_one_line(tmp_path):
    root = make_folders(tmp_path / "mine")
    (root / "train" / "0002").rename(root / "train" / "bob")
    result = subprocess.run(
        [sys.executable, str(REPO / "tools" / "main.py"), "--config-file", DEMO, "data.sources", f"['folders:{root}']",
         "data.targets", f"['folders:{root}']", "data.save_dir", str(tmp_path / "log")], capture_output=True, text=True,
        timeout=300, cwd=tmp_path)
    assert result.returncode == 3, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1] == (
        f"data error: {root}/train/bob: the identity folder 'bob' is not an integer; name each identity's folder "
        "by its pid, a number such as 0001")
    assert not (tmp_path / "log" / "model").exists() or not os.listdir(tmp_path / "log" / "model")
