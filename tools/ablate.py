r"""Train and evaluate variants x seeds of one config, and tabulate them.

    python tools/ablate.py --config-file configs/scal_demo.yaml --output ablation/demo \
        [--variants bnneck,attention,scal_paper,...] [--seeds 1,2,3] [--backbone resnet50] \
        [--reference attention] [KEY VALUE ...]

Each run is ``tools/main.py`` in its own process and directory (OUTPUT/runs/<variant>/seed<N>); trailing
KEY VALUE pairs apply to every run (e.g. a shortened schedule: ``train.max_epoch 30``). Writes
OUTPUT/ablation.md (mean ± sd per variant, paired differences to the reference with 95% intervals, every run),
OUTPUT/ablation.json (also each run's per-query results) and OUTPUT/ablation.png.
A seed fixes the initial weights, the batches and the augmentations of every variant alike; the critics'
initialisation and behaviour noise come from generators of their own, seeded by it too.
Repeating the command skips finished runs and resumes interrupted ones; Ctrl-C or SIGTERM lets the run in
progress write a checkpoint first (a second Ctrl-C stops it at once).
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import List

from torchreid_scal.ablation import DEFAULT_VARIANTS, VARIANTS, AblationStopped, ablate, cpu_model
from torchreid_scal.models import BACKBONES

MAIN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "main.py")


def _once(kind: str, items: List) -> List:
    repeated = sorted({str(i) for i in items if items.count(i) > 1})
    if repeated:
        raise argparse.ArgumentTypeError(f"{kind} {', '.join(repeated)} given more than once")
    if not items:
        raise argparse.ArgumentTypeError(f"no {kind} given")
    return items


def _variants(text: str) -> List[str]:
    names = [v for v in text.split(",") if v]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown variants {unknown}; choose from {','.join(VARIANTS)}")
    return _once("variants", names)


def _seeds(text: str) -> List[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s]
    except ValueError:
        raise argparse.ArgumentTypeError(f"seeds must be comma-separated integers, got {text!r}") from None
    if any(not 0 <= s < 2**32 for s in seeds):
        raise argparse.ArgumentTypeError(f"seeds must be in [0, 2**32 - 1], got {text!r}")
    return _once("seeds", seeds)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, help="base YAML config of every run")
    parser.add_argument("--output", required=True, help="directory for the runs and the tables")
    parser.add_argument("--variants", type=_variants, default=list(DEFAULT_VARIANTS),
                        help=f"comma-separated variants to run, of {','.join(VARIANTS)} "
                             f"(default: {','.join(DEFAULT_VARIANTS)})")
    parser.add_argument("--seeds", type=_seeds, default=[1, 2, 3], help="comma-separated train.seed values (1,2,3)")
    parser.add_argument("--backbone", default="resnet50", choices=list(BACKBONES), metavar="NAME",
                        help="backbone of every variant: <backbone>_scal, _scal_spatial, _bnneck (resnet50); "
                             f"one of {', '.join(BACKBONES)}")
    parser.add_argument("--reference", default="attention",
                        help="the variant every other is compared with, seed by seed (attention)")
    parser.add_argument("--report-only", action="store_true",
                        help="train nothing: tabulate the finished runs among --variants x --seeds")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE pairs applied to every run")
    args = parser.parse_args(argv)
    if os.path.exists(args.output) and not os.path.isdir(args.output):
        parser.error(f"--output {args.output} is a file: give a directory (it is created if missing)")
    if args.reference not in args.variants:
        parser.error(f"--reference {args.reference} is not among --variants {','.join(args.variants)}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    command = " ".join(["python tools/ablate.py", *(sys.argv[1:] if argv is None else argv)])
    header = f"Ablation on `{args.config_file}`, measured on {cpu_model()} with:\n\n    {command}"
    try:
        ablate(MAIN, args.config_file, args.output, args.variants, args.seeds, args.opts, header,
               backbone=args.backbone, reference=args.reference, train=not args.report_only)
    except AblationStopped as err:
        print(f"ablation stopped: {err}", file=sys.stderr)
        return 128 + err.signum
    except RuntimeError as err:
        print(f"ablation stopped: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
