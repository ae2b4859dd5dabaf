"""Bounded-memory k-reciprocal re-ranking against torchreid's ``re_ranking`` followed by its ``evaluate_rank``
(random small problems with ties, hypothesis), alpha-query expansion on a hand case and against fast-reid's
dense formula, and re-ranked evaluation chunk by chunk."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from torchreid_scal import _torchreid
from torchreid_scal.evaluation import evaluate_distances, evaluate_rows
from torchreid_scal.retrieval import neighbours
from torchreid_scal.retrieval.expansion import query_expansion
from torchreid_scal.retrieval.rerank import KReciprocal

rank = _torchreid.submodule("metrics.rank")
torchreid_rerank = _torchreid.submodule("utils.rerank")


class _StableNumPy:
    """NumPy with a stable ``argsort``: torchreid's re-ranking then breaks ties by index, the documented rule
    (NumPy's default sort leaves the order of ties unspecified)."""

    def __getattr__(self, name):
        return getattr(np, name)

    @staticmethod
    def argsort(a, axis=-1, kind=None):
        return np.argsort(a, axis=axis, kind="stable")


def torchreid_reranked(qf, gf, k1, k2, lambda_value, metric="euclidean", stable=True):
    distances = [_torchreid.metrics.compute_distance_matrix(a, b, metric).numpy() for a, b in ((qf, gf), (qf, qf), (gf, gf))]
    saved = torchreid_rerank.np
    torchreid_rerank.np = _StableNumPy() if stable else np
    try:
        return torchreid_rerank.re_ranking(*distances, k1=k1, k2=k2, lambda_value=lambda_value)
    finally:
        torchreid_rerank.np = saved


def index_order(distmat: np.ndarray) -> np.ndarray:
    """Ranks by (distance, index), as distances without ties, so that torchreid's evaluator ranks as ours."""
    return np.argsort(np.argsort(distmat, axis=1, kind="stable"), axis=1, kind="stable").astype(np.float32)


@st.composite
def problems(draw):
    num_q, num_g, dim = draw(st.integers(1, 5)), draw(st.integers(2, 24)), draw(st.integers(1, 3))
    values = st.integers(-2, 2)  # small integers: exact distances, and many exact ties
    qf = np.array(draw(st.lists(values, min_size=num_q * dim, max_size=num_q * dim)), np.float32).reshape(num_q, dim)
    gf = np.array(draw(st.lists(values, min_size=num_g * dim, max_size=num_g * dim)), np.float32).reshape(num_g, dim)
    ids, cams = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    labels = [np.array(draw(st.lists(st.integers(0, n - 1), min_size=size, max_size=size)))
              for n, size in ((ids, num_q), (ids, num_g), (cams, num_q), (cams, num_g))]
    return torch.from_numpy(qf), torch.from_numpy(gf), labels


@settings(max_examples=250, deadline=None)
@given(problems(), st.integers(1, 8), st.integers(1, 5), st.sampled_from([0.0, 0.3, 1.0]), st.sampled_from([0, 16]))
def test_equals_torchreids_rerank_and_evaluate_rank_with_ties(problem, k1, k2, lambda_value, margin):
    """Integer features: the Euclidean distances are exact, so every later float32 operation can be torchreid's bit
    for bit, ties included (cosine distances of such vectors are rounded: see the real-valued test)."""
    qf, gf, (q_pids, g_pids, q_cams, g_cams) = problem
    features = torch.cat([qf, gf])
    assume(bool((torch.cdist(features, features).amax(dim=0) > 0).all()))  # torchreid divides by each row's max
    saved, neighbours.MARGIN = neighbours.MARGIN, margin  # 0: ties at the last candidate force full rows
    try:
        ours = KReciprocal(qf, gf, k1, k2, lambda_value, memory_mb=1e-4).matrix()
    finally:
        neighbours.MARGIN = saved
    expected = torchreid_reranked(qf, gf, k1, k2, lambda_value)
    np.testing.assert_array_equal(ours, expected)
    remaining = ~((g_pids[None] == q_pids[:, None]) & (g_cams[None] == q_cams[:, None]))
    valid = ((g_pids[None] == q_pids[:, None]) & remaining).any(axis=1)
    if not valid.any():
        return
    max_rank = int(remaining[valid].sum(axis=1).min())
    cmc, mAP = rank.evaluate_rank(index_order(expected), q_pids, g_pids, q_cams, g_cams, max_rank=max_rank,
                                  use_cython=False)
    result = evaluate_rows(lambda a, b: ours[a:b], len(qf), len(gf), q_pids, g_pids, q_cams, g_cams,
                           max_rank=max_rank, memory_mb=1e-5)
    np.testing.assert_allclose(result.cmc, cmc, rtol=0, atol=1e-6)
    assert abs(result.mAP - mAP) < 1e-6


@pytest.mark.parametrize("seed, metric", [(0, "euclidean"), (1, "euclidean"), (2, "cosine"), (3, "cosine")])
def test_real_valued_features_match_torchreids_own_sort_to_float_tolerance(seed, metric):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 12, (140,), generator=generator)
    features = torch.randn(12, 32, generator=generator)[ids] + 0.7 * torch.randn(140, 32, generator=generator)
    cams = torch.randint(0, 3, (140,), generator=generator)
    qf, gf = features[:30], features[30:]
    expected = torchreid_reranked(qf, gf, 20, 6, 0.3, metric, stable=False)
    reranker = KReciprocal(qf, gf, metric=metric, memory_mb=0.01)
    ours = reranker.matrix()
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-5)
    labels = [a.numpy() for a in (ids[:30], ids[30:], cams[:30], cams[30:])]
    cmc, mAP = rank.evaluate_rank(expected, *labels, max_rank=10, use_cython=False)
    result = evaluate_rows(reranker.rows, *reranker.shape, *labels, max_rank=10, memory_mb=0.01)
    np.testing.assert_allclose(result.cmc, cmc, atol=1e-6)
    assert result.mAP == pytest.approx(mAP, abs=1e-6)
    assert result.mAP == pytest.approx(evaluate_distances(ours, *labels, max_rank=10).mAP, abs=1e-12)


