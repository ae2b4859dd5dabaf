"""The runner's builders: data manager, model keywords, engine choice."""
from __future__ import annotations

import os

import pytest
import torch

from torchreid_scal import _torchreid
from torchreid_scal.config import load_config
from torchreid_scal.engine import ImageSoftmaxEngine, ImageTripletEngine
from torchreid_scal.runner import build_datamanager, build_engine, build_model, build_scheduler, check_layers
from torchreid_scal.scal_engine import ImageSCALEngine

DEMO = os.path.join(os.path.dirname(__file__), "..", "configs", "scal_demo.yaml")
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("data"))


def config(root, *opts):
    return load_config(DEMO, ["data.root", root, "scal_demo.num_test_ids", "50", "data.height", "64", "data.width", "32", *opts])


def test_train_loader_keeps_its_workers_and_torchreids_sampler(root):
    datamanager = build_datamanager(config(root, "data.workers", "1"), CPU)
    loader = datamanager.train_loader
    assert loader.persistent_workers and loader.num_workers == 1 and loader.drop_last
    assert isinstance(loader.sampler, _torchreid.data.sampler.RandomIdentitySampler) and loader.batch_size == 32
    assert not build_datamanager(config(root, "data.workers", "0"), CPU).train_loader.persistent_workers


def test_model_gets_the_configured_keywords(root):
    cfg = config(root, "model.name", "resnet50_scal_spatial", "model.last_stride", "2", "scal.reduction", "8",
                 "test.feature", "pool", "scal.agent_bias_init", "2.0")
    model = build_model(cfg, 5)
    assert model.image_size == (64, 32) and model.agents[0].size == (16, 8) and model.agents[4].size == (2, 1)
    assert model.agents[1].fc1.out_features == 16 and model.feature == "pool"
    assert torch.allclose(model.agents[0].fc2.bias, torch.full_like(model.agents[0].fc2.bias, 2.0))
    assert model.loss == "triplet"


@pytest.mark.parametrize("loss, model_name, engine_type", [("softmax", "resnet50_bnneck", ImageSoftmaxEngine),
                                                           ("triplet", "resnet50_bnneck", ImageTripletEngine),
                                                           ("scal", "resnet50_scal", ImageSCALEngine)])
def test_engine_follows_loss_name(root, loss, model_name, engine_type):
    cfg = config(root, "loss.name", loss, "model.name", model_name, "data.workers", "0")
    datamanager = build_datamanager(cfg, CPU)
    model = build_model(cfg, datamanager.num_train_pids)
    optimizer = _torchreid.optim.build_optimizer(model, optim="adam", lr=3e-4)
    engine = build_engine(cfg, datamanager, model, optimizer, build_scheduler(cfg, optimizer), CPU)
    assert type(engine) is engine_type
    if loss == "scal":
        assert engine.critic_net.stages == [0, 1, 2, 3, 4] and engine.critic_scheduler is not None
        assert engine.critic_optimizer.param_groups[0]["lr"] == cfg.scal.critic_lr


@pytest.mark.parametrize("name, backbone", [("scal_osnet_market.yaml", "osnet_x1_0"),
                                            ("scal_r50ibn_market.yaml", "resnet50_ibn_a")])
def test_backbone_configs_build_their_network_and_open_its_new_layers(name, backbone):
    cfg = load_config(os.path.join(os.path.dirname(__file__), "..", "configs", name), ["model.pretrained", "False"])
    model = build_model(cfg, 751)
    assert model.backbone.name == backbone and model.attention == "channel" and model.image_size == (256, 128)
    check_layers(cfg, model)
    if cfg.train.fixbase_epoch:  # torchreid's fixed-base epochs train exactly the layers SCAL adds
        _torchreid.utils.open_specified_layers(model, list(cfg.train.open_layers))
        trainable = {n.split(".", 1)[0] for n, p in model.named_parameters() if p.requires_grad}
        assert trainable == {"agents", "bottleneck", "classifier"}


@pytest.mark.parametrize("form", ["paper", "compatible", "oracle"])
def test_a_seed_gives_every_variant_the_same_global_random_stream(root, form):
    """The SCAL engine's critics (and the compatible critics' behaviour noise) draw from generators of their
    own: after building the engine the global generator is where the triplet engine leaves it, so runs of one
    seed with and without critics sample the same batches and augmentations."""
    def stream_after(loss, *opts):
        cfg = config(root, "loss.name", loss, "model.name", "resnet50_scal", "data.workers", "0", *opts)
        datamanager = build_datamanager(cfg, CPU)
        torch.manual_seed(cfg.train.seed)
        model = build_model(cfg, datamanager.num_train_pids)
        optimizer = _torchreid.optim.build_optimizer(model, optim="adam", lr=3e-4)
        build_engine(cfg, datamanager, model, optimizer, build_scheduler(cfg, optimizer), CPU)
        return torch.rand(4)

    explore = ["scal.critic_explore_std", "0.5"] if form == "compatible" else []
    assert torch.equal(stream_after("scal", "scal.critic_form", form, *explore), stream_after("triplet"))
