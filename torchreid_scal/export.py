"""The inference network (no critics) as TorchScript, ONNX and OpenVINO IR, with a parity check against eager mode.

Input ``images``: float32 NCHW, normalised as in training (torchreid's test transform), any batch size.
Output ``features``: the retrieval feature of ``test.feature`` (BN or pooled), float32 (N, D), D the channels of
the backbone's last stage (2048 for ResNet-50, 512 for OSNet x1.0).
OpenVINO needs the optional ``openvino`` package (``pip install ".[openvino]"``).
"""
from __future__ import annotations

import os
import warnings
from typing import Dict, Iterable, Optional

import numpy as np
import torch
from torch import nn
from yacs.config import CfgNode as CN

from .checkpoint import load_checkpoint, state_dict_of
from .config import ConfigError
from .runner import build_trained_model

FORMATS = ("onnx", "torchscript", "openvino")
DEFAULT_FORMATS = ("onnx", "torchscript")
FILES = {"onnx": "model.onnx", "torchscript": "model.ts", "openvino": "model.xml"}
ONNX_OPSET = 17


def load_inference_model(cfg: CN, weights: str) -> nn.Module:
    """The configured model with ``weights`` (sized by the checkpoint's classifier), in eval mode on the CPU."""
    return build_trained_model(cfg, state_dict_of(load_checkpoint(weights), source=weights), weights)


def _openvino():
    try:
        import openvino
    except ImportError:
        raise ConfigError("--format openvino needs the openvino package: pip install \".[openvino]\"") from None
    return openvino


def export(model: nn.Module, example: torch.Tensor, output: str,
           formats: Iterable[str] = DEFAULT_FORMATS) -> Dict[str, str]:
    """Write ``model`` in each of ``formats`` into ``output``; return format -> path."""
    os.makedirs(output, exist_ok=True)
    paths = {}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about the constant input-size checks
        for fmt in formats:
            path = os.path.join(output, FILES[fmt])
            if fmt == "torchscript":
                torch.jit.trace(model, example, check_trace=False).save(path)
            elif fmt == "openvino":  # model.xml and model.bin; batch size dynamic, the image size fixed
                ov = _openvino()
                converted = ov.convert_model(model, example_input=example, input=[[-1, *example.shape[1:]]])
                converted.inputs[0].get_tensor().set_names({"images"})
                converted.outputs[0].get_tensor().set_names({"features"})
                ov.save_model(converted, path)
            else:
                torch.onnx.export(model, (example,), path, input_names=["images"], output_names=["features"],
                                  dynamic_axes={"images": {0: "batch"}, "features": {0: "batch"}},
                                  opset_version=ONNX_OPSET, dynamo=False)
            paths[fmt] = path
    return paths


def run_exported(fmt: str, path: str, images: torch.Tensor) -> torch.Tensor:
    """Features from an exported file, on the CPU."""
    if fmt == "torchscript":
        with torch.no_grad():
            return torch.jit.load(path, map_location="cpu")(images)
    if fmt == "openvino":
        return torch.from_numpy(openvino_model(path)(images.numpy())[0].copy())
    import onnxruntime

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(["features"], {"images": images.numpy().astype(np.float32)})[0])


def openvino_model(path: str):
    """An OpenVINO IR file compiled for the CPU in float32 (OpenVINO would compute in bfloat16 on CPUs that have
    it, 1e-3 from eager here): call it with an NCHW float32 array."""
    return _openvino().Core().compile_model(path, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})


def parity(model: nn.Module, paths: Dict[str, str], height: int, width: int,
           batch_sizes: Iterable[int] = (1, 5), seed: Optional[int] = 0) -> Dict[str, Dict[int, float]]:
    """Max absolute difference between each exported file and eager mode, per batch size."""
    generator = torch.Generator().manual_seed(seed)
    result: Dict[str, Dict[int, float]] = {fmt: {} for fmt in paths}
    for n in batch_sizes:
        images = torch.randn(n, 3, height, width, generator=generator)
        with torch.no_grad():
            expected = model(images)
        for fmt, path in paths.items():
            result[fmt][n] = (run_exported(fmt, path, images) - expected).abs().max().item()
    return result
