"""Execution switches shared by training and evaluation: device, precision, memory format.

Each switch is one argument and none changes the science of a run: bf16/fp16 autocast keeps BatchNorm and the
loss in float32 (PyTorch's autocast lists), channels_last only changes the memory layout.
"""
import contextlib

import torch

PRECISIONS = ("fp32", "bf16", "fp16")


def resolve_device(device=None):
    """'auto'/None -> cuda if available else cpu; anything else is passed to torch.device."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' was asked for but no CUDA device is available; use device='cpu'")
    return device


def check_precision(precision):
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return precision


def autocast(device, precision="fp32"):
    """Autocast context for `precision` on `device` (a no-op for fp32)."""
    check_precision(precision)
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def to_device(x, device, channels_last=False, non_blocking=True):
    """Move an image batch (B, C, H, W) to `device`, optionally in channels_last layout."""
    x = x.to(device, non_blocking=non_blocking)
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.ndim == 4 else x
