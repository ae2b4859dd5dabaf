"""k-reciprocal re-ranking (Zhong et al., CVPR 2017) as torchreid's ``re_ranking`` computes it, in memory that
grows with Q + G instead of (Q + G)^2.

torchreid builds the (Q+G) x (Q+G) distance matrix, its argsort and the dense encodings V, then a dense Q x
(Q+G) Jaccard matrix: 9.2 GB at Market-1501's size, ~35 GB per matrix at MSMT17's. Here:

1. every row's k1 + 1 nearest neighbours come from :mod:`.neighbours` (block pairs of the distance matrix, each
   once; ties by index, the order a stable sort gives), with each row's largest squared distance, by which
   torchreid normalises;
2. the k-reciprocal sets, their expansion and the weights ``exp(-d)`` are computed for all rows at once from
   the neighbour lists, and V is kept sparse (the expanded sets hold tens of items);
3. the local query expansion (mean of V over the k2 nearest) is one sparse product;
4. the Jaccard distance of a chunk of queries to the gallery accumulates min(V_q, V_g) over V's inverted
   index, and is blended with the original distance: the final distances exist one query chunk at a time.

Every step after the distances is computed in float32 with the operations torchreid uses, in its order of
summation, so the result equals torchreid's to the last bit where the distances themselves do (and torchreid's
sort breaks ties by index). With real features the distances of a block and of torchreid's full matrix can
differ in the last bit (BLAS rounds differently for other shapes), so the results agree to float tolerance.
"""
from __future__ import annotations

from typing import Callable, Iterator, Optional, Tuple

import numpy as np
import scipy.sparse
import torch
import torch.nn.functional as F

from .neighbours import candidates, exact_order

METRICS = ("euclidean", "cosine")


def distance_block(features: torch.Tensor, metric: str) -> Callable[[slice, slice], torch.Tensor]:
    """``block(rows, cols)``: torchreid's ``compute_distance_matrix`` between two row ranges of ``features``
    (squared Euclidean ``|a|^2 + |b|^2 - 2ab``, or ``1 - cos``)."""
    if metric not in METRICS:
        raise ValueError(f"unknown distance metric {metric!r}: choose one of {list(METRICS)}")
    if metric == "cosine":
        unit = F.normalize(features, p=2, dim=1)
        return lambda rows, cols: torch.mm(unit[rows], unit[cols].t()).neg_().add_(1)
    squared = squared_norms(features)

    def block(rows: slice, cols: slice) -> torch.Tensor:
        dist = squared[rows, None] + squared[None, cols]
        return dist.addmm_(features[rows], features[cols].t(), beta=1, alpha=-2)

    return block


def squared_norms(features: torch.Tensor) -> torch.Tensor:
    """Each row's squared norm, as torchreid computes it (``pow(2).sum(dim=1)``), a few thousand rows at a time."""
    return torch.cat([rows.pow(2).sum(dim=1) for rows in features.split(4096)])


