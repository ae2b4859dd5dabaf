"""tools/ablate.py end to end: two variants of a one-epoch demo job at 32x16, then a repeat that redoes nothing;
stop signals; bad arguments."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
ABLATE = os.path.join(REPO, "tools", "ablate.py")
DEMO = os.path.join(REPO, "configs", "scal_demo.yaml")


def ablate(output, root, seeds):
    return subprocess.run(
        [sys.executable, ABLATE, "--config-file", DEMO, "--output", str(output), "--variants", "attention,scal_paper",
         "--seeds", seeds, "data.root", str(root), "scal_demo.num_test_ids", "50", "data.height", "32",
         "data.width", "16",
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


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_signal_lets_the_run_write_its_checkpoint_and_leaves_no_orphan(tmp_path, sig):
    """Ctrl-C or SIGTERM to tools/ablate.py: the training run stops after its step with a mid-epoch checkpoint,
    the ablation exits with one line, and no training process is left behind."""
    out, root = tmp_path / "ablation", tmp_path / "reid-data"
    command = [sys.executable, ABLATE, "--config-file", DEMO, "--output", str(out), "--variants", "attention",
               "--seeds", "1", "data.root", str(root), "scal_demo.num_test_ids", "5", "data.height", "64",
               "data.width", "32", "data.workers", "0", "train.max_epoch", "3", "train.warmup_epochs", "0",
               "train.print_freq", "1"]
    ablation = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = out / "runs" / "attention" / "seed1" / "stdout.txt"
    deadline = time.time() + 600
    while not (log.exists() and "epoch: [1/3][1/" in log.read_text()):
        assert time.time() < deadline and ablation.poll() is None, "the training run never reached its first step"
        time.sleep(0.5)
    ablation.send_signal(sig)
    _, stderr = ablation.communicate(timeout=600)
    assert ablation.returncode == 128 + sig, stderr
    assert stderr.strip().splitlines()[-1].startswith(f"ablation stopped: {sig.name} received")
    assert "Traceback" not in stderr
    assert list((out / "runs" / "attention" / "seed1" / "model").glob("model.pth.tar-0+*")), log.read_text()[-2000:]
    training = subprocess.run(["pgrep", "-f", str(out)], capture_output=True, text=True).stdout.split()
    assert not training, "a training process outlived the ablation"


def test_repeated_seeds_or_an_output_file_are_one_line_errors(tmp_path):
    (tmp_path / "file").write_text("")
    for args in (["--seeds", "1,1"], ["--seeds", ","], ["--variants", "attention,attention"],
                 ["--output", str(tmp_path / "file")]):
        base = {"--output": str(tmp_path / "out"), "--seeds": "1", "--variants": "attention"}
        base.update(dict(zip(args[::2], args[1::2])))
        result = subprocess.run([sys.executable, ABLATE, "--config-file", DEMO, *sum(map(list, base.items()), [])],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert "error: " in result.stderr.strip().splitlines()[-1]
