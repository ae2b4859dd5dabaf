"""The yacs configuration: every key of upstream torchreid's ``scripts/default_config.py`` (so a torchreid
user's YAML works unchanged) plus this package's keys; merging that names the key on any bad input.
"""
from __future__ import annotations

import ast
import contextlib
import difflib
import math
import os
import reprlib
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

import yaml
from yacs.config import CfgNode as CN


class ConfigError(ValueError):
    """A configuration problem, with a message that names the key (or file) and what to do."""


TRANSFORMS = ("random_flip", "random_crop", "random_patch", "color_jitter", "random_erase")
"""The augmentations torchreid's ``build_transforms`` knows (it ignores any other name without a word)."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a mapping that repeats a key (SafeLoader silently keeps the last one, so a
    second ``train:`` section would drop the first) and any alias (``*name``): nested aliases expand a few hundred
    bytes into billions of values ("billion laughs"), which the merge then walks."""

    def compose_node(self, parent: Optional[yaml.Node], index: Any) -> Optional[yaml.Node]:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise ConfigError(f"line {event.start_mark.line + 1}: YAML alias *{event.anchor} refused (aliases can "
                              "expand a small file into gigabytes): write the value out instead")
        return super().compose_node(parent, index)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> Dict[Any, Any]:
        lines: Dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key, line = self.construct_object(key_node, deep=True), key_node.start_mark.line + 1
            try:
                first = lines.setdefault(key, line)
            except TypeError:  # an unhashable key: PyYAML's own error follows
                continue
            if first != line:
                raise ConfigError(f"key {key!r} appears twice (lines {first} and {line}); "
                                  "YAML would silently keep only the second: merge them into one")
        return super().construct_mapping(node, deep=deep)


_UPSTREAM = {
    "": "use_gpu",
    "model": "name pretrained load_weights resume",
    "data": "type root sources targets workers split_id height width combineall transforms k_tfm norm_mean norm_std "
            "save_dir load_train_targets",
    "market1501": "use_500k_distractors",
    "cuhk03": "labeled_images classic_split use_metric_cuhk03",
    "sampler": "train_sampler train_sampler_t num_instances num_cams num_datasets",
    "video": "seq_len sample_method pooling_method",
    "train": "optim lr weight_decay max_epoch start_epoch batch_size fixbase_epoch open_layers staged_lr new_layers "
             "base_lr_mult lr_scheduler stepsize gamma print_freq seed",
    "sgd": "momentum dampening nesterov",
    "rmsprop": "alpha",
    "adam": "beta1 beta2",
    "loss": "name",
    "loss.softmax": "label_smooth",
    "loss.triplet": "margin weight_t weight_x",
    "test": "batch_size dist_metric normalize_feature ranks evaluate eval_freq start_eval rerank visrank visrank_topk",
}
UPSTREAM_KEYS = frozenset(f"{section}.{name}" if section else name
                          for section, names in _UPSTREAM.items() for name in names.split())
"""The keys of upstream torchreid's ``scripts/default_config.py`` (and the top-level ``use_gpu`` its scripts set);
every other key of :func:`get_default_config` is this package's, documented in docs/configuration.md."""


def leaf_keys(node: CN, prefix: str = "") -> List[str]:
    """The dotted names of every value (not section) in ``node``, in definition order."""
    keys: List[str] = []
    for name, value in node.items():
        keys += leaf_keys(value, f"{prefix}{name}.") if isinstance(value, CN) else [f"{prefix}{name}"]
    return keys


def added_keys() -> List[str]:
    """The keys this package adds to torchreid's configuration."""
    return [key for key in leaf_keys(get_default_config()) if key not in UPSTREAM_KEYS]


