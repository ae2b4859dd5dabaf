"""tools/benchmark.py runs at a tiny size and reports every figure (a smoke test, not a timing test)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from torchreid_scal.config import get_default_config

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
MODELS = {"resnet50", "osnet_x0_25_bnneck", "osnet_x0_25_scal_spatial"}  # torchreid's reference, a SCAL model of
# another backbone and its own baseline: every code path at a fraction of the time


def test_benchmark_json_has_every_figure(tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "tools", "benchmark.py"), "--batch-size", "4", "--num-instances", "2",
         "--height", "64", "--width", "32", "--steps", "2", "--warmup", "1", "--json", str(out), "--openvino",
         "--models", *sorted(MODELS)],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    for figure in ("train_step_s", "extract_images_per_s", "peak_mem_mb", "openvino_extract_images_per_s"):
        assert set(report[figure]) == MODELS
        assert all(value > 0 for value in report[figure].values())
    scal = get_default_config().scal
    assert report["scal"]["critic_explore_std"] == scal.critic_explore_std  # the default SCAL is timed
    assert report["scal"]["critic_form"] == scal.critic_form
    assert report["settings"]["height"] == 64 and report["versions"]["torchreid_layout"] == "pypi"
    assert all(len(report["raw"][m]["train_step_s"]) == 2 for m in MODELS)
    assert "osnet_x0_25_scal_spatial" in result.stdout and "step/resnet50" in result.stdout
    assert set(report["vs_bnneck"]) == {"osnet_x0_25_bnneck", "osnet_x0_25_scal_spatial"}  # against its own family
    steps = report["train_step_s"]
    assert report["vs_bnneck"]["osnet_x0_25_scal_spatial"]["train_step"] == pytest.approx(
        steps["osnet_x0_25_scal_spatial"] / steps["osnet_x0_25_bnneck"])
    assert set(report["vs_resnet50"]) == MODELS
    assert "osnet_x0_25_scal_spatial eager" in result.stdout and "/ OpenVINO" in result.stdout


def test_an_ablation_variant_sets_the_timed_scal_step(tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "tools", "benchmark.py"), "--batch-size", "4", "--num-instances", "2",
         "--height", "64", "--width", "32", "--steps", "1", "--warmup", "1", "--json", str(out),
         "--scal-variant", "scal_compatible", "--models", "osnet_x0_25_bnneck", "osnet_x0_25_scal"],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["scal"]["critic_form"] == "compatible" and report["scal"]["critic_explore_std"] > 0
    assert "SCAL engine with the scal_compatible variant's settings: " in result.stdout


def test_evaluation_benchmark_json_and_equal_metrics(tmp_path):
    out = tmp_path / "eval.json"
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "tools", "benchmark.py"), "--eval", "market1501", "--scale", "0.02",
         "--dim", "32", "--memory-mb", "0.05", "--ranking-threads", "2", "--json", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    methods = set(report["rank_s"])
    assert {"torchreid_python", "fast"} <= methods <= {"torchreid_python", "torchreid_cython", "fast"}
    assert set(report["peak_rss_mb"]) == methods and report["distance_s"] > 0
    assert all(report["rank_s"][m] > 0 and report["peak_rss_mb"][m] > 0 for m in methods)
    assert report["sizes"] == {"queries": 67, "gallery": 318, "ids": 15, "cameras": 6, "distractors": 56}
    raw = report["raw"]
    assert abs(raw["fast"]["mAP"] - raw["torchreid_python"]["mAP"]) < 1e-6
    assert abs(raw["fast"]["rank1"] - raw["torchreid_python"]["rank1"]) < 1e-6 and raw["fast"]["rank1"] > 0
    assert "market1501-sized evaluation" in result.stdout and report["cpu"]
    assert report["settings"]["ranking_threads"] == 2


def test_profile_names_the_operators_that_add_time_to_the_reference():
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "tools", "benchmark.py"), "--batch-size", "4", "--num-instances", "2",
         "--height", "64", "--width", "32", "--warmup", "1", "--profile", "osnet_x0_25_scal_channel"],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "aten::" in result.stdout and "Self CPU" in result.stdout  # torch.profiler's table of the SCAL step
    head, _, added = result.stdout.partition("the operators that add the most:")
    assert "osnet_x0_25_scal_channel:" in head and "osnet_x0_25_bnneck:" in head  # its own backbone's baseline
    rows = [line.split() for line in added.strip().splitlines()[1:]]
    assert len(rows) == 15 and any(r[0].startswith("aten::") for r in rows)  # the top may be Optimizer.step
    assert [float(r[-2]) for r in rows] == sorted((float(r[-2]) for r in rows), reverse=True)


def test_rerank_benchmark_compares_torchreids_and_the_bounded_one(tmp_path):
    out = tmp_path / "rerank.json"
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "tools", "benchmark.py"), "--eval", "market1501", "--rerank", "--scale",
         "0.02", "--dim", "32", "--memory-mb", "0.05", "--json", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    raw = json.loads(out.read_text())["raw"]
    assert set(raw) == {"torchreid_rerank", "bounded_rerank"}
    for figures in raw.values():
        assert figures["total_s"] >= figures["rerank_s"] > 0 and figures["peak_rss_mb"] >= figures["baseline_rss_mb"]
    assert raw["torchreid_rerank"]["distance_s"] > 0  # torchreid's three distance matrices, timed apart
    assert abs(raw["bounded_rerank"]["mAP"] - raw["torchreid_rerank"]["mAP"]) < 1e-6
    assert abs(raw["bounded_rerank"]["rank1"] - raw["torchreid_rerank"]["rank1"]) < 1e-6
    assert "re-rank s" in result.stdout and "bounded_rerank" in result.stdout
