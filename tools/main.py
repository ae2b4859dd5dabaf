"""Train and evaluate person re-identification models with torchreid and SCAL.

    python tools/main.py --config-file configs/scal_market.yaml [KEY VALUE ...]

Trailing ``KEY VALUE`` pairs override the file (e.g. ``train.max_epoch 5 data.root /data``), as in
torchreid's own scripts. Errors exit with a message naming the culprit and a status: 2 configuration,
3 data, 4 non-finite loss or features, 5 checkpoint. SIGTERM, SIGUSR1 or SIGINT stop training after the step in progress
with a checkpoint (status 6; ``model.resume auto`` continues from that step); a second SIGINT stops at once (130).
"""
from __future__ import annotations

import argparse
import sys

from yacs.config import CfgNode as CN

from torchreid_scal.cli import run_tool
from torchreid_scal.config import load_config
from torchreid_scal.runner import run


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", default="", help="YAML config (upstream torchreid keys + SCAL's)")
    parser.add_argument("-s", "--sources", nargs="+", help="source datasets (as torchreid's scripts)")
    parser.add_argument("-t", "--targets", nargs="+", help="target datasets (as torchreid's scripts)")
    parser.add_argument("--transforms", nargs="+", help="data augmentation (as torchreid's scripts)")
    parser.add_argument("--root", default="", help="dataset root (as torchreid's scripts)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE pairs overriding the config")
    return parser.parse_args(argv)


def configure(argv=None) -> CN:
    """The config that the command line describes (ConfigError when it cannot be built)."""
    args = parse_args(argv)
    opts = []
    for key, value in (("data.sources", args.sources), ("data.targets", args.targets),
                       ("data.transforms", args.transforms), ("data.root", args.root)):
        if value:
            opts += [key, repr(value)]
    return load_config(args.config_file, opts + list(args.opts))


def main(argv=None) -> int:
    return run_tool(lambda: run(configure(argv)))


if __name__ == "__main__":
    sys.exit(main())
