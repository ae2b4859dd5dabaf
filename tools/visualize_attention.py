"""Draw what a trained SCAL model attends to, with its critics' values, image by image.

    python tools/visualize_attention.py --config-file C --weights W --output DIR [--images FOLDER]
        [--num-images N] [KEY VALUE ...]

Per image, DIR/<name>.png is one figure: the image, then per stage the attention map on the fixed scale
0..1 (spatial) or, for channel attention, the ratio of attended to unattended activation at each position
above the stage's channel weights sorted from largest to smallest; each panel is captioned with the stage's
critic value V_k and has a colour scale. DIR/actmap/<name>.jpg are torchreid's activation maps.
Images: the query split of the config's first target (the first 16 unless --num-images), or every image
file of --images; rewards are undefined for both (their identities are not classifier classes).
Trailing KEY VALUE pairs override the config as in tools/main.py. Errors exit with a message and, as
there, status 2 (configuration), 3 (data) or 5 (checkpoint).
"""
from __future__ import annotations

import argparse
import sys

from torchreid_scal.cli import at_least, existing_folder, output_folder, run_tool
from torchreid_scal.config import load_config
from torchreid_scal.report import visualize


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", default="", help="YAML config the model was trained with")
    parser.add_argument("--weights", required=True, help="checkpoint written by the SCAL engine (model.pth.tar-N)")
    parser.add_argument("--output", required=True, type=output_folder, help="directory for the PNG rows and actmap/")
    parser.add_argument("--images", type=existing_folder, help="folder of images to use instead of the query split")
    parser.add_argument("--num-images", type=at_least(1), help="at most this many images")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE pairs overriding the config")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    return run_tool(lambda: visualize(load_config(args.config_file, args.opts), args.weights, args.output,
                                      args.images, args.num_images))


if __name__ == "__main__":
    sys.exit(main())
