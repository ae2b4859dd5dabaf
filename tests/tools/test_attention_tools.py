"""tools/visualize_attention.py and tools/attention_report.py end to end in subprocesses, on the demo dataset."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import DEMO, HEIGHT, REPO, WIDTH
from torchreid_scal import _torchreid
from torchreid_scal.critic_metrics import critic_summary, reliability_table
from torchreid_scal.figures import GRID_SPACING, ROW_WIDTH
from torchreid_scal.models import StageCritics
from torchreid_scal.rewards import compute_rewards
from torchreid_scal.runner import build_model



def tool(name: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, os.path.join(REPO, "tools", name), *args], cwd=REPO, capture_output=True,
                          text=True, timeout=600)


def is_figure(path: str) -> bool:
    """An attention figure decodes and is as wide as a row of the report page."""
    img = cv2.imread(path)
    return img is not None and img.shape[1] == ROW_WIDTH <= 1400


def check_actmaps(directory: str, names) -> None:
    assert sorted(os.listdir(directory)) == sorted(f"{n}.jpg" for n in names)
    for name in names:
        assert cv2.imread(os.path.join(directory, f"{name}.jpg")).shape == (HEIGHT, 3 * WIDTH + 2 * GRID_SPACING, 3)


def test_visualize_query_images(trained_run, tmp_path):
    result = tool("visualize_attention.py", "--config-file", DEMO, "--weights", trained_run.weights,
                  "--output", str(tmp_path), "--num-images", "3", *trained_run.opts)
    assert result.returncode == 0, result.stderr[-3000:]
    query = trained_run.datamanager.test_dataset["scal_demo"]["query"][:3]
    names = [os.path.splitext(os.path.basename(path))[0] for path, *_ in query]
    assert sorted(os.listdir(tmp_path)) == sorted([f"{n}.png" for n in names] + ["actmap"])
    assert all(is_figure(str(tmp_path / f"{n}.png")) for n in names)
    check_actmaps(str(tmp_path / "actmap"), names)


def test_visualize_a_folder_of_images(trained_run, tmp_path):
    """Every image gets its own figure: a GIF too, and two files that differ only in their extension."""
    folder, out = tmp_path / "images", tmp_path / "out"
    folder.mkdir()
    rng = np.random.default_rng(0)
    cv2.imwrite(str(folder / "a.png"), rng.integers(0, 255, (100, 50, 3), dtype=np.uint8))
    cv2.imwrite(str(folder / "b.jpg"), rng.integers(0, 255, (80, 30, 3), dtype=np.uint8))
    for name in ("c.gif", "img.tiff", "img.webp"):
        Image.fromarray(rng.integers(0, 255, (60, 30, 3), dtype=np.uint8)).save(folder / name)
    (folder / "notes.txt").write_text("not an image")
    result = tool("visualize_attention.py", "--config-file", DEMO, "--weights", trained_run.weights,
                  "--output", str(out), "--images", str(folder), *trained_run.opts)
    assert result.returncode == 0, result.stderr[-3000:]
    names = ["a", "b", "c", "img.tiff", "img.webp"]
    assert sorted(os.listdir(out)) == sorted([f"{n}.png" for n in names] + ["actmap"])
    assert all(is_figure(str(out / f"{n}.png")) for n in names)
    check_actmaps(str(out / "actmap"), names)
    assert f"Wrote 5 attention figures to {out}" in result.stdout
    assert "leaving out 1 files that are not images" in result.stderr and "notes.txt" in result.stderr


@pytest.fixture(scope="module")
def report(trained_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    result = tool("attention_report.py", "--config-file", DEMO, "--weights", trained_run.weights, "--output", str(out),
                  "--bins", "4", "--examples", "2", *trained_run.opts)
    assert result.returncode == 0, result.stderr[-3000:]
    return out, json.loads((out / "report.json").read_text())


def direct_pass(trained_run):
    """Model and critics run here, from the checkpoint file, over the training images through the test
    transform in the tool's batches: values (K, N) and rewards (R_c, R_a, R)."""
    cfg, datamanager = trained_run.cfg, trained_run.datamanager
    saved = torch.load(trained_run.weights, weights_only=True)
    model = build_model(cfg, saved["state_dict"]["classifier.weight"].shape[0])
    model.load_state_dict(saved["state_dict"])
    critics = StageCritics(model.attention, model.stage_channels, list(cfg.scal.critic_stages))
    critics.load_state_dict(saved["critic"]["state_dict"])
    model.eval()
    items, size = datamanager.train_loader.dataset.train, cfg.test.batch_size
    values, rewards = [], []
    with torch.no_grad():
        for start in range(0, len(items), size):
            batch = items[start:start + size]
            imgs = torch.stack([datamanager.transform_te(_torchreid.utils.read_image(item[0])) for item in batch])
            out = model(imgs, return_stages=True)
            plain = model(imgs, return_stages=True, use_attention=False).logits
            values.append(critics(out.features, out.maps)[0])
            rewards.append(torch.stack(compute_rewards(out.logits, plain, torch.tensor([item[1] for item in batch]))))
    return critics.stages, torch.cat(values, dim=1), torch.cat(rewards, dim=1)