def get_default_config() -> CN:
    """Upstream torchreid's defaults, then this package's additions (marked below)."""
    cfg = CN()
    cfg.use_gpu = True  # used only where CUDA is available

    cfg.model = CN()
    cfg.model.name = "resnet50"
    cfg.model.pretrained = True
    cfg.model.load_weights = ""
    cfg.model.resume = ""
    cfg.model.last_stride = 1  # SCAL: stride of a ResNet backbone's last stage (OSNet's keeps the map size: 1)
    cfg.model.pretrained_path = ""  # SCAL: local ImageNet file of the backbone ('' = the file torchreid's loader uses)
    cfg.model.channels_last = False  # SCAL plugin: channels-last memory format for training and evaluation

    cfg.data = CN()
    cfg.data.type = "image"
    cfg.data.root = "reid-data"
    cfg.data.sources = ["market1501"]
    cfg.data.targets = ["market1501"]
    cfg.data.workers = 4
    cfg.data.split_id = 0
    cfg.data.height = 256
    cfg.data.width = 128
    cfg.data.combineall = False
    cfg.data.transforms = ["random_flip"]
    cfg.data.k_tfm = 1
    cfg.data.norm_mean = [0.485, 0.456, 0.406]
    cfg.data.norm_std = [0.229, 0.224, 0.225]
    cfg.data.save_dir = "log"
    cfg.data.load_train_targets = False
    cfg.data.skip_bad_images = False  # SCAL plugin: drop unreadable images (with a warning) instead of stopping
    cfg.data.check_images = False  # SCAL plugin: decode every image before training; stop naming the unreadable ones
    cfg.data.camera_pattern = r"c(\d+)"  # SCAL plugin: camera number in a file name of a folders:ROOT dataset (one group)

    cfg.market1501 = CN()
    cfg.market1501.use_500k_distractors = False
    cfg.cuhk03 = CN()
    cfg.cuhk03.labeled_images = False
    cfg.cuhk03.classic_split = False
    cfg.cuhk03.use_metric_cuhk03 = False
    cfg.scal_demo = CN()  # SCAL plugin: the generated demo dataset
    cfg.scal_demo.num_test_ids = 1000  # identities of its test split (one query and six gallery images each)

    cfg.sampler = CN()
    cfg.sampler.train_sampler = "RandomSampler"
    cfg.sampler.train_sampler_t = "RandomSampler"
    cfg.sampler.num_instances = 4
    cfg.sampler.num_cams = 1
    cfg.sampler.num_datasets = 1

    cfg.video = CN()
    cfg.video.seq_len = 15
    cfg.video.sample_method = "evenly"
    cfg.video.pooling_method = "avg"

    cfg.train = CN()
    cfg.train.optim = "adam"
    cfg.train.lr = 0.0003
    cfg.train.weight_decay = 5e-4
    cfg.train.max_epoch = 60
    cfg.train.start_epoch = 0
    cfg.train.batch_size = 32
    cfg.train.fixbase_epoch = 0
    cfg.train.open_layers = ["classifier"]
    cfg.train.staged_lr = False
    cfg.train.new_layers = ["classifier"]
    cfg.train.base_lr_mult = 0.1
    cfg.train.lr_scheduler = "single_step"
    cfg.train.stepsize = [20]
    cfg.train.gamma = 0.1
    cfg.train.print_freq = 20
    cfg.train.seed = 1
    cfg.train.warmup_epochs = 10  # SCAL: linear warm-up length (0 = none)
    cfg.train.warmup_factor = 0.01  # SCAL: learning-rate factor at the first warm-up epoch
    cfg.train.amp = False  # SCAL plugin: mixed precision (bf16 on CPU and recent GPUs, else fp16 + loss scaling)
    cfg.train.checkpoint_freq = 1  # SCAL plugin: save a resumable checkpoint every N epochs (0 = only torchreid's)
    cfg.train.keep_last = 5  # SCAL plugin: keep the newest K checkpoints (0 = all)
    cfg.train.sync_bn = False  # SCAL plugin: SyncBatchNorm under torchrun (GPUs only)

    cfg.sgd = CN()
    cfg.sgd.momentum = 0.9
    cfg.sgd.dampening = 0.0
    cfg.sgd.nesterov = False
    cfg.rmsprop = CN()
    cfg.rmsprop.alpha = 0.99
    cfg.adam = CN()
    cfg.adam.beta1 = 0.9
    cfg.adam.beta2 = 0.999

    cfg.loss = CN()
    cfg.loss.name = "softmax"  # softmax | triplet | scal (SCAL)
    cfg.loss.softmax = CN()
    cfg.loss.softmax.label_smooth = True
    cfg.loss.triplet = CN()
    cfg.loss.triplet.margin = 0.3
    cfg.loss.triplet.weight_t = 1.0
    cfg.loss.triplet.weight_x = 0.0

    cfg.test = CN()
    cfg.test.batch_size = 100
    cfg.test.dist_metric = "euclidean"
    cfg.test.normalize_feature = False
    cfg.test.ranks = [1, 5, 10, 20]
    cfg.test.evaluate = False
    cfg.test.eval_freq = -1
    cfg.test.start_eval = 0
    cfg.test.rerank = False
    cfg.test.visrank = False
    cfg.test.visrank_topk = 10
    cfg.test.feature = "bn"  # SCAL: retrieval feature of the SCAL networks, bn | pool
    cfg.test.amp = False  # SCAL plugin: mixed precision for feature extraction
    cfg.test.evaluator = "fast"  # SCAL plugin: fast (torchreid_scal.evaluation) | torchreid (its evaluate_rank)
    cfg.test.eval_memory_mb = 256  # SCAL plugin: working-memory budget of the fast evaluator's query chunks
    cfg.test.rerank_k1 = 20  # SCAL plugin: k-reciprocal re-ranking (test.rerank): neighbours k1, k2 and weight lambda
    cfg.test.rerank_k2 = 6
    cfg.test.rerank_lambda = 0.3
    cfg.test.query_expansion = False  # SCAL plugin: alpha-query expansion (fast-reid's AQE) before ranking
    cfg.test.query_expansion_k = 5
    cfg.test.query_expansion_alpha = 3.0

    cfg.scal = CN()  # SCAL: the method's own settings (the attention kind is chosen by model.name)
    cfg.scal.reduction = 16
    cfg.scal.agent_bias_init = 0.0
    cfg.scal.critic_weight = 1.0
    cfg.scal.critic_optim = "adam"
    cfg.scal.critic_lr = 1e-4
    cfg.scal.critic_warmup_epochs = 0
    cfg.scal.critic_stages = [0, 1, 2, 3, 4]
    cfg.scal.critic_activation = "relu"  # hidden non-linearity of the critics: relu | leaky_relu | silu
    cfg.scal.critic_form = "paper"  # what J_cri's gradient comes from: paper | compatible | oracle (no critic)
    cfg.scal.critic_explore_std = 0.0  # compatible critics: noise (logit space) of the behaviour pass's maps
    cfg.scal.critic_target = "reward"  # compatible critics regress the change of: reward (R) | logp (log p_true)
    cfg.scal.diagnostic_images = 64  # held-out images scored by the critic diagnostics after each epoch (0 = off)
    return cfg


