"""The fast evaluator against torchreid's ``evaluate_rank`` on random small problems (ties, queries without a
valid match, one camera, one gallery item), a hand-computed mINP, the CUHK03 draws, distances and re-ranking."""
from __future__ import annotations


import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from torchreid_scal import _torchreid
from torchreid_scal.evaluation import (GalleryDistances, count_valid_queries, distance_matrix, evaluate,
                                       evaluate_distances, rerank_distances)

rank = _torchreid.submodule("metrics.rank")


def index_order(distmat: np.ndarray) -> np.ndarray:
    """Each item's place in its row ordered by (distance, gallery index): the documented tie rule, as
    distances without ties, so that any sort in torchreid ranks exactly as the fast evaluator."""
    return np.argsort(np.argsort(distmat, axis=1, kind="stable"), axis=1, kind="stable").astype(np.float32)


@st.composite
def problems(draw):
    num_q, num_g = draw(st.integers(1, 6)), draw(st.integers(1, 25))
    ids, cams = draw(st.integers(1, 4)), draw(st.integers(1, 3))
    q_pids = np.array(draw(st.lists(st.integers(0, ids), min_size=num_q, max_size=num_q)))  # id `ids`: no match
    g_pids = np.array(draw(st.lists(st.integers(0, ids - 1), min_size=num_g, max_size=num_g)))
    q_cams = np.array(draw(st.lists(st.integers(0, cams - 1), min_size=num_q, max_size=num_q)))
    g_cams = np.array(draw(st.lists(st.integers(0, cams - 1), min_size=num_g, max_size=num_g)))
    if draw(st.booleans()):  # few distinct values: many exact ties, negative values and -0.0
        values = st.sampled_from([-1.5, -0.0, 0.0, 0.25, 1.0, 2.0])
    else:
        values = st.floats(-4, 4, width=32, allow_nan=False)
    distmat = np.array(draw(st.lists(values, min_size=num_q * num_g, max_size=num_q * num_g)),
                       dtype=np.float32).reshape(num_q, num_g)
    return distmat, q_pids, g_pids, q_cams, g_cams


def protocol(distmat, q_pids, g_pids, q_cams, g_cams):
    """Which queries have a valid match, and the largest rank torchreid can report for all of them at once
    (its evaluators stack per-query curves of the remaining items' length)."""
    remaining = ~((g_pids[None] == q_pids[:, None]) & (g_cams[None] == q_cams[:, None]))
    valid = ((g_pids[None] == q_pids[:, None]) & remaining).any(axis=1)
    ranks = remaining[valid].sum(axis=1)
    identities = [len(set(g_pids[remaining[i]])) for i in np.flatnonzero(valid)]
    return valid, int(ranks.min()) if valid.any() else 0, min(identities, default=0)


def reference_minp(distmat, q_pids, g_pids, q_cams, g_cams) -> float:
    """fast-reid's definition, query by query: positives / rank of the last positive among the remaining."""
    inp = []
    for q in range(len(q_pids)):
        order = np.argsort(distmat[q], kind="stable")
        order = order[(g_pids[order] != q_pids[q]) | (g_cams[order] != q_cams[q])]
        hits = np.flatnonzero(g_pids[order] == q_pids[q])
        if len(hits):
            inp.append(len(hits) / (hits[-1] + 1))
    return float(np.mean(inp))


def reference_per_query(distmat, q_pids, g_pids, q_cams, g_cams):
    """Each query's AP and the rank of its first true match among the remaining items (NaN and 0 without one),
    by sorting its row: the textbook definitions."""
    ap, first = np.full(len(q_pids), np.nan), np.zeros(len(q_pids), dtype=np.int64)
    for q in range(len(q_pids)):
        order = np.argsort(distmat[q], kind="stable")
        order = order[(g_pids[order] != q_pids[q]) | (g_cams[order] != q_cams[q])]
        hits = np.flatnonzero(g_pids[order] == q_pids[q])
        if len(hits):
            ap[q] = np.mean(np.arange(1, len(hits) + 1) / (hits + 1))
            first[q] = hits[0] + 1
    return ap, first


@settings(max_examples=300, deadline=None)
@given(problems(), st.sampled_from([1e-5, 1e-3, 64]))
def test_per_query_ap_and_first_match_rank(problem, memory_mb):
    valid, _, _ = protocol(*problem)
    if not valid.any():
        return
    result = evaluate_distances(*problem, max_rank=1, memory_mb=memory_mb)
    ap, first = reference_per_query(*problem)
    np.testing.assert_allclose(result.ap, ap, rtol=0, atol=1e-9)
    np.testing.assert_array_equal(result.first_match, first)
    assert abs(np.nanmean(result.ap) - result.mAP) < 1e-12


