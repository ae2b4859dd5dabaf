"""Exact nearest neighbours of every row of a feature matrix among all of its rows, in blocks: the whole
N x N score matrix never exists.

The scores of a pair of row blocks are computed once and serve both blocks (the score is symmetric), and each
row keeps the ``k + MARGIN`` smallest scores seen so far. Tie rule: equal scores are ordered by index (what a
stable sort gives). :func:`exact_order` turns the kept candidates into that order, after an optional monotone
map of the scores (re-ranking divides each row by its largest score); a row whose ties reach the last kept
candidate (an index left out could tie with it) is computed again in full, so the result is exact.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple, Tuple

import torch

MARGIN = 16
"""Candidates kept per row beyond the k asked for: room for ties and for the look-ups of re-ranking."""

Score = Callable[[slice, slice], torch.Tensor]
"""``score(rows, cols)``: the (len(rows), len(cols)) block of the symmetric score matrix to minimise."""


class Candidates(NamedTuple):
    """Per row, the ``keep`` smallest scores (any order; ties at the boundary broken arbitrarily), their
    column indices, and the row's largest score over all columns."""

    values: torch.Tensor
    indices: torch.Tensor
    row_max: torch.Tensor


def block_rows(num: int, memory_mb: float) -> int:
    """Rows of a square score block within ``memory_mb`` (the block and its top-k temporaries, ~12 bytes a
    score); at least 256 so that the matrix products stay efficient."""
    side = int(math.sqrt(memory_mb * 2**20 / 12))
    return max(1, min(num, max(256, side)))


def _merge(values: torch.Tensor, indices: torch.Tensor, rows: slice, scores: torch.Tensor, offset: int) -> None:
    keep = values.shape[1]
    v, i = torch.topk(scores, min(keep, scores.shape[1]), dim=1, largest=False, sorted=False)
    v, i = torch.cat([values[rows], v], dim=1), torch.cat([indices[rows], i + offset], dim=1)
    v, order = torch.topk(v, keep, dim=1, largest=False, sorted=False)
    values[rows], indices[rows] = v, i.gather(1, order)


def candidates(num: int, k: int, score: Score, device: torch.device, memory_mb: float = 256) -> Candidates:
    """The ``min(k + MARGIN, num)`` smallest scores of every row of a symmetric ``num x num`` score matrix, and
    each row's largest score, computed block pair by block pair (each pair once)."""
    keep = min(k + MARGIN, num)
    values = torch.full((num, keep), math.inf, device=device)
    indices = torch.full((num, keep), -1, dtype=torch.int64, device=device)
    row_max = torch.full((num,), -math.inf, device=device)
    step = block_rows(num, memory_mb)
    for i0 in range(0, num, step):
        rows = slice(i0, min(i0 + step, num))
        for j0 in range(i0, num, step):
            cols = slice(j0, min(j0 + step, num))
            block = score(rows, cols)
            _merge(values, indices, rows, block, j0)
            torch.maximum(row_max[rows], block.amax(dim=1), out=row_max[rows])
            if j0 != i0:
                _merge(values, indices, cols, block.t().contiguous(), i0)
                torch.maximum(row_max[cols], block.amax(dim=0), out=row_max[cols])
    return Candidates(values, indices, row_max)


def exact_order(found: Candidates, k: int, score: Score, transform: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                memory_mb: float = 256) -> torch.Tensor:
    """The first ``k`` columns of every row ordered by (``transform(scores, rows)``, index), exactly: from the
    candidates, or for a row whose ties reach its last candidate, from the whole row. ``transform`` must be
    non-decreasing in the score (e.g. a division by the row's positive maximum)."""
    num, keep = found.indices.shape
    rows = torch.arange(num, device=found.indices.device)
    by_index = found.indices.argsort(dim=1)
    indices = found.indices.gather(1, by_index)
    mapped = transform(found.values.gather(1, by_index), rows)
    mapped, order = torch.sort(mapped, dim=1, stable=True)
    indices = indices.gather(1, order)
    if keep < num:
        redo = (mapped[:, k - 1] == mapped[:, -1]).nonzero().squeeze(1)
        for start in range(0, len(redo), 256):
            again = redo[start:start + 256]
            full = torch.cat([score(slice(int(r), int(r) + 1), slice(0, num)) for r in again.tolist()])
            indices[again, :k] = torch.sort(transform(full, again), dim=1, stable=True).indices[:, :k]
    return indices[:, :k]


def smallest(block: torch.Tensor, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` smallest values of every row of ``block`` and their column indices, ordered by (value, index)."""
    num = block.shape[1]
    keep = min(k + MARGIN, num)
    values, indices = torch.topk(block, keep, dim=1, largest=False, sorted=False)
    indices, by_index = indices.sort(dim=1)
    values, order = torch.sort(values.gather(1, by_index), dim=1, stable=True)
    indices = indices.gather(1, order)
    if keep < num:
        redo = (values[:, k - 1] == values[:, -1]).nonzero().squeeze(1)
        if len(redo):
            full = torch.sort(block[redo], dim=1, stable=True)
            values[redo], indices[redo] = full.values[:, :keep], full.indices[:, :keep]
    return values[:, :k], indices[:, :k]
