"""Pictures of attention: one figure per image, torchreid-style activation maps, and training curves.

Every figure has a title and every heat map a colour scale, on an absolute scale where the quantity has one
(attention weights lie in (0, 1)). Rows are at most ``ROW_WIDTH`` pixels wide, so that a report page shows
them without scrolling sideways.
"""
from __future__ import annotations

import os
from typing import Mapping, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

ROW_WIDTH = 1350  # pixels of an attention figure
DPI = 100
HEAT_WEIGHT = 0.7  # share of the heat map in an overlay, as in torchreid's tools/visualize_actmap.py
GRID_SPACING = 10  # white gap between torchreid's activation-map panels
CURVES = {
    "rewards": ("mean_reward", "classification_rate", "attention_helped_rate"),
    "critic MSE": ("critic_mse",),
    "critic-reward correlation": ("critic_reward_corr", "critic_heldout_corr"),
    "critic gradient (held-out)": ("critic_alignment", "critic_shared", "critic_agreement", "critic_alive"),
}
"""Panels of the training-curves figure: title -> names of the engine's ``Epoch/<name>`` scalars."""

Array = Union[np.ndarray, torch.Tensor]


def to_rgb(image: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """A normalised (3, H, W) input tensor back to an (H, W, 3) uint8 RGB array."""
    img = image.detach().float().cpu() * torch.tensor(std).view(3, 1, 1) + torch.tensor(mean).view(3, 1, 1)
    return np.uint8(np.floor(img.clamp(0, 1).permute(1, 2, 0).numpy() * 255))


def heat_map(values: Array, size: Tuple[int, int]) -> np.ndarray:
    """A 2-D map bilinearly upsampled to ``size`` (h, w), min-max normalised, coloured with the JET map (RGB)."""
    m = cv2.resize(np.asarray(values, np.float32), (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    m = 255 * (m - m.min()) / (m.max() - m.min() + 1e-12)
    return cv2.cvtColor(cv2.applyColorMap(np.uint8(np.floor(m)), cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)


def heat_overlay(rgb: np.ndarray, values: Array) -> np.ndarray:
    """The heat map of ``values`` blended onto the RGB image (``HEAT_WEIGHT`` heat map)."""
    blend = (1 - HEAT_WEIGHT) * rgb.astype(np.float32) + HEAT_WEIGHT * heat_map(values, rgb.shape[:2])
    return np.clip(blend, 0, 255).astype(np.uint8)


def actmap_grid(rgb: np.ndarray, actmap: Array) -> np.ndarray:
    """torchreid's activation-map picture: image, heat map and overlay, ``GRID_SPACING`` apart (RGB)."""
    height, width = rgb.shape[:2]
    grid = np.full((height, 3 * width + 2 * GRID_SPACING, 3), 255, np.uint8)
    grid[:, :width] = rgb
    grid[:, width + GRID_SPACING:2 * width + GRID_SPACING] = heat_map(actmap, (height, width))
    grid[:, 2 * width + 2 * GRID_SPACING:] = heat_overlay(rgb, actmap)
    return grid


def _rendered(fig: Figure) -> np.ndarray:
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def _upsampled(values: Array, size: Tuple[int, int]) -> np.ndarray:
    return cv2.resize(np.asarray(values, np.float32), (size[1], size[0]), interpolation=cv2.INTER_NEAREST)


def attention_figure(rgb: np.ndarray, title: str, stage_titles: Sequence[str], maps: Sequence[Array],
                     weights: Optional[Sequence[Array]] = None) -> np.ndarray:
    """One image's attention at every stage, as an RGB array ``ROW_WIDTH`` pixels wide.

    Spatial attention (``weights`` None): each stage's map ``A_k`` over the image, on the fixed scale 0..1.
    Channel attention: each stage's ratio of attended to unattended activation, ``sum_c A_c X_c / sum_c X_c``
    per position (the activation-weighted mean channel weight: where attention keeps, and where it
    suppresses, what the stage sees), with its own colour scale; below it the stage's channel weights
    ``A_c`` sorted from largest to smallest, against the neutral 0.5 of an untrained agent.
    """
    columns = 1 + len(maps)
    rows = 1 if weights is None else 2
    fig = Figure(figsize=(ROW_WIDTH / DPI, (3.9 if rows == 1 else 5.6)), dpi=DPI)
    grid = fig.add_gridspec(rows, columns, height_ratios=[3, 1.4][:rows])
    ax = fig.add_subplot(grid[0, 0])
    ax.imshow(rgb)
    ax.set_title("image", fontsize=9)
    ax.axis("off")
    height, width = rgb.shape[:2]
    for k, (values, name) in enumerate(zip(maps, stage_titles)):
        ax = fig.add_subplot(grid[0, k + 1])
        ax.imshow(rgb, alpha=0.35)
        scale = dict(vmin=0.0, vmax=1.0) if weights is None else {}
        shown = ax.imshow(_upsampled(values, (height, width)), cmap="jet", alpha=0.65, **scale)
        fig.colorbar(shown, ax=ax, fraction=0.08, pad=0.02).ax.tick_params(labelsize=7)
        ax.set_title(name, fontsize=8)
        ax.axis("off")
        if weights is not None:
            ax = fig.add_subplot(grid[1, k + 1])
            profile = np.sort(np.asarray(weights[k], np.float32).ravel())[::-1]
            ax.plot(profile, lw=1.2)
            ax.axhline(0.5, color="grey", lw=0.6, ls="--")
            ax.set_ylim(0, 1)
            ax.set_xlabel(f"channel (sorted, {len(profile)})", fontsize=7)
            ax.tick_params(labelsize=6)
    if weights is not None:
        ax = fig.add_subplot(grid[1, 0])
        ax.axis("off")
        ax.text(0.5, 0.5, "channel weights A_c\n(sorted; dashed: 0.5)", ha="center", va="center", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _rendered(fig)


def plot_training_curves(scalars: Mapping[str, Sequence[Tuple[int, float]]], path: str) -> bool:
    """Draw the ``CURVES`` panels found in ``scalars`` per epoch into ``path`` (Agg); False if none is there."""
    panels = [(title, [n for n in names if scalars.get(n)]) for title, names in CURVES.items()]
    panels = [(title, names) for title, names in panels if names]
    if not panels:
        return False
    fig = Figure(figsize=(min(4.2 * len(panels), ROW_WIDTH / DPI), 3.2), dpi=DPI)
    for ax, (title, names) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels):
        for name in names:
            epochs, values = zip(*scalars[name])
            ax.plot(epochs, values, marker="o", markersize=3, label=name)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=DPI)
    return True


def save_rgb(path: str, rgb: np.ndarray) -> str:
    """Write an RGB array, encoded by OpenCV (which expects BGR) as the extension says, creating the directory.
    The file is written by Python: ``cv2.imwrite`` crashes on paths that are not UTF-8."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    ok, data = cv2.imencode(os.path.splitext(path)[1], cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f"could not encode {path}")
    with open(path, "wb") as f:
        f.write(data.tobytes())
    return path
