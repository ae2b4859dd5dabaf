"""Random keys, types and values against the config loader, tools/main.py's argument handling and the other tools'
own arguments: each input either loads or fails with the project's ConfigError (argparse's usage error, exit 2, for
malformed flags and option values), and what loads is usable by everything that reads it before the data is
loaded."""
from __future__ import annotations

import contextlib
import io
import os
import sys

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from torchreid_scal import _torchreid
from torchreid_scal.config import (TRANSFORMS, ConfigError, engine_run_kwargs, get_default_config, imagedata_kwargs,
                                   load_config, model_kwargs, optimizer_kwargs)
from torchreid_scal.precision import Precision
from torchreid_scal.runner import build_scheduler

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tools"))
from main import configure  # noqa: E402
import attention_report  # noqa: E402
import benchmark  # noqa: E402
import benchmark_eval  # noqa: E402
import complexity  # noqa: E402
import export  # noqa: E402
import visualize_attention  # noqa: E402

DEFAULTS = get_default_config()


def lookup(cfg, key):
    for part in key.split("."):
        cfg = cfg[part]
    return cfg


def leaf_keys(node, prefix=""):
    for name, value in node.items():
        if hasattr(value, "items"):
            yield from leaf_keys(value, f"{prefix}{name}.")
        elif prefix:
            yield f"{prefix}{name}"


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


CHOICES = ["", "market1501", "scal_demo", "resnet50", "resnet50_scal", "resnet50_scal_spatial", "resnet18",
           "softmax", "triplet", "scal", "adam", "sgd", "rmsprop", "amsgrad", "single_step", "multi_step", "cosine",
           "RandomSampler", "RandomIdentitySampler", "RandomDomainSampler", "RandomDatasetSampler", "bn", "pool",
           "euclidean", "cosine", "random_flip", "random_erase", "color_jitter", "classifier", "layer4", "image"]


def typed_values(default):
    """Values of ``default``'s type, biased to the edges where classes of bad values live: zero, negatives,
    huge, non-finite, empty, unknown names."""
    if isinstance(default, bool):
        return st.booleans()
    if isinstance(default, int):
        return st.one_of(st.sampled_from([-1, 0, 1, 2, 3, 4, 7, 64, 2**32, -2**31]), st.integers(-10**12, 10**12))
    if isinstance(default, float):
        return st.one_of(st.sampled_from([-1.0, 0.0, 1e-12, 0.5, 1.0, 1.5, 1e12, float("inf"), float("nan")]),
                         st.floats())
    if isinstance(default, str):
        return st.one_of(st.sampled_from(CHOICES), st.text(max_size=8))
    item = typed_values(default[0]) if default else st.sampled_from(CHOICES)
    return st.lists(item, max_size=4)


LEAVES = {key: lookup(DEFAULTS, key) for key in leaf_keys(DEFAULTS)}
DEMO_YAML = os.path.join(os.path.dirname(__file__), "..", "configs", "scal_demo.yaml")


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer4, self.classifier = nn.Linear(2, 2), nn.Linear(2, 2)

    def forward(self, x):
        return self.classifier(self.layer4(x))


def consume(cfg):
    """What a run does with the values before it loads data, in miniature: names looked up, the seed, the
    transforms, both optimizers and their schedules over a few epochs, the engine's arguments."""
    assert cfg.model.name in _torchreid.model_factory()
    assert all(name.lower() in TRANSFORMS for name in cfg.data.transforms), "torchreid ignores other names"
    _torchreid.utils.set_random_seed(cfg.train.seed)
    with contextlib.redirect_stdout(io.StringIO()):
        _torchreid.data.transforms.build_transforms(cfg.data.height, cfg.data.width, list(cfg.data.transforms),
                                                    norm_mean=list(cfg.data.norm_mean),
                                                    norm_std=list(cfg.data.norm_std))
    net = Tiny()
    optimizers = [(_torchreid.optim.build_optimizer(net, **optimizer_kwargs(cfg)), True),
                  (_torchreid.optim.build_optimizer(net, optim=cfg.scal.critic_optim, lr=cfg.scal.critic_lr,
                                                    weight_decay=0.0), False)]
    for optimizer, warmup in optimizers:
        scheduler = build_scheduler(cfg, optimizer, warmup=warmup)
        for _ in range(min(cfg.train.max_epoch, 3)):
            net(torch.ones(1, 2)).sum().backward()
            optimizer.step()
            scheduler.step()
            assert all(group["lr"] >= 0 for group in optimizer.param_groups), "a negative learning rate"
    Precision(torch.device("cpu"), cfg.train.amp)
    engine_run_kwargs(cfg), imagedata_kwargs(cfg, use_gpu=False), model_kwargs(cfg)


