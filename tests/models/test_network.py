"""The network's forward contract, its stage outputs, its no-attention mode, and resnet50_scal's weights as they
were before the network took any backbone (same keys, same initialisation)."""
from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from conftest import HEIGHT, NUM_CLASSES, WIDTH
from torchreid_scal import _torchreid
from torchreid_scal.checkpoint import load_weights, save_checkpoint
from torchreid_scal.models import ChannelAgent, SCALOutput, SpatialAgent, create_model, stage_sizes
from torchreid_scal.models.head import BNNeck

STAGE_CHANNELS = (64, 256, 512, 1024, 2048)

VARIANTS = ["resnet50_scal_channel", "resnet50_scal_spatial", "resnet50_bnneck"]


def build(variant: str, **kwargs):
    kwargs.setdefault("height", HEIGHT)
    kwargs.setdefault("width", WIDTH)
    return create_model(variant, NUM_CLASSES, pretrained=False, **kwargs)


@pytest.mark.parametrize("variant", VARIANTS)
def test_outputs_in_every_mode(variant, images):
    model = build(variant, loss="triplet")
    model.train()
    logits, feature = model(images)
    assert logits.shape == (4, NUM_CLASSES) and feature.shape == (4, 2048)
    model.loss = "softmax"
    assert model(images).shape == (4, NUM_CLASSES)
    model.eval()
    with torch.no_grad():
        bn = model(images)
        maps = model(images, return_featuremaps=True)
        model.feature = "pool"
        pooled = model(images)
    assert bn.shape == pooled.shape == (4, 2048)
    assert torch.allclose(pooled, maps.mean(dim=(2, 3)), atol=1e-5)
    assert not torch.allclose(bn, pooled)
    assert maps.shape == (4, 2048, *stage_sizes(HEIGHT, WIDTH)[-1]) == (4, 2048, *model.stage_sizes[-1])


@pytest.mark.parametrize("variant", VARIANTS)
def test_stage_outputs(variant, images):
    model = build(variant)
    out = model(images, return_stages=True)
    assert isinstance(out, SCALOutput)
    sizes = stage_sizes(HEIGHT, WIDTH)
    assert [tuple(x.shape) for x in out.features] == [(4, c, *s) for c, s in zip(STAGE_CHANNELS, sizes)]
    if variant == "resnet50_bnneck":
        assert out.maps == []
        return
    expected = [(4, c, 1, 1) for c in STAGE_CHANNELS] if "channel" in variant else [(4, 1, *s) for s in sizes]
    assert [tuple(a.shape) for a in out.maps] == expected
    for a in out.maps:
        assert a.min() > 0 and a.max() < 1
    assert torch.allclose(out.featuremaps, out.features[-1] * out.maps[-1])


def test_last_stride_two_halves_the_last_map(images):
    one = build("resnet50_scal_channel", last_stride=1)(images, return_featuremaps=True)
    two = build("resnet50_scal_channel", last_stride=2)(images, return_featuremaps=True)
    assert one.shape[-2:] == (4, 2) and two.shape[-2:] == (2, 1)


class _Ones(nn.Module):
    def __init__(self, agent: nn.Module) -> None:
        super().__init__()
        self.agent = agent

    def forward(self, x):
        return torch.ones_like(self.agent(x))


@pytest.mark.parametrize("variant", ["resnet50_scal_channel", "resnet50_scal_spatial"])
def test_no_attention_equals_maps_forced_to_one(variant, images):
    model = build(variant).eval()
    with torch.no_grad():
        attended = model(images, return_stages=True).logits
        plain = model(images, return_stages=True, use_attention=False)
        model.agents = nn.ModuleList(_Ones(a) for a in model.agents)
        forced = model(images, return_stages=True).logits
    assert plain.maps == []
    assert torch.allclose(plain.logits, forced, atol=1e-5)
    assert not torch.allclose(plain.logits, attended, atol=1e-3)


def _bn_state(model: nn.Module):
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}


