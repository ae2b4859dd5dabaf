"""ImageSCALEngine: gradient routing on real parameter changes, the no-attention pass, a critic that learns."""
from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
import torch

import torchreid_scal.scal_engine as engine_module
from conftest import HEIGHT, NUM_CLASSES, WIDTH
from torchreid_scal.checkpoint import NonFiniteError, latest_checkpoint
from torchreid_scal.scal_engine import ImageSCALEngine
from torchreid_scal.models import create_model
from torchreid_scal.rewards import Rewards

GROUPS = ("backbone", "agents", "bnneck", "classifier", "critics")


def fake_datamanager(num_classes: int = NUM_CLASSES) -> SimpleNamespace:
    return SimpleNamespace(train_loader=None, test_loader={}, num_train_pids=num_classes, sources=["fake"])


def make_engine(variant: str = "resnet50_scal_channel", lr: float = 1e-3, **kwargs) -> ImageSCALEngine:
    model = create_model(variant, NUM_CLASSES, loss="triplet", pretrained=False, height=HEIGHT, width=WIDTH)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    kwargs.setdefault("critic_lr", 1e-3)
    engine = ImageSCALEngine(fake_datamanager(), model, optimizer, use_gpu=False, **kwargs)
    engine.set_model_mode("train")
    return engine


def batch(n_ids: int = 3, per_id: int = 2):
    pids = torch.arange(n_ids).repeat_interleave(per_id)
    return {"img": torch.randn(len(pids), 3, HEIGHT, WIDTH), "pid": pids}


def group_of(name: str) -> str:
    if name.startswith("agents."):
        return "agents"
    if name.startswith("bottleneck."):
        return "bnneck"
    if name.startswith("classifier."):
        return "classifier"
    return "backbone"


def snapshot(engine: ImageSCALEngine):
    critics = engine.critics.named_parameters() if engine.critics is not None else ()
    params = {("critics", n): p.detach().clone() for n, p in critics}
    params.update({(group_of(n), n): p.detach().clone() for n, p in engine.model.named_parameters()})
    return params


def changed_groups(engine: ImageSCALEngine, before) -> set:
    after = snapshot(engine)
    return {group for (group, name), value in before.items() if not torch.equal(value, after[(group, name)])}


def run_objectives(engine, pick):
    data = batch()
    before = snapshot(engine)
    losses = engine.compute_losses(data["img"], data["pid"])
    model_objective, critic_objective = pick(engine, losses)
    engine.step(model_objective, critic_objective)
    return changed_groups(engine, before)


ZERO = torch.zeros(())


COMPATIBLE = {"critic_form": "compatible", "critic_explore_std": 0.5}
CRITICS = [{}, COMPATIBLE, dict(COMPATIBLE, critic_target="logp")]


@pytest.mark.parametrize("form", CRITICS)
def test_mse_alone_moves_only_the_critics(form):
    changed = run_objectives(make_engine(**form), lambda e, l: (ZERO, l.mse))
    assert changed == {"critics"}


@pytest.mark.parametrize("form", [*CRITICS, {"critic_form": "oracle"}])
@pytest.mark.parametrize("variant", ["resnet50_scal_channel", "resnet50_scal_spatial"])
def test_critic_loss_alone_moves_only_the_agents(variant, form):
    engine = make_engine(variant, **form)
    for name, p in (engine.critics.named_parameters() if engine.critics is not None else ()):
        if name.endswith(("embedding", "shared")):  # zero at first: the compatible critic knows no direction yet
            torch.nn.init.normal_(p, std=0.1)
    changed = run_objectives(engine, lambda e, l: (e.critic_weight * l.critic, ZERO))
    assert changed == {"agents"}


def test_oracle_moves_each_agent_along_the_true_class_log_probability_gradient():
    """J_ora's gradient on agent k's parameters equals the chain rule through A'_k = agent_k(X_k) of
    -mean_k d sum_i log p_true(i) / dA_k, with that gradient taken from the training pass."""
    engine = make_engine(critic_form="oracle")
    data = batch()
    losses = engine.compute_losses(data["img"], data["pid"])
    assert losses.mse is None and losses.values is None and losses.rewards is None
    agent_grads = torch.autograd.grad(losses.critic, list(engine.network.agents[4].parameters()))

    out = engine.model(data["img"], return_stages=True)
    log_p = out.logits.log_softmax(dim=1).gather(1, data["pid"].view(-1, 1)).sum()
    g = torch.autograd.grad(log_p, out.maps)
    a = engine.network.agents[4](out.features[4].detach())
    expected = torch.autograd.grad(-(a * g[4]).flatten(1).sum(dim=1).mean() / 5,
                                   list(engine.network.agents[4].parameters()))
    for got, want in zip(agent_grads, expected):
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-9)


