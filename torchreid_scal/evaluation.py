"""Ranking metrics of re-identification (CMC, mAP, mINP): exactly torchreid's ``evaluate_rank`` protocols,
computed query chunk by query chunk with vectorised torch operations on the features' device.

Protocol (torchreid's Market-1501 one): for each query, the gallery items with its identity AND its camera
are removed; the rest is ranked by distance. A query whose identity is not among the rest is skipped (and
counted in ``num_skipped``). ``cuhk03=True`` gives torchreid's CUHK03 single-gallery-shot CMC: in each of
10 repetitions one remaining item per gallery identity is drawn at random, with the same calls to NumPy's
legacy generator, in the same order, as torchreid (mAP and mINP use every remaining item).

Tie rule: equal distances are ranked by gallery index, which is what a stable sort gives. Distances are
compared as float32 (torchreid's compiled evaluator converts them to float32 as well). Given the distances,
the metrics are exact; distances computed chunk by chunk may differ from a full-matrix product in the last
bit (BLAS rounds differently for different shapes), which can only swap items whose distances nearly tie.

How: a positive's rank is 1 + the number of remaining items ranked before it, so no row is sorted. Per chunk
of queries, each query's same-identity gallery items are looked up (the positives are those of other cameras).
Only negatives not farther than the query's hardest positive can precede a positive: those candidates (few
for a trained model, most of the gallery for an untrained one) get an int64 key (query, distance), and one
``torch.searchsorted`` against the sorted keys of the chunk's positives tells how many of its query's
positives precede each (equal distances are settled by gallery index in a second search over the tied
ones). A histogram of those counts, summed cumulatively, gives every positive's rank: O(G) per query for the
masks plus O(N log P) for its N candidates. Queries are taken in chunks sized so that the chunk's tensors,
at most :data:`BYTES_PER_PAIR` bytes per query-gallery pair, stay within ``memory_mb``; the full query x
gallery distance or index matrix never exists (unless one is passed in).
"""
from __future__ import annotations

import contextlib
from typing import Callable, Dict, Iterator, NamedTuple, Optional, Set, Union

import numpy as np
import torch
import torch.nn.functional as F


BYTES_PER_PAIR = 56
"""Working memory per query-gallery pair of a chunk when every negative is a candidate: the distance, masks,
and each candidate's query, gallery index, distance bits, key and count of preceding positives."""

CUHK03_REPEATS = 10
"""Random draws of one gallery item per identity in torchreid's CUHK03 metric."""

DIST_METRICS = ("euclidean", "cosine")

Array = Union[torch.Tensor, np.ndarray]


class RankMetrics(NamedTuple):
    """``cmc[r - 1]``: share of evaluated queries with a true match within the first r; ``mAP``; ``mINP``
    (mean over queries of #positives / rank of the hardest positive); how many queries were evaluated and
    how many were skipped for want of a valid match; and per query, in query order, its average precision
    (``ap``, NaN for a skipped query) and the rank of its first true match (``first_match``, 0 when skipped),
    so that two models can be compared query by query."""

    cmc: np.ndarray
    mAP: float
    mINP: float
    num_valid: int
    num_skipped: int
    ap: np.ndarray
    first_match: np.ndarray


class GalleryDistances:
    """Distances of query rows to a fixed gallery as torchreid's ``compute_distance_matrix`` defines them
    (squared Euclidean ``|q|^2 + |g|^2 - 2 q.g``, or cosine ``1 - q.g`` of L2-normalised features), with the
    gallery's side (squared norms, normalised copy) computed once instead of per chunk."""

    def __init__(self, gallery: torch.Tensor, metric: str = "euclidean") -> None:
        if metric not in DIST_METRICS:
            raise ValueError(f"unknown distance metric {metric!r}: choose one of {list(DIST_METRICS)}")
        self.metric = metric
        if metric == "cosine":
            self.gallery = F.normalize(gallery, p=2, dim=1)
        else:
            self.gallery = gallery
            self.squared = torch.cat([rows.pow(2).sum(dim=1) for rows in gallery.split(4096)])

    def __call__(self, queries: torch.Tensor) -> torch.Tensor:
        if self.metric == "cosine":
            return torch.mm(F.normalize(queries, p=2, dim=1), self.gallery.t()).neg_().add_(1)
        dist = queries.pow(2).sum(dim=1, keepdim=True) + self.squared
        return dist.addmm_(queries, self.gallery.t(), beta=1, alpha=-2)


def distance_matrix(qf: torch.Tensor, gf: torch.Tensor, metric: str = "euclidean") -> torch.Tensor:
    """The full query x gallery matrix (only for what needs all of it: re-ranking, ranked pictures)."""
    return GalleryDistances(gf, metric)(qf)


