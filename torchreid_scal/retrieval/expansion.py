"""Alpha-query expansion (AQE) as fast-reid applies it, in bounded memory.

Query and gallery features are expanded together: each of the Q + G features is replaced by the mean of its
``k`` most cosine-similar features (itself included) weighted by ``similarity ** alpha``; repeated ``times``
times. fast-reid computes the full (Q+G) x (Q+G) similarity matrix for it; here the neighbours come from
:mod:`.neighbours` (block pairs, ties by index), so memory grows with Q + G.
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F

from .neighbours import candidates, exact_order


def query_expansion(qf: torch.Tensor, gf: torch.Tensor, k: int = 5, alpha: float = 3.0, times: int = 1,
                    memory_mb: float = 256) -> Tuple[torch.Tensor, torch.Tensor]:
    """The expanded query and gallery features (float32, on their device), not normalised, as fast-reid's
    ``aqe(query_feat, gallery_feat, qe_times, qe_k, alpha)`` returns them."""
    if k < 1 or times < 0:
        raise ValueError(f"query expansion needs k >= 1 and times >= 0, got k={k}, times={times}")
    features = torch.cat([qf, gf]).float()
    num = len(features)
    k = min(k, num)
    for _ in range(times):
        unit = F.normalize(features, p=2, dim=1)

        def score(rows: slice, cols: slice) -> torch.Tensor:
            return torch.mm(unit[rows], unit[cols].t()).neg_()

        found = candidates(num, k, score, features.device, memory_mb)
        nearest = exact_order(found, k, score, lambda values, rows: values, memory_mb)
        expanded = torch.empty_like(features)
        for rows in torch.arange(num, device=features.device).split(max(1, 2**22 // (k * features.shape[1] or 1))):
            neighbours = nearest[rows]
            weights = (unit[rows, None, :] * unit[neighbours]).sum(dim=2).pow(alpha)
            expanded[rows] = (features[neighbours] * weights[..., None]).mean(dim=1)
        features = expanded
    return features[:len(qf)], features[len(qf):]