def test_behaviour_pass_leaves_the_training_pass_and_the_global_generators_alone():
    """The compatible critics' behaviour noise comes from the engine's own generator: the training pass's
    outputs, and what the global generator draws next, are those of a run without it."""
    data = batch()
    calm, explored = make_engine(), make_engine(**COMPATIBLE)
    explored.network.load_state_dict(calm.network.state_dict())
    torch.manual_seed(5)
    first = calm.compute_losses(data["img"], data["pid"]).logits
    after_calm = torch.rand(3)
    torch.manual_seed(5)
    second = explored.compute_losses(data["img"], data["pid"]).logits
    assert torch.equal(first, second)
    assert torch.equal(torch.rand(3), after_calm)


def test_behaviour_offsets_are_noise_in_logit_space_at_critic_stages_only():
    engine = make_engine(critic_stages=[1, 3], **COMPATIBLE)
    data = batch()
    with torch.no_grad():
        out = engine.model(data["img"], return_stages=True)
    behaviour = engine.behaviour(data["img"], out.features[0], out.maps)
    for k, offset in enumerate(behaviour.offsets):
        if k in (1, 3):
            assert offset.abs().max() > 0
        else:
            assert torch.equal(offset, torch.zeros_like(offset))
    assert not torch.equal(behaviour.logits, out.logits)


def test_critics_are_seeded_apart_from_the_global_generator():
    torch.manual_seed(3)
    a = make_engine(critic_seed=7)
    drawn = torch.rand(2)
    torch.manual_seed(3)
    torch.rand(100)
    b = make_engine(critic_seed=7)
    for (name, p), q in zip(a.critics.named_parameters(), b.critics.parameters()):
        assert torch.equal(p, q), name
    c = make_engine(critic_seed=8)
    assert not all(torch.equal(p, q) for p, q in zip(a.critics.parameters(), c.critics.parameters()))
    torch.manual_seed(3)
    create_model("resnet50_scal_channel", NUM_CLASSES, loss="triplet", pretrained=False, height=HEIGHT, width=WIDTH)
    assert torch.equal(torch.rand(2), drawn)  # building the critics drew nothing from the global generator


@pytest.mark.parametrize("kwargs", [dict(critic_form="compatible"), dict(critic_explore_std=0.5),
                                    dict(critic_form="oracle", critic_explore_std=0.5)])
def test_exploration_belongs_to_the_compatible_critics_only(kwargs):
    with pytest.raises(ValueError, match="critic_explore_std"):
        make_engine(**kwargs)


def test_triplet_and_cross_entropy_move_network_but_not_critics():
    engine = make_engine()
    changed = run_objectives(engine, lambda e, l: (e.weight_t * l.triplet + e.weight_x * l.classification, ZERO))
    assert changed == {"backbone", "agents", "bnneck", "classifier"}


def test_every_agent_stage_is_reached_by_the_critic_loss():
    engine = make_engine()
    before = snapshot(engine)
    data = batch()
    losses = engine.compute_losses(data["img"], data["pid"])
    engine.step(losses.critic, ZERO)
    after = snapshot(engine)
    for k in range(5):
        key = ("agents", f"agents.{k}.fc1.weight")
        assert not torch.equal(before[key], after[key]), f"agent {k} did not move"


def test_full_step_routing_during_and_after_the_critic_warmup():
    engine = make_engine(critic_warmup_epochs=2)
    engine.weight_t = engine.weight_x = 0.0  # leave only the critic losses in the real step
    before = snapshot(engine)
    engine.epoch = 1
    engine.forward_backward(batch())
    assert changed_groups(engine, before) == {"critics"}
    engine.epoch = 2
    before = snapshot(engine)
    engine.forward_backward(batch())
    assert changed_groups(engine, before) == {"critics", "agents"}


def test_critic_loss_is_reported_but_not_optimised_during_warmup():
    engine = make_engine(critic_warmup_epochs=1)
    data = batch()
    losses = engine.compute_losses(data["img"], data["pid"])
    assert not losses.critic.requires_grad
    assert torch.isclose(losses.critic, -losses.values.mean())


def test_no_attention_pass_shares_weights_and_builds_no_graph():
    engine = make_engine()
    calls = []
    engine.model.register_forward_hook(
        lambda module, args, kwargs, out: calls.append((module, kwargs, out, torch.is_grad_enabled())),
        with_kwargs=True,
    )
    data = batch()
    engine.compute_losses(data["img"], data["pid"])
    (att_module, att_kwargs, att_out, _), (plain_module, plain_kwargs, plain_out, grad_enabled) = calls
    assert plain_module is att_module is engine.model
    assert plain_kwargs.get("use_attention") is False and att_kwargs.get("use_attention", True)
    assert not grad_enabled and plain_out.logits.grad_fn is None and not plain_out.logits.requires_grad
    assert att_out.logits.grad_fn is not None