def rerank_distances(qf: torch.Tensor, gf: torch.Tensor, metric: str = "euclidean") -> np.ndarray:
    """The whole Q x G matrix of torchreid's k-reciprocal ``re_ranking`` (k1 20, k2 6, lambda 0.3) on this module's
    distances, computed without its (Q + G)^2 matrices (:class:`torchreid_scal.retrieval.rerank.KReciprocal`)."""
    from .retrieval.rerank import KReciprocal

    return KReciprocal(qf, gf, metric=metric).matrix()


def _sortable_bits(dist: torch.Tensor) -> torch.Tensor:
    """int64 in [0, 2^32) that orders as the float32 distances (IEEE bits made monotonic; -0.0 == +0.0)."""
    bits = (dist.float() + 0.0).view(torch.int32)  # + 0.0 turns -0.0 into +0.0, which compares equal to it
    bits = bits ^ (bits >> 31).bitwise_and_(0x7FFFFFFF)
    return bits.to(torch.int64).add_(1 << 31)


class _Gallery:
    """The gallery's labels on the device, and the gallery indices of each identity that some query has
    (ascending, padded with -1), so that a query's same-identity items are looked up, not searched for.

    (Advanced indexing ``x[i]`` is avoided here: ``take``/``gather``/``index_select`` do the same and were
    measured far faster on a busy 2-core CPU.)"""

    def __init__(self, pids: torch.Tensor, camids: torch.Tensor, q_pids: torch.Tensor) -> None:
        self.pids, self.camids = pids, camids
        queried = torch.isin(pids, q_pids).nonzero().squeeze(1)
        order = queried.index_select(0, torch.sort(pids.index_select(0, queried), stable=True).indices)
        self.ids, counts = torch.unique_consecutive(pids.index_select(0, order), return_counts=True)
        owner = torch.arange(len(self.ids), device=pids.device).repeat_interleave(counts)
        slot = torch.arange(len(order), device=pids.device) - (counts.cumsum(0) - counts).index_select(0, owner)
        width = int(counts.max()) if len(counts) else 1
        self.members = torch.full((len(self.ids) + 1, width), -1, dtype=torch.int64, device=pids.device)
        self.members.view(-1).index_copy_(0, owner * width + slot, order)

    def same_identity(self, q_pids: torch.Tensor) -> torch.Tensor:
        """(queries, M) gallery indices with each query's identity, -1 where there is none."""
        if len(self.ids) == 0:
            return self.members.expand(len(q_pids), -1)
        row = torch.searchsorted(self.ids, q_pids).clamp_(max=len(self.ids) - 1)
        return self.members.index_select(0, torch.where(self.ids.take(row) == q_pids, row, len(self.ids)))


def _rank_chunk(dist: torch.Tensor, q_pids: torch.Tensor, q_camids: torch.Tensor, gallery: _Gallery):
    """Ranks, among each query's remaining gallery items, of its positives (flat, row by row, ascending
    within a row), each one's place k among its row's positives, its row, and each row's number of positives."""
    device = dist.device
    num_q, num_g = dist.shape
    same = gallery.same_identity(q_pids)
    index = same.clamp(min=0)
    positive = (same >= 0) & (gallery.camids.take(index) != q_camids[:, None])
    pos_dist = dist.gather(1, index)
    count = positive.sum(dim=1)
    start = count.cumsum(0) - count  # each row's first place among the sorted positives

    # Positives sorted by (row, distance, gallery index): one int64 key (row, distance), the index ascending.
    p_flat = positive.view(-1).nonzero().squeeze(1)
    p_row, p_col = p_flat // same.shape[1], same.reshape(-1).take(p_flat)
    p_key, order = torch.sort((p_row << 32) | _sortable_bits(pos_dist.reshape(-1).take(p_flat)), stable=True)
    p_row, p_col = p_row.take(order), p_col.take(order)
    k = torch.arange(1, len(p_key) + 1, device=device) - start.take(p_row)
    if len(p_key) == 0:
        return k, k, p_row, count

    # Only the negatives not farther than a row's hardest positive can precede one of its positives.
    hardest = torch.where(positive, pos_dist, -torch.inf).amax(dim=1, keepdim=True)
    candidate = (dist <= hardest) & (gallery.pids != q_pids[:, None])
    row, col = candidate.nonzero(as_tuple=True)

    # Positives before each of them: those of earlier rows or at a smaller distance, then ties by index.
    key = (row << 32) | _sortable_bits(dist.masked_select(candidate))
    before = torch.searchsorted(p_key, key)
    tied = (p_key.take(before.clamp(max=len(p_key) - 1)) == key).nonzero().squeeze(1)
    if len(tied):
        place = torch.arange(len(p_key), device=device)
        run = torch.cummax(torch.where(torch.cat([place[:1] == 0, p_key[1:] != p_key[:-1]]), place, 0), 0).values
        before.index_copy_(0, tied, torch.searchsorted((run << 32) | p_col,
                                                       (before.take(tied) << 32) | col.take(tied)))

    # Negatives per bucket, row r having count[r] + 1 buckets from start[r] + r on, summed cumulatively up to
    # each positive (the k-th positive of row r is at start[r] + k - 1 among the positives).
    cumulative = torch.bincount(before.add_(row), minlength=len(p_key) + num_q).cumsum(0)
    last = torch.arange(len(p_key), device=device) + p_row
    first = last - k + 1
    earlier = cumulative.take(last) - torch.where(first > 0, cumulative.take((first - 1).clamp(min=0)), 0)
    return k + earlier, k, p_row, count


