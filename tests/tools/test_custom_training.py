"""tools/main.py on a folder of one's own (layout folders:ROOT): it trains, checks every image first and evaluates with
query expansion; a test-only run of the saved checkpoint adds the bounded re-ranking (torchreid re-ranks only when
testing a trained model)."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from torchreid_scal.datasets.demo import SCALDemo

REPO = Path(__file__).parents[2]
DEMO = str(REPO / "configs" / "scal_demo.yaml")
SPLITS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}


def as_folders(demo_root: Path, out: Path) -> Path:
    """The demo's images in layout (b): out/<split>/<pid>/c<camera>s1_<frame>.png."""
    for split, sub in SPLITS.items():
        for path in sorted((demo_root / sub).glob("*.png")):
            pid, rest = path.name.split("_", 1)
            (out / split / pid).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, out / split / pid / rest)
    return out


def results(text: str):
    return re.findall(r"(mAP|Rank-1 +): ([\d.]+)%", text)


def test_train_and_evaluate_a_folder_with_rerank_and_query_expansion(tmp_path):
    SCALDemo(root=str(tmp_path / "demo"), num_train_ids=6, num_test_ids=5, train_per_id=4, gallery_per_id=3,
             heldout_per_id=0, verbose=False)
    mine = as_folders(tmp_path / "demo" / "scal_demo", tmp_path / "mine")
    opts = ["data.sources", f"['folders:{mine}']", "data.targets", f"['folders:{mine}']", "data.workers", "0",
            "train.batch_size", "8", "sampler.num_instances", "2", "scal.diagnostic_images", "8",
            "test.rerank", "True", "test.query_expansion", "True", "test.rerank_k1", "6", "test.rerank_k2", "2"]
    train = subprocess.run([sys.executable, str(REPO / "tools" / "main.py"), "--config-file", DEMO, *opts,
                            "train.max_epoch", "1", "data.check_images", "True", "data.save_dir", str(tmp_path / "log")],
                           capture_output=True, text=True, timeout=900)
    assert train.returncode == 0, train.stderr[-3000:]
    assert f"=> Loaded folders:{mine}" in train.stdout and "Applying alpha-query expansion" in train.stdout
    assert len(results(train.stdout)) == 2
    test = subprocess.run([sys.executable, str(REPO / "tools" / "main.py"), "--config-file", DEMO, *opts,
                           "test.evaluate", "True", "model.load_weights", str(tmp_path / "log" / "model" / "model.pth.tar-1"),
                           "data.save_dir", str(tmp_path / "test")], capture_output=True, text=True, timeout=900)
    assert test.returncode == 0, test.stderr[-3000:]
    assert "Applying alpha-query expansion" in test.stdout and "Applying person re-ranking" in test.stdout
    assert [name for name, _ in results(test.stdout)] == ["mAP", "Rank-1  "]
