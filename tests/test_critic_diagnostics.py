"""Critic diagnostics on hand-built critics whose answers are known."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import HEIGHT, WIDTH
from torchreid_scal.critic_diagnostics import _shared_direction, diagnose_critics
from torchreid_scal.models import CompatibleCritics, StageCritics, create_model
from torchreid_scal.models.network import frozen_bn_stats

CLASSES = 5


class Linear(nn.Module):
    """``V(x, a) = sign * <G, a>`` per image, for a fixed per-image direction ``G``."""

    def __init__(self, direction: torch.Tensor, sign: float) -> None:
        super().__init__()
        self.direction, self.sign = direction, sign

    def forward(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return self.sign * (a * self.direction).flatten(1).sum(1)


class Told(nn.Module):
    """A critic that is told each image's value (and ignores the map, but stays differentiable in it)."""

    def __init__(self, values: torch.Tensor) -> None:
        super().__init__()
        self.values = values

    def forward(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return self.values + 0.0 * a.flatten(1).sum(1)


def training_pass(model, images, **kwargs):
    """The network as the diagnostics run it: batch statistics, running statistics untouched."""
    model.train()
    with frozen_bn_stats(model):
        return model(images, return_stages=True, **kwargs)


def true_class_gradient(model, images, pids, stage):
    """d log p_true / dA_stage of the eval-mode network, by plain backward into a parameter standing in for that
    stage's map."""
    model.eval()
    with torch.no_grad():
        maps = model(images, return_stages=True).maps
    param = nn.Parameter(maps[stage].detach().clone())
    logits = model(images, return_stages=True, map_fn=lambda k, a: param if k == stage else a).logits
    logits.log_softmax(1).gather(1, pids.view(-1, 1)).sum().backward()
    return param.grad


@pytest.fixture(params=["resnet50_scal_channel", "resnet50_scal_spatial"])
def setup(request):
    model = create_model(request.param, CLASSES, loss="triplet", pretrained=False, height=HEIGHT, width=WIDTH)
    images, pids = torch.randn(6, 3, HEIGHT, WIDTH), torch.tensor([0, 1, 2, 3, 4, 0])
    return model, images, pids


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_a_critic_equal_to_the_linearised_log_probability_is_aligned(setup, sign):
    model, images, pids = setup
    critics = StageCritics(model.attention, model.stage_channels, [0, 2, 4])
    for k in critics.stages:
        critics.critics[str(k)] = Linear(true_class_gradient(model, images, pids, k), sign)
    stats = diagnose_critics(model, critics, images, pids)
    for k in (0, 2, 4):
        assert stats[f"alignment_stage{k}"] == pytest.approx(sign, abs=1e-4)
    assert stats["critic_alignment"] == pytest.approx(sign, abs=1e-4)


def test_shared_direction_is_the_leave_one_out_cosine():
    same = torch.tensor([[1.0, 2.0], [1.0, 2.0], [2.0, 4.0]])
    assert _shared_direction(same) == pytest.approx(1.0)
    opposite = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    assert _shared_direction(opposite) == pytest.approx(-1.0)
    # Each row against the mean of the two others: [.5, 1], [.5, .5] and [1, .5].
    cos = 0.5 / 1.25 ** 0.5
    assert _shared_direction(torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])) == pytest.approx((cos + 1 + cos) / 3)


def test_a_critic_with_a_random_direction_is_not_aligned(setup):
    model, images, pids = setup
    critics = StageCritics(model.attention, model.stage_channels, [1])
    target = true_class_gradient(model, images, pids, 1)
    critics.critics["1"] = Linear(torch.randn_like(target), 1.0)
    assert abs(diagnose_critics(model, critics, images, pids)["alignment_stage1"]) < 0.2


