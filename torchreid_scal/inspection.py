"""Looking inside a trained SCAL model: critic values, rewards and attention per image, and the run's
training curves. The pictures are drawn by :mod:`torchreid_scal.figures`; ``tools/visualize_attention.py``
and ``tools/attention_report.py`` are thin command lines over :mod:`torchreid_scal.report`.

Rewards need the true class: ``R_c`` compares the prediction with it and ``R_a`` the true-class probability
with and without attention. Classifier classes are the training identities of the config's sources, so
rewards are defined on the training split (and on ``scal_demo``'s held-out images of the training
identities) only; query and gallery hold other people (their pids are not classes) and images from a folder
have no label at all. There ``R``, ``R_c`` and ``R_a`` are NaN and only the critic values ``V_k`` are
reported. Images are read through the test transforms (resize and normalise, no augmentation), so that the
numbers are deterministic.
"""
from __future__ import annotations

import glob
import os
import warnings
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.data import Dataset
from yacs.config import CfgNode as CN

from .checkpoint import CheckpointError, load_checkpoint, state_dict_of
from .config import ConfigError
from .critic_metrics import critic_summary, reliability_table
from .datasets import DataError
from .datasets.checks import read_image
from .models import DEFAULT_CFGS, CompatibleCritics, CriticContext, SCALNetwork, StageCritics
from .rewards import Rewards, compute_rewards
from .runner import build_trained_model

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
REWARD_KEYS = ("mean_reward", "classification_rate", "attention_helped_rate", "critic_mse", "critic_reward_corr")


@dataclass
class Inspection:
    """Per-image results of one eval pass over N images; column / index i is image i.

    ``values`` holds one row per critic stage (``stages``); rewards are NaN where undefined (see the
    module docstring). With ``keep_maps``: the normalised input ``images`` and, per attention stage, the
    2-D ``maps`` the figures show (spatial: ``A_k``; channel: :func:`attended_ratio`) and, for channel
    attention, the channel ``weights`` ``A_k`` (N, C).
    """

    attention: str
    stages: List[int]
    values: torch.Tensor
    rewards: Rewards
    pids: torch.Tensor
    paths: List[str]
    images: Optional[torch.Tensor] = None
    maps: Optional[List[torch.Tensor]] = None
    weights: Optional[List[torch.Tensor]] = None

    @property
    def value(self) -> torch.Tensor:
        """Mean critic value over the stages, per image: the score that ranks images."""
        return self.values.mean(dim=0)

    @property
    def known(self) -> torch.Tensor:
        """Which images have a defined reward."""
        return ~self.rewards.total.isnan()


def load_scal(cfg: CN, weights: str, device: torch.device) -> Tuple[SCALNetwork, Union[StageCritics, CompatibleCritics]]:
    """The model (sized by the checkpoint's classifier) and its critics from ``weights``, on ``device``, in
    eval mode. The checkpoint supplies every weight, so no ImageNet weights are loaded, and the critics' form,
    activation and stages where it records them (older checkpoints: the paper's, ``scal.critic_activation`` and
    ``scal.critic_stages``). CheckpointError when
    the file lacks the critics or does not fit the config; ConfigError when model.name has no attention."""
    state = load_checkpoint(weights)
    model_state = state_dict_of(state, source=weights)
    if "classifier.weight" not in model_state:
        raise CheckpointError(f"{weights} holds no classifier.weight: not a checkpoint of a SCAL model")
    if not isinstance(state.get("critic"), Mapping):
        raise CheckpointError(f"{weights} has no 'critic' entry: it was not written by the SCAL engine "
                              "(loss.name scal), so there are no critics to inspect")
    critic_state = state_dict_of(state["critic"], source=f"the 'critic' entry of {weights}")
    if DEFAULT_CFGS.get(cfg.model.name, {}).get("attention") is None:
        raise ConfigError(f"model.name {cfg.model.name} has no attention agents: {weights} cannot be inspected "
                          "with it (use <backbone>_scal, _scal_channel or _scal_spatial, e.g. resnet50_scal)")
    model = build_trained_model(cfg, model_state, weights)
    architecture = state["critic"].get("architecture") or {}
    stages = list(architecture.get("stages", cfg.scal.critic_stages))
    activation = architecture.get("activation", cfg.scal.critic_activation)
    if architecture.get("form", "paper") == "compatible":
        critics = CompatibleCritics(model.attention, model.stage_channels, stages, model.classifier.out_features,
                                    activation=activation)
    else:
        critics = StageCritics(model.attention, model.stage_channels, stages, activation=activation)
    try:
        critics.load_state_dict(critic_state)
    except RuntimeError as err:
        raise CheckpointError(f"{weights} does not fit the configured critics ({model.attention} attention, "
                              f"scal.critic_stages {stages}): {err}") from None
    return model.to(device).eval(), critics.to(device).eval()


class ImageFiles(Dataset):
    """Every image file of a folder (sorted by name) through ``transform``, as torchreid-style items
    with no identity (pid -1). Other files are left out with a warning naming them."""

    def __init__(self, folder: str, transform) -> None:
        files = sorted(p for p in glob.glob(os.path.join(glob.escape(folder), "*")) if os.path.isfile(p))
        self.paths = [p for p in files if p.lower().endswith(IMAGE_EXTENSIONS)]
        if not self.paths:
            raise DataError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in {folder}")
        others = [os.path.basename(p) for p in files if p not in self.paths]
        if others:
            warnings.warn(f"{folder}: leaving out {len(others)} files that are not images "
                          f"({', '.join(IMAGE_EXTENSIONS)}): {others[:5]}")
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        img = self.transform(read_image(self.paths[index]))
        return {"img": img, "pid": -1, "camid": -1, "impath": self.paths[index]}


