"""Reading images: 16-bit files, decompression bombs, the up-front check of every image, and errors raised in
DataLoader workers."""
from __future__ import annotations

import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from torchreid_scal import _torchreid
from torchreid_scal.cli import run_tool
from torchreid_scal.config import load_config
from torchreid_scal.datasets import BadImageError, DataError, checked_datasets
from torchreid_scal.datasets.checks import read_image
from torchreid_scal.datasets.demo import SCALDemo
from torchreid_scal.runner import build_datamanager

DEMO = str(Path(__file__).parents[2] / "configs" / "scal_demo.yaml")
SMALL = dict(num_train_ids=4, num_test_ids=3, train_per_id=3, gallery_per_id=3)


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header(path: Path, width: int, height: int) -> None:
    """A small PNG whose header claims ``width`` x ``height`` 8-bit RGB pixels."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


def test_16_bit_grayscale_png_reads_like_its_8_bit_original(tmp_path):
    original = np.random.default_rng(0).integers(0, 256, (64, 32), dtype=np.uint8)
    Image.fromarray(original.astype(np.uint16) * 257).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as img:
        assert img.mode.startswith("I")  # what PIL's convert("RGB") would clip to 255 everywhere
    rgb = np.asarray(read_image(str(tmp_path / "deep.png")))
    assert rgb.dtype == np.uint8 and rgb.shape == (64, 32, 3)
    assert np.array_equal(rgb[..., 0], original) and np.array_equal(rgb[..., 2], original)


def test_32_bit_integer_tiff_reads_like_its_8_bit_original(tmp_path):
    original = np.random.default_rng(0).integers(0, 256, (64, 32), dtype=np.uint8)
    deep = np.rint(original.astype(np.float64) * (2**31 - 1) / 255).astype(np.int32)
    Image.fromarray(deep).save(tmp_path / "deep.tif")
    with Image.open(tmp_path / "deep.tif") as img:
        assert img.mode == "I"
    rgb = np.asarray(read_image(str(tmp_path / "deep.tif")))
    assert np.array_equal(rgb[..., 1], original)


def test_exif_orientation_is_applied(tmp_path):
    """A phone stores a portrait photo landscape, with EXIF orientation 6 (rotate 90 degrees clockwise to view)."""
    upright = np.zeros((64, 32, 3), np.uint8)
    upright[:8] = 255  # a white band at the top
    stored = Image.fromarray(np.rot90(upright).copy())  # 32 x 64, the band on the left
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(tmp_path / "phone.png", exif=exif)
    rgb = np.asarray(read_image(str(tmp_path / "phone.png")))
    assert rgb.shape == (64, 32, 3) and np.array_equal(rgb, upright)


@pytest.mark.parametrize("size", [30000, 10000])
def test_decompression_bomb_is_a_bad_image_naming_the_file(tmp_path, size):
    path = tmp_path / "bomb.png"
    png_header(path, size, size)
    with pytest.raises(BadImageError, match=f"cannot read image {path} .*DecompressionBomb.*{size * size} pixels"):
        read_image(str(path))


class SmallDemo(SCALDemo):
    def __init__(self, **kwargs):
        super().__init__(**SMALL, **kwargs)


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    root = tmp_path_factory.mktemp("template")
    SmallDemo(root=str(root), verbose=False)
    _torchreid.image_dataset_table()["scal_demo_small"] = SmallDemo
    return root


@pytest.fixture
def damaged(template, tmp_path):
    """A copy of the small dataset with a decompression bomb in training and garbage in the gallery."""
    root = tmp_path / "data"
    shutil.copytree(template, root)
    bomb = sorted((root / "scal_demo" / "bounding_box_train").iterdir())[1]
    png_header(bomb, 30000, 30000)
    garbage = sorted((root / "scal_demo" / "bounding_box_test").iterdir())[0]
    garbage.write_bytes(b"not an image")
    return root, [bomb, garbage]


def data_manager(root, **checks):
    with checked_datasets(["scal_demo_small"], ["scal_demo_small"], **checks):
        return _torchreid.data.ImageDataManager(root=str(root), sources="scal_demo_small", height=64, width=32,
                                                batch_size_train=4, workers=0, use_gpu=False)


def test_bad_images_are_skipped_bombs_included(damaged):
    root, bad = damaged
    with pytest.warns(UserWarning, match="skipping 2 unreadable images"):
        manager = data_manager(root, skip_bad_images=True)
    test = manager.test_dataset["scal_demo_small"]
    used = {item[0] for item in manager.train_loader.dataset.train + test["query"] + test["gallery"]}
    assert len(used) == 4 * 3 + 3 + 3 * 3 - 2 and not {str(path) for path in bad} & used


def test_checking_every_image_up_front_names_them_all(damaged):
    root, bad = damaged
    data_manager(root)  # without the check, torchreid builds the loaders and fails only when it samples one
    with pytest.raises(DataError, match=rf"dataset scal_demo_small: 2 unreadable images: \[.*{bad[1].name}.*"
                                        rf"{bad[0].name}.*\]; the first: cannot read image .*data.skip_bad_images"):
        data_manager(root, check_images=True)


class Images(torch.utils.data.Dataset):
    def __init__(self, paths):
        self.paths = paths

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, index):
        return torch.as_tensor(np.asarray(read_image(self.paths[index])))


def test_error_in_a_loader_worker_is_one_line_without_its_traceback(tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"garbage")
    loader = torch.utils.data.DataLoader(Images([str(bad)]), num_workers=1)
    assert run_tool(lambda: next(iter(loader))) == 3
    err = capsys.readouterr().err
    assert err.startswith(f"data error: cannot read image {bad} (") and "data.skip_bad_images" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_runner_checks_every_image_when_configured(damaged):
    root, bad = damaged
    cfg = load_config(DEMO, ["data.root", str(root), "data.sources", "['scal_demo_small']", "data.targets",
                             "['scal_demo_small']", "train.batch_size", "8", "data.check_images", "True"])
    with pytest.raises(DataError, match=f"2 unreadable images: .*{bad[1].name}"):
        build_datamanager(cfg, torch.device("cpu"))