def _pair_distances(features: torch.Tensor, metric: str, a: torch.Tensor, b: torch.Tensor,
                    memory_mb: float) -> torch.Tensor:
    """Distances of the row pairs (a[i], b[i]), a chunk of pairs within ``memory_mb`` at a time."""
    step = max(1, int(memory_mb * 2**20 // (16 * max(1, features.shape[1]))))
    out = []
    for start in range(0, len(a), step):
        x, y = features[a[start:start + step]], features[b[start:start + step]]
        if metric == "cosine":
            out.append(1 - (F.normalize(x, dim=1) * F.normalize(y, dim=1)).sum(dim=1))
        else:
            out.append(x.pow(2).sum(dim=1) + y.pow(2).sum(dim=1) - 2 * (x * y).sum(dim=1))
    return torch.cat(out) if out else torch.empty(0, device=features.device)


def _unique_rows(matrix: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Each row's distinct non-negative entries, ascending, as a padded matrix and a mask."""
    matrix = matrix.sort(dim=1).values
    first = torch.ones_like(matrix, dtype=torch.bool)
    first[:, 1:] = matrix[:, 1:] != matrix[:, :-1]
    return matrix, first & (matrix >= 0)


class KReciprocal:
    """torchreid's ``re_ranking(q_g, q_q, g_g, k1, k2, lambda_value)`` of the distances (``metric``) between query
    features ``qf`` and gallery features ``gf``, without its (Q+G)^2 matrices. The constructor does the work
    that involves every pair; :meth:`rows` gives the final distances of a range of queries to the whole gallery.
    ``memory_mb`` bounds the distance blocks and the Jaccard chunks (the features themselves, Q+G rows of
    float32, stay in memory on their device)."""

    def __init__(self, qf: torch.Tensor, gf: torch.Tensor, k1: int = 20, k2: int = 6, lambda_value: float = 0.3,
                 metric: str = "euclidean", memory_mb: float = 256) -> None:
        if k1 < 1 or k2 < 1:
            raise ValueError(f"k1 and k2 must be at least 1, got {k1} and {k2}")
        features = torch.cat([qf, gf]).float()
        if features.numel() and not bool(torch.isfinite(torch.stack(torch.aminmax(features))).all()):
            raise ValueError("the features hold NaN or infinite values: they cannot be re-ranked")
        self.num_q, self.num_g = len(qf), len(gf)
        self.lambda_value, self.memory_mb, self.metric = lambda_value, memory_mb, metric
        self.features = features
        num = len(features)
        self._distances = distances = distance_block(features, metric)
        squared = lambda rows, cols: distances(rows, cols).square_()  # noqa: E731  torchreid squares its inputs
        forward, half = min(k1 + 1, num), min(int(np.around(k1 / 2.0)) + 1, num)
        found = candidates(num, max(forward, min(k2, num)), squared, features.device, memory_mb)
        row_max = torch.where(found.row_max > 0, found.row_max, torch.ones_like(found.row_max))
        self.row_max = row_max
        nearest = exact_order(found, max(forward, min(k2, num)), squared,
                              lambda values, rows: values / row_max[rows, None], memory_mb)
        encodings = self._encodings(nearest[:, :forward], nearest[:, :half], found)
        self.encodings = self._expand(encodings, nearest[:, :min(k2, num)].cpu().numpy())

    def _encodings(self, forward: torch.Tensor, half: torch.Tensor, found) -> scipy.sparse.csr_matrix:
        """V: per row, its k-reciprocal expansion set (ascending columns) with the weights exp(-d) / sum, float32."""
        num = len(forward)
        rows = torch.arange(num, device=forward.device)
        half_reciprocal = torch.cat([(half[half[r]] == r[:, None, None]).any(dim=2)
                                     for r in rows.split(8192)])
        sets = []
        for r in rows.split(2048):
            fwd = forward[r]
            reciprocal = (forward[fwd] == r[:, None, None]).any(dim=2)  # r is among its neighbours' neighbours
            cand, cand_ok = half[fwd], half_reciprocal[fwd]  # each neighbour's own half-size reciprocal set
            inside = ((cand[..., None] == fwd[:, None, None, :]) & reciprocal[:, None, None, :]).any(dim=3)
            overlap = (inside & cand_ok).sum(dim=2).double()
            accepted = reciprocal & (overlap > 2.0 / 3 * cand_ok.sum(dim=2).double())
            grown = torch.where(accepted[..., None] & cand_ok, cand, -1).flatten(1)
            sets.append(_unique_rows(torch.cat([torch.where(reciprocal, fwd, -1), grown], dim=1)))
        counts = torch.cat([mask.sum(dim=1) for _, mask in sets])
        owner = rows.repeat_interleave(counts)
        members = torch.cat([matrix[mask] for matrix, mask in sets])
        values = self._lookup(owner, members, found)
        normalised = (values / self.row_max[owner]).cpu().numpy()
        weights = np.exp(-normalised)
        counts_np, owner_np = counts.cpu().numpy(), owner.cpu().numpy()
        sums = np.empty(num, dtype=np.float32)
        starts = np.concatenate([[0], np.cumsum(counts_np)[:-1]])
        for length in np.unique(counts_np):  # NumPy's pairwise sum, row by row as torchreid's np.sum
            which = np.flatnonzero(counts_np == length)
            sums[which] = weights[starts[which, None] + np.arange(length)].sum(axis=1)
        weights = 1.0 * weights / sums[owner_np]
        indptr = np.concatenate([[0], np.cumsum(counts_np)])
        return scipy.sparse.csr_matrix((weights, members.cpu().numpy(), indptr), shape=(num, num))

    def _lookup(self, owner: torch.Tensor, members: torch.Tensor, found) -> torch.Tensor:
        """Squared distances of the pairs (owner, member): from the neighbour candidates where they are there,
        else computed."""
        num = len(found.indices)
        keys = (torch.arange(num, device=owner.device)[:, None] * num + found.indices).flatten()
        keys, order = keys.sort()
        known = found.values.flatten()[order]
        wanted = owner * num + members
        place = torch.searchsorted(keys, wanted).clamp_(max=len(keys) - 1)
        hit = keys[place] == wanted
        values = torch.where(hit, known[place], torch.zeros_like(known[place]))
        miss = (~hit).nonzero().squeeze(1)
        if len(miss):
            values[miss] = _pair_distances(self.features, self.metric, owner[miss], members[miss],
                                           self.memory_mb).square_()
        return values

    @staticmethod
    def _expand(encodings: scipy.sparse.csr_matrix, nearest: np.ndarray) -> scipy.sparse.csr_matrix:
        """V's mean over each row's k2 nearest rows (summed in their order, in float32, as NumPy's mean over the
        first axis sums), a sparse matrix with sorted columns."""
        num, k2 = encodings.shape[0], nearest.shape[1]
        if k2 == 1:
            return encodings
        pick = scipy.sparse.csr_matrix((np.ones(nearest.size, np.float32), nearest.ravel(),
                                        np.arange(0, nearest.size + 1, k2)), shape=(num, num))
        expanded = pick @ encodings  # csr_matmat accumulates in float32 in the stored (neighbour) order
        expanded.data /= np.float32(k2)
        expanded.sort_indices()
        return expanded

    @property
    def shape(self) -> Tuple[int, int]:
        return self.num_q, self.num_g

    def rows(self, start: int, stop: int) -> np.ndarray:
        """The re-ranked distances of queries ``start:stop`` to every gallery item, float32."""
        gallery, enc = self._gallery_columns(), self.encodings
        jaccard = np.zeros((stop - start, self.num_g), dtype=np.float32)
        lo = enc.indptr[start]
        per_entry = np.diff(gallery.indptr)[enc.indices[lo:enc.indptr[stop]]]  # gallery items sharing each column
        cost = np.concatenate([[0], np.cumsum(per_entry)])[enc.indptr[start:stop + 1] - lo]
        budget = max(1, int(self.memory_mb * 2**20 // 48))  # contributions per pass, ~48 bytes each
        row = start
        while row < stop:
            end = int(np.searchsorted(cost, cost[row - start] + budget, side="right")) - 1 + start
            end = min(stop, max(row + 1, end))
            self._accumulate(jaccard, row, end, start, gallery)
            row = end
        # torch's float32 element-wise operations round as NumPy's do (torchreid's expression), on all threads
        overlap = torch.from_numpy(jaccard).to(self.features.device)
        jaccard_distance = 1 - overlap / (2.0 - overlap)
        final = jaccard_distance * (1 - self.lambda_value) + self._original(start, stop) * self.lambda_value
        return final.cpu().numpy()

    def _gallery_columns(self) -> scipy.sparse.csc_matrix:
        if not hasattr(self, "_gallery"):
            self._gallery = self.encodings[self.num_q:].tocsc()
            self._gallery.sort_indices()
        return self._gallery

    def _accumulate(self, jaccard: np.ndarray, start: int, stop: int, first_row: int,
                    gallery: scipy.sparse.csc_matrix) -> None:
        """Add min(V[q, c], V[g, c]) over the shared columns c, in ascending c (torchreid's order of summation), to
        the rows of queries ``start:stop`` of ``jaccard``, whose first row is query ``first_row``."""
        enc = self.encodings
        lo, hi = enc.indptr[start], enc.indptr[stop]
        cols, q_values = enc.indices[lo:hi], enc.data[lo:hi]
        q_rows = np.repeat(np.arange(start, stop), np.diff(enc.indptr[start:stop + 1]))
        lengths = (gallery.indptr[cols + 1] - gallery.indptr[cols]).astype(np.int64)
        total = int(lengths.sum())
        if total == 0:
            return
        first = np.repeat(gallery.indptr[cols].astype(np.int64) - np.cumsum(lengths) + lengths, lengths)
        place = first + np.arange(total)
        g_rows, g_values = gallery.indices[place], gallery.data[place]
        mins = np.minimum(np.repeat(q_values, lengths), g_values)
        target = (np.repeat(q_rows, lengths) - first_row).astype(np.int64) * self.num_g + g_rows
        np.add.at(jaccard.reshape(-1), target, mins)

    def _original(self, start: int, stop: int) -> torch.Tensor:
        """torchreid's normalised original distances of queries ``start:stop`` to the gallery: squared, divided by
        the query's largest squared distance to anything."""
        gallery = slice(self.num_q, self.num_q + self.num_g)
        return self._distances(slice(start, stop), gallery).square_() / self.row_max[start:stop, None]

    def chunks(self, memory_mb: Optional[float] = None) -> Iterator[Tuple[int, int, np.ndarray]]:
        """``(start, stop, rows)`` over all queries, in chunks of about ``memory_mb`` of final distances."""
        step = max(1, int((memory_mb or self.memory_mb) * 2**20 // (4 * max(1, self.num_g))))
        for start in range(0, self.num_q, step):
            stop = min(start + step, self.num_q)
            yield start, stop, self.rows(start, stop)

    def matrix(self) -> np.ndarray:
        """All Q x G re-ranked distances at once (for what needs the whole matrix, e.g. ranked pictures)."""
        return np.concatenate([rows for _, _, rows in self.chunks()]) if self.num_q else np.zeros(self.shape, np.float32)
