"""torchreid_scal.figures: heat maps, attention figures within the page width, activation maps, curves."""
from __future__ import annotations

import cv2
import numpy as np
import torch

from conftest import HEIGHT, WIDTH
from torchreid_scal.figures import (
    GRID_SPACING, ROW_WIDTH, actmap_grid, attention_figure, heat_map, heat_overlay, plot_training_curves, to_rgb,
)
from torchreid_scal.models import stage_sizes


def test_heat_map_is_hot_where_the_map_is_high():
    values = np.zeros((4, 2), np.float32)
    values[0, 0] = 1.0
    heat = heat_map(values, (HEIGHT, WIDTH))
    assert heat.shape == (HEIGHT, WIDTH, 3) and heat.dtype == np.uint8
    assert heat[0, 0, 0] > heat[0, 0, 2] and heat[-1, -1, 2] > heat[-1, -1, 0]  # RGB: red top left, blue elsewhere
    grey = np.full((HEIGHT, WIDTH, 3), 100, np.uint8)
    assert np.abs(heat_overlay(grey, values) - (0.3 * grey + 0.7 * heat)).max() <= 1
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.2, 0.2]
    image = (torch.full((3, 2, 2), 0.5) - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    assert (to_rgb(image, mean, std) == 127).all()


def test_actmap_grid_is_image_heat_and_overlay():
    rgb = np.full((HEIGHT, WIDTH, 3), 50, np.uint8)
    grid = actmap_grid(rgb, np.random.rand(4, 2))
    assert grid.shape == (HEIGHT, 3 * WIDTH + 2 * GRID_SPACING, 3)
    assert (grid[:, :WIDTH] == rgb).all() and (grid[:, WIDTH:WIDTH + GRID_SPACING] == 255).all()


def sizes():
    return stage_sizes(HEIGHT, WIDTH)


def test_spatial_figure_fits_the_page_and_differs_with_the_maps():
    rgb = np.full((HEIGHT, WIDTH, 3), 128, np.uint8)
    titles = [f"stage {k}" for k in range(5)]
    low = attention_figure(rgb, "pid 3", titles, [np.full(s, 0.1) for s in sizes()])
    high = attention_figure(rgb, "pid 3", titles, [np.full(s, 0.9) for s in sizes()])
    assert low.shape[1] == ROW_WIDTH <= 1400 and low.shape[2] == 3 and low.dtype == np.uint8
    # An absolute colour scale: constant maps of different values are drawn in different colours.
    assert np.abs(low.astype(int) - high.astype(int)).sum() > 0


def test_channel_figure_has_a_weight_profile_row_and_shows_what_attention_changes():
    rgb = np.full((HEIGHT, WIDTH, 3), 128, np.uint8)
    titles = [f"stage {k}" for k in range(5)]
    ratio = [np.random.rand(*s) for s in sizes()]
    flat = attention_figure(rgb, "pid 1", titles, ratio, [np.full(64, 0.5) for _ in range(5)])
    steep = attention_figure(rgb, "pid 1", titles, ratio, [np.linspace(0, 1, 64) for _ in range(5)])
    spatial = attention_figure(rgb, "pid 1", titles, ratio)
    assert flat.shape[1] == ROW_WIDTH and flat.shape[0] > spatial.shape[0]
    assert np.abs(flat.astype(int) - steep.astype(int)).sum() > 0


def test_training_curves_from_scalars(tmp_path):
    scalars = {"mean_reward": [(1, 0.1), (2, 0.2)], "critic_alignment": [(1, 0.0), (2, 0.1)]}
    assert plot_training_curves(scalars, str(tmp_path / "curves.png"))
    image = cv2.imread(str(tmp_path / "curves.png"))
    assert image is not None and image.shape[1] <= 1400
    assert not plot_training_curves({}, str(tmp_path / "none.png")) and not (tmp_path / "none.png").exists()
