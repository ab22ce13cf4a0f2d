"""Which floating-point precision a model computes in: train.precision resolved for a device, and the
autocast each forward pass runs under.

bf16 autocast covers the convolutions and matrix products only; the loss, Dice, pruning masks and
scores are computed in float32 from the logits (cast back with .float()), whatever the precision."""

from __future__ import annotations

import contextlib
import functools
import platform
from pathlib import Path

import torch
from torch import nn

PRECISIONS = ("auto", "fp32", "bf16")
# CPU flags that mean bfloat16 dot products in hardware: without them bf16 is emulated, and slower
NATIVE_BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})  # x86 AVX-512 / AMX; aarch64 'bf16'
_ATTRIBUTE = "_htl_autocast_dtype"  # set on each prepared model; read by every forward pass


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo); empty where they cannot be read."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return frozenset(flags)


def native_bf16(device: torch.device) -> bool:
    """Whether the device computes bfloat16 natively: a CUDA GPU that supports it, or a CPU with
    bf16 dot-product instructions (and a oneDNN build of torch that uses them)."""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type != "cpu" or platform.system() != "Linux":
        return False
    return bool(cpu_flags() & NATIVE_BF16_CPU_FLAGS) and torch.backends.mkldnn.is_available()


def resolve(precision: str, device: torch.device | str) -> str:
    """'auto' -> 'bf16' where the device computes bf16 natively, else 'fp32'; 'fp32' and 'bf16' as asked."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; known: {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    return "bf16" if native_bf16(torch.device(device)) else "fp32"


def set_precision(model: nn.Module, precision: str) -> nn.Module:
    """Make the model's forward passes (training and inference) run in this resolved precision."""
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"set_precision takes a resolved precision (fp32 or bf16), not {precision!r}")
    setattr(model, _ATTRIBUTE, torch.bfloat16 if precision == "bf16" else None)
    return model


def precision_of(model: nn.Module) -> str:
    return "bf16" if getattr(model, _ATTRIBUTE, None) is torch.bfloat16 else "fp32"


def autocast_for(model: nn.Module, device: torch.device):
    """The autocast context for a forward pass of this model on this device: bf16 if the model was
    set to it, else none (fp32)."""
    dtype = getattr(model, _ATTRIBUTE, None)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)
