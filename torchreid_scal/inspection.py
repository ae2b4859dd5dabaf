"""Looking inside a trained SCAL model: critic values, rewards and attention maps per image, rendered as
overlays, summarised in a report, and the run's training curves. ``tools/visualize_attention.py`` and
``tools/attention_report.py`` are thin command lines over :func:`visualize` and :func:`attention_report`.

Rewards need the true class: ``R_c`` compares the prediction with it and ``R_a`` the true-class probability
with and without attention. Classifier classes are the training identities of the config's sources, so
rewards are defined on the training split (and on ``scal_demo``'s held-out images of the training
identities) only; query and gallery hold other people (their pids are not classes) and images from a folder
have no label at all. There ``R``, ``R_c`` and ``R_a`` are NaN and only
the critic values ``V_k`` are reported. The report therefore reads the training split by default, through
the test transforms (resize and normalise, no augmentation), so that its numbers are deterministic.
"""
from __future__ import annotations

import copy
import glob
import html
import json
import math
import os
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.data import DataLoader, Dataset, Subset
from yacs.config import CfgNode as CN

from . import _torchreid
from .checkpoint import CheckpointError, load_checkpoint, state_dict_of
from .config import ConfigError
from .critic_metrics import critic_summary, reliability_table
from .datasets import DataError
from .datasets.checks import read_image
from .models import DEFAULT_CFGS, SCALResNet, StageCritics
from .rewards import Rewards, compute_rewards
from .runner import build_datamanager, build_trained_model, select_device

PANEL_WIDTH = 128
IMAGE_HEIGHT = 256
CAPTION_HEIGHT = 36
PANEL_HEIGHT = IMAGE_HEIGHT + CAPTION_HEIGHT
"""Every panel of a row PNG is ``PANEL_HEIGHT x PANEL_WIDTH``: a row's width is panels x ``PANEL_WIDTH``."""
HEAT_WEIGHT = 0.7  # share of the heat map in an overlay, as in torchreid's tools/visualize_actmap.py
GRID_SPACING = 10  # white gap between torchreid's activation-map panels
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
SPLITS = ("train", "heldout", "query", "gallery")
LABELLED_SPLITS = ("train", "heldout")  # splits whose pids are classifier classes
QUERY_IMAGES = 16  # images visualised from the query split unless a number is given
REWARD_KEYS = ("mean_reward", "classification_rate", "attention_helped_rate", "critic_mse", "critic_reward_corr")
CURVES = {
    "rewards": ("mean_reward", "classification_rate", "attention_helped_rate"),
    "critic MSE": ("critic_mse",),
    "critic-reward correlation": ("critic_reward_corr",),
}
"""Panels of the training-curves figure: title -> names of the engine's ``Epoch/<name>`` scalars."""


@dataclass
class Inspection:
    """Per-image results of one eval pass over N images; column / index i is image i.

    ``values`` holds one row per critic stage (``stages``); rewards are NaN where undefined (see the
    module docstring). With ``keep_maps``: the normalised input ``images`` and, per attention stage, the
    2-D ``maps`` the overlays show (spatial: ``A_k``; channel: the channel mean of ``X_k * A_k``) and for
    channel attention ``plain_maps``, the channel mean of ``X_k`` without the weights.
    """

    attention: str
    stages: List[int]
    values: torch.Tensor
    rewards: Rewards
    pids: torch.Tensor
    paths: List[str]
    images: Optional[torch.Tensor] = None
    maps: Optional[List[torch.Tensor]] = None
    plain_maps: Optional[List[torch.Tensor]] = None

    @property
    def value(self) -> torch.Tensor:
        """Mean critic value over the stages, per image: the score that ranks images."""
        return self.values.mean(dim=0)

    @property
    def known(self) -> torch.Tensor:
        """Which images have a defined reward."""
        return ~self.rewards.total.isnan()


