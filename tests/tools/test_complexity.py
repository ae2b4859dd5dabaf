"""tools/complexity.py counts each backbone's SCAL family against its own _bnneck."""
from __future__ import annotations

import os
import subprocess
import sys

from torchreid_scal import _torchreid
from torchreid_scal.models import create_model

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def test_rows_per_backbone_with_ratios_to_its_bnneck():
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "tools", "complexity.py"), "--backbones", "osnet_x0_25", "resnet18",
         "--height", "64", "--width", "32", "--num-classes", "10"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()[2:]
    rows = {line.split()[0]: line.split()[1:] for line in lines if not line.startswith(" ")}
    for backbone in ("osnet_x0_25", "resnet18"):
        params, flops = _torchreid.utils.compute_model_complexity(
            create_model(f"{backbone}_scal_spatial", 10, pretrained=False, height=64, width=32).eval(), (1, 3, 64, 32))
        assert rows[f"{backbone}_scal_spatial"][0::2] == [f"{params:,}", f"{flops / 1e9:.4f}"]
        assert rows[f"{backbone}_bnneck"][1] == "1.0000" and float(rows[f"{backbone}_scal_channel"][1]) > 1
    assert sum(line.strip().startswith("critics (") for line in lines) == 4  # channel and spatial, per backbone
