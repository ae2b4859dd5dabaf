"""The config: upstream torchreid's keys and SCAL's, merging with errors that name the key, the warm-up."""
from __future__ import annotations

import glob
import os
import re
import time

import pytest
import torch

from torchreid_scal.config import ConfigError, get_default_config, load_config
from torchreid_scal.runner import build_scheduler

UPSTREAM_KEYS = """
model.name model.pretrained model.load_weights model.resume data.type data.root data.sources data.targets
data.workers data.split_id data.height data.width data.combineall data.transforms data.k_tfm data.norm_mean
data.norm_std data.save_dir data.load_train_targets market1501.use_500k_distractors cuhk03.labeled_images
cuhk03.classic_split cuhk03.use_metric_cuhk03 sampler.train_sampler sampler.train_sampler_t sampler.num_instances
sampler.num_cams sampler.num_datasets video.seq_len video.sample_method video.pooling_method train.optim train.lr
train.weight_decay train.max_epoch train.start_epoch train.batch_size train.fixbase_epoch train.open_layers
train.staged_lr train.new_layers train.base_lr_mult train.lr_scheduler train.stepsize train.gamma train.print_freq
train.seed sgd.momentum sgd.dampening sgd.nesterov rmsprop.alpha adam.beta1 adam.beta2 loss.name
loss.softmax.label_smooth loss.triplet.margin loss.triplet.weight_t loss.triplet.weight_x test.batch_size
test.dist_metric test.normalize_feature test.ranks test.evaluate test.eval_freq test.start_eval test.rerank
test.visrank test.visrank_topk use_gpu
""".split()
SCAL_KEYS = """model.last_stride model.pretrained_path train.warmup_epochs train.warmup_factor test.feature
scal.reduction scal.agent_bias_init scal.critic_weight scal.critic_optim scal.critic_lr scal.critic_warmup_epochs
scal.critic_stages test.evaluator test.eval_memory_mb""".split()
CONFIGS = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "configs", "*.yaml")))
SCAL_MARKET = os.path.join(os.path.dirname(__file__), "..", "configs", "scal_market.yaml")


def lookup(cfg, key):
    for part in key.split("."):
        cfg = cfg[part]
    return cfg


def test_every_upstream_and_scal_key_exists():
    cfg = get_default_config()
    for key in UPSTREAM_KEYS + SCAL_KEYS:
        lookup(cfg, key)
    assert cfg.loss.triplet.weight_x == 0.0  # upstream's default, kept: the configs set it to 1


def test_upstream_torchreid_yaml_loads_unchanged(tmp_path):
    path = tmp_path / "im_r50_softmax_256x128_amsgrad.yaml"
    path.write_text("""
model:
  name: 'resnet50'
  pretrained: True
data:
  type: 'image'
  sources: ['market1501']
  targets: ['market1501']
  height: 256
  width: 128
  combineall: False
  transforms: ['random_flip']
  save_dir: 'log/resnet50_market1501_softmax'
loss:
  name: 'softmax'
  softmax:
    label_smooth: True
train:
  optim: 'amsgrad'
  lr: 0.0003
  max_epoch: 60
  batch_size: 32
  fixbase_epoch: 5
  open_layers: ['classifier']
  lr_scheduler: 'single_step'
  stepsize: [20]
test:
  batch_size: 300
  dist_metric: 'euclidean'
  normalize_feature: False
  evaluate: False
  eval_freq: -1
  rerank: False
""")
    cfg = load_config(str(path))
    assert cfg.train.optim == "amsgrad" and cfg.train.fixbase_epoch == 5 and cfg.test.batch_size == 300


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_shipped_configs_load(path):
    cfg = load_config(path)
    if cfg.loss.name != "softmax":
        assert cfg.loss.triplet.weight_x == 1.0, "triplet-based configs must keep the cross-entropy term"


