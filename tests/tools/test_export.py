"""tools/export.py: TorchScript and ONNX files that give eager mode's features (max abs diff <= 1e-4)."""
from __future__ import annotations

import os
import subprocess
import sys

import onnx
import pytest
import torch

from torchreid_scal.checkpoint import save_checkpoint
from torchreid_scal.export import run_exported
from torchreid_scal.models import create_model

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SIZE = ["data.height", "64", "data.width", "32"]


@pytest.mark.parametrize("variant", ["resnet50_scal", "resnet50_scal_spatial", "osnet_x0_25_scal",
                                     "resnet50_ibn_a_scal_spatial"])
def test_exported_features_match_eager(variant, tmp_path):
    torch.manual_seed(0)
    model = create_model(variant, 7, pretrained=False, height=64, width=32)
    model.train()
    with torch.no_grad():  # non-trivial BN statistics, so that eval mode differs from initialisation
        model(torch.randn(8, 3, 64, 32) * 2 + 0.5)
    model.eval()
    weights = save_checkpoint({"state_dict": model.state_dict()}, str(tmp_path / "model.pth.tar-1"))
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "tools", "export.py"), "--config-file",
         os.path.join(REPO, "configs", "scal_demo.yaml"), "--weights", weights, "--output", str(tmp_path / "out"),
         "model.name", variant, *SIZE], capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "parity onnx: batch 1: max abs diff" in result.stdout
    assert "parity torchscript: batch 1: max abs diff" in result.stdout and ", batch 5: max abs diff" in result.stdout
    for fmt, name in (("onnx", "model.onnx"), ("torchscript", "model.ts")):
        for n in (1, 5):
            images = torch.randn(n, 3, 64, 32)
            with torch.no_grad():
                expected = model(images)
            got = run_exported(fmt, str(tmp_path / "out" / name), images)
            assert got.shape == (n, model.feature_dim)
            assert (got - expected).abs().max().item() <= 1e-4


def test_onnx_has_named_dynamic_input(tmp_path):
    model = create_model("resnet50_scal", 3, pretrained=False, height=64, width=32).eval()
    from torchreid_scal.export import export

    path = export(model, torch.randn(2, 3, 64, 32), str(tmp_path), ["onnx"])["onnx"]
    graph = onnx.load(path).graph
    assert [i.name for i in graph.input] == ["images"]
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert onnx.load(path).opset_import[0].version >= 17


def test_export_refuses_weights_of_another_model(tmp_path):
    model = create_model("resnet50_bnneck", 3, pretrained=False)
    weights = save_checkpoint({"state_dict": model.state_dict()}, str(tmp_path / "w.pth"))
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "tools", "export.py"), "--config-file",
         os.path.join(REPO, "configs", "scal_demo.yaml"), "--weights", weights, "--output", str(tmp_path / "o"),
         *SIZE], capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 5 and "does not fit resnet50_scal" in result.stderr


def test_openvino_export_matches_eager(tmp_path):
    torch.manual_seed(0)
    model = create_model("resnet50_scal", 5, pretrained=False, height=64, width=32)
    model.train()
    with torch.no_grad():
        model(torch.randn(8, 3, 64, 32) * 2 + 0.5)
    model.eval()
    weights = save_checkpoint({"state_dict": model.state_dict()}, str(tmp_path / "model.pth.tar-1"))
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "tools", "export.py"), "--format", "openvino", "--config-file",
         os.path.join(REPO, "configs", "scal_demo.yaml"), "--weights", weights, "--output", str(tmp_path / "out"),
         *SIZE], capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "parity openvino: batch 1: max abs diff" in result.stdout and ", batch 5: max abs diff" in result.stdout
    assert (tmp_path / "out" / "model.bin").is_file()
    for n in (1, 5):
        images = torch.randn(n, 3, 64, 32)
        with torch.no_grad():
            expected = model(images)
        got = run_exported("openvino", str(tmp_path / "out" / "model.xml"), images)
        assert got.shape == (n, 2048)
        assert (got - expected).abs().max().item() <= 5e-4  # float32 kernels of another library: ~1e-4 here
