"""Comparing variants trained with several seeds: mean ± sd, the paired-by-seed difference with its t interval,
a bootstrap over seeds and queries, and how much the test queries alone move a run's mAP.

Runs of one seed share their initial weights, their batches and their augmentations (the critics draw from
generators of their own), so the difference of two variants is taken seed by seed; its spread then holds what
differs between the variants' training, not what differs between seeds.
"""
from __future__ import annotations

import math
from typing import Dict, Mapping, Optional, Sequence

import numpy as np
from scipy import stats

CONFIDENCE = 0.95


def mean_sd(values: Sequence[Optional[float]]) -> Dict[str, Optional[float]]:
    """Mean, sample standard deviation and count of the finite ``values`` (None ignored)."""
    kept = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not kept:
        return {"mean": None, "sd": None, "n": 0}
    return {"mean": float(np.mean(kept)), "sd": float(np.std(kept, ddof=1)) if len(kept) > 1 else 0.0,
            "n": len(kept)}


def paired_difference(a: Mapping[int, float], b: Mapping[int, float],
                      confidence: float = CONFIDENCE) -> Dict[str, object]:
    """``a - b`` over the seeds both have: mean, sd, n, the seeds, and the t interval of the mean difference
    (None below two seeds)."""
    seeds = sorted(set(a) & set(b))
    diffs = np.array([a[s] - b[s] for s in seeds], dtype=np.float64)
    result: Dict[str, object] = {"seeds": seeds, "n": len(seeds), "diffs": diffs.tolist(),
                                 "mean": float(diffs.mean()) if len(diffs) else None, "sd": None, "ci": None}
    if len(diffs) > 1:
        sd = float(diffs.std(ddof=1))
        half = float(stats.t.ppf(0.5 + confidence / 2, len(diffs) - 1)) * sd / math.sqrt(len(diffs))
        result.update(sd=sd, ci=[float(diffs.mean()) - half, float(diffs.mean()) + half])
    return result


def bootstrap_difference(a: Mapping[int, np.ndarray], b: Mapping[int, np.ndarray], reps: int = 4000,
                         confidence: float = CONFIDENCE, seed: int = 0) -> Dict[str, object]:
    """Percentile interval of the mean per-query difference ``a - b`` (e.g. AP; rows: seeds, columns: the same
    queries in the same order), resampling both the seeds the two share (paired) and the queries (the same
    draw for every seed of a replicate: the queries are one sample of the test population). Queries missing
    in either run (NaN) are left out."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return {"n": 0, "mean": None, "ci": None}
    diff = np.stack([np.asarray(a[s], dtype=np.float64) - np.asarray(b[s], dtype=np.float64) for s in seeds])
    diff = diff[:, ~np.isnan(diff).any(axis=0)]
    rng = np.random.default_rng(seed)
    num_seeds, num_queries = diff.shape
    estimates = np.empty(reps)
    for start in range(0, reps, 500):
        count = min(500, reps - start)
        weights = rng.multinomial(num_queries, np.full(num_queries, 1 / num_queries), size=count) / num_queries
        per_seed = diff @ weights.T  # (seeds, replicates): each seed's mean difference over the drawn queries
        picked = rng.integers(num_seeds, size=(count, num_seeds))
        estimates[start:start + count] = np.take_along_axis(per_seed.T, picked, axis=1).mean(axis=1)
    tail = (1 - confidence) / 2
    return {"n": num_seeds, "queries": num_queries, "mean": float(diff.mean()),
            "ci": [float(np.quantile(estimates, tail)), float(np.quantile(estimates, 1 - tail))]}


def query_noise(per_query: np.ndarray, reps: int = 2000, seed: int = 0) -> float:
    """Standard deviation of the mean of ``per_query`` (e.g. mAP from each query's AP) when the queries are
    drawn again with replacement: how much the choice of test queries alone moves one run's figure."""
    values = np.asarray(per_query, dtype=np.float64)
    values = values[~np.isnan(values)]
    if len(values) < 2:
        return float("nan")
    draws = np.random.default_rng(seed).integers(len(values), size=(reps, len(values)))
    return float(values[draws].mean(axis=1).std(ddof=1))
