"""SCAL (Self-Critical Attention Learning, ICCV 2019) as a torchreid plugin.

Importing the package registers the SCAL models (``<backbone>_scal``, ``_scal_spatial``, ``_bnneck`` for ResNets,
ResNet-IBN, ResNeXt, SE-ResNet and OSNet; see :mod:`torchreid_scal.models`) with torchreid's model factory and the
``scal_demo`` dataset with its dataset table; :func:`register` does the same explicitly.
"""
from __future__ import annotations

from ._torchreid import LAYOUT as TORCHREID_LAYOUT
from .datasets import register_datasets
from .scal_engine import ImageSCALEngine
from .models import MODEL_FACTORIES, register_models

__version__ = "0.1.0"


def register() -> None:
    """Register this package's models and datasets with torchreid; safe to call any number of times."""
    register_models()
    register_datasets()


register()

__all__ = ["ImageSCALEngine", "MODEL_FACTORIES", "TORCHREID_LAYOUT", "register", "__version__"]