@settings(max_examples=300, deadline=None)
@given(problems(), st.sampled_from([1e-5, 1e-3, 64]))
def test_market_protocol_equals_torchreid(problem, memory_mb):
    valid, max_rank, _ = protocol(*problem)
    distmat, q_pids, g_pids, q_cams, g_cams = problem
    if not valid.any():
        with pytest.raises(ValueError, match="none of the"):
            evaluate_distances(distmat, q_pids, g_pids, q_cams, g_cams)
        return
    cmc, mAP = rank.evaluate_rank(index_order(distmat), q_pids, g_pids, q_cams, g_cams, max_rank=max_rank,
                                  use_cython=False)
    result = evaluate_distances(distmat, q_pids, g_pids, q_cams, g_cams, max_rank=max_rank, memory_mb=memory_mb)
    np.testing.assert_allclose(result.cmc, cmc, rtol=0, atol=1e-6)
    assert abs(result.mAP - mAP) < 1e-6
    assert (result.num_valid, result.num_skipped) == (valid.sum(), len(valid) - valid.sum())
    assert abs(result.mINP - reference_minp(*problem)) < 1e-9


@settings(max_examples=150, deadline=None)
@given(problems(), st.integers(0, 2**31 - 1))
def test_cuhk03_metric_equals_torchreid_with_the_same_seed(problem, seed):
    valid, _, identities = protocol(*problem)
    distmat, q_pids, g_pids, q_cams, g_cams = problem
    if not valid.any():
        return
    np.random.seed(seed)
    cmc, mAP = rank.evaluate_rank(index_order(distmat), q_pids, g_pids, q_cams, g_cams, max_rank=identities,
                                  use_metric_cuhk03=True, use_cython=False)
    result = evaluate_distances(distmat, q_pids, g_pids, q_cams, g_cams, max_rank=identities, cuhk03=True,
                                seed=seed, memory_mb=1e-4)
    np.testing.assert_allclose(result.cmc, cmc, rtol=0, atol=1e-6)
    assert abs(result.mAP - mAP) < 1e-6
    np.random.seed(seed)  # no seed: NumPy's global generator, as torchreid draws
    assert np.array_equal(evaluate_distances(distmat, q_pids, g_pids, q_cams, g_cams, max_rank=identities,
                                             cuhk03=True).cmc, result.cmc)


@pytest.mark.skipif(_torchreid.compiled_evaluator() is None, reason="torchreid's compiled ranking is not installed")
@settings(max_examples=150, deadline=None)
@given(problems(), st.booleans())
def test_equals_torchreids_compiled_evaluator(problem, cuhk03):
    valid, max_rank, identities = protocol(*problem)
    if not valid.any():
        return
    distmat, q_pids, g_pids, q_cams, g_cams = problem
    max_rank = identities if cuhk03 else max_rank
    np.random.seed(7)
    cmc, mAP = _torchreid.compiled_evaluator()(index_order(distmat), q_pids, g_pids, q_cams, g_cams, max_rank, cuhk03)
    result = evaluate_distances(distmat, q_pids, g_pids, q_cams, g_cams, max_rank=max_rank, cuhk03=cuhk03, seed=7)
    np.testing.assert_allclose(result.cmc, cmc, rtol=0, atol=1e-6)
    assert abs(result.mAP - mAP) < 1e-6


@settings(max_examples=200, deadline=None)
@given(problems())
def test_the_valid_queries_are_those_the_protocol_evaluates(problem):
    distmat, q_pids, g_pids, q_cams, g_cams = problem
    valid, _, _ = protocol(*problem)
    assert count_valid_queries(q_pids, q_cams, g_pids, g_cams) == int(valid.sum())
    if valid.any():
        assert evaluate_distances(distmat, q_pids, g_pids, q_cams, g_cams, max_rank=1).num_valid == int(valid.sum())


