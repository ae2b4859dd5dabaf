"""The adapter resolves torchreid's submodules in both layouts, and the plugin registers in both."""
from __future__ import annotations

import importlib
import sys
import types

import torchreid

from torchreid_scal import _torchreid
from torchreid_scal.models import DEFAULT_CFGS

NAMES = tuple(DEFAULT_CFGS)


def test_installed_pypi_layout_is_resolved():
    assert _torchreid.LAYOUT == "pypi"
    for name in _torchreid.SUBMODULES:
        assert getattr(_torchreid, name) is sys.modules[f"torchreid.reid.{name}"]
    assert _torchreid.model_factory() is vars(sys.modules["torchreid.reid.models"])["__model_factory"]


def _present_as_upstream(monkeypatch) -> dict:
    """Replace ``torchreid`` in sys.modules by an upstream-shaped package (``torchreid.models`` ...)
    whose submodules are the installed code; return the model table that package's build_model reads."""
    real = {name: mod for name, mod in sys.modules.items() if name.startswith("torchreid.reid.")}
    fake = types.ModuleType("torchreid")
    fake.__path__ = []
    fake.__version__ = "1.4.0"
    for name, module in real.items():
        upstream_name = "torchreid." + name[len("torchreid.reid."):]
        monkeypatch.setitem(sys.modules, upstream_name, module)
        if upstream_name.count(".") == 1:
            setattr(fake, upstream_name.split(".")[1], module)
    monkeypatch.setitem(sys.modules, "torchreid", fake)
    for name in [n for n in sys.modules if n == "torchreid_scal" or n.startswith("torchreid_scal.")]:
        monkeypatch.delitem(sys.modules, name)
    return vars(fake.models)["__model_factory"]


def test_upstream_layout_is_detected_and_registered(monkeypatch):
    table = _present_as_upstream(monkeypatch)
    for name in NAMES:
        monkeypatch.delitem(table, name)  # restored, with this session's factories, after the test
    datasets = vars(sys.modules["torchreid.data.datasets"])["__image_datasets"]
    monkeypatch.delitem(datasets, "scal_demo")
    plugin = importlib.import_module("torchreid_scal")
    adapter = sys.modules["torchreid_scal._torchreid"]
    assert adapter.LAYOUT == "upstream"
    assert adapter.models is sys.modules["torchreid.models"]
    assert adapter.engine is sys.modules["torchreid.engine"]
    assert plugin.TORCHREID_LAYOUT == "upstream"
    upstream = sys.modules["torchreid"]
    assert set(NAMES) <= set(table)
    assert "scal_demo" in datasets
    for name in NAMES:  # every backbone from upstream's modules (torchreid.models.osnet, ...)
        model = upstream.models.build_model(name, 5, loss="triplet", pretrained=False)
        assert model.classifier.out_features == 5 and model.backbone.name == DEFAULT_CFGS[name]["backbone"]
        assert len(model.agents) == (5 if DEFAULT_CFGS[name]["attention"] else 0)
    assert adapter.submodule("models.osnet") is sys.modules["torchreid.models.osnet"]


def test_detect_layout_on_plain_modules():
    pypi_like = types.ModuleType("torchreid")
    pypi_like.reid = types.ModuleType("torchreid.reid")
    assert _torchreid.detect_layout(pypi_like) == "pypi"
    assert _torchreid.detect_layout(types.ModuleType("torchreid")) == "upstream"
    assert _torchreid.detect_layout(torchreid) == "pypi"
