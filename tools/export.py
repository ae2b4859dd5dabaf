r"""Export a trained model's inference network (no critics) to ONNX, TorchScript and OpenVINO.

    python tools/export.py --config-file configs/scal_demo.yaml --weights log/scal_demo/model/model.pth.tar-50 \\
        --output exported [--format onnx torchscript openvino] [KEY VALUE ...]

Writes DIR/model.onnx (opset 17, dynamic batch, input ``images``) and DIR/model.ts (the default formats), and
with ``--format openvino`` DIR/model.xml + model.bin (OpenVINO IR; needs ``pip install ".[openvino]"``), then prints
the largest difference of each from eager PyTorch for batches of 1 and 5.
"""
from __future__ import annotations

import argparse
import sys

import torch

from torchreid_scal.cli import output_folder, run_tool
from torchreid_scal.config import load_config
from torchreid_scal.export import DEFAULT_FORMATS, FORMATS, export, load_inference_model, parity


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--weights", required=True, help="checkpoint written by tools/main.py")
    parser.add_argument("--output", required=True, type=output_folder, help="directory for model.onnx / model.ts")
    parser.add_argument("--format", nargs="+", choices=FORMATS, default=list(DEFAULT_FORMATS))
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE pairs overriding the config")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)

    def job() -> None:
        cfg = load_config(args.config_file, args.opts)
        model = load_inference_model(cfg, args.weights)
        example = torch.randn(2, 3, cfg.data.height, cfg.data.width)
        paths = export(model, example, args.output, args.format)
        for fmt, path in paths.items():
            print(f"wrote {fmt}: {path}")
        for fmt, diffs in parity(model, paths, cfg.data.height, cfg.data.width).items():
            print(f"parity {fmt}: " + ", ".join(f"batch {n}: max abs diff {d:.2e}" for n, d in diffs.items()))

    return run_tool(job)


if __name__ == "__main__":
    sys.exit(main())
