"""Faults of a whole run, reached in-process through ``runner.run`` on a tiny generated dataset: what is
refused before any data is loaded or any model built, and what a run leaves in its directory."""
from __future__ import annotations

import functools
import os

import pytest

from torchreid_scal import _torchreid, runner
from torchreid_scal.config import ConfigError, load_config
from torchreid_scal.datasets.demo import SCALDemo

DEMO = os.path.join(os.path.dirname(__file__), "..", "configs", "scal_demo.yaml")
TINY_DATASET = dict(num_train_ids=4, num_test_ids=3, train_per_id=4, gallery_per_id=3)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    _torchreid.image_dataset_table()["scal_demo_tiny"] = functools.partial(SCALDemo, **TINY_DATASET)
    return str(tmp_path_factory.mktemp("data"))


def tiny(data_root, save_dir, *opts):
    """The demo recipe on 4 identities at 64x32: one epoch is two steps."""
    return load_config(DEMO, ["data.root", data_root, "data.save_dir", str(save_dir), "data.sources",
                              "['scal_demo_tiny']", "data.targets", "['scal_demo_tiny']", "data.height", "64",
                              "data.width", "32", "data.workers", "0", "train.batch_size", "8",
                              "sampler.num_instances", "2", "train.max_epoch", "1", "train.warmup_epochs", "0",
                              "train.print_freq", "100", "test.eval_freq", "-1", *opts])


@pytest.mark.parametrize("opts, message", [
    (["train.fixbase_epoch", "1", "train.open_layers", "['foo']"],
     r"train.open_layers: 'foo' is not a layer of resnet50_scal; its layers: \[.*'classifier'"),
    (["train.staged_lr", "True", "train.new_layers", "['foo', 'classifier']"],
     "train.new_layers: 'foo' is not a layer of resnet50_scal"),
])
def test_unknown_layer_names_stop_before_training(data_root, tmp_path, monkeypatch, opts, message):
    monkeypatch.setattr(runner, "build_engine", lambda *args: pytest.fail("the engine was built"))
    with pytest.raises(ConfigError, match=message):
        runner.run(tiny(data_root, tmp_path, *opts))