def load_scal(cfg: CN, weights: str, device: torch.device) -> Tuple[SCALResNet, StageCritics]:
    """The model (sized by the checkpoint's classifier) and its critics from ``weights``, on ``device``, in
    eval mode. The checkpoint supplies every weight, so no ImageNet weights are loaded. CheckpointError when
    the file lacks the critics or does not fit the config; ConfigError when model.name has no attention."""
    state = load_checkpoint(weights)
    model_state = state_dict_of(state, source=weights)
    if "classifier.weight" not in model_state:
        raise CheckpointError(f"{weights} holds no classifier.weight: not a checkpoint of a resnet50_scal model")
    if not isinstance(state.get("critic"), Mapping):
        raise CheckpointError(f"{weights} has no 'critic' entry: it was not written by the SCAL engine "
                              "(loss.name scal), so there are no critics to inspect")
    critic_state = state_dict_of(state["critic"], source=f"the 'critic' entry of {weights}")
    if DEFAULT_CFGS.get(cfg.model.name, {}).get("attention") is None:
        raise ConfigError(f"model.name {cfg.model.name} has no attention agents: {weights} cannot be inspected "
                          "with it (use resnet50_scal, resnet50_scal_channel or resnet50_scal_spatial)")
    model = build_trained_model(cfg, model_state, weights)
    critics = StageCritics(model.attention, model.stage_channels, list(cfg.scal.critic_stages))
    try:
        critics.load_state_dict(critic_state)
    except RuntimeError as err:
        raise CheckpointError(f"{weights} does not fit the configured critics ({model.attention} attention, "
                              f"scal.critic_stages {list(cfg.scal.critic_stages)}): {err}") from None
    return model.to(device).eval(), critics.to(device).eval()


class ImageFiles(Dataset):
    """Every image file of a folder (sorted by name) through ``transform``, as torchreid-style items
    with no identity (pid -1)."""

    def __init__(self, folder: str, transform) -> None:
        self.paths = sorted(p for p in glob.glob(os.path.join(folder, "*")) if p.lower().endswith(IMAGE_EXTENSIONS))
        if not self.paths:
            raise DataError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in {folder}")
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        img = self.transform(read_image(self.paths[index]))
        return {"img": img, "pid": -1, "camid": -1, "impath": self.paths[index]}


def eval_transform(cfg: CN):
    """torchreid's test transform for the configured size and normalisation."""
    return _torchreid.data.transforms.build_transforms(cfg.data.height, cfg.data.width, transforms=[],
                                                       norm_mean=list(cfg.data.norm_mean),
                                                       norm_std=list(cfg.data.norm_std))[1]


def make_loader(cfg: CN, dataset: Dataset, indices: Optional[Sequence[int]] = None) -> DataLoader:
    """An unshuffled loader over ``dataset`` (or its ``indices``) with the test batch size."""
    return DataLoader(dataset if indices is None else Subset(dataset, list(indices)), batch_size=cfg.test.batch_size,
                      shuffle=False, num_workers=cfg.data.workers)


