"""Speed and memory of evaluation: torchreid's ``evaluate_rank`` (its Python path, and its compiled path where
importable) against ``torchreid_scal.evaluation``, on synthetic features of a test set's size.

    python tools/benchmark.py --eval market1501 [--json eval.json]
    python tools/benchmark.py --eval msmt17 --methods fast torchreid_cython

The features (seeded): each identity a point in a 128-d latent space, each camera a shift of it, each image
its identity's point plus its camera's shift plus noise, mapped to ``--dim`` dimensions by one random
linear map; Market-1501's gallery also holds ~2,800 distractor images of an identity no query has. Every
method runs in a fresh process, which builds the features first and then measures: for torchreid, the
distance matrix (``distance_s``, torchreid's ``compute_distance_matrix``) and the ranking of it (``rank_s``);
for ``fast``, ``evaluate`` from the features (``total_s``: distances and ranking, chunk by chunk, the way
the engines evaluate) and then, on a full distance matrix built afterwards, ``evaluate_distances`` alone
(``rank_s``, the like-for-like ranking time). ``peak_rss_mb`` is the process's peak resident memory while
evaluating (the high-water mark is reset once the features exist, where Linux allows it), with
``baseline_rss_mb`` the resident memory before evaluating (features, torch); for ``fast`` it covers
``evaluate`` only, not the full matrix of the ranking-only timing.

``--rerank`` compares k-reciprocal re-ranking instead (k1 20, k2 6, lambda 0.3), each in a fresh process:
``torchreid_rerank`` builds torchreid's three distance matrices (``distance_s``) and runs its ``re_ranking``
(``rerank_s``), then ranks the result with the fast evaluator; ``bounded_rerank`` is
:class:`torchreid_scal.retrieval.rerank.KReciprocal` from the features, its final distances evaluated query chunk by
query chunk (``total_s`` covers everything from the features to the metrics for both).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from typing import Dict

import torch

from torchreid_scal import _torchreid
from torchreid_scal.cli import at_least, positive_float
from torchreid_scal.evaluation import distance_matrix, evaluate, evaluate_distances, evaluate_rows
from torchreid_scal.retrieval.rerank import KReciprocal

SIZES = {  # test sets as torchreid loads them
    "market1501": dict(queries=3368, gallery=15913, ids=751, cameras=6, distractors=2798),
    "msmt17": dict(queries=11659, gallery=82161, ids=3060, cameras=15, distractors=0),
}
NOISE = {"market1501": 0.95, "msmt17": 1.3}
"""Default image noise: synthetic mAP near a ResNet-50 baseline's (measured: 0.78 Market-1501, ~0.5 MSMT17)."""
METHODS = ("torchreid_python", "torchreid_cython", "fast")
RERANK_METHODS = ("torchreid_rerank", "bounded_rerank")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="benchmark.py --eval", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--eval", required=True, choices=sorted(SIZES), help="whose test-set sizes")
    parser.add_argument("--json", default="", help="write the figures to this file")
    parser.add_argument("--methods", nargs="+", choices=METHODS + RERANK_METHODS,
                        help="default: all (compiled where importable); with --rerank both re-rankings")
    parser.add_argument("--rerank", action="store_true", help="benchmark k-reciprocal re-ranking instead")
    parser.add_argument("--scale", type=float, default=1.0, help="shrink queries, gallery and identities (tests)")
    parser.add_argument("--dim", type=at_least(1), default=2048, help="feature dimension")
    parser.add_argument("--memory-mb", type=positive_float, default=256, help="the fast evaluator's chunk budget")
    parser.add_argument("--ranking-threads", type=int, default=1,
                        help="the fast evaluator's ranking threads on the CPU (its default: 1)")
    parser.add_argument("--noise", type=float, help="image noise against identity spread (default: NOISE)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--run-method", choices=METHODS + RERANK_METHODS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.noise is None:
        args.noise = NOISE[args.eval]
    if args.ranking_threads < 1:
        parser.error(f"--ranking-threads must be at least 1, got {args.ranking_threads}")
    if not 0 < args.scale <= 1:
        parser.error(f"--scale must be in (0, 1], got {args.scale}")
    if args.rerank:
        args.methods = args.methods or list(RERANK_METHODS)
        if set(args.methods) - set(RERANK_METHODS):
            parser.error(f"--rerank compares {list(RERANK_METHODS)}")
    elif args.methods is None:
        args.methods = [m for m in METHODS if m != "torchreid_cython" or _torchreid.compiled_evaluator() is not None]
    elif "torchreid_cython" in args.methods and _torchreid.compiled_evaluator() is None:
        parser.error("--methods torchreid_cython: torchreid's compiled ranking is not importable here")
    return args


def scaled_sizes(args) -> Dict[str, int]:
    """The test set's sizes times ``--scale`` (not the cameras)."""
    return {k: v if k == "cameras" or v == 0 else max(1, round(v * args.scale)) for k, v in SIZES[args.eval].items()}


def synthetic_test_set(args):
    """Query and gallery features with identities and cameras, sized like ``args.eval``'s test set."""
    size = scaled_sizes(args)
    latent = 128
    g = torch.Generator().manual_seed(args.seed)
    ids, cams = size["ids"], size["cameras"]
    q_pids = torch.randint(0, ids, (size["queries"],), generator=g)
    g_pids = torch.cat([torch.randint(0, ids, (size["gallery"] - size["distractors"],), generator=g),
                        torch.full((size["distractors"],), ids)])
    q_cams = torch.randint(0, cams, (size["queries"],), generator=g)
    g_cams = torch.randint(0, cams, (size["gallery"],), generator=g)
    centers = torch.randn(ids + 1, latent, generator=g) / latent ** 0.5
    shifts = torch.randn(cams, latent, generator=g) / latent ** 0.5 * 0.35
    projection = torch.randn(latent, args.dim, generator=g)

    def features(pids, camids):
        out = torch.empty(len(pids), args.dim)
        for rows in torch.arange(len(pids)).split(4096):  # bounded temporaries: the features dominate memory
            p = pids[rows]
            noise = torch.randn(len(rows), latent, generator=g) / latent ** 0.5 * args.noise
            z = centers[p] + shifts[camids[rows]] + noise
            distractor = p == ids
            z[distractor] = torch.randn(int(distractor.sum()), latent, generator=g) / latent ** 0.5
            torch.mm(z, projection, out=out[rows[0]:rows[-1] + 1])
        return out

    return features(q_pids, q_cams), features(g_pids, g_cams), q_pids, g_pids, q_cams, g_cams


def rss_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":")) / 1024


