"""Mixed precision's update on the CPU: float16 with gradient scaling (as on GPUs without bfloat16), bfloat16."""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import torchreid_scal.precision as precision
from torchreid_scal.precision import Precision

CPU = torch.device("cpu")


def step(prec: Precision, scale_input: float):
    """One update of two modules with two optimizers; which of them moved."""
    torch.manual_seed(0)
    first, second = nn.Linear(4, 2), nn.Linear(4, 2)
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.1) for m in (first, second)]
    before = [m.weight.detach().clone() for m in (first, second)]
    x = torch.randn(3, 4) / 1000  # small enough that gradients x 65536 (the initial scale) fit in float16
    with prec.autocast():
        loss = first(x * scale_input).float().mean() + second(x).float().mean()
    prec.backward_step(loss, optimizers)
    return [not torch.equal(m.weight, b) for m, b in zip((first, second), before)]


def test_float16_scales_the_loss_and_skips_only_the_optimizer_with_infinite_gradients(monkeypatch):
    monkeypatch.setattr(precision, "amp_dtype", lambda device: torch.float16)
    prec = Precision(CPU, enabled=True)
    assert prec.dtype == torch.float16 and prec.scaler.is_enabled()
    scale = prec.scaler.get_scale()
    assert step(prec, 1.0) == [True, True] and prec.scaler.get_scale() == scale
    assert step(prec, float("inf")) == [False, True] and prec.scaler.get_scale() == scale / 2
    restored = Precision(CPU, enabled=True)
    restored.load_state_dict(prec.state_dict())
    assert restored.scaler.get_scale() == scale / 2


def test_bfloat16_needs_no_scaling():
    prec = Precision(CPU, enabled=True)
    assert prec.dtype == torch.bfloat16 and not prec.scaler.is_enabled()
    assert step(prec, 1.0) == [True, True]


def test_gpus_that_only_emulate_bfloat16_get_float16(monkeypatch):
    """A V100 or T4 holds bfloat16 tensors (``is_bf16_supported()`` says yes) but has no bfloat16 arithmetic."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert precision.amp_dtype(torch.device("cuda")) == torch.float16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert precision.amp_dtype(torch.device("cuda")) == torch.bfloat16


def test_bfloat16_on_a_cpu_without_bfloat16_instructions_warns_naming_the_key(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    with pytest.warns(RuntimeWarning, match=r"test\.amp True: this CPU has no bfloat16 instructions.*test\.amp False"):
        Precision(CPU, enabled=True, key="test.amp")
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Precision(CPU, enabled=True)  # AMX computes bfloat16: no warning
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
        Precision(CPU, enabled=False)  # float32 training never warns
