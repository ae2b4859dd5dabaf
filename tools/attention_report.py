"""Report how a trained SCAL model's attention and critics behave on one data split.

    python tools/attention_report.py --config-file C --weights W --output DIR [--split train|query|gallery]
        [--bins 5] [--examples 4] [--events EVENTS_DIR] [KEY VALUE ...]

Writes DIR/report.json and DIR/report.html (pictures next to it): mean critic value per stage, critic
against reward (MSE, correlation, reliability table), the share of images where attention helped, the best-
and worst-scored images with their attention overlays, and the training curves (DIR/training_curves.png)
from the run's TensorBoard events (default: the save_dir holding the weights' model/ folder).
The default split is the sources' training images through the test transforms: only there are the pids
classifier classes, so only there are rewards defined; ``--split heldout`` (scal_demo) uses further images
of the training identities that the model never trained on. Trailing KEY VALUE pairs override the config as in
tools/main.py. Errors exit with a message and, as there, status 2 (configuration), 3 (data) or 5 (checkpoint).
"""
from __future__ import annotations

import argparse
import sys

from torchreid_scal.cli import at_least, existing_folder, output_folder, run_tool
from torchreid_scal.config import load_config
from torchreid_scal.datasets.splits import SPLITS
from torchreid_scal.report import attention_report


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", default="", help="YAML config the model was trained with")
    parser.add_argument("--weights", required=True, help="checkpoint written by the SCAL engine (model.pth.tar-N)")
    parser.add_argument("--output", required=True, type=output_folder,
                        help="directory for report.json, report.html and pictures")
    parser.add_argument("--split", choices=SPLITS, default="train",
                        help="images to inspect (default: train; heldout: scal_demo's unseen images of training ids)")
    parser.add_argument("--bins", type=at_least(1), default=5, help="bins of the reliability table")
    parser.add_argument("--examples", type=at_least(0), default=2,
                        help="highest- and lowest-scored images shown per reward value")
    parser.add_argument("--events", type=existing_folder,
                        help="TensorBoard event directory (default: the run's save_dir)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE pairs overriding the config")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    return run_tool(lambda: attention_report(load_config(args.config_file, args.opts), args.weights, args.output,
                                             args.split, args.bins, args.events, args.examples))


if __name__ == "__main__":
    sys.exit(main())