def test_report_numbers_equal_a_direct_computation(trained_run, report):
    _, got = report
    stages, values, (reward_c, reward_a, reward) = direct_pass(trained_run)
    expected = critic_summary(values, reward, reward_c, reward_a, stages)
    assert got["split"] == "train" and got["num_images"] == got["num_rewarded"] == values.shape[1] == 400
    for key in ("critic_reward_corr", "critic_mse", "mean_reward", "attention_helped_rate"):
        assert got[key] == pytest.approx(expected[key], abs=1e-5), key
    assert got["critic_value_per_stage"] == pytest.approx(
        {str(k): float(v) for k, v in zip(stages, values.mean(dim=1))}, abs=1e-5)
    table = reliability_table(values.mean(dim=0), reward, bins=4)
    assert [b["count"] for b in got["reliability"]] == [b["count"] for b in table]
    assert [b["mean_reward"] for b in got["reliability"]] == pytest.approx([b["mean_reward"] for b in table], abs=1e-5)
    value = values.mean(dim=0)
    assert [g["reward"] for g in got["examples"]] == sorted(set(reward.tolist()), reverse=True)
    for group in got["examples"]:
        members = value[reward == group["reward"]]
        assert all(item["reward"] == group["reward"] for item in group["best"] + group["worst"])
        assert group["best"][0]["value"] == pytest.approx(float(members.max()), abs=1e-5)
        if group["worst"]:
            assert group["worst"][0]["value"] == pytest.approx(float(members.min()), abs=1e-5)
    diagnostics = got["diagnostics"]
    assert set(diagnostics) >= {f"alignment_stage{k}" for k in stages} | {"critic_alignment", "critic_heldout_corr"}
    assert all(-1 <= diagnostics[f"alignment_stage{k}"] <= 1 and 0 <= diagnostics[f"alive_stage{k}"] <= 1
               for k in stages)


def test_report_html_links_only_files_next_to_it(report):
    out, got = report
    page = (out / "report.html").read_text()
    links = re.findall(r'(?:src|href)="([^"]*)"', page)
    shown = [item for group in got["examples"] for item in group["best"] + group["worst"]]
    assert "training_curves.png" in links and len([link for link in links if link.startswith("images/")]) == len(shown)
    for link in links:
        assert not os.path.isabs(link) and ":" not in link and os.path.isfile(out / link), link
    assert got["training_curves"] == "training_curves.png" and cv2.imread(str(out / "training_curves.png")) is not None
    assert all(is_figure(str(out / item["png"])) for item in shown)
    assert "Did attention help?" in page and "Reliability" in page and "alignment" in page
    assert not os.path.isabs(got["weights"]) and not os.path.isabs(got["events_dir"])
    assert all(not os.path.isabs(item["path"]) for item in shown)


@pytest.mark.parametrize("name, status, message", [
    ("visualize_attention.py", 2, "config error: unknown config key data.hieght"),
    ("attention_report.py", 2, "config error: unknown config key data.hieght"),
    ("attention_report.py", 5, "checkpoint error: {weights} has no 'critic' entry"),
])
def test_errors_exit_with_main_py_statuses_and_name_the_culprit(name, status, message, tmp_path):
    weights = str(tmp_path / "no_critic.pth")
    torch.save({"state_dict": {"classifier.weight": torch.zeros(3, 2048)}}, weights)
    opts = ["data.hieght", "64"] if status == 2 else ["data.root", str(tmp_path)]
    result = tool(name, "--config-file", DEMO, "--weights", weights, "--output", str(tmp_path / "out"), *opts)
    assert result.returncode == status
    assert message.format(weights=weights) in result.stderr and "Traceback" not in result.stderr
