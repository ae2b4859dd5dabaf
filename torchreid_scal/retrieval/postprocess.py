"""What happens to query and gallery features between extraction and ranking: alpha-query expansion
(``test.query_expansion``), then k-reciprocal re-ranking (``test.rerank``); shared by the engines' evaluation and
``tools/search.py``."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import torch
from yacs.config import CfgNode as CN

from .expansion import query_expansion
from .rerank import KReciprocal


@dataclass(frozen=True)
class PostProcess:
    """Query expansion and re-ranking settings; ``memory_mb`` bounds their working memory."""

    query_expansion: bool = False
    expansion_k: int = 5
    expansion_alpha: float = 3.0
    rerank_k1: int = 20
    rerank_k2: int = 6
    rerank_lambda: float = 0.3
    memory_mb: float = 256

    @classmethod
    def from_config(cls, cfg: CN) -> "PostProcess":
        test = cfg.test
        return cls(test.query_expansion, test.query_expansion_k, test.query_expansion_alpha, test.rerank_k1,
                   test.rerank_k2, test.rerank_lambda, test.eval_memory_mb)

    def expand(self, qf: torch.Tensor, gf: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The features after query expansion, or as they are when it is off."""
        if not self.query_expansion:
            return qf, gf
        return query_expansion(qf, gf, self.expansion_k, self.expansion_alpha, memory_mb=self.memory_mb)

    def rerank(self, qf: torch.Tensor, gf: torch.Tensor, metric: str) -> KReciprocal:
        """The k-reciprocal re-ranking of ``qf`` against ``gf``, ready to give distances query chunk by chunk."""
        return KReciprocal(qf, gf, self.rerank_k1, self.rerank_k2, self.rerank_lambda, metric, self.memory_mb)