def _decode(text: str) -> Any:
    """A command-line value as yacs reads it: a Python literal when it parses as one, else the string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text


_SHORT = reprlib.Repr()
_SHORT.maxstring, _SHORT.maxother, _SHORT.maxlevel = 80, 80, 3


def _describe(value: Any) -> str:
    """``value`` for an error message: its repr, shortened (a list of a million items stays one line), and type."""
    return f"{_SHORT.repr(value)} ({type(value).__name__})"


def _yaml_float(text: str) -> str:
    """``text``'s number as YAML 1.1 (PyYAML) reads a float: with a dot and a signed exponent, e.g. 3.5e-4."""
    mantissa, exponent = f"{float(text):e}".split("e")
    mantissa = mantissa.rstrip("0")
    return f"{mantissa}0e{int(exponent):+d}" if mantissa.endswith(".") else f"{mantissa}e{int(exponent):+d}"


def _coerce(key: str, default: Any, value: Any) -> Any:
    """``value`` converted to the type of ``default``, or a ConfigError naming ``key``."""
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ConfigError(f"config key {key}: expected a finite number, got {value!r}")
            return float(value)
    elif isinstance(default, str):
        if isinstance(value, str):
            return value
    elif isinstance(default, (list, tuple)):
        items = list(value) if isinstance(value, (list, tuple)) else [value]
        if not default:
            return items
        try:
            return [_coerce(key, default[0], item) for item in items]
        except ConfigError:
            pass
    hint = ""
    if isinstance(default, float) and isinstance(value, str):
        with contextlib.suppress(ValueError):
            hint = f"; YAML reads {value} as text: write {_yaml_float(value)} (a dot and a signed exponent)"
    raise ConfigError(f"config key {key}: expected {type(default).__name__}"
                      + (f" of {type(default[0]).__name__}" if isinstance(default, (list, tuple)) and default else "")
                      + f" like {default!r}, got {_describe(value)}{hint}")