def test_command_line_overrides_and_friendly_coercions():
    cfg = load_config(SCAL_MARKET, ["train.lr", "1", "data.sources", "market1501", "train.stepsize", "30",
                                   "scal.critic_stages", "[4]", "data.root", "/data/reid"])
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert cfg.data.sources == ["market1501"] and cfg.train.stepsize == [30] and cfg.scal.critic_stages == [4]
    assert cfg.data.root == "/data/reid"


@pytest.mark.parametrize("opts, message", [
    (["train.lrr", "0.1"], "unknown config key train.lrr; did you mean train.lr"),
    (["scal.critic_lrate", "0.1"], "scal.critic_lrate"),
    (["train.max_epoch", "ten"], "train.max_epoch: expected int"),
    (["test.ranks", "['a']"], "test.ranks: expected list of int"),
    (["model.pretrained", "1"], "model.pretrained: expected bool"),
    (["train", "3"], "train is a section"),
    (["train.lr"], "KEY VALUE pairs"),
    (["loss.name", "arcface"], "loss.name"),
    (["test.feature", "fc"], "test.feature"),
    (["train.batch_size", "30", "sampler.train_sampler", "RandomIdentitySampler"], "multiple of sampler.num_instances"),
    (["model.name", "resnet50_bnneck", "loss.name", "scal"], "loss.name scal needs an attention model"),
    (["scal.critic_stages", "[7]"], "scal.critic_stages"),
    (["train.warmup_factor", "0"], "train.warmup_factor"),
    (["train.batch_size", "0"], "train.batch_size"),
    (["model.name", "foo", "loss.name", "softmax"], "model.name: 'foo' is not a torchreid model"),
    (["model.name", "resnet50_scl"], "did you mean resnet50_scal"),
    (["model.name", "hacnn_scal"], "model.name: 'hacnn_scal': SCAL has no 'hacnn' backbone; supported backbones: "
                                   "['osnet_ain_x1_0', 'osnet_ibn_x1_0', 'osnet_x0_25'"),
    (["model.name", "osnet_x1_0_bnneck", "loss.name", "triplet", "model.last_stride", "2"],
     "model.last_stride: osnet_x1_0_bnneck takes [1], got 2"),
    (["model.name", "osnet_x1_0_bnneck", "loss.name", "scal"], "loss.name scal needs an attention model"),
    (["train.lr_scheduler", "single_step", "train.stepsize", "[]"], "train.stepsize"),
    (["train.lr_scheduler", "single_step", "train.stepsize", "[0]"], "train.stepsize"),
    (["test.visrank", "True"], "test.visrank True needs test.evaluate True"),
    (["data.targets", "[]"], "data.targets is empty"),
    (["train.seed", "-1"], "train.seed must be in"),
    (["train.seed", str(2**32)], "train.seed must be in"),
    (["data.transforms", "['foo']"], "data.transforms: 'foo' is not one of"),
    (["train.max_epoch", "0"], "train.max_epoch must be > 0"),
    (["sampler.train_sampler", "RandomDomainSampler", "sampler.num_cams", "5"], r"multiple of sampler.num_cams \(5\)"),
    (["adam.beta1", "-1.0"], "adam.beta1 must be in"),
    (["train.lr", "1e38"], "train.lr must be <= 10.0"),
    (["train.gamma", "0"], "train.gamma must be > 0"),
    (["train.optim", "sgd", "sgd.nesterov", "True", "sgd.momentum", "0"], "sgd.nesterov True needs sgd.momentum"),
    (["test.evaluator", "numpy"], "config key test.evaluator: 'numpy' is not one of ['fast', 'torchreid']"),
    (["test.eval_memory_mb", "0"], "config key test.eval_memory_mb must be > 0"),
    (["data.height", "100000"], "config key data.height must be <= 1024 pixels, got 100000"),
    (["data.width", "1025"], "config key data.width must be <= 1024 pixels, got 1025"),
    (["data.k_tfm", "0"], "config key data.k_tfm must be > 0, got 0"),
])
def test_bad_input_names_the_key(opts, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        load_config(SCAL_MARKET, opts)


def test_paths_expand_the_home_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    cfg = load_config(SCAL_MARKET, ["data.save_dir", "~/runs/x", "data.root", "~/data", "model.resume", "auto",
                                    "model.load_weights", "~/w.pth", "model.pretrained_path", "~/r50.pth"])
    assert cfg.data.save_dir == str(tmp_path / "runs" / "x") and cfg.data.root == str(tmp_path / "data")
    assert cfg.model.load_weights == str(tmp_path / "w.pth") and cfg.model.pretrained_path == str(tmp_path / "r50.pth")
    assert cfg.model.resume == "auto"


def test_bad_file_names_the_file_and_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  max_epochs: 3\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown config key train.max_epochs"):
        load_config(str(path))
    path.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(str(path))
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(str(tmp_path / "missing.yaml"))


def test_warmup_then_steps_at_absolute_epochs():
    cfg = load_config(SCAL_MARKET)
    optimizer = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=cfg.train.lr)
    scheduler = build_scheduler(cfg, optimizer)
    lrs = []
    for _ in range(cfg.train.max_epoch):
        lrs.append(optimizer.param_groups[0]["lr"] / cfg.train.lr)
        optimizer.step()
        scheduler.step()
    assert lrs[0] == pytest.approx(0.01) and lrs[5] == pytest.approx(0.01 + 0.99 * 5 / 10)
    assert lrs[10] == pytest.approx(1.0) and lrs[39] == pytest.approx(1.0)
    assert lrs[40] == pytest.approx(0.1) and lrs[69] == pytest.approx(0.1) and lrs[70] == pytest.approx(0.01)