def split_dataset(datamanager, split: str) -> Dataset:
    """A split through the test transforms: the sources' training images or, for a dataset that has them
    (``scal_demo``), held-out images of the training identities (labels are classifier classes in both);
    or the query / gallery of the first target."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {list(SPLITS)}")
    if split not in LABELLED_SPLITS:
        return datamanager.test_loader[datamanager.targets[0]][split].dataset
    dataset = copy.copy(datamanager.train_loader.dataset)
    dataset.transform, dataset.k_tfm = datamanager.transform_te, 1
    if split == "heldout":
        if not getattr(dataset, "heldout", None):
            raise DataError(f"{list(datamanager.sources)} has no held-out images of its training identities "
                            "(only scal_demo does); use --split train")
        dataset.data = dataset.heldout
    return dataset


def _batches(data: Union[Iterable[Mapping[str, Any]], Sequence[torch.Tensor]], batch_size: int):
    if isinstance(data, torch.Tensor) or (isinstance(data, Sequence) and data and isinstance(data[0], torch.Tensor)):
        images = data if isinstance(data, torch.Tensor) else torch.stack(list(data))
        for start in range(0, len(images), batch_size):
            yield {"img": images[start:start + batch_size]}
    else:
        yield from data


@torch.no_grad()
def inspect_images(model: SCALResNet, critics: StageCritics,
                   data: Union[Iterable[Mapping[str, Any]], Sequence[torch.Tensor]], pids_are_classes: bool = False,
                   keep_maps: bool = True, batch_size: int = 64) -> Inspection:
    """Run ``model`` and ``critics`` in eval mode over a torchreid loader (dict batches) or image tensors.

    Rewards are computed, against the eval-mode pass with ``use_attention=False``, only when
    ``pids_are_classes`` says the batches' pids are classifier classes; otherwise they are NaN.
    """
    model.eval()
    critics.eval()
    device = next(model.parameters()).device
    values, rewards, pids, paths, images, maps, plain_maps = [], [], [], [], [], [], []
    for batch in _batches(data, batch_size):
        imgs = batch["img"].to(device)
        size = imgs.size(0)
        pid = torch.as_tensor(batch.get("pid", torch.full((size,), -1))).long()
        out = model(imgs, return_stages=True)
        values.append(critics(out.features, out.maps)[0].float().cpu())
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
                pairs = [channel_activation(x.float(), a.float()) for x, a in zip(out.features, out.maps)]
                maps.append([weighted.cpu() for weighted, _ in pairs])
                plain_maps.append([unweighted.cpu() for _, unweighted in pairs])
            else:
                maps.append([a.float()[:, 0].cpu() for a in out.maps])
    if not values:
        raise DataError("no images to inspect")
    return Inspection(
        model.attention, list(critics.stages), torch.cat(values, dim=1), Rewards(*torch.cat(rewards, dim=1)),
        torch.cat(pids), paths, torch.cat(images) if keep_maps else None,
        [torch.cat(per_stage) for per_stage in zip(*maps)] if keep_maps else None,
        [torch.cat(per_stage) for per_stage in zip(*plain_maps)] if plain_maps else None,
    )


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


def to_rgb(image: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """A normalised (3, H, W) input tensor back to an (H, W, 3) uint8 RGB array."""
    img = image.detach().float().cpu() * torch.tensor(std).view(3, 1, 1) + torch.tensor(mean).view(3, 1, 1)
    return np.uint8(np.floor(img.clamp(0, 1).permute(1, 2, 0).numpy() * 255))


def heat_map(values: Union[np.ndarray, torch.Tensor], size: Tuple[int, int]) -> np.ndarray:
    """A 2-D map bilinearly upsampled to ``size`` (h, w), min-max normalised, coloured with the JET map (RGB)."""
    m = cv2.resize(np.asarray(values, np.float32), (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    m = 255 * (m - m.min()) / (m.max() - m.min() + 1e-12)
    return cv2.cvtColor(cv2.applyColorMap(np.uint8(np.floor(m)), cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)


def heat_overlay(rgb: np.ndarray, values: Union[np.ndarray, torch.Tensor]) -> np.ndarray:
    """The heat map of ``values`` blended onto the RGB image (``HEAT_WEIGHT`` heat map)."""
    blend = (1 - HEAT_WEIGHT) * rgb.astype(np.float32) + HEAT_WEIGHT * heat_map(values, rgb.shape[:2])
    return np.clip(blend, 0, 255).astype(np.uint8)


def channel_activation(features: torch.Tensor, weights: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Channel attention's activation maps, (B, h, w) each: the channel mean of ``X_k`` weighted by ``A_k``,
    and the unweighted channel mean of ``X_k``."""
    return (features * weights).mean(dim=1), features.mean(dim=1)


def panel(rgb: np.ndarray, lines: Sequence[str]) -> np.ndarray:
    """``rgb`` resized to ``IMAGE_HEIGHT x PANEL_WIDTH`` above a white caption of up to two lines."""
    out = np.full((PANEL_HEIGHT, PANEL_WIDTH, 3), 255, np.uint8)
    out[:IMAGE_HEIGHT] = cv2.resize(rgb, (PANEL_WIDTH, IMAGE_HEIGHT), interpolation=cv2.INTER_LINEAR)
    for j, line in enumerate(lines[:2]):
        cv2.putText(out, line, (3, IMAGE_HEIGHT + 14 + 16 * j), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1,
                    cv2.LINE_AA)
    return out


