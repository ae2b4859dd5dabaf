"""tools/main.py end to end in subprocesses, on a tiny configuration of the demo dataset."""
from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
import time

import pytest
import torch

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
MAIN = os.path.join(REPO, "tools", "main.py")
DEMO = os.path.join(REPO, "configs", "scal_demo.yaml")


def main_py(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, MAIN, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Overrides that make the demo job a few seconds: 64x32 images, one epoch, the test set once."""
    root = tmp_path_factory.mktemp("reid-data")
    return ["data.root", str(root), "scal_demo.num_test_ids", "50", "data.height", "64", "data.width", "32", "data.workers", "0",
            "train.max_epoch", "1", "train.warmup_epochs", "0", "train.print_freq", "4"]


@pytest.fixture(scope="module")
def scal_run(tiny, tmp_path_factory):
    save_dir = str(tmp_path_factory.mktemp("scal"))
    result = main_py("--config-file", DEMO, *tiny, "data.save_dir", save_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    return save_dir, result


def test_scal_trains_evaluates_and_logs(scal_run):
    save_dir, result = scal_run
    out = result.stdout
    assert "Show configuration" in out and "critic_stages" in out
    assert "torchreid 0.2.5 (pypi layout)" in out and "device cpu" in out
    assert "loss_cri" in out and "critic_corr" in out and "reward_a" in out
    assert "mAP:" in out and "Rank-1" in out
    logs = [f for f in os.listdir(save_dir) if f.startswith("train.log-")]
    assert len(logs) == 1 and "Rank-1" in open(os.path.join(save_dir, logs[0])).read()
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(save_dir))
    checkpoint = torch.load(os.path.join(save_dir, "model", "model.pth.tar-1"), weights_only=True)
    assert checkpoint["epoch"] == 1 and "critic" in checkpoint


def test_each_querys_ap_and_first_match_are_saved_beside_the_results(scal_run):
    save_dir, result = scal_run
    with open(os.path.join(save_dir, "per_query-scal_demo.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 50 and rows[0]["query"].endswith(".png")
    ap = [float(r["ap"]) for r in rows]
    m_ap = float(re.search(r"mAP: ([\d.]+)%", result.stdout).group(1))
    rank1 = float(re.search(r"Rank-1\s*: ([\d.]+)%", result.stdout).group(1))
    assert 100 * sum(ap) / len(ap) == pytest.approx(m_ap, abs=0.05)
    assert 100 * sum(int(r["first_match"]) == 1 for r in rows) / len(rows) == pytest.approx(rank1, abs=0.05)


@pytest.fixture(scope="module")
def test_only_run(scal_run, tiny, tmp_path_factory):
    """A test-only run of the saved checkpoint with the default evaluator, drawing ranked results."""
    save_dir = tmp_path_factory.mktemp("test_only")
    weights = os.path.join(scal_run[0], "model", "model.pth.tar-1")
    result = main_py("--config-file", DEMO, *tiny, "test.evaluate", "True", "model.load_weights", weights,
                     "data.save_dir", str(save_dir), "test.visrank", "True", "test.visrank_topk", "3")
    assert result.returncode == 0, result.stderr[-3000:]
    return save_dir, result


def printed_metrics(stdout: str):
    return [line for line in stdout.splitlines() if line.startswith(("mAP:", "Rank-"))]


def test_test_only_from_the_saved_checkpoint(test_only_run):
    save_dir, result = test_only_run
    assert "Loaded" in result.stdout and "mAP:" in result.stdout and "=> Start training" not in result.stdout
    assert any(f.startswith("test.log-") for f in os.listdir(save_dir))
    ranked = os.path.join(save_dir, "visrank_scal_demo")
    assert len(os.listdir(ranked)) == 50  # one picture per query


def test_fast_and_torchreid_evaluators_print_the_same_results(scal_run, test_only_run, tiny, tmp_path):
    weights = os.path.join(scal_run[0], "model", "model.pth.tar-1")
    result = main_py("--config-file", DEMO, *tiny, "test.evaluate", "True", "model.load_weights", weights,
                     "test.evaluator", "torchreid", "data.save_dir", str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    fast = test_only_run[1].stdout  # test.evaluator fast, the default
    assert "mINP:" in fast and "mINP:" not in result.stdout
    assert printed_metrics(fast) == printed_metrics(result.stdout) and len(printed_metrics(fast)) == 5


def test_test_only_without_weights_warns(tiny, tmp_path):
    result = main_py("--config-file", DEMO, *tiny, "test.evaluate", "True", "data.save_dir", str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "evaluating the model as initialised" in result.stderr


def test_resume_continues_from_the_next_epoch(scal_run, tiny, tmp_path):
    save_dir, _ = scal_run
    result = main_py("--config-file", DEMO, *tiny, "train.max_epoch", "2", "data.save_dir", str(tmp_path),
                     "model.resume", os.path.join(save_dir, "model", "model.pth.tar-1"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "epoch: [2/2]" in result.stdout and "epoch: [1/2]" not in result.stdout
    assert torch.load(os.path.join(tmp_path, "model", "model.pth.tar-2"), weights_only=True)["epoch"] == 2


@pytest.fixture(scope="module")
def osnet_run(tiny, tmp_path_factory):
    """The demo job with SCAL on OSNet x0.25 instead of ResNet-50 (issue 23), at the tiny size."""
    save_dir = str(tmp_path_factory.mktemp("osnet"))
    result = main_py("--config-file", DEMO, *tiny, "model.name", "osnet_x0_25_scal", "data.save_dir", save_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    return save_dir, result


def test_scal_on_osnet_trains_and_evaluates(osnet_run):
    save_dir, result = osnet_run
    out = result.stdout
    assert "Building model: osnet_x0_25_scal" in out and "Building scal engine" in out
    assert "loss_cri" in out and "reward_a" in out and "epoch 1 critic:" in out and "mAP:" in out
    checkpoint = torch.load(os.path.join(save_dir, "model", "model.pth.tar-1"), weights_only=True)
    assert "conv5.conv.weight" in checkpoint["state_dict"] and "agents.4.fc2.bias" in checkpoint["state_dict"]
    assert set(checkpoint["critic"]["state_dict"]) >= {"critics.0.fc1.weight", "critics.4.fc2.weight"}


def test_torchreids_feature_extractor_loads_the_osnet_scal_checkpoint(osnet_run, tiny):
    from torchreid_scal import _torchreid
    from torchreid_scal.config import load_config
    from torchreid_scal.export import load_inference_model

    weights = os.path.join(osnet_run[0], "model", "model.pth.tar-1")
    extractor = _torchreid.utils.FeatureExtractor(model_name="osnet_x0_25_scal", model_path=weights,
                                                  image_size=(64, 32), device="cpu", verbose=False)
    ours = load_inference_model(load_config(DEMO, [*tiny, "model.name", "osnet_x0_25_scal"]), weights)
    images = torch.randn(3, 3, 64, 32)
    with torch.no_grad():
        expected = ours(images)
    assert expected.shape == (3, 128)
    assert torch.allclose(extractor(images), expected, atol=1e-5)


def test_attention_of_the_osnet_scal_checkpoint_is_drawn(osnet_run, tiny, tmp_path):
    weights = os.path.join(osnet_run[0], "model", "model.pth.tar-1")
    result = subprocess.run([sys.executable, os.path.join(REPO, "tools", "visualize_attention.py"), "--config-file",
                             DEMO, "--weights", weights, "--output", str(tmp_path), "--num-images", "2", *tiny,
                             "model.name", "osnet_x0_25_scal"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert len([f for f in os.listdir(tmp_path) if f.endswith(".png")]) == 2 and os.listdir(tmp_path / "actmap")


def test_triplet_baseline_with_torchreids_engine(tiny, tmp_path):
    result = main_py("--config-file", DEMO, *tiny, "model.name", "resnet50_bnneck", "loss.name", "triplet",
                     "data.save_dir", str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Building triplet engine" in result.stdout and "loss_t" in result.stdout and "loss_cri" not in result.stdout
    assert "mAP:" in result.stdout


@pytest.mark.parametrize("opts, message", [
    (["train.max_epochs", "3"], "unknown config key train.max_epochs"),
    (["train.max_epoch", "three"], "config key train.max_epoch: expected int"),
    (["model.name", "hacnn_scal"], "SCAL has no 'hacnn' backbone; supported backbones: ['osnet_ain_x1_0'"),
])
def test_config_errors_exit_nonzero_and_name_the_key(opts, message):
    result = main_py("--config-file", DEMO, *opts)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_missing_market1501_fails_fast_with_instructions(tmp_path):
    start = time.monotonic()
    result = main_py("--config-file", os.path.join(REPO, "configs", "scal_market.yaml"), "data.root", str(tmp_path),
                     "data.save_dir", str(tmp_path / "log"), "model.pretrained", "False")
    assert time.monotonic() - start < 60
    assert result.returncode == 3 and "Traceback" not in result.stderr
    assert os.path.join(str(tmp_path), "market1501") in result.stderr
    assert "Market-1501-v15.09.15/{bounding_box_train,bounding_box_test,query}" in result.stderr
    assert not os.path.exists(tmp_path / "market1501")  # nothing half-made left behind