def reset_peak_rss() -> bool:
    """Start the high-water mark anew from the current resident set (Linux's clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def run_rerank(method: str, args, qf, gf, labels, report: Dict[str, object]):
    """Re-rank and evaluate, timing the parts; return the metrics."""
    options = dict(memory_mb=args.memory_mb, ranking_threads=args.ranking_threads)
    start = time.perf_counter()
    if method == "torchreid_rerank":
        distances = [_torchreid.metrics.compute_distance_matrix(a, b).numpy() for a, b in ((qf, gf), (qf, qf), (gf, gf))]
        report["distance_s"] = time.perf_counter() - start
        distmat = _torchreid.utils.re_ranking(*distances, k1=20, k2=6, lambda_value=0.3)
        report["rerank_s"] = time.perf_counter() - start - report["distance_s"]
        del distances
        result = evaluate_distances(distmat, *labels, **options)
    else:
        reranker = KReciprocal(qf, gf, k1=20, k2=6, lambda_value=0.3, memory_mb=args.memory_mb)
        report["rerank_s"] = time.perf_counter() - start  # every pair's work; the final rows come with the ranking
        result = evaluate_rows(reranker.rows, *reranker.shape, *labels, **options)
    report["total_s"] = time.perf_counter() - start
    report["rank_s"] = report["total_s"] - report["rerank_s"] - report.get("distance_s", 0.0)
    report["peak_rss_mb"] = rss_mb("VmHWM")
    return result.cmc, result.mAP


def run_method(method: str, args) -> Dict[str, object]:
    """One method's figures, in this (fresh) process."""
    qf, gf, q_pids, g_pids, q_cams, g_cams = synthetic_test_set(args)
    report: Dict[str, object] = {"features_mb": (qf.numel() + gf.numel()) * 4 / 2**20,
                                 "baseline_rss_mb": rss_mb("VmRSS"), "peak_reset": reset_peak_rss()}
    if method in RERANK_METHODS:
        cmc, mAP = run_rerank(method, args, qf, gf, (q_pids, g_pids, q_cams, g_cams), report)
    elif method == "fast":
        start = time.perf_counter()
        options = dict(memory_mb=args.memory_mb, ranking_threads=args.ranking_threads)
        result = evaluate(qf, gf, q_pids, g_pids, q_cams, g_cams, **options)
        report["total_s"] = time.perf_counter() - start
        report["peak_rss_mb"] = rss_mb("VmHWM")
        distmat = distance_matrix(qf, gf)
        start = time.perf_counter()
        evaluate_distances(distmat, q_pids, g_pids, q_cams, g_cams, **options)
        report["rank_s"] = time.perf_counter() - start
        cmc, mAP = result.cmc, result.mAP
    else:
        start = time.perf_counter()
        distmat = _torchreid.metrics.compute_distance_matrix(qf, gf).numpy()
        report["distance_s"] = time.perf_counter() - start
        labels = [a.numpy() for a in (q_pids, g_pids, q_cams, g_cams)]
        start = time.perf_counter()
        if method == "torchreid_cython":
            cmc, mAP = _torchreid.compiled_evaluator()(distmat, *labels, 50, False)
        else:
            cmc, mAP = _torchreid.submodule("metrics.rank").evaluate_rank(distmat, *labels, use_cython=False)
        report["rank_s"] = time.perf_counter() - start
        report["total_s"] = report["distance_s"] + report["rank_s"]
        report["peak_rss_mb"] = rss_mb("VmHWM")
    report.update(mAP=float(mAP), rank1=float(cmc[0]))
    return report


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.run_method:
        print(json.dumps(run_method(args.run_method, args)))
        return
    options = ["--eval", args.eval, "--scale", str(args.scale), "--dim", str(args.dim), "--memory-mb",
               str(args.memory_mb), "--ranking-threads", str(args.ranking_threads), "--noise", str(args.noise),
               "--seed", str(args.seed)] + ["--rerank"] * args.rerank
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "benchmark.py")
    load = [os.getloadavg()[0]]
    raw = {}
    for method in args.methods:
        child = subprocess.run([sys.executable, script, *options, "--run-method", method], capture_output=True,
                               text=True)
        if child.returncode:
            sys.exit(f"benchmark of {method} failed:\n{child.stderr[-3000:]}")
        raw[method] = json.loads(child.stdout.strip().splitlines()[-1])
        load.append(os.getloadavg()[0])
    reference = next((r for m, r in raw.items() if m not in ("fast", "bounded_rerank")), {})
    report = {
        "rank_s": {m: r["rank_s"] for m, r in raw.items()},
        "peak_rss_mb": {m: r["peak_rss_mb"] for m, r in raw.items()},
        "distance_s": reference.get("distance_s"),
        "total_s": {m: r["total_s"] for m, r in raw.items()},
        "raw": raw, "settings": vars(args), "cpu": cpu_model(), "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(), "load_1min": load, "torch": torch.__version__,
        "torchreid": _torchreid.VERSION, "sizes": scaled_sizes(args),
    }
    print(f"{args.eval}-sized evaluation: {report['sizes']}, dim {args.dim}; {report['cpu']}, "
          f"{report['threads']} threads; 1-min load {', '.join(f'{x:.1f}' for x in load)}")
    if args.rerank:
        print(f"{'method':<18}{'distances s':>12}{'re-rank s':>10}{'rank s':>8}{'total s':>9}{'peak RSS MB':>13}"
              f"{'before MB':>11}{'mAP':>8}{'rank-1':>8}")
        for method, r in raw.items():
            print(f"{method:<18}{r.get('distance_s', 0.0):>12.2f}{r['rerank_s']:>10.2f}{r['rank_s']:>8.2f}"
                  f"{r['total_s']:>9.2f}{r['peak_rss_mb']:>13.0f}{r['baseline_rss_mb']:>11.0f}{r['mAP']:>8.4f}"
                  f"{r['rank1']:>8.4f}")
    else:
        print(f"{'method':<18}{'rank s':>9}{'total s':>9}{'peak RSS MB':>13}{'before MB':>11}{'mAP':>8}{'rank-1':>8}")
        for method, r in raw.items():
            print(f"{method:<18}{r['rank_s']:>9.2f}{r['total_s']:>9.2f}{r['peak_rss_mb']:>13.0f}"
                  f"{r['baseline_rss_mb']:>11.0f}{r['mAP']:>8.4f}{r['rank1']:>8.4f}")
    if report["distance_s"] is not None:
        print(f"distance matrix (torchreid): {report['distance_s']:.2f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
