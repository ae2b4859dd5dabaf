"""tools/probe_critics.py end to end on the shared one-step SCAL checkpoint: every form fitted and scored."""
from __future__ import annotations

import json
import os
import subprocess
import sys

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
PROBE = os.path.join(REPO, "tools", "probe_critics.py")
DEMO = os.path.join(REPO, "configs", "scal_demo.yaml")


def test_probe_fits_each_form_and_reports_held_out_alignment(trained_run, tmp_path):
    out = tmp_path / "probe.json"
    result = subprocess.run([sys.executable, PROBE, "--config-file", DEMO, "--weights", trained_run.weights,
                             "--forms", "paper,conditioned,compatible_logp", "--draws", "1", "--epochs", "1",
                             "--output", str(out), *trained_run.opts], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads(out.read_text())
    assert list(record["results"]) == ["paper", "conditioned", "compatible_logp"]
    assert record["train_images"] == 400 and record["heldout_images"] == 100
    for form, stats in record["results"].items():
        assert all(-1 <= stats[f"alignment_stage{k}"] <= 1 for k in range(5)), form
        assert stats["final_loss"] >= 0
    assert "| `compatible_logp` |" in result.stdout and "| form | stage 0 |" in result.stdout


def test_probe_arguments_are_checked_before_any_work(tmp_path):
    for args in (["--forms", "paper,nope"], ["--draws", "0"], ["--explore-std", "-1"]):
        result = subprocess.run([sys.executable, PROBE, "--weights", "x", *args], capture_output=True, text=True,
                                timeout=120)
        assert result.returncode == 2 and "error: " in result.stderr.strip().splitlines()[-1], result.stderr
