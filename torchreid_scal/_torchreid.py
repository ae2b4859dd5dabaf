"""The one place that knows torchreid's two module layouts.

Upstream torchreid (installed from source) exposes ``torchreid.models``, ``torchreid.engine`` ...;
PyPI's ``torchreid`` repackages the same code under ``torchreid.reid.*``. Everything else in this
package imports torchreid through the names defined here, so a torchreid change is one edit.
"""
from __future__ import annotations

import importlib
from types import ModuleType
from typing import Callable, Dict, Optional

import torchreid

SUBMODULES = ("models", "engine", "data", "losses", "metrics", "utils", "optim")


def detect_layout(package: ModuleType = torchreid) -> str:
    """Return ``'pypi'`` for the ``torchreid.reid.*`` repackage, ``'upstream'`` otherwise."""
    return "pypi" if isinstance(getattr(package, "reid", None), ModuleType) else "upstream"


LAYOUT = detect_layout()
_PREFIX = "torchreid.reid" if LAYOUT == "pypi" else "torchreid"


def submodule(name: str) -> ModuleType:
    """Import torchreid's submodule ``name`` (e.g. ``'data.datasets'``) in whichever layout is installed."""
    return importlib.import_module(f"{_PREFIX}.{name}")


models = submodule("models")
engine = submodule("engine")
data = submodule("data")
losses = submodule("losses")
metrics = submodule("metrics")
utils = submodule("utils")
optim = submodule("optim")

VERSION: str = getattr(torchreid, "__version__", "unknown")
"""The installed distribution's version (PyPI's repackage numbers itself 0.2.x over upstream 1.4.0 code)."""


def model_factory() -> Dict[str, Callable]:
    """torchreid's model table: ``build_model`` and ``show_avai_models`` read this dict."""
    return vars(models)["__model_factory"]


def image_dataset_table() -> Dict[str, type]:
    """torchreid's image-dataset table, read by ``ImageDataManager``."""
    return vars(submodule("data.datasets"))["__image_datasets"]


def compiled_evaluator() -> Optional[Callable]:
    """torchreid's compiled ``evaluate_cy``: upstream torchreid's build, or a compiled ``rank_cy`` module
    importable on its own (e.g. built from upstream's ``rank_cy.pyx`` and put on PYTHONPATH); None without."""
    for name in (f"{metrics.__name__}.rank_cylib.rank_cy", "rank_cy"):
        try:
            return importlib.import_module(name).evaluate_cy
        except ImportError:
            continue
    return None