def _batches(data: Union[Iterable[Mapping[str, Any]], Sequence[torch.Tensor]], batch_size: int):
    if isinstance(data, torch.Tensor) or (isinstance(data, Sequence) and data and isinstance(data[0], torch.Tensor)):
        images = data if isinstance(data, torch.Tensor) else torch.stack(list(data))
        for start in range(0, len(images), batch_size):
            yield {"img": images[start:start + batch_size]}
    else:
        yield from data


@torch.no_grad()
def inspect_images(model: SCALNetwork, critics: StageCritics,
                   data: Union[Iterable[Mapping[str, Any]], Sequence[torch.Tensor]], pids_are_classes: bool = False,
                   keep_maps: bool = True, batch_size: int = 64) -> Inspection:
    """Run ``model`` and ``critics`` in eval mode over a torchreid loader (dict batches) or image tensors.

    Rewards are computed, against the eval-mode pass with ``use_attention=False``, only when
    ``pids_are_classes`` says the batches' pids are classifier classes; otherwise they are NaN.
    """
    model.eval()
    critics.eval()
    device = next(model.parameters()).device
    values, rewards, pids, paths, images, maps, weights = [], [], [], [], [], [], []
    for batch in _batches(data, batch_size):
        imgs = batch["img"].to(device)
        size = imgs.size(0)
        pid = torch.as_tensor(batch.get("pid", torch.full((size,), -1))).long()
        out = model(imgs, return_stages=True)
        context = CriticContext(pid.clamp(min=0).to(device), out.logits.float().softmax(dim=1), out.maps)  # V: b(X)
        values.append(critics(out.features, out.maps, context=context).values.float().cpu())
        if pids_are_classes:
            if pid.min() < 0 or pid.max() >= out.logits.size(1):
                raise DataError(f"pids {int(pid.min())}..{int(pid.max())} are not classes of this "
                                f"{out.logits.size(1)}-class classifier: rewards need the training identities "
                                "of the checkpoint's dataset")
            plain = model(imgs, return_stages=True, use_attention=False, stem=out.features[0]).logits
            rewards.append(torch.stack(compute_rewards(out.logits, plain, pid.to(device))).cpu())
        else:
            rewards.append(torch.full((3, size), float("nan")))
        pids.append(pid)
        paths += list(batch.get("impath", [""] * size))
        if keep_maps:
            images.append(imgs.float().cpu())
            if model.attention == "channel":
                maps.append([attended_ratio(x.float(), a.float()).cpu() for x, a in zip(out.features, out.maps)])
                weights.append([a.float().flatten(1).cpu() for a in out.maps])
            else:
                maps.append([a.float()[:, 0].cpu() for a in out.maps])
    if not values:
        raise DataError("no images to inspect")
    return Inspection(
        model.attention, list(critics.stages), torch.cat(values, dim=1), Rewards(*torch.cat(rewards, dim=1)),
        torch.cat(pids), paths, torch.cat(images) if keep_maps else None,
        [torch.cat(per_stage) for per_stage in zip(*maps)] if keep_maps else None,
        [torch.cat(per_stage) for per_stage in zip(*weights)] if weights else None,
    )


def attended_ratio(features: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Channel attention's effect per position, (B, h, w): attended over unattended activation,
    ``sum_c A_c X_c / sum_c |X_c|``, the activation-weighted mean channel weight (the stages' outputs are
    non-negative after their ReLU, so it lies between the smallest and the largest weight)."""
    return (features * weights).sum(dim=1) / features.abs().sum(dim=1).clamp_min(1e-12)


@torch.no_grad()
def activation_maps(model: torch.nn.Module, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """torchreid's activation maps (its tools/visualize_actmap.py) for any model that accepts
    ``return_featuremaps=True``: squared last feature maps summed over channels, L2-normalised per image."""
    model.eval()
    device = next(model.parameters()).device
    maps = []
    for start in range(0, len(images), batch_size):
        energy = model(images[start:start + batch_size].to(device), return_featuremaps=True).float().square().sum(1)
        maps.append(F.normalize(energy.flatten(1), p=2, dim=1).view_as(energy).cpu())
    return torch.cat(maps)


def summarize(ins: Inspection, bins: int = 5) -> Dict[str, Any]:
    """The report's numbers: critic values over all images; reward statistics (``critic_summary``) and the
    reliability table of the stage-mean value over the images with a defined reward (None without any)."""
    known = ins.known
    summary: Dict[str, Any] = {
        "num_images": len(ins.paths), "num_rewarded": int(known.sum()), "critic_stages": ins.stages,
        "mean_critic_value": float(ins.value.mean()),
        "critic_value_per_stage": {str(k): float(row.mean()) for k, row in zip(ins.stages, ins.values)},
    }
    if known.any():
        rewards = Rewards(*(r[known] for r in ins.rewards))
        summary.update(critic_summary(ins.values[:, known], rewards.total, rewards.classification,
                                      rewards.amelioration, ins.stages))
        summary["reliability"] = reliability_table(ins.value[known], rewards.total, bins)
    else:
        summary.update(dict.fromkeys(REWARD_KEYS), reliability=None)
    return summary


def read_epoch_scalars(events_dir: str) -> Dict[str, List[Tuple[int, float]]]:
    """Every ``Epoch/<name>`` scalar of the TensorBoard event files in ``events_dir`` as (epoch, value) lists,
    keyed by name; empty when there are no event files."""
    if not glob.glob(os.path.join(events_dir, "events.out.tfevents*")):
        return {}
    events = EventAccumulator(events_dir, size_guidance={"scalars": 0})
    events.Reload()
    return {tag[len("Epoch/"):]: [(e.step, e.value) for e in events.Scalars(tag)]
            for tag in events.Tags()["scalars"] if tag.startswith("Epoch/")}
