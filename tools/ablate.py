"""Train and evaluate variants x seeds of one config, and tabulate them.

    python tools/ablate.py --config-file configs/scal_demo.yaml --output ablation/demo \
        [--variants bnneck,attention,scal_paper,...] [--seeds 1,2,3] [KEY VALUE ...]

Each run is ``tools/main.py`` in its own process and directory (OUTPUT/runs/<variant>/seed<N>); trailing
KEY VALUE pairs apply to every run (e.g. a shortened schedule: ``train.max_epoch 30``). Writes
OUTPUT/ablation.md (mean ± sd per variant and every run), OUTPUT/ablation.json and OUTPUT/ablation.png.
Repeating the command skips finished runs and resumes interrupted ones.
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
from typing import List

from torchreid_scal.ablation import VARIANTS, ablate

MAIN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "main.py")


def cpu_model() -> str:
    """The CPU's model name (``lscpu``), which results and timings depend on."""
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown CPU"


def _variants(text: str) -> List[str]:
    names = [v for v in text.split(",") if v]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown variants {unknown}; choose from {','.join(VARIANTS)}")
    return names


def _seeds(text: str) -> List[int]:
    try:
        return [int(s) for s in text.split(",") if s]
    except ValueError:
        raise argparse.ArgumentTypeError(f"seeds must be comma-separated integers, got {text!r}") from None


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, help="base YAML config of every run")
    parser.add_argument("--output", required=True, help="directory for the runs and the tables")
    parser.add_argument("--variants", type=_variants, default=list(VARIANTS),
                        help=f"comma-separated variants to run (default: all of {','.join(VARIANTS)})")
    parser.add_argument("--seeds", type=_seeds, default=[1, 2, 3], help="comma-separated train.seed values (1,2,3)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE pairs applied to every run")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    command = " ".join(["python tools/ablate.py", *(sys.argv[1:] if argv is None else argv)])
    header = f"Ablation on `{args.config_file}`, measured on {cpu_model()} with:\n\n    {command}"
    try:
        ablate(MAIN, args.config_file, args.output, args.variants, args.seeds, args.opts, header)
    except RuntimeError as err:
        print(f"ablation stopped: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