def render_row(ins: Inspection, i: int, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Image i and its per-stage overlays side by side, each captioned with the stage's critic value V_k
    (and the reward R where defined); needs an inspection made with ``keep_maps``."""
    if ins.images is None or ins.maps is None:
        raise ValueError("rendering needs an inspection made with keep_maps=True")
    image = cv2.resize(to_rgb(ins.images[i], mean, std), (PANEL_WIDTH, IMAGE_HEIGHT), interpolation=cv2.INTER_LINEAR)
    reward = f" R={float(ins.rewards.total[i]):.0f}" if ins.known[i] else ""
    values = dict(zip(ins.stages, ins.values[:, i].tolist()))
    pid = int(ins.pids[i])
    panels = [panel(image, ["image" if pid < 0 else f"pid {pid}", f"V={float(ins.value[i]):.3f}{reward}"])]
    for k, attended in enumerate(ins.maps):
        score = (f"V{k}={values[k]:.3f}" if k in values else f"V{k} n/a") + reward
        if ins.plain_maps is None:
            panels.append(panel(heat_overlay(image, attended[i]), [f"A{k}", score]))
        else:
            panels.append(panel(heat_overlay(image, attended[i]), [f"X{k}*A{k}", score]))
            panels.append(panel(heat_overlay(image, ins.plain_maps[k][i]), [f"X{k}", score]))
    return np.concatenate(panels, axis=1)


def actmap_grid(rgb: np.ndarray, actmap: Union[np.ndarray, torch.Tensor]) -> np.ndarray:
    """torchreid's activation-map picture: image, heat map and overlay, ``GRID_SPACING`` apart (RGB)."""
    height, width = rgb.shape[:2]
    grid = np.full((height, 3 * width + 2 * GRID_SPACING, 3), 255, np.uint8)
    grid[:, :width] = rgb
    grid[:, width + GRID_SPACING:2 * width + GRID_SPACING] = heat_map(actmap, (height, width))
    grid[:, 2 * width + 2 * GRID_SPACING:] = heat_overlay(rgb, actmap)
    return grid


def save_rgb(path: str, rgb: np.ndarray) -> str:
    """Write an RGB array with OpenCV (which expects BGR), creating the directory."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    if not cv2.imwrite(path, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {path}")
    return path


def _stem(path: str, index: int) -> str:
    return os.path.splitext(os.path.basename(path))[0] if path else f"image{index:05d}"


def visualize(cfg: CN, weights: str, output: str, images: Optional[str] = None,
              num_images: Optional[int] = None) -> List[str]:
    """Row PNGs (``output/<name>.png``) and torchreid-style activation maps (``output/actmap/<name>.jpg``) for
    the files of the folder ``images`` (all by default) or the query split of the first target (the first
    ``QUERY_IMAGES`` by default); returns the row PNGs' paths. Query pids are not classes: no rewards."""
    device = select_device(cfg)
    model, critics = load_scal(cfg, weights, device)
    if images:
        dataset: Dataset = ImageFiles(images, eval_transform(cfg))
    else:
        dataset = split_dataset(build_datamanager(cfg, device), "query")
    count = num_images or (len(dataset) if images else QUERY_IMAGES)
    ins = inspect_images(model, critics, make_loader(cfg, dataset, range(min(count, len(dataset)))))
    actmaps = activation_maps(model, ins.images, cfg.test.batch_size)
    mean, std = list(cfg.data.norm_mean), list(cfg.data.norm_std)
    written = []
    for i, path in enumerate(ins.paths):
        name = _stem(path, i)
        written.append(save_rgb(os.path.join(output, f"{name}.png"), render_row(ins, i, mean, std)))
        grid = actmap_grid(to_rgb(ins.images[i], mean, std), actmaps[i])
        save_rgb(os.path.join(output, "actmap", f"{name}.jpg"), grid)
    print(f"Wrote {len(written)} attention rows to {output} and activation maps to {os.path.join(output, 'actmap')}")
    return written


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


def plot_training_curves(scalars: Mapping[str, Sequence[Tuple[int, float]]], path: str) -> bool:
    """Draw the ``CURVES`` panels found in ``scalars`` per epoch into ``path`` (Agg); False if none is there."""
    panels = [(title, [n for n in names if scalars.get(n)]) for title, names in CURVES.items()]
    panels = [(title, names) for title, names in panels if names]
    if not panels:
        return False
    fig = Figure(figsize=(4.2 * len(panels), 3.2))
    FigureCanvasAgg(fig)
    for ax, (title, names) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels):
        for name in names:
            epochs, values = zip(*scalars[name])
            ax.plot(epochs, values, marker="o", label=name)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=100)
    return True


def _image_record(ins: Inspection, i: int, png: str) -> Dict[str, Any]:
    rewards = dict(zip(("reward_c", "reward_a", "reward"), (float(r[i]) for r in ins.rewards)))
    return {"path": ins.paths[i], "pid": int(ins.pids[i]), "png": png, "value": float(ins.value[i]),
            "values": {str(k): float(v) for k, v in zip(ins.stages, ins.values[:, i])}, **rewards}