def test_refuses_non_finite_features():
    with pytest.raises(ValueError, match="NaN or infinite"):
        KReciprocal(torch.tensor([[float("nan"), 0.0]]), torch.zeros(3, 2))


def test_query_expansion_by_hand():
    # Cosine similarities to q = (1, 0): itself 1, g0 0.6, g1 0, g2 -1. With k = 2 and alpha = 3, q becomes
    # (q + 0.6^3 g0) / 2; g0's two nearest are itself and g1 (0.8), g1's itself and g0 (0.8); g2's itself and,
    # of q, g0 and g1 at similarities -1, -0.6 and 0, g1 with weight 0.
    qf = torch.tensor([[1.0, 0.0]])
    gf = torch.tensor([[0.6, 0.8], [0.0, 2.0], [-1.0, 0.0]])
    q, g = query_expansion(qf, gf, k=2, alpha=3.0)
    torch.testing.assert_close(q, torch.tensor([[(1 + 0.216 * 0.6) / 2, 0.216 * 0.8 / 2]]))
    torch.testing.assert_close(g, torch.tensor([[0.3, (0.8 + 0.512 * 2) / 2], [0.512 * 0.6 / 2, (2 + 0.512 * 0.8) / 2],
                                                [-0.5, 0.0]]))


@pytest.mark.parametrize("k, alpha, times", [(5, 3.0, 1), (3, 1.0, 2), (1, 3.0, 1)])
def test_query_expansion_is_fast_reids_dense_formula(k, alpha, times):
    generator = torch.Generator().manual_seed(k)
    qf, gf = torch.randn(9, 16, generator=generator), torch.randn(40, 16, generator=generator)
    features = torch.cat([qf, gf])
    for _ in range(times):  # fast-reid's aqe: full similarity matrix, top k per row, weights sim ** alpha, mean
        unit = F.normalize(features, dim=1)
        sims = unit @ unit.t()
        top = sims.topk(k, dim=1)
        features = (features[top.indices] * top.values.pow(alpha)[..., None]).mean(dim=1)
    q, g = query_expansion(qf, gf, k=k, alpha=alpha, times=times, memory_mb=0.005)
    torch.testing.assert_close(torch.cat([q, g]), features, atol=1e-5, rtol=1e-5)