def test_summary_fields_are_finite_floats():
    summary = make_engine().forward_backward(batch())
    assert set(summary) == {"loss_t", "loss_x", "loss_cri", "loss_mse", "acc", "reward", "reward_c",
                            "reward_a", "critic_value", "critic_corr"}
    assert all(isinstance(v, float) and v == v and abs(v) != float("inf") for v in summary.values())
    assert 0.0 <= summary["reward"] <= 2.0


def test_engine_refuses_a_model_without_agents():
    model = create_model("resnet50_bnneck", NUM_CLASSES, loss="triplet", pretrained=False)
    with pytest.raises(ValueError, match="resnet50_bnneck"):
        ImageSCALEngine(fake_datamanager(), model, torch.optim.Adam(model.parameters()), use_gpu=False)


def test_critic_learns_a_reward_that_depends_on_its_input(monkeypatch):
    """The reward is a known function of the image (its identity's colour); with the network frozen,
    the engine's J_mse path must bring the critics' error well below the reward's variance."""
    torch.manual_seed(0)
    reward_of_pid = torch.tensor([0.0, 2.0, 1.0, 2.0])
    colours = torch.tensor([[1.0, -1.0, -1.0], [-1.0, 1.0, -1.0], [-1.0, -1.0, 1.0], [1.0, 1.0, -1.0]])

    def known_rewards(logits, plain_logits, labels):
        total = reward_of_pid[labels]
        return Rewards(total.clamp(max=1.0), (total - 1).clamp(min=0.0), total)

    monkeypatch.setattr(engine_module, "compute_rewards", known_rewards)
    engine = make_engine(lr=0.0, critic_weight=0.0, critic_lr=1e-3)
    engine.weight_t = engine.weight_x = 0.0

    def coloured_batch():
        pids = torch.arange(4).repeat_interleave(2)
        imgs = colours[pids].view(-1, 3, 1, 1) + 0.5 * torch.randn(len(pids), 3, HEIGHT, WIDTH)
        return {"img": imgs, "pid": pids}

    for _ in range(50):
        engine.forward_backward(coloured_batch())
    mse = sum(engine.forward_backward(coloured_batch())["loss_mse"] for _ in range(5)) / 5
    variance = reward_of_pid.var(unbiased=False).item()
    assert mse < 0.4 * variance, (mse, variance)


def test_mixed_precision_and_channels_last_step():
    engine = make_engine(amp=True, test_amp=True, channels_last=True)
    engine.model.to(memory_format=torch.channels_last)
    assert engine.precision.dtype == torch.bfloat16 and not engine.precision.scaler.is_enabled()
    before = snapshot(engine)
    summary = engine.forward_backward(batch())
    assert all(v == v for v in summary.values())
    assert {"backbone", "agents", "critics"} <= changed_groups(engine, before)
    engine.set_model_mode("eval")
    features = engine.extract_features(engine._images(batch()["img"]))
    assert features.dtype == torch.float32 and features.shape == (6, 2048)


def test_precision_is_plain_float32_when_disabled():
    engine = make_engine()
    assert engine.precision.dtype == torch.float32 and not engine.precision.enabled


def test_non_finite_loss_stops_with_step_and_term(tmp_path):
    engine = make_engine()
    data = batch()
    data["img"][0, 0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match=r"epoch 1, step 1: .*loss_t = nan"):
        engine.forward_backward(data)
    with pytest.raises(NonFiniteError, match="refusing to save"):
        engine.save_model(0, 0.0, str(tmp_path))
    assert not (tmp_path / "model").exists() or not any((tmp_path / "model").iterdir())


def test_keep_last_checkpoints_and_latest_pointer(tmp_path):
    engine = make_engine(keep_last=2)
    for epoch in range(4):
        engine.save_model(epoch, 0.5, str(tmp_path))
    files = sorted(os.listdir(tmp_path / "model"))
    assert files == ["latest", "model.pth.tar-3", "model.pth.tar-4"]
    assert latest_checkpoint(str(tmp_path)).endswith("model.pth.tar-4")


def test_a_finished_run_is_evaluated_not_trained_again(tmp_path, capsys):
    engine = make_engine()
    tested = []
    engine.test = lambda **kwargs: tested.append(kwargs) or 0.5
    engine.train = lambda **kwargs: pytest.fail("trained an epoch beyond train.max_epoch")
    engine.run(save_dir=str(tmp_path), max_epoch=3, start_epoch=3, print_freq=1)
    assert len(tested) == 1
    assert not (tmp_path / "model").exists(), "no checkpoint of an epoch that was never trained"
    assert "nothing to train: the model is at epoch 3 of train.max_epoch 3" in capsys.readouterr().out
