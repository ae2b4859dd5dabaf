"""Mixed precision: the network runs in bf16 under autocast, every engine's losses in float32 outside it."""
from __future__ import annotations

import pytest
import torch

from conftest import NUM_CLASSES
from test_engine import batch, fake_datamanager, make_engine
from torchreid_scal.engine import ImageSoftmaxEngine, ImageTripletEngine
from torchreid_scal.models import create_model


def baseline_engine(kind: str):
    loss = "softmax" if kind == "softmax" else "triplet"
    model = create_model("resnet50_bnneck", NUM_CLASSES, loss=loss, pretrained=False)
    cls = ImageSoftmaxEngine if kind == "softmax" else ImageTripletEngine
    engine = cls(fake_datamanager(), model, torch.optim.Adam(model.parameters(), lr=1e-3), use_gpu=False, amp=True)
    engine.set_model_mode("train")
    return engine


def criteria(engine):
    return [name for name in ("criterion", "criterion_t", "criterion_x") if hasattr(engine, name)]


@pytest.mark.parametrize("kind", ["softmax", "triplet", "scal"])
def test_loss_terms_under_bf16_autocast_equal_the_float32_terms_of_the_same_outputs(kind):
    engine = make_engine(amp=True) if kind == "scal" else baseline_engine(kind)
    calls = []
    for name in criteria(engine):
        criterion = getattr(engine, name)

        def recording(outputs, targets, criterion=criterion):
            loss = criterion(outputs, targets)
            calls.append((criterion, outputs.detach().clone(), targets, loss.detach(),
                          torch.is_autocast_enabled("cpu")))
            return loss

        setattr(engine, name, recording)
    engine.forward_backward(batch())
    assert len(calls) == len(criteria(engine))
    for criterion, outputs, targets, loss, autocast in calls:
        assert not autocast and outputs.dtype == torch.float32 and loss.dtype == torch.float32
        expected = criterion(outputs.float(), targets)
        assert torch.allclose(loss, expected, rtol=0, atol=1e-6), (loss, expected)


def test_the_network_itself_still_runs_in_bf16():
    engine = make_engine(amp=True)
    dtypes = []
    engine.model.register_forward_hook(lambda module, args, out: dtypes.append(out.logits.dtype))
    engine.forward_backward(batch())
    assert dtypes and set(dtypes) == {torch.bfloat16}
