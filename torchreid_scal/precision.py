"""Mixed precision for one device: the autocast dtype and, for float16, gradient scaling."""
from __future__ import annotations

import contextlib
import warnings
from typing import Any, ContextManager, Dict, Sequence

import torch


def amp_dtype(device: torch.device) -> torch.dtype:
    """bfloat16 on the CPU and on GPUs that compute in it natively (Ampere and later; no loss scaling needed), else
    float16: older GPUs can hold bfloat16 tensors, but only emulate its arithmetic, slowly."""
    if device.type == "cuda" and not torch.cuda.is_bf16_supported(including_emulation=False):
        return torch.float16
    return torch.bfloat16


def cpu_computes_bfloat16() -> bool:
    """Whether this CPU has bfloat16 instructions (AVX512-BF16 or AMX); without them bf16 autocast is emulated
    (one ``resnet50_bnneck`` training step at 256x128, batch 16: 77 s instead of 3.9 s on a Zen-3 AMD EPYC)."""
    cpu = torch.cpu
    return any(getattr(cpu, name, lambda: True)() for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


class Precision:
    """``autocast()`` for the forward passes and ``backward_step`` for the update, with a GradScaler exactly
    when the dtype is float16. Disabled, both are plain float32 training. ``key`` names the config key that
    enabled it, for the warning given when the CPU would only emulate bfloat16."""

    def __init__(self, device: torch.device, enabled: bool = False, key: str = "train.amp") -> None:
        if enabled and device.type == "cpu" and not cpu_computes_bfloat16():
            warnings.warn(f"{key} True: this CPU has no bfloat16 instructions (neither AVX512-BF16 nor AMX), so "
                          "bfloat16 autocast is emulated and many times slower than float32; set "
                          f"{key} False here", RuntimeWarning, stacklevel=2)
        self.device_type = device.type
        self.enabled = enabled
        self.dtype = amp_dtype(device) if enabled else torch.float32
        self.scaler = torch.amp.GradScaler(device.type, enabled=enabled and self.dtype == torch.float16)

    def autocast(self) -> ContextManager:
        if not self.enabled:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def backward_step(self, loss: torch.Tensor, optimizers: Sequence[torch.optim.Optimizer]) -> None:
        """Backward (scaled for float16) and one step of every optimizer."""
        self.scaler.scale(loss).backward()
        for optimizer in optimizers:
            self.scaler.step(optimizer)
        self.scaler.update()

    def state_dict(self) -> Dict[str, Any]:
        return self.scaler.state_dict()

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if state:
            self.scaler.load_state_dict(state)