def _cuhk03_cmc(dist: np.ndarray, remaining: np.ndarray, g_pids: np.ndarray, q_pid: int, max_rank: int,
                rng) -> np.ndarray:
    """One query's single-gallery-shot CMC, drawing as torchreid does: per repetition, per gallery identity
    in the order of its first appearance in the ranking, ``choice`` among that identity's remaining items."""
    kept = np.flatnonzero(remaining)
    order = kept[np.argsort(dist[kept], kind="stable")]
    ids, first, inverse, counts = np.unique(g_pids[order], return_index=True, return_inverse=True,
                                            return_counts=True)
    sequence = np.argsort(first)
    draws = np.empty((CUHK03_REPEATS, len(ids)), dtype=np.int64)
    draws[:, sequence] = rng.randint(0, np.tile(counts[sequence], CUHK03_REPEATS)).reshape(CUHK03_REPEATS, -1)
    members = np.argsort(inverse, kind="stable")  # positions in the ranking, grouped by identity, in order
    sampled = members[(np.cumsum(counts) - counts) + draws]
    match = sampled[:, np.searchsorted(ids, q_pid)]
    position = (sampled < match[:, None]).sum(axis=1)
    return (position[:, None] < np.arange(1, max_rank + 1)).mean(axis=0)


@contextlib.contextmanager
def _cpu_threads(device: torch.device, threads: int) -> Iterator[None]:
    """Ranking on the CPU runs on ``threads`` intra-op threads, one by default: its operations are many and
    memory-bound, and multi-threaded ones wait for each other (2-core AMD EPYC, idle, Market-1501 size: 0.57-0.66 s
    with one thread, 1.09-1.10 s with two, ``tools/benchmark.py --eval market1501 --methods fast
    --ranking-threads N``); the distances (matrix products) keep all threads."""
    before = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _chunks(num_q: int, num_g: int, memory_mb: float) -> Iterator[slice]:
    step = max(1, int(memory_mb * 2**20 // (num_g * BYTES_PER_PAIR)))
    for start in range(0, num_q, step):
        yield slice(start, min(start + step, num_q))


def _labels(values: Array, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(values if torch.is_tensor(values) else np.asarray(values), device=device).long()


def _rank(distances, num_q: int, num_g: int, q_pids: Array, g_pids: Array, q_camids: Array, g_camids: Array,
          device: torch.device, max_rank: int, cuhk03: bool, memory_mb: float, seed: Optional[int],
          ranking_threads: int) -> RankMetrics:
    if num_g == 0:
        raise ValueError("the gallery is empty: nothing to rank")
    q_pids, q_camids = _labels(q_pids, device), _labels(q_camids, device)
    gallery = _Gallery(_labels(g_pids, device), _labels(g_camids, device), q_pids)
    rng = np.random.mtrand._rand if seed is None else np.random.RandomState(seed)
    g_pids_np, g_camids_np = gallery.pids.cpu().numpy(), gallery.camids.cpu().numpy()
    first_rank = torch.zeros(max_rank + 2, dtype=torch.int64, device=device)
    cmc = np.zeros(max_rank)
    inp_sum = 0.0
    num_valid = 0
    ap, first_match = np.full(num_q, np.nan), np.zeros(num_q, dtype=np.int64)
    for rows in _chunks(num_q, num_g, memory_mb):
        dist = distances(rows)
        with _cpu_threads(device, ranking_threads):
            if not bool(torch.isfinite(torch.stack(torch.aminmax(dist))).all()):
                raise ValueError("the distances hold NaN or infinite values: are the features finite?")
            ranks, k, row, count = _rank_chunk(dist, q_pids[rows], q_camids[rows], gallery)
            precision = k.double() / ranks
            valid = count > 0
            chunk_ap = torch.bincount(row, precision, minlength=len(count)) / count.clamp(min=1)
            ap[rows] = torch.where(valid, chunk_ap, torch.nan).cpu().numpy()
            first = torch.zeros_like(count).masked_scatter_(valid, ranks.masked_select(k == 1))
            first_match[rows] = first.cpu().numpy()
            inp_sum += float(precision.masked_select(k == count.take(row)).sum())
            num_valid += int(valid.count_nonzero())
            if cuhk03:
                dist_np = dist.cpu().numpy()
                for i in (count > 0).nonzero().squeeze(1).tolist():
                    q_pid, q_camid = int(q_pids[rows][i]), int(q_camids[rows][i])
                    remaining = (g_pids_np != q_pid) | (g_camids_np != q_camid)
                    cmc += _cuhk03_cmc(dist_np[i], remaining, g_pids_np, q_pid, max_rank, rng)
            else:
                first = ranks.masked_select(k == 1).clamp(max=max_rank + 1)
                first_rank += torch.bincount(first, minlength=max_rank + 2)
    if num_valid == 0:
        raise ValueError(f"none of the {num_q} queries has its identity among the gallery items of other cameras: "
                         "nothing to rank (are the query and gallery sets of the same dataset?)")
    if not cuhk03:
        cmc = first_rank[1:max_rank + 1].cumsum(0).cpu().numpy().astype(np.float64)
    return RankMetrics(cmc / num_valid, float(np.nansum(ap)) / num_valid, inp_sum / num_valid, num_valid,
                       num_q - num_valid, ap, first_match)


def count_valid_queries(q_pids: Array, q_camids: Array, g_pids: Array, g_camids: Array) -> int:
    """How many queries the protocol evaluates: those with a gallery item of their identity from another camera."""
    cameras: Dict[int, Set[int]] = {}
    for pid, camid in zip(np.asarray(g_pids).tolist(), np.asarray(g_camids).tolist()):
        cameras.setdefault(pid, set()).add(camid)
    return sum(bool(cameras.get(pid, set()) - {camid})
               for pid, camid in zip(np.asarray(q_pids).tolist(), np.asarray(q_camids).tolist()))


def evaluate(qf: torch.Tensor, gf: torch.Tensor, q_pids: Array, g_pids: Array, q_camids: Array, g_camids: Array,
             dist_metric: str = "euclidean", normalize_feature: bool = False, max_rank: int = 50,
             cuhk03: bool = False, memory_mb: float = 256, seed: Optional[int] = None,
             ranking_threads: int = 1) -> RankMetrics:
    """CMC (ranks 1..``max_rank``), mAP and mINP of query features ``qf`` against gallery features ``gf``
    (on their device), with distances computed chunk by chunk; ``normalize_feature`` L2-normalises both first.
    ``seed`` seeds the CUHK03 draws; ``None`` draws from NumPy's global generator, as torchreid does.
    ``ranking_threads``: intra-op threads of the ranking on the CPU (the distances use all of torch's)."""
    if normalize_feature:
        qf, gf = F.normalize(qf, p=2, dim=1), F.normalize(gf, p=2, dim=1)
    distances = GalleryDistances(gf.float(), dist_metric)
    qf = qf.float()
    return _rank(lambda rows: distances(qf[rows]), len(qf), len(gf), q_pids, g_pids, q_camids, g_camids,
                 gf.device, max_rank, cuhk03, memory_mb, seed, ranking_threads)


def evaluate_rows(rows: Callable[[int, int], Array], num_q: int, num_g: int, q_pids: Array, g_pids: Array,
                  q_camids: Array, g_camids: Array, max_rank: int = 50, cuhk03: bool = False, memory_mb: float = 256,
                  seed: Optional[int] = None, ranking_threads: int = 1) -> RankMetrics:
    """The same metrics from distances that ``rows(start, stop)`` gives for those queries (e.g. re-ranked ones
    computed chunk by chunk), on the CPU: the Q x G matrix never exists."""
    return _rank(lambda s: torch.as_tensor(rows(s.start, s.stop)), num_q, num_g, q_pids, g_pids, q_camids, g_camids,
                 torch.device("cpu"), max_rank, cuhk03, memory_mb, seed, ranking_threads)


def evaluate_distances(distmat: Array, q_pids: Array, g_pids: Array, q_camids: Array, g_camids: Array,
                       max_rank: int = 50, cuhk03: bool = False, memory_mb: float = 256,
                       seed: Optional[int] = None, ranking_threads: int = 1) -> RankMetrics:
    """The same metrics from a given query x gallery distance matrix (e.g. re-ranked), ranked chunk by chunk
    on its device."""
    distmat = torch.as_tensor(distmat)
    return _rank(lambda rows: distmat[rows], distmat.shape[0], distmat.shape[1], q_pids, g_pids, q_camids,
                 g_camids, distmat.device, max_rank, cuhk03, memory_mb, seed, ranking_threads)