def _merge(cfg: CN, data: Mapping, prefix: str = "") -> None:
    for name, value in data.items():
        key = f"{prefix}{name}"
        if not isinstance(name, str) or name not in cfg:
            close = difflib.get_close_matches(str(name), [k for k in cfg if isinstance(k, str)], n=1)
            hint = f"; did you mean {prefix}{close[0]}?" if close else ""
            raise ConfigError(f"unknown config key {key}{hint}")
        if isinstance(cfg[name], CN):
            if not isinstance(value, Mapping):
                raise ConfigError(f"config key {key} is a section: give its keys (e.g. {key}.{next(iter(cfg[name]))}), "
                                  f"not {_describe(value)}")
            _merge(cfg[name], value, key + ".")
        else:
            cfg[name] = _coerce(key, cfg[name], value)


def _nest(key: str, value: Any) -> Dict[str, Any]:
    node: Any = value
    for part in reversed(key.split(".")):
        node = {part: node}
    return node


PATH_KEYS = ("data.root", "data.save_dir", "model.load_weights", "model.resume", "model.pretrained_path")
"""Keys naming files or folders: a leading ``~`` is the user's home, as in a shell (``model.resume auto`` stays)."""
MAX_IMAGE_SIDE = 1024
"""Largest ``data.height`` / ``data.width``: re-identification crops are a few hundred pixels (256x128 is usual), and
memory grows with the image, that of the spatial agents' layers with the square of its area."""


def load_config(config_file: str = "", opts: Sequence[str] = (), base: Optional[CN] = None) -> CN:
    """Defaults, then ``config_file`` (YAML), then ``opts`` (``KEY VALUE`` pairs); validated and frozen."""
    cfg = (base or get_default_config()).clone()
    if config_file:
        try:
            with open(config_file) as f:
                data = yaml.load(f, Loader=_UniqueKeyLoader)
        except OSError as err:
            raise ConfigError(f"cannot read config file {config_file}: {err.strerror}") from err
        except ConfigError as err:
            raise ConfigError(f"config file {config_file}: {err}") from None
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {config_file} is not valid YAML: {err}") from err
        if data is not None:
            if not isinstance(data, Mapping):
                raise ConfigError(f"config file {config_file} must hold a mapping of sections, got {_describe(data)}")
            try:
                _merge(cfg, data)
            except ConfigError as err:
                raise ConfigError(f"{config_file}: {err}") from None
    opts = list(opts)
    if len(opts) % 2:
        raise ConfigError(f"command-line overrides come in KEY VALUE pairs; {opts[-1]!r} has no value")
    for key, text in zip(opts[::2], opts[1::2]):
        if not key or any(not part for part in key.split(".")):
            raise ConfigError(f"malformed config key {key!r}: expected dotted names such as train.lr")
        _merge(cfg, _nest(key, _decode(text)))
    for key in PATH_KEYS:
        section, name = key.split(".")
        if cfg[section][name] != "auto":
            cfg[section][name] = os.path.expanduser(cfg[section][name])
    validate(cfg)
    cfg.freeze()
    return cfg


def _choice(key: str, value: Any, choices: Iterable) -> None:
    choices = list(choices)
    if value not in choices:
        raise ConfigError(f"config key {key}: {value!r} is not one of {choices}")


def _value(cfg: CN, key: str) -> Any:
    for part in key.split("."):
        cfg = cfg[part]
    return cfg


def _positive(cfg: CN, *keys: str, allow_zero: bool = False) -> None:
    for key in keys:
        value = _value(cfg, key)
        if value < 0 or (value == 0 and not allow_zero):
            raise ConfigError(f"config key {key} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")


def _check_model_name(name: str, models: Sequence[str]) -> None:
    from .models import BACKBONES, VARIANTS, split_name

    scal = split_name(name)
    if name not in models and scal is not None and scal[0] not in BACKBONES:
        raise ConfigError(f"config key model.name: {name!r}: SCAL has no {scal[0]!r} backbone; supported backbones: "
                          f"{sorted(BACKBONES)} (as <backbone>{', <backbone>'.join(VARIANTS)})")
    if name not in models:
        close = difflib.get_close_matches(name, models, n=1)
        hint = f"did you mean {close[0]}?" if close else f"available: {sorted(models)}"
        raise ConfigError(f"config key model.name: {name!r} is not a torchreid model; {hint}")


