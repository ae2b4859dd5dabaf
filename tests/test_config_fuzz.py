"""Random keys, types and values against the config loader and tools/main.py's argument handling: each
input either loads or fails with the project's ConfigError (argparse's usage error for malformed flags)."""
from __future__ import annotations

import os
import sys

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from torchreid_scal.config import ConfigError, get_default_config, load_config

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tools"))
from main import configure  # noqa: E402

DEFAULTS = get_default_config()
KEYS = sorted(f"{section}.{key}" for section, node in DEFAULTS.items() if hasattr(node, "items")
              for key in node)
SECTIONS = sorted(k for k, v in DEFAULTS.items() if hasattr(v, "items"))
scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                    st.text(max_size=12), st.sampled_from(["market1501", "scal", "bn", "RandomIdentitySampler",
                                                            "resnet50_scal", "adam", "multi_step"]))
values = st.one_of(scalars, st.lists(scalars, max_size=4), st.dictionaries(st.text(max_size=6), scalars, max_size=3))
keys = st.one_of(st.sampled_from(KEYS), st.sampled_from(SECTIONS), st.text(max_size=15),
                 st.sampled_from(KEYS).map(lambda k: k + "x"))
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _nested(pairs):
    data = {}
    for key, value in pairs:
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                break
            node = child
        else:
            node[parts[-1]] = value
    return data


@FUZZ
@given(st.lists(st.tuples(keys, values), max_size=5))
def test_yaml_files(tmp_path_factory, pairs):
    path = tmp_path_factory.mktemp("fuzz") / "config.yaml"
    path.write_text(yaml.safe_dump(_nested(pairs)))
    try:
        load_config(str(path))
    except ConfigError:
        pass


@FUZZ
@given(st.lists(st.one_of(keys, values.map(str), st.text(max_size=10)), max_size=8))
def test_command_line(argv):
    try:
        configure(["--config-file", os.path.join(os.path.dirname(__file__), "..", "configs", "scal_demo.yaml"),
                   *argv])
    except ConfigError:
        pass
    except SystemExit as exit:  # argparse's own usage error, e.g. for an unknown --flag
        assert exit.code == 2


@pytest.mark.parametrize("text", ["train: [1, 2", "- a\n- b", "model:\n  name: [", "!!python/object:os.system x"])
def test_malformed_yaml(tmp_path, text):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError):
        load_config(str(path))
