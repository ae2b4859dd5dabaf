"""Every registered name: torchreid's forward contract, and one training step in which only the intended
parameters move (issue 23). At 64x32 with six images, so that the 60 names take a few minutes on a CPU."""
from __future__ import annotations

import pathlib
from types import SimpleNamespace
from typing import Dict, Set, Tuple

import pytest
import torch

from conftest import HEIGHT, WIDTH
from torchreid_scal.engine import ImageTripletEngine
from torchreid_scal.scal_engine import ImageSCALEngine
from torchreid_scal.models import BACKBONES, DEFAULT_CFGS, MODEL_FACTORIES, SCALOutput, create_model, stage_sizes

NUM_CLASSES = 3
IMAGES = 6


def groups(model, critics=None) -> Dict[Tuple[str, str], torch.Tensor]:
    """Every parameter by (group, name): ``block0`` (the stem) .. ``block4`` (the stages) of the backbone,
    ``agents``, ``bnneck``, ``classifier`` and ``critics``."""
    block_of = {name: f"block{k}" for k, block in enumerate(model.blocks) for name in block}
    head = {"agents": "agents", "bottleneck": "bnneck", "classifier": "classifier"}
    params = {}
    for name, p in model.named_parameters():
        top = name.split(".", 1)[0]
        params[(block_of.get(top) or head[top], name)] = p
    if critics is not None:
        params.update({("critics", n): p for n, p in critics.named_parameters()})
    return params


def grad_groups(loss: torch.Tensor, params) -> Set[str]:
    """The groups of ``params`` in which ``loss`` has a non-zero gradient."""
    keys = list(params)
    grads = torch.autograd.grad(loss, [params[k] for k in keys], retain_graph=True, allow_unused=True)
    return {group for (group, _), g in zip(keys, grads) if g is not None and g.abs().sum() > 0}


def moved_groups(before, params) -> Set[str]:
    return {group for (group, name), value in before.items() if not torch.equal(value, params[(group, name)])}


@pytest.fixture
def batch():
    torch.manual_seed(0)
    return {"img": torch.randn(IMAGES, 3, HEIGHT, WIDTH), "pid": torch.arange(NUM_CLASSES).repeat_interleave(2)}


def check_forward_contract(model, images: torch.Tensor) -> None:
    """torchreid's conventions (train: logits or (logits, f); eval: the BN or pooled feature; featuremaps) and
    the stage outputs SCAL's engine reads."""
    dim = model.feature_dim
    model.train()
    with torch.no_grad():
        logits, feature = model(images)
        assert logits.shape == (IMAGES, NUM_CLASSES) and feature.shape == (IMAGES, dim)
        model.loss = "softmax"
        assert model(images).shape == (IMAGES, NUM_CLASSES)
        model.loss = "triplet"
        out = model(images, return_stages=True)
        model.eval()
        bn, maps = model(images), model(images, return_featuremaps=True)
        model.feature = "pool"
        pooled = model(images)
        model.feature = "bn"
    assert isinstance(out, SCALOutput)
    assert [tuple(x.shape) for x in out.features] == [(IMAGES, c, *s) for c, s in
                                                      zip(model.stage_channels, model.stage_sizes)]
    assert len(out.maps) == len(model.agents) == (0 if model.attention is None else 5)
    if model.attention == "spatial":
        assert [tuple(a.shape) for a in out.maps] == [(IMAGES, 1, *s) for s in model.stage_sizes]
    if model.attention == "channel":
        assert [tuple(a.shape) for a in out.maps] == [(IMAGES, c, 1, 1) for c in model.stage_channels]
    assert bn.shape == pooled.shape == (IMAGES, dim) and maps.shape == (IMAGES, dim, *model.stage_sizes[-1])
    assert torch.allclose(pooled, maps.mean(dim=(2, 3)), atol=1e-5) and not torch.allclose(bn, pooled)


