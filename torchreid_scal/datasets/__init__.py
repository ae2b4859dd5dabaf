"""Datasets this package adds to torchreid, and their registration."""
from __future__ import annotations

from .. import _torchreid
from .checks import (BadImageError, DataError, DatasetNotFoundError, checked_datasets, check_available,
                     install_image_reader)
from .demo import DemoConfig, SCALDemo

DATASETS = {"scal_demo": SCALDemo}


def register_datasets() -> None:
    """Put every dataset into torchreid's image-dataset table by assignment, so repeating it (or
    reloading this module) simply replaces the entry; torchreid's ``register_image_dataset`` would raise.
    Also makes torchreid's datasets fail with the file's name on an unreadable image."""
    _torchreid.image_dataset_table().update(DATASETS)
    install_image_reader()

__all__ = ["DATASETS", "BadImageError", "DataError", "DatasetNotFoundError", "DemoConfig", "SCALDemo",
           "check_available", "checked_datasets", "register_datasets"]