def validate(cfg: CN) -> None:
    """Values that have the right type but cannot work, caught before any data is loaded."""
    from . import _torchreid
    from .datasets import custom
    from .models import BACKBONES, DEFAULT_CFGS, attention_of

    _choice("data.type", cfg.data.type, ["image"])
    _choice("loss.name", cfg.loss.name, ["softmax", "triplet", "scal"])
    _choice("test.feature", cfg.test.feature, ["bn", "pool"])
    _choice("test.dist_metric", cfg.test.dist_metric, ["euclidean", "cosine"])
    _choice("test.evaluator", cfg.test.evaluator, ["fast", "torchreid"])
    _choice("model.last_stride", cfg.model.last_stride, [1, 2])
    _choice("train.optim", cfg.train.optim, _torchreid.optim.optimizer.AVAI_OPTIMS)
    _choice("scal.critic_optim", cfg.scal.critic_optim, _torchreid.optim.optimizer.AVAI_OPTIMS)
    _choice("train.lr_scheduler", cfg.train.lr_scheduler, _torchreid.optim.lr_scheduler.AVAI_SCH)
    _choice("sampler.train_sampler", cfg.sampler.train_sampler, _torchreid.data.sampler.AVAI_SAMPLERS)
    _positive(cfg, "train.batch_size", "test.batch_size", "sampler.num_instances", "data.height", "data.width",
              "train.lr", "scal.reduction", "scal.critic_lr", "train.print_freq", "test.eval_memory_mb",
              "scal_demo.num_test_ids")
    _positive(cfg, "train.max_epoch", "train.start_epoch", "train.warmup_epochs", "scal.critic_warmup_epochs",
              "scal.critic_weight", "data.workers", "train.weight_decay", "loss.triplet.weight_t",
              "loss.triplet.weight_x", "train.fixbase_epoch", "train.checkpoint_freq", "train.keep_last",
              "scal.critic_explore_std", "scal.diagnostic_images", allow_zero=True)
    _positive(cfg, "data.k_tfm")
    for key in ("data.height", "data.width"):
        if _value(cfg, key) > MAX_IMAGE_SIDE:
            raise ConfigError(f"config key {key} must be <= {MAX_IMAGE_SIDE} pixels, got {_value(cfg, key)}: re-id "
                              "crops are a few hundred pixels (256x128 is usual), and memory grows with the image")
    _check_model_name(cfg.model.name, list(_torchreid.model_factory()))
    backbone = DEFAULT_CFGS.get(cfg.model.name, {}).get("backbone")
    if backbone is not None and cfg.model.last_stride not in BACKBONES[backbone].last_strides():
        raise ConfigError(f"config key model.last_stride: {cfg.model.name} takes "
                          f"{list(BACKBONES[backbone].last_strides())}, got {cfg.model.last_stride} "
                          f"({backbone}'s last stages keep the map size)")
    if not cfg.test.evaluate:
        _positive(cfg, "train.max_epoch")
    if cfg.test.visrank and not cfg.test.evaluate:
        raise ConfigError("test.visrank True needs test.evaluate True: torchreid draws ranked pictures only when "
                          "it tests a trained model (model.load_weights), not during training")
    if not 0 <= cfg.train.seed < 2**32:
        raise ConfigError(f"config key train.seed must be in [0, 2**32 - 1] (NumPy's range), got {cfg.train.seed}")
    if cfg.train.lr_scheduler in ("single_step", "multi_step") and (
            not cfg.train.stepsize or min(cfg.train.stepsize) < 1):
        raise ConfigError(f"config key train.stepsize must hold epochs >= 1 for train.lr_scheduler "
                          f"{cfg.train.lr_scheduler}, got {list(cfg.train.stepsize)}")
    for name in cfg.data.transforms:
        _choice("data.transforms", name.lower(), TRANSFORMS)
    for key, bound in (("train.lr", 10.0), ("scal.critic_lr", 10.0), ("train.weight_decay", 1.0)):
        if _value(cfg, key) > bound:
            raise ConfigError(f"config key {key} must be <= {bound}, got {_value(cfg, key)} (a typo? the optimizers "
                              "overflow float32 with such values)")
    for key in ("adam.beta1", "adam.beta2"):
        if not 0 <= _value(cfg, key) < 1:
            raise ConfigError(f"config key {key} must be in [0, 1), got {_value(cfg, key)}")
    _positive(cfg, "train.gamma")
    _positive(cfg, "sgd.momentum", "sgd.dampening", "rmsprop.alpha", "train.base_lr_mult", allow_zero=True)
    if cfg.train.optim == "sgd" and cfg.sgd.nesterov and (cfg.sgd.momentum <= 0 or cfg.sgd.dampening != 0):
        raise ConfigError(f"sgd.nesterov True needs sgd.momentum > 0 and sgd.dampening 0, got {cfg.sgd.momentum} "
                          f"and {cfg.sgd.dampening}")
    if any(r < 1 for r in cfg.test.ranks):
        raise ConfigError(f"config key test.ranks must hold ranks >= 1, got {list(cfg.test.ranks)}")
    if not 0 < cfg.train.warmup_factor <= 1:
        raise ConfigError(f"config key train.warmup_factor must be in (0, 1], got {cfg.train.warmup_factor}")
    for key in ("sources", "targets"):
        if not cfg.data[key]:
            raise ConfigError(f"config key data.{key} is empty: name at least one dataset, e.g. ['market1501']")
        for name in cfg.data[key]:
            custom.check_name(f"data.{key}", name)
    custom.check_camera_pattern(cfg.data.camera_pattern)
    _positive(cfg, "test.rerank_k1", "test.rerank_k2", "test.query_expansion_k")
    if not 0 <= cfg.test.rerank_lambda <= 1:
        raise ConfigError(f"config key test.rerank_lambda must be in [0, 1], got {cfg.test.rerank_lambda}")
    if cfg.test.evaluator == "torchreid" and cfg.test.query_expansion:
        raise ConfigError("test.query_expansion True needs test.evaluator fast: torchreid's evaluation has no query "
                          "expansion")
    defaults = get_default_config().test
    changed = [k for k in ("rerank_k1", "rerank_k2", "rerank_lambda") if cfg.test[k] != defaults[k]]
    if cfg.test.evaluator == "torchreid" and cfg.test.rerank and changed:
        raise ConfigError(f"config key test.{changed[0]} needs test.evaluator fast: torchreid's evaluation re-ranks "
                          "with its own k1 20, k2 6, lambda 0.3")
    if cfg.sampler.train_sampler == "RandomIdentitySampler" and cfg.train.batch_size % cfg.sampler.num_instances:
        raise ConfigError(
            f"train.batch_size ({cfg.train.batch_size}) must be a multiple of sampler.num_instances "
            f"({cfg.sampler.num_instances}) for RandomIdentitySampler: each batch is P identities x K images"
        )
    for sampler, key in (("RandomDomainSampler", "num_cams"), ("RandomDatasetSampler", "num_datasets")):
        groups = cfg.sampler[key]
        if cfg.sampler.train_sampler == sampler and groups > 0 and cfg.train.batch_size % groups:
            raise ConfigError(f"train.batch_size ({cfg.train.batch_size}) must be a multiple of sampler.{key} "
                              f"({groups}) for {sampler}: each batch takes as many images from each")
    if cfg.loss.name in ("triplet", "scal") and cfg.loss.triplet.weight_t + cfg.loss.triplet.weight_x <= 0:
        raise ConfigError("loss.triplet.weight_t and loss.triplet.weight_x are both 0: nothing would be trained")
    if cfg.loss.name == "scal":
        if attention_of(cfg.model.name) is None:
            raise ConfigError(f"loss.name scal needs an attention model (<backbone>_scal, _scal_channel or "
                              f"_scal_spatial, e.g. resnet50_scal); model.name is {cfg.model.name!r}")
        _choice("scal.critic_activation", cfg.scal.critic_activation, ["relu", "leaky_relu", "silu"])
        _choice("scal.critic_form", cfg.scal.critic_form, ["paper", "compatible", "oracle"])
        _choice("scal.critic_target", cfg.scal.critic_target, ["reward", "logp"])
        if (cfg.scal.critic_form == "compatible") != (cfg.scal.critic_explore_std > 0):
            raise ConfigError(f"config key scal.critic_explore_std is the noise of the compatible critics' behaviour "
                              f"pass: set it > 0 with scal.critic_form compatible and 0 otherwise (got "
                              f"{cfg.scal.critic_explore_std} with {cfg.scal.critic_form})")
        bad = [k for k in cfg.scal.critic_stages if not 0 <= k <= 4]
        if bad or not cfg.scal.critic_stages:
            raise ConfigError(f"config key scal.critic_stages must be a non-empty subset of [0, 1, 2, 3, 4], "
                              f"got {list(cfg.scal.critic_stages)}")
    if len(cfg.data.norm_mean) != 3 or len(cfg.data.norm_std) != 3 or min(cfg.data.norm_std) <= 0:
        raise ConfigError("config keys data.norm_mean and data.norm_std need three values each (std > 0)")


