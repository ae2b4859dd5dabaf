"""The documented Python API example (docs/distributed.md) runs as written, against a checkpoint and the demo data it
expects."""
from __future__ import annotations

import os
import re
import subprocess
import sys


from torchreid_scal.checkpoint import save_checkpoint
from torchreid_scal.datasets.demo import SCALDemo
from torchreid_scal.models import create_model

DOC = os.path.join(os.path.dirname(__file__), "..", "docs", "distributed.md")


def documented_example() -> str:
    text = open(DOC).read()
    section = text[text.index("## Python API"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_python_api_example(tmp_path):
    code = documented_example()
    weights = re.search(r'model_path="([^"]+)"', code).group(1)
    model = create_model("resnet50_scal", 50, pretrained=False)
    save_checkpoint({"state_dict": model.state_dict(), "epoch": 1, "rank1": 0.0}, str(tmp_path / weights))
    SCALDemo(root=str(tmp_path / "reid-data"), verbose=False)
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()[-5:]
    assert all(re.match(r"^-?\d\.\d{3}  \S+\.png$", line) for line in lines), lines
    scores = [float(line.split()[0]) for line in lines]
    assert scores == sorted(scores, reverse=True)