@FUZZ
@given(st.lists(st.sampled_from(sorted(LEAVES)).flatmap(lambda key: st.tuples(st.just(key),
                                                                               typed_values(LEAVES[key]))),
                min_size=1, max_size=3))
def test_values(tmp_path_factory, pairs):
    """Values of the right type on top of the demo recipe: refused with a ConfigError, or usable by everything
    that reads them before the data is loaded."""
    with open(DEMO_YAML) as f:
        data = yaml.safe_load(f)
    for key, value in pairs:
        section, name = key.split(".", 1)
        node = data.setdefault(section, {})
        for part in name.split(".")[:-1]:
            node = node.setdefault(part, {})
        node[name.split(".")[-1]] = value
    path = tmp_path_factory.mktemp("fuzz") / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    try:
        cfg = load_config(str(path))
    except ConfigError:
        return
    consume(cfg)


@pytest.mark.parametrize("text", ["train: [1, 2", "- a\n- b", "model:\n  name: [", "!!python/object:os.system x"])
def test_malformed_yaml(tmp_path, text):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError):
        load_config(str(path))


REQUIRED = ["--config-file", "c.yaml", "--weights", "w.pth"]
TOOLS = {  # parse_args: (arguments it always gets, options drawn at random)
    "export": (export.parse_args, REQUIRED + ["--output", "o"], ["--output", "--format"]),
    "visualize_attention": (visualize_attention.parse_args, REQUIRED + ["--output", "o"],
                            ["--output", "--images", "--num-images"]),
    "attention_report": (attention_report.parse_args, REQUIRED + ["--output", "o"],
                         ["--output", "--split", "--bins", "--examples", "--events"]),
    "benchmark": (benchmark.parse_args, [], ["--batch-size", "--num-instances", "--height", "--width", "--steps",
                                             "--warmup", "--models"]),
    "complexity": (complexity.parse_args, [], ["--height", "--width", "--num-classes"]),
    "benchmark_eval": (benchmark_eval.parse_args, ["--eval", "market1501"],
                       ["--dim", "--memory-mb", "--ranking-threads", "--scale", "--seed"]),
}
MINIMUM = {"batch_size": 1, "num_instances": 1, "height": 1, "width": 1, "steps": 1, "warmup": 0, "num_classes": 1,
           "num_images": 1, "bins": 1, "examples": 0, "dim": 1, "ranking_threads": 1}
tool_values = st.one_of(st.integers(-3, 3000).map(str), st.text(max_size=6),
                        st.sampled_from(["", "0", "-1", "x", "1.5", "nan", "inf", "1e400", "FILE", "FOLDER",
                                         "MISSING", "FILE/sub", "resnet50", "train"]))


@FUZZ
@given(st.sampled_from(sorted(TOOLS)).flatmap(
    lambda name: st.tuples(st.just(name), st.lists(st.tuples(st.sampled_from(TOOLS[name][2]), tool_values),
                                                   max_size=4))))
def test_tool_arguments(tmp_path_factory, drawn):
    """Each tool's options with random values: argparse's usage error, or values the tool can use."""
    name, pairs = drawn
    parse, argv, _ = TOOLS[name]
    folder = tmp_path_factory.mktemp("args")
    (folder / "file").write_text("")
    paths = {"FILE": str(folder / "file"), "FOLDER": str(folder), "MISSING": str(folder / "missing")}
    for option, value in pairs:
        for placeholder, path in paths.items():
            value = value.replace(placeholder, path)
        argv = argv + [option, value]
    with contextlib.redirect_stderr(io.StringIO()):
        try:
            args = parse(argv)
        except SystemExit as exit:
            assert exit.code == 2
            return
    for key, minimum in MINIMUM.items():
        value = getattr(args, key, minimum)
        assert value is None or (isinstance(value, int) and value >= minimum), (key, value)
    assert getattr(args, "height", 1) <= 1024 and getattr(args, "width", 1) <= 1024
    output = getattr(args, "output", None)
    assert output is None or (output and (os.path.isdir(output) or not os.path.lexists(output)))
    for key in ("images", "events"):
        assert getattr(args, key, None) is None or os.path.isdir(getattr(args, key))
    assert 0 < getattr(args, "memory_mb", 1) < float("inf")
