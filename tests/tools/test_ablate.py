"""tools/ablate.py end to end: two variants of a one-epoch demo job at 32x16, then a repeat that redoes nothing."""
from __future__ import annotations

import json
import os
import subprocess
import sys

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
ABLATE = os.path.join(REPO, "tools", "ablate.py")
DEMO = os.path.join(REPO, "configs", "scal_demo.yaml")


def ablate(output, root, seeds):
    return subprocess.run(
        [sys.executable, ABLATE, "--config-file", DEMO, "--output", str(output), "--variants", "attention,scal_paper",
         "--seeds", seeds, "data.root", str(root), "data.height", "32", "data.width", "16",
         "data.workers", "0", "train.max_epoch", "1", "train.warmup_epochs", "0", "scal.diagnostic_images", "16"],
        capture_output=True, text=True, timeout=1200)


def test_ablation_runs_variants_and_does_not_redo_finished_runs(tmp_path):
    out, root = tmp_path / "ablation", tmp_path / "reid-data"
    first = ablate(out, root, "1")
    assert first.returncode == 0, first.stderr[-3000:]
    assert first.stdout.count("[ablation] ") == 3  # two runs, then the tables
    done = out / "runs" / "scal_paper" / "seed1" / "run.json"
    stamp = os.stat(done).st_mtime_ns
    second = ablate(out, root, "1")
    assert second.returncode == 0, second.stderr[-3000:]
    assert os.stat(done).st_mtime_ns == stamp and second.stdout.count("[ablation] ") == 1  # no run, the tables
    result = json.loads((out / "ablation.json").read_text())
    assert [(r["variant"], r["seed"]) for r in result["runs"]] == [("attention", 1), ("scal_paper", 1)]
    attention, scal = result["runs"]
    assert all(0 <= r["mAP"] <= 100 and 0 <= r["rank1"] <= 100 for r in result["runs"])
    assert -1 <= scal["critic_alignment"] <= 1 and "critic_reward_corr" in scal
    assert "critic_alignment" not in attention  # no critic, no diagnostics
    assert result["summary"]["scal_paper"]["mAP"] == {"mean": scal["mAP"], "sd": 0.0, "n": 1}
    table = (out / "ablation.md").read_text()
    assert "measured on " in table and "python tools/ablate.py --config-file" in table
    assert "| `attention` | 1 |" in table and (out / "ablation.png").stat().st_size > 0