def imagedata_kwargs(cfg: CN, use_gpu: bool) -> Dict[str, Any]:
    """Keyword arguments of torchreid's ``ImageDataManager``."""
    return dict(
        root=cfg.data.root, sources=list(cfg.data.sources), targets=list(cfg.data.targets), height=cfg.data.height,
        width=cfg.data.width, transforms=list(cfg.data.transforms), k_tfm=cfg.data.k_tfm,
        norm_mean=list(cfg.data.norm_mean), norm_std=list(cfg.data.norm_std), use_gpu=use_gpu,
        split_id=cfg.data.split_id, combineall=cfg.data.combineall, load_train_targets=cfg.data.load_train_targets,
        batch_size_train=cfg.train.batch_size, batch_size_test=cfg.test.batch_size, workers=cfg.data.workers,
        num_instances=cfg.sampler.num_instances, num_cams=cfg.sampler.num_cams,
        num_datasets=cfg.sampler.num_datasets, train_sampler=cfg.sampler.train_sampler,
        train_sampler_t=cfg.sampler.train_sampler_t, cuhk03_labeled=cfg.cuhk03.labeled_images,
        cuhk03_classic_split=cfg.cuhk03.classic_split, market1501_500k=cfg.market1501.use_500k_distractors,
    )


def optimizer_kwargs(cfg: CN) -> Dict[str, Any]:
    """Keyword arguments of torchreid's ``build_optimizer``."""
    return dict(
        optim=cfg.train.optim, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay, momentum=cfg.sgd.momentum,
        sgd_dampening=cfg.sgd.dampening, sgd_nesterov=cfg.sgd.nesterov, rmsprop_alpha=cfg.rmsprop.alpha,
        adam_beta1=cfg.adam.beta1, adam_beta2=cfg.adam.beta2, staged_lr=cfg.train.staged_lr,
        new_layers=list(cfg.train.new_layers), base_lr_mult=cfg.train.base_lr_mult,
    )


