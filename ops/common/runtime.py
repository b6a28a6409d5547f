"""Execution switches shared by training and evaluation: device, precision, memory format, threads, progress.

Each switch is one argument and none changes the science of a run: bf16/fp16 autocast keeps BatchNorm and the
loss in float32 (PyTorch's autocast lists), channels_last only changes the memory layout.

`precision="auto"` picks bf16 only where the hardware computes it natively: a CUDA GPU with bf16 support, or a
CPU with AVX512-BF16 or AMX (and PyTorch's kernels allowed to use them). Elsewhere (AVX2-only CPUs, most
laptops) bf16 is emulated and many times slower than fp32, so auto means fp32 there.
"""
from __future__ import annotations

import contextlib
import os
import sys
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from collections.abc import Iterator
    from contextlib import AbstractContextManager
    from typing import Any

PRECISIONS = ("fp32", "bf16", "fp16")


def resolve_device(device: torch.device | str | None = None) -> torch.device:
    """'auto'/None -> cuda if available else cpu; anything else is passed to torch.device."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' was asked for but no CUDA device is available; use device='cpu'")
    return device


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return precision


def _cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), None)
    except OSError:
        return None


def machine_info(device: torch.device | str = "cpu") -> dict:
    """What a measured time or a trained checkpoint ran on: device, CPU model and kind, threads, versions, and
    the AVX2 imitation variables if set (they change which kernels run)."""
    device = torch.device(device)
    info = {"device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu": _cpu_model(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "native_bf16": native_bf16(device)[0],
            "imitation": {k: os.environ[k] for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA") if k in os.environ}}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def native_bf16(device: torch.device | str) -> tuple[bool, str]:
    """(True/False, reason): does `device` compute bf16 natively, so that bf16 autocast is faster than fp32?"""
    device = torch.device(device)
    if device.type == "cuda":
        ok = torch.cuda.is_bf16_supported(including_emulation=False)
        return ok, f"{torch.cuda.get_device_name(device)} {'supports' if ok else 'lacks'} bf16"
    if device.type != "cpu":
        return False, f"no bf16 rule for {device.type}"
    flags = _cpu_flags()
    native = sorted(flags & {"avx512_bf16", "amx_bf16"})
    capability = torch.backends.cpu.get_cpu_capability()
    onednn = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    if native and capability.startswith("AVX512") and onednn:
        return True, f"the CPU has {'/'.join(native)} and PyTorch uses it (kernels {capability})"
    if native:
        return False, (f"the CPU has {'/'.join(native)} but PyTorch is limited to {capability} kernels"
                       + ("" if onednn else " and oneDNN without bf16") + " (ATEN_CPU_CAPABILITY / ONEDNN_MAX_CPU_ISA)")
    return False, f"the CPU has no native bf16 (kernels {capability}): bf16 would be emulated, several times slower"


def resolve_precision(precision: str, device: torch.device | str) -> tuple[str, str]:
    """(precision, reason) with 'auto' decided by `native_bf16`; an explicit value is kept as given."""
    if precision != "auto":
        return check_precision(precision), "asked for"
    ok, why = native_bf16(device)
    return ("bf16" if ok else "fp32"), why


def autocast(device: torch.device | str, precision: str = "fp32") -> AbstractContextManager:
    """Autocast context for `precision` on `device` (a no-op for fp32)."""
    check_precision(precision)
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


# oneDNN's strided 1x1 convolution, backward to its weights, writes past its workspace when the input is
# channels_last and has fewer channels than the kernel's channel block (8 on AVX2, 16 on AVX-512): the gradients are
# silently wrong and differ between runs, or the process hangs in a spin barrier or crashes
# (uxlfoundation/oneDNN#6035). ResNets of width < 16 have such shortcut convolutions; width 16 and up do not.
ONEDNN_CHANNEL_BLOCK = 16


def channels_last_hazards(model: torch.nn.Module, device: torch.device | str) -> list[str]:
    """Names of `model`'s convolutions whose weight gradient oneDNN computes wrongly in channels_last on a CPU
    (strided 1x1 with fewer than ONEDNN_CHANNEL_BLOCK input channels per group); [] on a GPU or if none."""
    if torch.device(device).type != "cpu":
        return []
    return [name for name, m in model.named_modules()
            if isinstance(m, torch.nn.Conv2d) and tuple(m.kernel_size) == (1, 1) and max(m.stride) > 1
            and m.in_channels // m.groups < ONEDNN_CHANNEL_BLOCK]


def safe_channels_last(model: torch.nn.Module, device: torch.device | str, wanted: bool) -> tuple[bool, str]:
    """(channels_last, reason) for computing gradients of `model` on `device`: the wanted layout unless
    `channels_last_hazards` finds a convolution it would compute wrongly, then the contiguous layout."""
    hazards = channels_last_hazards(model, device) if wanted else []
    if not hazards:
        return wanted, "asked for"
    return False, (f"channels_last off: oneDNN computes the weight gradient of {hazards[0]} (strided 1x1, fewer "
                   f"than {ONEDNN_CHANNEL_BLOCK} input channels) wrongly in that layout on CPUs "
                   f"(uxlfoundation/oneDNN#6035); {len(hazards)} such convolution(s)")


def to_device(x: torch.Tensor, device: torch.device | str, channels_last: bool = False,
              non_blocking: bool = True) -> torch.Tensor:
    """Move an image batch (B, C, H, W) to `device`, optionally in channels_last layout."""
    x = x.to(device, non_blocking=non_blocking)
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.ndim == 4 else x


@contextlib.contextmanager
def seeded(seed: int, device: torch.device | str = "cpu") -> Iterator[None]:
    """torch's generators (the CPU's, and the device's on CUDA) seeded with `seed` inside the block and restored
    afterwards: MC-dropout masks drawn inside repeat exactly, and the caller's random stream is untouched."""
    device = torch.device(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(int(seed))
        yield


def _text_only():
    """True where a bar can only be appended as text: output to a file or pipe (nohup, SLURM logs), no notebook."""
    return "ipykernel" not in sys.modules and not sys.stderr.isatty()


def progress_bar(*args: Any, **kwargs: Any) -> Any:
    """A tqdm bar: ipywidgets in a live notebook front-end, a live bar in a terminal, and where the output
    goes to a file or pipe (nohup, SLURM logs) text lines at most every 10 seconds.

    A notebook executed headless (papermill, nbclient: `make demo`) has no front-end to draw widgets, so there
    SMOOTHING_PROGRESS=text (set by ops.demo) gives text bars that reach the terminal through the cell's output,
    one line at most every 10 seconds."""
    if os.environ.get("SMOOTHING_PROGRESS") == "text" or _text_only():
        from tqdm.std import tqdm

        kwargs.setdefault("mininterval", 10.0)
        kwargs.setdefault("file", sys.stdout)
        kwargs.setdefault("ascii", True)
        return tqdm(*args, **kwargs)
    from tqdm.auto import tqdm

    return tqdm(*args, **kwargs)
