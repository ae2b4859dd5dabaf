"""torchreid_scal.inspection: loading model and critics, the per-image pass, summary and event scalars."""
from __future__ import annotations

import math

import pytest
import torch

from conftest import CPU, DEMO, EPOCH_SCALARS, HEIGHT, WIDTH
from torchreid_scal.checkpoint import CheckpointError
from torchreid_scal.config import ConfigError, load_config
from torchreid_scal.critic_metrics import critic_summary, reliability_table
from torchreid_scal.datasets import DataError
from torchreid_scal.datasets.splits import make_loader, split_dataset
from torchreid_scal.inspection import (
    REWARD_KEYS, Inspection, activation_maps, attended_ratio, inspect_images, load_scal, read_epoch_scalars, summarize,
)
from torchreid_scal.models import StageCritics, create_model, stage_sizes
from torchreid_scal.rewards import Rewards, compute_rewards

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


def test_load_scal_takes_the_critics_architecture_from_the_checkpoint(trained_run, tmp_path):
    saved = torch.load(trained_run.weights, weights_only=True)
    assert saved["critic"]["architecture"] == {"activation": "relu", "stages": [0, 1, 2, 3, 4]}  # as trained
    saved["critic"]["architecture"]["activation"] = "silu"  # the config below still says relu
    torch.save(saved, tmp_path / "silu.pth")
    fewer = load_config(DEMO, trained_run.opts + ["scal.critic_stages", "[2, 4]"])
    _, critics = load_scal(fewer, str(tmp_path / "silu.pth"), CPU)
    assert isinstance(critics.critics["4"].act, torch.nn.SiLU) and critics.stages == [0, 1, 2, 3, 4]
    del saved["critic"]["architecture"]  # a checkpoint from before it was recorded: the config decides
    torch.save(saved, tmp_path / "older.pth")
    _, critics = load_scal(trained_run.cfg, str(tmp_path / "older.pth"), CPU)
    assert isinstance(critics.critics["4"].act, torch.nn.ReLU)
    with pytest.raises(CheckpointError, match=r"older.pth does not fit the configured critics"):
        load_scal(fewer, str(tmp_path / "older.pth"), CPU)


def test_load_scal_names_the_file_of_a_checkpoint_it_cannot_use(trained_run, tmp_path):
    classifier = {"classifier.weight": torch.zeros(3, 2048)}
    torch.save({"state_dict": classifier}, tmp_path / "no_critic.pth")
    with pytest.raises(CheckpointError, match=r"no_critic.pth has no 'critic' entry"):
        load_scal(trained_run.cfg, str(tmp_path / "no_critic.pth"), CPU)
    torch.save({"state_dict": classifier, "critic": {"state_dict": classifier}}, tmp_path / "plain.pth")
    bnneck = load_config(DEMO, trained_run.opts + ["model.name", "resnet50_bnneck", "loss.name", "triplet"])
    with pytest.raises(ConfigError, match=r"model.name resnet50_bnneck has no attention agents: .*plain.pth"):
        load_scal(bnneck, str(tmp_path / "plain.pth"), CPU)


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
    assert ins.attention == "channel" and len(ins.maps) == len(ins.weights) == 5
    for k, (x, a) in enumerate(zip(out.features, out.maps)):
        assert torch.allclose(ins.maps[k], (x * a).sum(dim=1) / x.abs().sum(dim=1), atol=1e-5)
        assert torch.allclose(ins.weights[k], a.flatten(1))

    bare = inspect_images(model, critics, list(imgs), keep_maps=False, batch_size=4)
    assert torch.allclose(bare.values, values, atol=1e-5)
    assert not bare.known.any() and bare.paths == [""] * 6 and bare.maps is None


def test_inspect_refuses_pids_that_are_not_classes(trained_run, loaded):
    query = split_dataset(trained_run.datamanager, "query")  # test identities 51..100; the classifier has 50
    with pytest.raises(DataError, match="not classes"):
        inspect_images(*loaded, make_loader(trained_run.cfg, query, range(2)), pids_are_classes=True)


def test_spatial_inspection_keeps_each_stage_map():
    spatial = create_model("resnet50_scal_spatial", 5, pretrained=False, height=HEIGHT, width=WIDTH).eval()
    critics = StageCritics("spatial", spatial.stage_channels, [1, 3])
    images = torch.randn(2, 3, HEIGHT, WIDTH)
    sins = inspect_images(spatial, critics, images)
    with torch.no_grad():
        maps = spatial(images, return_stages=True).maps
    assert sins.weights is None and sins.values.shape == (2, 2)
    assert [tuple(m.shape[1:]) for m in sins.maps] == stage_sizes(HEIGHT, WIDTH)
    assert all(torch.allclose(mine, a[:, 0]) for mine, a in zip(sins.maps, maps))


def test_attended_ratio_is_the_activation_weighted_channel_weight():
    x = torch.tensor([[[[1.0]], [[3.0]]]])  # one position, two channels
    a = torch.tensor([[[[0.2]], [[0.6]]]])
    assert attended_ratio(x, a).item() == pytest.approx((0.2 * 1 + 0.6 * 3) / 4)
    assert attended_ratio(torch.zeros(1, 2, 1, 1), a).item() == 0.0


def test_activation_maps_follow_torchreid(trained_run, loaded, images):
    model, _ = loaded
    maps = activation_maps(model, images, batch_size=3)
    with torch.no_grad():
        energy = model(images, return_stages=True).featuremaps.square().sum(1)
    assert torch.allclose(maps, energy / energy.flatten(1).norm(dim=1).view(-1, 1, 1), atol=1e-6)


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


def test_epoch_scalars_from_event_files(trained_run, tmp_path):
    scalars = read_epoch_scalars(trained_run.save_dir)
    assert set(scalars) == set(EPOCH_SCALARS)
    assert [epoch for epoch, _ in scalars["critic_mse"]] == [1, 2, 3]
    assert [v for _, v in scalars["mean_reward"]] == pytest.approx([0.1, 0.2, 0.3])
    assert read_epoch_scalars(str(tmp_path)) == {}