def lr_scheduler_kwargs(cfg: CN) -> Dict[str, Any]:
    """Keyword arguments of torchreid's ``build_lr_scheduler`` (single_step takes the last step size)."""
    stepsize: Any = list(cfg.train.stepsize)
    if cfg.train.lr_scheduler == "single_step":
        stepsize = stepsize[-1]
    return dict(lr_scheduler=cfg.train.lr_scheduler, stepsize=stepsize, gamma=cfg.train.gamma,
                max_epoch=cfg.train.max_epoch)


def model_kwargs(cfg: CN) -> Dict[str, Any]:
    """Keyword arguments of this package's factories, from the configured values."""
    return dict(height=cfg.data.height, width=cfg.data.width, last_stride=cfg.model.last_stride,
                reduction=cfg.scal.reduction, agent_bias_init=cfg.scal.agent_bias_init, feature=cfg.test.feature,
                pretrained_path=cfg.model.pretrained_path)


def engine_run_kwargs(cfg: CN) -> Dict[str, Any]:
    """Keyword arguments of torchreid's ``Engine.run``."""
    return dict(
        save_dir=cfg.data.save_dir, max_epoch=cfg.train.max_epoch, start_epoch=cfg.train.start_epoch,
        fixbase_epoch=cfg.train.fixbase_epoch, open_layers=list(cfg.train.open_layers),
        start_eval=cfg.test.start_eval, eval_freq=cfg.test.eval_freq, test_only=cfg.test.evaluate,
        print_freq=cfg.train.print_freq, dist_metric=cfg.test.dist_metric,
        normalize_feature=cfg.test.normalize_feature, visrank=cfg.test.visrank,
        visrank_topk=cfg.test.visrank_topk, use_metric_cuhk03=cfg.cuhk03.use_metric_cuhk03,
        ranks=list(cfg.test.ranks), rerank=cfg.test.rerank,
    )
