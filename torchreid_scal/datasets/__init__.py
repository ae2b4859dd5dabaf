"""Datasets this package adds to torchreid, and their registration."""
from __future__ import annotations

from .. import _torchreid
from .demo import DemoConfig, SCALDemo

DATASETS = {"scal_demo": SCALDemo}


def register_datasets() -> None:
    """Put every dataset into torchreid's image-dataset table by assignment, so repeating it (or
    reloading this module) simply replaces the entry; torchreid's ``register_image_dataset`` would raise."""
    _torchreid.image_dataset_table().update(DATASETS)


__all__ = ["DATASETS", "DemoConfig", "SCALDemo", "register_datasets"]