def test_minp_and_ap_by_hand():
    g_pids, g_cams = np.array([0, 1, 0, 0, 0, 1]), np.array([1, 0, 0, 2, 1, 0])
    distmat = np.array([[0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
                        [0.9, 0.8, 0.7, 0.6, 0.5, 0.95],
                        [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]], dtype=np.float32)
    # Query 0 (id 0, camera 0): item 2 has its id and camera and is removed; the rest ranks
    # pos, neg, pos, pos, neg: AP = (1/1 + 2/3 + 3/4) / 3, INP = 3/4, first match at rank 1.
    # Query 1 (id 1, camera 1): items 4, 3, 2 (id 0), 1 (id 1), 0 (id 0), 5 (id 1): matches at ranks 4 and 6,
    # AP = (1/4 + 2/6) / 2, INP = 2/6. Query 2 (id 2) has no gallery item: skipped.
    result = evaluate_distances(distmat, np.array([0, 1, 2]), g_pids, np.array([0, 1, 0]), g_cams, max_rank=5)
    assert result.num_valid == 2 and result.num_skipped == 1
    assert result.mINP == pytest.approx((3 / 4 + 2 / 6) / 2)
    assert result.mAP == pytest.approx(((1 + 2 / 3 + 3 / 4) / 3 + (1 / 4 + 2 / 6) / 2) / 2)
    np.testing.assert_allclose(result.cmc, [0.5, 0.5, 0.5, 1, 1])


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_distances_are_torchreids(metric):
    qf, gf = torch.randn(7, 16), torch.randn(9, 16)
    mine = distance_matrix(qf, gf, metric)
    assert torch.allclose(mine, _torchreid.metrics.compute_distance_matrix(qf, gf, metric), atol=1e-5)
    chunked = torch.cat([GalleryDistances(gf, metric)(rows) for rows in qf.split(3)])
    assert torch.allclose(chunked, mine, rtol=1e-6, atol=1e-6)  # BLAS may round a chunk in the last bit


@pytest.mark.parametrize("metric, normalize", [("euclidean", False), ("cosine", False), ("euclidean", True)])
def test_features_give_the_metrics_of_their_distances(metric, normalize):
    pids = torch.arange(6).repeat_interleave(5)
    feats = torch.randn(6, 32)[pids] + 0.8 * torch.randn(30, 32)
    cams = torch.arange(30) % 3
    query, gallery = torch.arange(30) % 5 == 0, torch.arange(30) % 5 != 0
    qf, gf = feats[query], feats[gallery]
    labels = pids[query], pids[gallery], cams[query], cams[gallery]
    reference = (torch.nn.functional.normalize(qf), torch.nn.functional.normalize(gf)) if normalize else (qf, gf)
    distmat = _torchreid.metrics.compute_distance_matrix(*reference, metric).numpy()
    cmc, mAP = rank.evaluate_rank(distmat, *(a.numpy() for a in labels), max_rank=10, use_cython=False)
    result = evaluate(qf, gf, *labels, dist_metric=metric, normalize_feature=normalize, max_rank=10,
                      memory_mb=1e-3)
    np.testing.assert_allclose(result.cmc, cmc, atol=1e-6)
    assert result.mAP == pytest.approx(mAP, abs=1e-6)


def test_ranking_threads_change_no_metric_and_leave_torchs_threads_as_they_were():
    pids = torch.arange(8).repeat_interleave(6)
    feats = torch.randn(8, 16)[pids] + torch.randn(48, 16)
    cams, query = torch.arange(48) % 3, torch.arange(48) % 6 == 0
    labels = pids[query], pids[~query], cams[query], cams[~query]
    before = torch.get_num_threads()
    one, two = (evaluate(feats[query], feats[~query], *labels, memory_mb=1e-3, ranking_threads=n) for n in (1, 2))
    assert torch.get_num_threads() == before
    np.testing.assert_array_equal(one.cmc, two.cmc)
    assert (one.mAP, one.mINP) == (two.mAP, two.mINP)


def test_rerank_is_torchreids_on_these_distances():
    qf, gf = torch.randn(5, 8), torch.randn(12, 8)
    expected = _torchreid.utils.re_ranking(*(_torchreid.metrics.compute_distance_matrix(a, b).numpy()
                                              for a, b in ((qf, gf), (qf, qf), (gf, gf))))
    np.testing.assert_allclose(rerank_distances(qf, gf), expected, atol=1e-5)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_distances_are_refused(bad):
    distmat = np.zeros((2, 3), dtype=np.float32)
    distmat[1, 2] = bad
    with pytest.raises(ValueError, match="NaN or infinite"):
        evaluate_distances(distmat, np.array([0, 1]), np.array([0, 1, 1]), np.array([0, 0]), np.array([1, 1, 1]))


def test_empty_gallery_and_unknown_metric_are_refused():
    with pytest.raises(ValueError, match="gallery is empty"):
        evaluate_distances(np.zeros((2, 0), dtype=np.float32), [0, 1], [], [0, 0], [])
    with pytest.raises(ValueError, match="unknown distance metric 'manhattan'"):
        evaluate(torch.zeros(1, 2), torch.zeros(1, 2), [0], [0], [0], [1], dist_metric="manhattan")
