"""torchreid_scal.inspection: loading model and critics, the per-image pass, overlays, summary and curves."""
from __future__ import annotations

import json
import math
import os
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
from torch.utils.tensorboard import SummaryWriter

from conftest import HEIGHT, WIDTH
from torchreid_scal import _torchreid
from torchreid_scal.checkpoint import CheckpointError
from torchreid_scal.config import ConfigError, load_config
from torchreid_scal.critic_metrics import critic_summary, reliability_table
from torchreid_scal.datasets import DataError
from torchreid_scal.inspection import (
    GRID_SPACING, PANEL_HEIGHT, PANEL_WIDTH, REWARD_KEYS, Inspection, activation_maps, actmap_grid,
    attention_report, heat_map, heat_overlay, inspect_images, load_scal, make_loader, plot_training_curves,
    read_epoch_scalars, render_row, split_dataset, summarize, to_rgb,
)
from torchreid_scal.models import StageCritics, create_model, stage_sizes
from torchreid_scal.rewards import Rewards, compute_rewards
from torchreid_scal.runner import build_datamanager, build_engine, build_model, build_scheduler

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
DEMO = os.path.join(REPO, "configs", "scal_demo.yaml")
CPU = torch.device("cpu")
EPOCH_SCALARS = ("mean_reward", "classification_rate", "attention_helped_rate", "critic_mse", "critic_reward_corr")


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A SCAL checkpoint of the demo config after one training step at 64x32, saved by the engine, with
    ``Epoch/*`` TensorBoard scalars beside it. Built once per module, directly (tools/main.py takes minutes
    on a busy CPU); the generated dataset is shared by the modules of a session."""
    root = tmp_path_factory.getbasetemp() / "reid-data"
    save_dir = str(tmp_path_factory.mktemp("run"))
    opts = ["data.root", str(root), "data.height", str(HEIGHT), "data.width", str(WIDTH), "data.workers", "0"]
    train_cfg = load_config(DEMO, opts + ["data.save_dir", save_dir, "train.batch_size", "8",
                                          "sampler.num_instances", "2"])
    datamanager = build_datamanager(train_cfg, CPU)
    model = build_model(train_cfg, datamanager.num_train_pids)
    optimizer = _torchreid.optim.build_optimizer(model, optim="adam", lr=3e-4)
    engine = build_engine(train_cfg, datamanager, model, optimizer, build_scheduler(train_cfg, optimizer), CPU)
    engine.forward_backward(next(iter(datamanager.train_loader)))
    weights = engine.save_model(0, 0.0, save_dir)
    with SummaryWriter(save_dir) as writer:
        for epoch in (1, 2, 3):
            for name in EPOCH_SCALARS:
                writer.add_scalar(f"Epoch/{name}", 0.1 * epoch, epoch)
    return SimpleNamespace(opts=opts, cfg=load_config(DEMO, opts), weights=weights, save_dir=save_dir,
                           datamanager=datamanager)


@pytest.fixture(scope="module")
def loaded(trained_run):
    return load_scal(trained_run.cfg, trained_run.weights, CPU)


def norm(cfg):
    return list(cfg.data.norm_mean), list(cfg.data.norm_std)


def test_load_scal_restores_model_and_critics(trained_run, loaded):
    model, critics = loaded
    saved = torch.load(trained_run.weights, weights_only=True)
    assert not model.training and not critics.training
    assert model.classifier.out_features == trained_run.datamanager.num_train_pids == 50
    assert all(torch.equal(v, saved["state_dict"][k]) for k, v in model.state_dict().items())
    assert all(torch.equal(v, saved["critic"]["state_dict"][k]) for k, v in critics.state_dict().items())
    assert critics.stages == [0, 1, 2, 3, 4]


def test_load_scal_names_the_file_of_a_checkpoint_it_cannot_use(trained_run, tmp_path):
    classifier = {"classifier.weight": torch.zeros(3, 2048)}
    torch.save({"state_dict": classifier}, tmp_path / "no_critic.pth")
    with pytest.raises(CheckpointError, match=r"no_critic.pth has no 'critic' entry"):
        load_scal(trained_run.cfg, str(tmp_path / "no_critic.pth"), CPU)
    torch.save({"state_dict": classifier, "critic": {"state_dict": classifier}}, tmp_path / "plain.pth")
    bnneck = load_config(DEMO, trained_run.opts + ["model.name", "resnet50_bnneck", "loss.name", "triplet"])
    with pytest.raises(ConfigError, match=r"model.name resnet50_bnneck has no attention agents: .*plain.pth"):
        load_scal(bnneck, str(tmp_path / "plain.pth"), CPU)
    fewer = load_config(DEMO, trained_run.opts + ["scal.critic_stages", "[2, 4]"])
    with pytest.raises(CheckpointError, match=r"model.pth.tar-1 does not fit the configured critics"):
        load_scal(fewer, trained_run.weights, CPU)


def test_inspect_matches_a_direct_pass(trained_run, loaded):
    model, critics = loaded
    dataset = split_dataset(trained_run.datamanager, "train")
    items = [dataset[i] for i in range(0, 48, 8)]
    imgs, pids = torch.stack([it["img"] for it in items]), torch.tensor([it["pid"] for it in items])
    ins = inspect_images(model, critics, make_loader(trained_run.cfg, dataset, range(0, 48, 8)),
                         pids_are_classes=True)
    with torch.no_grad():
        out = model(imgs, return_stages=True)
        rewards = compute_rewards(out.logits, model(imgs, return_stages=True, use_attention=False).logits, pids)
        values = critics(out.features, out.maps)[0]
    assert torch.allclose(ins.values, values, atol=1e-5) and ins.stages == critics.stages
    assert all(torch.equal(mine, theirs) for mine, theirs in zip(ins.rewards, rewards))
    assert torch.equal(ins.pids, pids) and ins.paths == [it["impath"] for it in items]
    assert torch.allclose(ins.images, imgs)
    assert ins.attention == "channel" and len(ins.maps) == len(ins.plain_maps) == 5
    for k, (x, a) in enumerate(zip(out.features, out.maps)):
        assert torch.allclose(ins.maps[k], (x * a).mean(dim=1), atol=1e-5)
        assert torch.allclose(ins.plain_maps[k], x.mean(dim=1), atol=1e-5)

    bare = inspect_images(model, critics, list(imgs), keep_maps=False, batch_size=4)
    assert torch.allclose(bare.values, values, atol=1e-5)
    assert not bare.known.any() and bare.paths == [""] * 6 and bare.maps is None


def test_inspect_refuses_pids_that_are_not_classes(trained_run, loaded):
    query = split_dataset(trained_run.datamanager, "query")  # test identities 51..100; the classifier has 50
    with pytest.raises(DataError, match="not classes"):
        inspect_images(*loaded, make_loader(trained_run.cfg, query, range(2)), pids_are_classes=True)


def test_rows_have_one_fixed_size_panel_per_map(trained_run, loaded):
    query = split_dataset(trained_run.datamanager, "query")
    ins = inspect_images(*loaded, make_loader(trained_run.cfg, query, range(2)))
    row = render_row(ins, 1, *norm(trained_run.cfg))
    assert row.shape == (PANEL_HEIGHT, (1 + 2 * 5) * PANEL_WIDTH, 3) and row.dtype == np.uint8

    spatial = create_model("resnet50_scal_spatial", 5, pretrained=False, height=HEIGHT, width=WIDTH).eval()
    critics = StageCritics("spatial", spatial.stage_channels, [1, 3])
    images = torch.randn(2, 3, HEIGHT, WIDTH)
    sins = inspect_images(spatial, critics, images)
    with torch.no_grad():
        maps = spatial(images, return_stages=True).maps
    assert sins.plain_maps is None and sins.values.shape == (2, 2)
    assert [tuple(m.shape[1:]) for m in sins.maps] == stage_sizes(HEIGHT, WIDTH)
    assert all(torch.allclose(mine, a[:, 0]) for mine, a in zip(sins.maps, maps))
    assert render_row(sins, 0, *norm(trained_run.cfg)).shape == (PANEL_HEIGHT, 6 * PANEL_WIDTH, 3)


def test_activation_maps_follow_torchreid(trained_run, loaded, images):
    model, _ = loaded
    maps = activation_maps(model, images, batch_size=3)
    with torch.no_grad():
        energy = model(images, return_stages=True).featuremaps.square().sum(1)
    assert torch.allclose(maps, energy / energy.flatten(1).norm(dim=1).view(-1, 1, 1), atol=1e-6)
    grid = actmap_grid(to_rgb(images[0], *norm(trained_run.cfg)), maps[0])
    assert grid.shape == (HEIGHT, 3 * WIDTH + 2 * GRID_SPACING, 3)


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


def test_summary_uses_only_images_with_a_reward():
    values = torch.tensor([[0.0, 1.0, 2.0, 3.0], [1.0, 1.0, 2.0, 2.0]])
    reward_c, reward_a = torch.tensor([0.0, 1.0, math.nan, 1.0]), torch.tensor([1.0, 0.0, math.nan, 1.0])
    ins = Inspection("channel", [2, 4], values, Rewards(reward_c, reward_a, reward_c + reward_a),
                     torch.tensor([0, 1, -1, 2]), ["a", "b", "c", "d"])
    summary = summarize(ins, bins=2)
    known = torch.tensor([True, True, False, True])
    expected = critic_summary(values[:, known], (reward_c + reward_a)[known], reward_c[known], reward_a[known], [2, 4])
    assert {key: summary[key] for key in expected} == expected
    assert summary["reliability"] == reliability_table(values.mean(0)[known], (reward_c + reward_a)[known], 2)
    assert summary["num_images"] == 4 and summary["num_rewarded"] == 3
    assert summary["critic_value_per_stage"] == {"2": 1.5, "4": 1.5}

    nan = torch.full((4,), math.nan)
    unknown = summarize(Inspection("channel", [2, 4], values, Rewards(nan, nan, nan), -torch.ones(4).long(), [""] * 4))
    assert all(unknown[key] is None for key in REWARD_KEYS) and unknown["reliability"] is None
    assert unknown["mean_critic_value"] == pytest.approx(1.5)


def test_training_curves_from_event_files(trained_run, tmp_path):
    scalars = read_epoch_scalars(trained_run.save_dir)
    assert set(scalars) == set(EPOCH_SCALARS)
    assert [epoch for epoch, _ in scalars["critic_mse"]] == [1, 2, 3]
    assert [v for _, v in scalars["mean_reward"]] == pytest.approx([0.1, 0.2, 0.3])
    assert plot_training_curves(scalars, str(tmp_path / "curves.png"))
    assert cv2.imread(str(tmp_path / "curves.png")) is not None
    assert read_epoch_scalars(str(tmp_path)) == {} and not plot_training_curves({}, str(tmp_path / "none.png"))


def test_report_on_the_query_split_has_no_rewards(trained_run, tmp_path):
    report = attention_report(trained_run.cfg, trained_run.weights, str(tmp_path), split="query", examples=1,
                              events=str(tmp_path))
    assert report["num_images"] == 50 and report["num_rewarded"] == 0
    assert all(report[key] is None for key in REWARD_KEYS) and report["reliability"] is None
    assert report["training_curves"] is None and not os.path.exists(tmp_path / "training_curves.png")
    assert json.loads((tmp_path / "report.json").read_text()) == report
    page = (tmp_path / "report.html").read_text()
    assert "Rewards are undefined on this split" in page and "No Epoch/* TensorBoard scalars" in page
    assert report["best"][0]["reward"] is None and os.path.isfile(tmp_path / report["worst"][0]["png"])
