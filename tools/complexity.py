"""Parameters and FLOPs (torchreid's compute_model_complexity) of each backbone's SCAL family and its critics,
as multiples of the backbone's ``_bnneck``.

    python tools/complexity.py [--backbones resnet50 osnet_x1_0 | all] [--height 256 --width 128 --num-classes 751]
"""
from __future__ import annotations

import argparse

import torch
from torch import nn

from torchreid_scal import _torchreid
from torchreid_scal.cli import at_least
from torchreid_scal.config import MAX_IMAGE_SIDE
from torchreid_scal.models import BACKBONES, StageCritics, create_model

VARIANTS = ("_bnneck", "_scal_channel", "_scal_spatial")


class _WithCritics(nn.Module):
    """The network followed by its critics, so one complexity count covers both."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.critics = StageCritics(model.attention, model.stage_channels, range(len(model.stage_channels)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x, return_stages=True)
        return self.critics(out.features, out.maps)[0]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", nargs="+", default=["resnet50"], choices=["all", *BACKBONES], metavar="NAME",
                        help=f"backbones to count, or all: {', '.join(BACKBONES)}")
    parser.add_argument("--height", type=at_least(1, MAX_IMAGE_SIDE), default=256)
    parser.add_argument("--width", type=at_least(1, MAX_IMAGE_SIDE), default=128)
    parser.add_argument("--num-classes", type=at_least(1), default=751)
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    backbones = list(BACKBONES) if "all" in args.backbones else args.backbones
    size = (1, 3, args.height, args.width)
    count = _torchreid.utils.compute_model_complexity
    print(f"input {args.height}x{args.width}, {args.num_classes} classes (eval mode: the classifier is not run)")
    print(f"{'network':<32}{'params':>14}{'x bnneck':>10}{'GFLOPs':>10}{'x bnneck':>10}")
    for backbone in backbones:
        rows = {}
        for variant in (backbone + suffix for suffix in VARIANTS):
            model = create_model(variant, args.num_classes, pretrained=False, height=args.height,
                                 width=args.width).eval()
            rows[variant] = count(model, size)
            if model.attention:
                params, flops = count(_WithCritics(model).eval(), size)
                rows[f"  critics ({model.attention})"] = (params - sum(p.numel() for p in model.parameters()),
                                                          flops - rows[variant][1])
        base_params, base_flops = rows[backbone + "_bnneck"]
        for name, (params, flops) in rows.items():
            print(f"{name:<32}{params:>14,}{params / base_params:>10.4f}{flops / 1e9:>10.4f}"
                  f"{flops / base_flops:>10.5f}")


if __name__ == "__main__":
    main()