def _plain(value: Any) -> Any:
    """NaN becomes None, recursively, so that the JSON is standard (browsers reject NaN)."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def attention_report(cfg: CN, weights: str, output: str, split: str = "train", bins: int = 5,
                     events: Optional[str] = None, examples: int = 4) -> Dict[str, Any]:
    """Inspect every image of ``split`` and write ``output/report.json`` and ``output/report.html`` (with the
    ``examples`` best- and worst-scored images' rows under ``output/images/`` and, when the run's event files
    exist, ``output/training_curves.png``); returns the report. ``events`` defaults to the run's save_dir,
    the parent of the weights' ``model/`` folder."""
    device = select_device(cfg)
    model, critics = load_scal(cfg, weights, device)
    datamanager = build_datamanager(cfg, device)
    dataset = split_dataset(datamanager, split)
    classes = model.classifier.out_features
    if split in LABELLED_SPLITS and datamanager.num_train_pids != classes:
        raise DataError(f"{weights} classifies {classes} identities but the training split of "
                        f"{list(cfg.data.sources)} has {datamanager.num_train_pids}: rewards need the dataset "
                        "the model was trained on")
    labelled = split in LABELLED_SPLITS
    ins = inspect_images(model, critics, make_loader(cfg, dataset), pids_are_classes=labelled, keep_maps=False)
    events = events or os.path.dirname(os.path.dirname(os.path.abspath(weights)))
    report: Dict[str, Any] = {"weights": os.path.abspath(weights), "model": cfg.model.name,
                              "attention": model.attention, "split": split, "bins": bins, "events_dir": events,
                              **summarize(ins, bins)}
    order = ins.value.argsort(descending=True).tolist()
    mean, std = list(cfg.data.norm_mean), list(cfg.data.norm_std)
    for name, picked in (("best", order[:examples]), ("worst", order[::-1][:examples])):
        shown = inspect_images(model, critics, make_loader(cfg, dataset, picked), pids_are_classes=labelled)
        report[name] = []
        for i in range(len(picked)):
            png = f"images/{name}_{i}.png"
            save_rgb(os.path.join(output, png), render_row(shown, i, mean, std))
            report[name].append(_image_record(shown, i, png))
    curves = plot_training_curves(read_epoch_scalars(events), os.path.join(output, "training_curves.png"))
    report["training_curves"] = "training_curves.png" if curves else None
    report = _plain(report)
    with open(os.path.join(output, "report.json"), "w") as f:
        json.dump(report, f, indent=2, allow_nan=False)
    with open(os.path.join(output, "report.html"), "w") as f:
        f.write(report_html(report))
    print(f"Wrote {os.path.join(output, 'report.html')} ({report['num_images']} images of the {split} split)")
    return report


def _num(value: Any) -> str:
    return "n/a" if value is None else f"{value:.4f}" if isinstance(value, float) else html.escape(str(value))


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_num(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def report_html(report: Mapping[str, Any]) -> str:
    """The report as one self-contained HTML page whose pictures are relative links next to it."""
    stages = [str(k) for k in report["critic_stages"]]
    parts = [
        f"<h1>SCAL attention report</h1><p>{html.escape(report['weights'])}<br>model {html.escape(report['model'])} "
        f"({html.escape(report['attention'])} attention), {html.escape(report['split'])} split: "
        f"{report['num_images']} images, {report['num_rewarded']} with a defined reward.</p>",
        "<h2>Critic value per stage</h2>",
        _table(["stage", "mean V_k", "corr(V_k, R)"],
               [[k, report["critic_value_per_stage"][k], report.get(f"critic_reward_corr_stage{k}")] for k in stages]
               + [["mean", report["mean_critic_value"], report["critic_reward_corr"]]]),
        "<h2>Critic vs reward</h2>",
        _table(["critic MSE", "corr(mean V, R)", "mean R"],
               [[report["critic_mse"], report["critic_reward_corr"], report["mean_reward"]]]),
    ]
    if report["reliability"]:
        parts += ["<p>Reliability: mean reward per bin of the stage-mean critic value.</p>",
                  _table(["V from", "V to", "images", "mean V", "mean R"],
                         [[b["low"], b["high"], b["count"], b["mean_value"], b["mean_reward"]]
                          for b in report["reliability"]])]
    else:
        parts.append("<p>Rewards are undefined on this split (its identities are not classifier classes).</p>")
    parts += ["<h2>Did attention help?</h2>",
              _table(["attention helped (R_a = 1)", "classified correctly (R_c = 1)"],
                     [[report["attention_helped_rate"], report["classification_rate"]]])]
    for name in ("best", "worst"):
        parts.append(f"<h2>{name.capitalize()}-scored images (mean critic value)</h2>")
        for item in report[name]:
            parts.append(f'<figure><img src="{html.escape(item["png"])}" alt="{name}"><figcaption>'
                         f'{html.escape(item["path"])}: V={_num(item["value"])} R={_num(item["reward"])}'
                         "</figcaption></figure>")
    parts.append("<h2>Training curves</h2>")
    if report["training_curves"]:
        parts.append(f'<img src="{html.escape(report["training_curves"])}" alt="training curves">')
    else:
        parts.append(f"<p>No Epoch/* TensorBoard scalars in {html.escape(report['events_dir'])}.</p>")
    style = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:.5em 0}"
             "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}figure{margin:.5em 0}")
    return (f'<!doctype html><html><head><meta charset="utf-8"><title>SCAL attention report</title>'
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>\n")
