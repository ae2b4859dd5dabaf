r"""Search a gallery of extracted features with query images or features.

    python tools/search.py --gallery gallery_features --query QUERY --top-k 10 --output results \\
        [--weights CHECKPOINT] [--config-file CFG] [--rerank] [--aqe] [--device auto|cpu|cuda] [KEY VALUE ...]

--gallery is a folder written by tools/extract.py. --query is one image or a folder of images (extracted with
--weights, which must be the gallery's checkpoint, into OUTPUT/query_features), or features: such a folder or an
N x D .npy file. Writes OUTPUT/results.csv (query, rank, gallery, distance), OUTPUT/results.json and, per query, a
picture of its ranked gallery images in OUTPUT/ranked/ (framed green or red where pids are known). Distances follow
test.dist_metric and test.normalize_feature; --rerank applies k-reciprocal re-ranking (test.rerank_k1/k2/lambda) and
--aqe alpha-query expansion (test.query_expansion_k/alpha) first, both holding the features in memory; without them
the gallery is read chunk by chunk from its memory map. With pids and cameras known for every image, torchreid's
metrics are printed (fast evaluator). Errors exit with status 2 (configuration), 3 (data) or 5 (checkpoint).
"""
from __future__ import annotations

import argparse
import sys

from torchreid_scal.cli import run_tool
from torchreid_scal.config import load_config
from torchreid_scal.retrieval.search import run


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gallery", required=True, help="feature folder written by tools/extract.py")
    parser.add_argument("--query", required=True, help="image, folder of images, feature folder or .npy file")
    parser.add_argument("--weights", default="", help="the gallery's checkpoint (needed for image queries)")
    parser.add_argument("--top-k", type=int, default=10, help="gallery items per query")
    parser.add_argument("--output", required=True, help="folder for results.csv, results.json and ranked/")
    parser.add_argument("--config-file", default="", help="YAML config the model was trained with")
    parser.add_argument("--rerank", action="store_true", help="k-reciprocal re-ranking")
    parser.add_argument("--aqe", action="store_true", help="alpha-query expansion (as fast-reid)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--no-pictures", action="store_true", help="no ranked pictures")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE pairs overriding the config")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    return run_tool(lambda: run(load_config(args.config_file, args.opts), args.gallery, args.query, args.weights,
                                args.top_k, args.output, args.rerank, args.aqe, args.device, not args.no_pictures))


if __name__ == "__main__":
    sys.exit(main())
