"""Small building blocks shared by every family: convolutions and MC dropout.

MC dropout (Gal & Ghahramani, 2016) keeps dropout *on* at test time and averages several stochastic
forward passes. `MCDropout` therefore ignores `eval()`; `mc_dropout(model, enabled=False)` turns it off
for a deterministic pass, as a plain call or as a context manager that restores the previous state.
"""
from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch.nn.functional as F

if TYPE_CHECKING:
    from collections.abc import Iterator


def conv(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
         groups: int = 1) -> nn.Conv2d:
    """Bias-free convolution, as in the original implementation (a BatchNorm usually follows)."""
    return nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                     groups=groups, bias=False)


def conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return conv(in_channels, out_channels, 1, stride=stride)


def conv3x3(in_channels: int, out_channels: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    return conv(in_channels, out_channels, 3, stride=stride, padding=1, groups=groups)


class MCDropout(nn.Module):
    """Dropout that stays stochastic in eval() while `mc` is True (the default).

    In train() it behaves like nn.Dropout. It has no parameters, so it never changes a state_dict.
    """

    def __init__(self, p):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"MC dropout rate must be in [0, 1), got {p}")
        self.p = p
        self.mc = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        active = self.training or self.mc
        # Under torch.compile, F.dropout: dynamo cannot trace Tensor.random_ (a graph break in every block, and
        # past 8 block shapes the recompile limit sends the rest back to eager), and inductor fuses its own RNG.
        if active and FAST_CPU_DROPOUT and x.device.type == "cpu" and self.p > 0 and not torch.compiler.is_compiling():
            return _cpu_dropout(x, self.p)
        return F.dropout(x, self.p, training=active)

    def extra_repr(self) -> str:
        return f"p={self.p}, mc={self.mc}"


# On CPUs, F.dropout's Bernoulli draws took 46% of an MC-dropout forward pass of the demo's ResNet-18 (width 16,
# AVX2) and 15% of a training step. `_cpu_dropout` draws the same distribution 1.8x faster. False: F.dropout
# everywhere, whose random stream is the original implementation's (tests/models/test_exactness.py compares with it).
FAST_CPU_DROPOUT = True


@contextlib.contextmanager
def stock_dropout() -> Iterator[None]:
    """Inside: F.dropout on CPUs too (the original's random stream, and the baseline the benchmarks compare with)."""
    global FAST_CPU_DROPOUT
    previous, FAST_CPU_DROPOUT = FAST_CPU_DROPOUT, False
    try:
        yield
    finally:
        FAST_CPU_DROPOUT = previous


def _cpu_dropout(x, p):
    """Dropout from 16-bit random integers: keep where r >= p * 2^16 - 2^15 (r uniform in [-2^15, 2^15)), so the
    rate is p rounded to 1/65536 (0.3 -> 0.300003); 64 vs 117 ms for F.dropout on a 128x64x32x32 map on 2 cores."""
    keep = _random_int16_like(x) >= round(p * 65536) - 32768
    return _KeepScale.apply(x, keep, 1.0 / (1.0 - p))


def _random_int16_like(x):
    """Uniform int16 of x's shape and memory layout, cut from full-range int64 draws: four values per draw of the
    CPU generator instead of one (8.6 vs 26 ms for 8M values on 2 cores)."""
    if torch._C._functorch.is_functorch_wrapped_tensor(x):  # under vmap/grad: a draw per batched element
        return torch.empty_like(x, dtype=torch.int16).random_(-2**15, 2**15)
    n = x.numel()
    words = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-2**63, None)  # every bit uniform
    layout = torch.empty_like(x, dtype=torch.int16)  # strides only: dense, x's memory format (or contiguous)
    return words.view(torch.int16)[:n].as_strided(layout.shape, layout.stride())


class _KeepScale(torch.autograd.Function):
    """x * float(keep) * scale, saving only the boolean mask for backward. The mask is converted first: mul's own
    bool-to-float promotion made x.mul(keep) 3x slower (14.2 vs 4.8 ms on a 500x16x32x32 map, 2 cores; where()
    12.2 ms), for the same result to the bit."""
    generate_vmap_rule = True

    @staticmethod
    def forward(x, keep, scale):
        return x.mul(keep.to(x.dtype)).mul_(scale)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, keep, scale = inputs
        ctx.save_for_backward(keep)
        ctx.scale = scale

    @staticmethod
    def backward(ctx, grad):
        (keep,) = ctx.saved_tensors
        return grad.mul(keep.to(grad.dtype)).mul_(ctx.scale), None, None


# Activations a network may be built with (`act=`): the paper reads ReLU6 as a special case of spatial smoothing
# (its bound acts like the smoothing block's tanh), so `act="relu6"` is the ReLU6 network of that comparison.
ACTIVATIONS = {"relu": nn.ReLU, "relu6": nn.ReLU6}


def set_activation(model: nn.Module, act: str) -> nn.Module:
    """Replace every nn.ReLU module of `model` (stem, blocks, head) by the activation `act` (a name of
    ACTIVATIONS), keeping `inplace`; returns `model`. Parameter-free, so state_dicts are unchanged."""
    if act not in ACTIVATIONS:
        raise ValueError(f"Unknown activation act={act!r}; choose one of {sorted(ACTIVATIONS)}")
    cls = ACTIVATIONS[act]
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if type(child) is nn.ReLU and cls is not nn.ReLU:
                setattr(parent, name, cls(inplace=child.inplace))
    return model


def dropout(p: float) -> nn.Module:
    """MC dropout of rate p, or an identity when p == 0 (deterministic variants)."""
    return MCDropout(p) if p > 0 else nn.Identity()


class mc_dropout:
    """Switch MC dropout on or off for every MCDropout in `model`.

    Takes effect immediately; used as a context manager it restores the previous states on exit:

        models.mc_dropout(model, enabled=False)          # deterministic from now on
        with models.mc_dropout(model, enabled=False):    # deterministic inside the block only
            logits = model(x)
    """

    def __init__(self, model, enabled=True):
        self.modules = [m for m in model.modules() if isinstance(m, MCDropout)]
        self.previous = [m.mc for m in self.modules]
        for m in self.modules:
            m.mc = bool(enabled)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for m, mc in zip(self.modules, self.previous):
            m.mc = mc
        return False


def is_stochastic(model: nn.Module) -> bool:
    """True if `model` has an active MC dropout layer, i.e. two eval() passes can differ."""
    return any(isinstance(m, MCDropout) and m.mc for m in model.modules())


@contextlib.contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """eval() and no_grad for the block, the model's previous mode restored afterwards (MC dropout layers stay
    on: they are stochastic in eval() by design)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)