def test_agreement_counts_the_orderings_that_match_attention_helped(setup):
    model, images, pids = setup
    with torch.no_grad():
        p_att = training_pass(model, images).logits.softmax(1).gather(1, pids.view(-1, 1))
        p_plain = training_pass(model, images, use_attention=False).logits.softmax(1).gather(1, pids.view(-1, 1))
        ones = torch.ones_like(training_pass(model, images).maps[3])
    helped = (p_att > p_plain).float().mean().item()
    assert 0 < helped < 1  # this fixture's images are helped by attention in part
    critics = StageCritics(model.attention, model.stage_channels, [3])
    # V = <1, a>: the all-ones map always scores higher than the agents' maps (sigmoid < 1).
    critics.critics["3"] = Linear(ones, 1.0)
    assert diagnose_critics(model, critics, images, pids)["agreement_stage3"] == pytest.approx(1 - helped)
    critics.critics["3"] = Linear(ones, -1.0)
    assert diagnose_critics(model, critics, images, pids)["agreement_stage3"] == pytest.approx(helped)
    critics.critics["3"] = Linear(ones, 0.0)  # a constant critic never orders the two maps
    assert diagnose_critics(model, critics, images, pids)["agreement_stage3"] == 0.0


def test_dead_units_are_counted_and_a_dead_critic_has_no_alignment(setup):
    model, images, pids = setup
    critics = StageCritics(model.attention, model.stage_channels, [2, 4])
    dead = critics.critics["4"]
    layer = dead.fc1 if hasattr(dead, "fc1") else dead.conv
    with torch.no_grad():
        layer.bias.fill_(-1e4)
    stats = diagnose_critics(model, critics, images, pids)
    assert stats["alive_stage4"] == 0.0 and stats["alignment_stage4"] == 0.0
    assert stats["alive_stage2"] > 0.2


def test_modes_and_running_statistics_are_restored(setup):
    model, images, pids = setup
    critics = StageCritics(model.attention, model.stage_channels, [0])
    running = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    model.eval()
    critics.train()
    diagnose_critics(model, critics, images, pids)
    assert not model.training and critics.training
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in running.items())


def test_heldout_correlation_of_a_critic_that_knows_the_reward_is_one(setup):
    model, images, pids = setup
    with torch.no_grad():
        logits = training_pass(model, images).logits
        plain = training_pass(model, images, use_attention=False).logits
    true = pids.view(-1, 1)
    reward = (logits.argmax(1) == pids).float() + (logits.softmax(1).gather(1, true) > plain.softmax(1).gather(1, true)
                                                   ).float().squeeze(1)
    assert reward.std() > 0  # this fixture's images have different rewards
    critics = StageCritics(model.attention, model.stage_channels, [0])
    critics.critics["0"] = Told(3.0 * reward + 1.0)
    assert diagnose_critics(model, critics, images, pids)["critic_heldout_corr"] == pytest.approx(1.0, abs=1e-5)


def test_the_exact_compatible_critic_of_the_last_channel_stage_is_aligned():
    """With channel attention, d log p_y / dA_4 = GAP(X_4) * gamma/sigma * (w_y - sum_j p_j w_j) in eval mode:
    a compatible critic whose class embedding is gamma/sigma * w holds that exactly."""
    model = create_model("resnet50_scal_channel", CLASSES, loss="triplet", pretrained=False, height=HEIGHT, width=WIDTH)
    neck = model.bottleneck
    with torch.no_grad():
        neck.weight.uniform_(0.5, 2.0)
        neck.running_var.uniform_(0.5, 2.0)
        neck.running_mean.normal_()
        model.classifier.weight.normal_(std=0.01)  # unsaturated probabilities: no image's gradient vanishes
    images, pids = torch.randn(6, 3, HEIGHT, WIDTH), torch.tensor([0, 1, 2, 3, 4, 0])
    critics = CompatibleCritics("channel", model.stage_channels, [3, 4], CLASSES)
    with torch.no_grad():
        scale = neck.weight / (neck.running_var + neck.eps).sqrt()
        critics.critics["4"].embedding.copy_(model.classifier.weight * scale)
    stats = diagnose_critics(model, critics, images, pids)
    assert stats["alignment_stage4"] == pytest.approx(1.0, abs=1e-4)
    assert abs(stats["alignment_stage3"]) < 1e-6  # a zero embedding: no direction at all