def test_no_attention_pass_leaves_bn_statistics_untouched(images):
    model = build("resnet50_scal_channel").train()
    before = _bn_state(model)
    with torch.no_grad():
        model(images, use_attention=False)
    after = _bn_state(model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    model(images)
    changed = _bn_state(model)
    assert not torch.equal(before["bn1.running_mean"], changed["bn1.running_mean"])
    assert not torch.equal(before["bottleneck.running_var"], changed["bottleneck.running_var"])
    assert all(m.track_running_stats for m in model.modules() if isinstance(m, nn.BatchNorm2d))


def test_spatial_model_rejects_another_image_size():
    model = build("resnet50_scal_spatial")
    with pytest.raises(ValueError, match=r"64x32.*128x64"):
        model(torch.randn(2, 3, 128, 64))


def test_bnneck_bias_stays_frozen_through_torchreids_open_all_layers():
    model = build("resnet50_scal_channel")
    _torchreid.utils.open_all_layers(model)
    names = [n for n, _ in model.named_parameters()]
    assert "bottleneck.weight" in names and "bottleneck.bias" not in names
    assert torch.count_nonzero(model.bottleneck.bias) == 0
    assert model.classifier.bias is None


def test_attention_adds_few_parameters_and_flops():
    """Issue target at 256x128: attention adds <= 5% parameters and <= 1% FLOPs over resnet50_bnneck."""
    figures = {}
    for variant in VARIANTS:
        model = create_model(variant, 751, pretrained=False).eval()
        figures[variant] = _torchreid.utils.compute_model_complexity(model, (1, 3, 256, 128))
    base_params, base_flops = figures["resnet50_bnneck"]
    for variant in ("resnet50_scal_channel", "resnet50_scal_spatial"):
        params, flops = figures[variant]
        assert base_params < params <= 1.05 * base_params
        assert base_flops < flops <= 1.01 * base_flops


def test_reusing_the_stem_output_changes_nothing(images):
    model = build("resnet50_scal_channel").train()
    with torch.no_grad():
        x0 = model(images, return_stages=True).features[0]
        full = model(images, return_stages=True, use_attention=False).logits
        reused = model(images, return_stages=True, use_attention=False, stem=x0).logits
    assert torch.allclose(full, reused, atol=1e-6)


def test_in_place_eval_path_equals_the_stage_path(images):
    model = build("resnet50_scal_spatial").eval()
    with torch.no_grad():
        assert torch.allclose(model(images), model(images, return_stages=True).bn_feature, atol=1e-6)


@pytest.mark.parametrize("variant", ["resnet50_scal_channel", "resnet50_scal_spatial"])
def test_a_given_stem_output_is_never_written_to(variant, images):
    """Finding 5 of issue 14: the in-place eval path multiplied the caller's ``stem`` by the first map."""
    model = build(variant).eval()
    with torch.no_grad():
        stem = model(images, return_stages=True).features[0]
        before = stem.clone()
        expected = model(images)
        assert torch.allclose(model(images, stem=stem), expected, atol=1e-6)
    assert torch.equal(stem, before)


def resnet50_scal_as_before(attention, num_classes: int = NUM_CLASSES):
    """The state dict of resnet50_scal as this package built it before issue 23 (torchvision's ResNet-50 with last
    stride 1, five agents, BNNeck, bias-free classifier, in that order), at 64x32."""
    resnet = torchvision.models.resnet50()
    resnet.layer4[0].conv2.stride = (1, 1)
    resnet.layer4[0].downsample[0].stride = (1, 1)
    if attention == "channel":
        agents = [ChannelAgent(c, 16, 0.0) for c in STAGE_CHANNELS]
    else:
        agents = [SpatialAgent(h, w, 16, 0.0) for h, w in [(16, 8), (16, 8), (8, 4), (4, 2), (4, 2)]]
    neck = BNNeck(2048)
    classifier = nn.Linear(2048, num_classes, bias=False)
    nn.init.normal_(classifier.weight, std=0.001)
    state = {}
    for name in ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4"):
        state.update({f"{name}.{k}": v for k, v in getattr(resnet, name).state_dict().items()})
    state.update({f"agents.{k}": v for k, v in nn.ModuleList(agents).state_dict().items()})
    state.update({f"bottleneck.{k}": v for k, v in neck.state_dict().items()})
    state["classifier.weight"] = classifier.weight.detach()
    return state


@pytest.mark.parametrize("variant", ["resnet50_scal_channel", "resnet50_scal_spatial"])
def test_resnet50_scal_has_the_keys_and_the_initial_weights_it_had(variant, tmp_path):
    """Checkpoints written before load unchanged, and a seeded run starts from the same weights, so the README's
    seeded results still reproduce."""
    torch.manual_seed(5)
    before = resnet50_scal_as_before(variant.rsplit("_", 1)[1])
    torch.manual_seed(5)
    state = build(variant).state_dict()
    assert list(state) == list(before)
    assert all(torch.equal(state[k], before[k]) for k in before)
    path = save_checkpoint({"state_dict": before, "epoch": 3}, str(tmp_path / "model.pth.tar-3"))
    model = build(variant)
    assert load_weights(model, path)["skipped"] == []
    model.load_state_dict(before)  # strict: nothing missing, nothing unexpected
