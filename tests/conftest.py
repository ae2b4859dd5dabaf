"""Shared test settings: small images so that ResNet-50 runs in seconds on a CPU."""
from __future__ import annotations

import pytest
import torch

import torchreid_scal  # noqa: F401  (registers the models with torchreid)

HEIGHT, WIDTH = 64, 32
NUM_CLASSES = 6


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(4, 3, HEIGHT, WIDTH)