def test_values_that_only_matter_elsewhere_are_accepted():
    cfg = load_config(SCAL_MARKET, ["test.evaluate", "True", "train.max_epoch", "0", "test.visrank", "True",
                                   "data.transforms", "['Random_Flip', 'color_jitter']"])
    assert cfg.train.max_epoch == 0 and cfg.test.visrank


def test_repeated_yaml_section_is_refused(tmp_path):
    path = tmp_path / "twice.yaml"
    path.write_text("train:\n  lr: 0.1\nmodel:\n  name: resnet50\ntrain:\n  max_epoch: 3\n")
    with pytest.raises(ConfigError, match=r"twice.yaml: key 'train' appears twice \(lines 1 and 5\)"):
        load_config(str(path))
    path.write_text("train:\n  lr: 0.1\n  lr: 0.2\n")
    with pytest.raises(ConfigError, match=r"key 'lr' appears twice \(lines 2 and 3\)"):
        load_config(str(path))


LAUGHS = "train:\n  open_layers:\n" + "".join(
    f"    - &l{i} [" + ", ".join([f"*l{i - 1}" if i else "'lol'"] * 9) + "]\n" for i in range(9))
"""A valid key holding nine lists of nine references to the previous one: 9**9 strings once expanded."""


@pytest.mark.parametrize("text, line, alias", [
    (LAUGHS, 4, "l0"),
    ("base: &base\n  lr: 0.1\ntrain:\n  <<: *base\n", 4, "base"),
    ("train:\n  stepsize: &s [20]\ntest:\n  ranks: *s\n", 4, "s"),
], ids=["billion-laughs", "merge-key", "plain"])
def test_yaml_aliases_are_refused_before_they_expand(tmp_path, text, line, alias):
    path = tmp_path / "alias.yaml"
    path.write_text(text)
    started = time.perf_counter()
    with pytest.raises(ConfigError, match=rf"alias.yaml: line {line}: YAML alias \*{alias} refused") as refused:
        load_config(str(path))
    assert time.perf_counter() - started < 2 and len(str(refused.value)) < 300


@pytest.mark.parametrize("text, hint", [("35e-5", "3.5e-4"), ("1e-3", "1.0e-3"), ("2E2", "2.0e+2")])
def test_yaml_float_without_dot_says_how_to_write_it(tmp_path, text, hint):
    path = tmp_path / "lr.yaml"
    path.write_text(f"train:\n  lr: {text}\n")
    with pytest.raises(ConfigError, match=f"train.lr: .*YAML reads {text} as text.*write {re.escape(hint)}"):
        load_config(str(path))
