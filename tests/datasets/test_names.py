"""Market-1501 and DukeMTMC-reID file names: identity and camera from the file's own name, a stray file named."""
from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from torchreid_scal import _torchreid
from torchreid_scal.datasets import DataError, checked_datasets

SPLITS = ("bounding_box_train", "bounding_box_test", "query")
NAMES = {"bounding_box_train": ["0002_c1s1_000451_03.jpg", "0002_c2s1_000551_01.jpg", "0007_c3s1_000101_02.jpg",
                                "-1_c1s1_000001_00.jpg"],
         "bounding_box_test": ["0003_c1s1_000011_01.jpg", "0000_c2s1_000021_01.jpg"],
         "query": ["0003_c4s1_000031_01.jpg"]}


def market(root, extra=()):
    """A Market-1501 folder of 16x8 JPEGs named as ``NAMES`` (and ``extra`` in the training split)."""
    data_dir = os.path.join(root, "market1501", "Market-1501-v15.09.15")
    for split in SPLITS:
        os.makedirs(os.path.join(data_dir, split))
        for name in NAMES[split] + (list(extra) if split == "bounding_box_train" else []):
            Image.fromarray(np.zeros((16, 8, 3), np.uint8)).save(os.path.join(data_dir, split, name))
    return os.path.join(data_dir, "bounding_box_train")


def build(root, skip_bad_images=False):
    with checked_datasets(["market1501"], ["market1501"], skip_bad_images=skip_bad_images):
        return _torchreid.image_dataset_table()["market1501"](root=str(root))


def test_identity_and_camera_come_from_the_file_name_not_the_folders(tmp_path):
    root = tmp_path / "runs_0001_c9"  # torchreid's search found pid 1, camera 9 here, in every path
    market(str(root))
    dataset = build(root)
    train = sorted((os.path.basename(path), pid, camid) for path, pid, camid, *_ in dataset.train)
    assert [(name, camid) for name, _, camid in train] == [("0002_c1s1_000451_03.jpg", 0),
                                                          ("0002_c2s1_000551_01.jpg", 1), ("0007_c3s1_000101_02.jpg", 2)]
    assert train[0][1] == train[1][1] != train[2][1] and {pid for _, pid, _ in train} == {0, 1}
    assert sorted((pid, camid) for _, pid, camid, *_ in dataset.gallery) == [(0, 1), (3, 0)]


@pytest.mark.parametrize("stray", ["IMG_1234.jpg", "0002_c9s1_000001_01.jpg", "2000_c1s1_000001_01.jpg"])
def test_a_file_whose_name_does_not_parse_is_named(tmp_path, stray):
    train_dir = market(str(tmp_path), extra=[stray])
    with pytest.raises(DataError, match=rf"dataset market1501: 1 file names in {train_dir} do not hold an identity "
                                        rf"and a camera .*{stray}.*set data.skip_bad_images True"):
        build(tmp_path)


def test_a_file_whose_name_does_not_parse_can_be_left_out(tmp_path):
    market(str(tmp_path), extra=["IMG_1234.jpg"])
    with pytest.warns(UserWarning, match=r"IMG_1234.jpg.*left out \(data.skip_bad_images\)"):
        dataset = build(tmp_path, skip_bad_images=True)
    assert len(dataset.train) == 3
