r"""Features of your own images from a trained checkpoint: a folder (recursively) or one image in, features out.

    python tools/extract.py --weights log/scal_demo/model/model.pth.tar-25 --images /data/gallery \\
        --output gallery_features [--config-file configs/scal_demo.yaml] [--device auto|cpu|cuda] [--amp] \\
        [--batch-size N] [--dtype float32|float16] [KEY VALUE ...]

Writes OUTPUT/features.npy (N x D, NumPy's format: ``np.load(path, mmap_mode="r")``), OUTPUT/index.csv (row, path
relative to --images, pid, camid where the file name has them), OUTPUT/listing.txt and OUTPUT/extract.json. Give
the --config-file the model was trained with (model.name, data.height/width, test.feature). Unreadable images are
listed and skipped; an interrupted run continues where it stopped when run again with the same arguments; an
OUTPUT holding features of another checkpoint is never overwritten. Errors exit with a message and status 2
(configuration), 3 (data) or 5 (checkpoint).
"""
from __future__ import annotations

import argparse
import sys

from torchreid_scal.cli import run_tool
from torchreid_scal.config import load_config
from torchreid_scal.retrieval.extract import extract
from torchreid_scal.retrieval.store import DTYPES


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", required=True, help="checkpoint written by tools/main.py")
    parser.add_argument("--images", required=True, help="folder of images (searched recursively) or one image")
    parser.add_argument("--output", required=True, help="folder for features.npy, index.csv and extract.json")
    parser.add_argument("--config-file", default="", help="YAML config the model was trained with")
    parser.add_argument("--device", default="auto", help="auto (CUDA when the config allows and one is there), cpu, "
                                                         "cuda or cuda:N")
    parser.add_argument("--amp", action="store_true", help="mixed precision (bf16 on CPU and recent GPUs)")
    parser.add_argument("--batch-size", type=int, default=None, help="images per batch (default: test.batch_size)")
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help="of the stored features")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE pairs overriding the config")
    args = parser.parse_args(argv)
    if args.batch_size is not None and args.batch_size < 1:
        parser.error(f"--batch-size must be at least 1, got {args.batch_size}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    return run_tool(lambda: extract(load_config(args.config_file, args.opts), args.weights, args.images, args.output,
                                    args.device, args.amp, args.batch_size, args.dtype, not args.no_progress))


if __name__ == "__main__":
    sys.exit(main())