@pytest.mark.parametrize("name", list(MODEL_FACTORIES))
def test_forward_contract_and_one_step_moving_only_the_intended_parameters(name, batch):
    model = create_model(name, NUM_CLASSES, loss="triplet", pretrained=False, height=HEIGHT, width=WIDTH)
    assert model.backbone.name == DEFAULT_CFGS[name]["backbone"] and model.attention == DEFAULT_CFGS[name]["attention"]
    assert {n.split(".", 1)[0] for n, _ in model.named_parameters()} <= {
        *model.backbone_modules, "agents", "bottleneck", "classifier"}  # the backbone's own head is left out
    check_forward_contract(model, batch["img"])
    network = {"block0", "block1", "block2", "block3", "block4", "bnneck", "classifier"}
    datamanager = SimpleNamespace(train_loader=None, test_loader={}, num_train_pids=NUM_CLASSES, sources=["fake"])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    if model.attention is None:
        engine = ImageTripletEngine(datamanager, model, optimizer, use_gpu=False)
        engine.set_model_mode("train")
        params = groups(model)
        before = {k: v.detach().clone() for k, v in params.items()}
        engine.forward_backward(batch)
        assert moved_groups(before, params) == network
        return
    engine = ImageSCALEngine(datamanager, model, optimizer, use_gpu=False, critic_lr=1e-3)
    engine.set_model_mode("train")
    params = groups(model, engine.critics)
    before = {k: v.detach().clone() for k, v in params.items()}
    losses = engine.compute_losses(batch["img"], batch["pid"])
    assert grad_groups(losses.mse, params) == {"critics"}
    assert grad_groups(losses.critic, params) == {"agents"}
    agents_reached = {n.split(".")[1] for (g, n), p in params.items() if g == "agents"}
    assert agents_reached == {"0", "1", "2", "3", "4"}
    assert grad_groups(losses.triplet + losses.classification, params) == network | {"agents"}
    engine.step(losses.model_objective, losses.critic_objective)
    assert moved_groups(before, params) == network | {"agents", "critics"}
    assert torch.count_nonzero(model.bottleneck.bias) == 0


@pytest.mark.parametrize("backbone", ["resnet50", "se_resnet50", "osnet_x1_0", "osnet_ain_x1_0"])
def test_map_sizes_are_measured_on_the_backbone(backbone):
    """The spatial agents' sizes come from running the backbone: OSNet halves the map in two stages only, and
    SE-ResNet's stem pools with ceil_mode (an odd input differs from ResNet's there)."""
    sizes = stage_sizes(97, 45, backbone=backbone)
    model = create_model(f"{backbone}_scal_spatial", 2, pretrained=False, height=97, width=45)
    assert [a.size for a in model.agents] == sizes == model.stage_sizes
    with torch.no_grad():
        out = model.eval()(torch.randn(1, 3, 97, 45), return_stages=True)
    assert [tuple(x.shape[-2:]) for x in out.features] == sizes
    if backbone.startswith("osnet"):
        assert sizes[2] == sizes[3] == sizes[4]
    if backbone == "se_resnet50":
        assert sizes[0] != stage_sizes(97, 45, backbone="resnet50")[0]


@pytest.mark.parametrize("backbone", ["resnet18", "resnet50_ibn_a", "se_resnet50"])
def test_last_stride_one_keeps_the_last_stage_at_the_size_of_the_one_before(backbone):
    one, two = (stage_sizes(HEIGHT, WIDTH, stride, backbone) for stride in (1, 2))
    assert one[4] == one[3] and two[4] == ((one[3][0] + 1) // 2, (one[3][1] + 1) // 2)


def test_osnet_has_no_last_stride_to_set():
    with pytest.raises(ValueError, match=r"last_stride \(model.last_stride\) must be one of \[1\] for osnet_x0_25"):
        create_model("osnet_x0_25_scal", 2, pretrained=False, last_stride=2)


def test_images_too_small_for_the_backbone_say_so():
    with pytest.raises(ValueError, match="4x2 images are too small for se_resnet50's stages"):
        create_model("se_resnet50_scal_spatial", 2, pretrained=False, height=4, width=2)


def test_every_backbone_of_the_issue_is_supported():
    issue = {"osnet_x1_0", "osnet_x0_75", "osnet_x0_5", "osnet_x0_25", "osnet_ibn_x1_0", "osnet_ain_x1_0", "resnet18",
             "resnet34", "resnet50", "resnet101", "resnet152", "resnet50_ibn_a", "resnet50_ibn_b", "resnext50_32x4d",
             "se_resnet50"}
    assert issue <= set(BACKBONES)
    assert {f"{b}{s}" for b in issue for s in ("_scal", "_scal_spatial", "_bnneck")} <= set(MODEL_FACTORIES)


def test_the_backbone_doc_has_a_row_per_backbone_and_well_formed_tables():
    text = (pathlib.Path(__file__).resolve().parents[2] / "docs" / "backbones.md").read_text()
    size = text[text.index("### Size"):text.index("## ImageNet weights")]
    assert {row.split("`")[1] for row in size.splitlines() if row.startswith("| `")} == set(BACKBONES)
    for table in (t for t in text.split("\n\n") if t.startswith("|")):  # every row has the header's cells
        assert len({row.count("|") for row in table.splitlines()}) == 1, table
