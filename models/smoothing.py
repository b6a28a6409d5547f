"""Spatial smoothing blocks: a bounded activation followed by a blur (Park & Kim, 2021).

The paper's block is  t * tanh(x / t) -> ReLU -> AvgPool2d(kernel_size=2, stride=1, padding=1)  with t = 10.
The average pool makes each feature map one pixel larger and counts the zero padding in border averages
(count_include_pad=True); that is the original behaviour and trained checkpoints depend on it.

Every block of the paper's ablations is the same `SmoothingBlock` with another activation, computed exactly as
the original implementation's classes compute it (checked against its outputs in tests/models/test_exactness.py):

    name      original class      activation before the blur                     default t
    tanh      TanhBlurBlock       relu(t * tanh(x / t))                          10
    bntanh    BNTanhBlurBlock     relu(t * tanh(BN(x) / t))                      10
    sigmoid   SigmoidBlurBlock    relu(4t * (sigmoid(x / t) - 1/2))              10
    softmax   SoftmaxBlurBlock    t * softmax(x / t) over channels               10
    relu6     ReLuBlurBlock       clamp(x, 0, t)            (`thr` is an alias)  6
    scaling   ScalingBlurBlock    x / t                                          5
    bn        BNBlurBlock         relu(BN(x))                                    -
    blur      BlurBlock           x                                              -

The original's BNBlurBlock cannot be built (its constructor calls the base class of another name), so `bn` is
our working version of what it describes. Every blur takes any separable filter, e.g. (1, 2, 1) or
(1, 3, 3, 1), and a padding mode; the default 2x2 box with zero padding is the AvgPool2d above.
"""
from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch.nn.functional as F

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any


class Blur(nn.Module):
    """Depthwise convolution with a fixed, normalised, separable filter ("same" padding).

    The filter is a non-persistent buffer: it follows .to(device) but is not part of our state_dict. The
    original stored it as a frozen Parameter `filter`; such checkpoints load (the stored filter is checked
    against this one and then dropped).
    """

    def __init__(self, in_filters, sfilter=(1, 2, 1), pad_mode="replicate"):
        super().__init__()
        proto = torch.tensor(sfilter, dtype=torch.float32)
        if proto.ndim != 1 or len(proto) < 1 or proto.sum() <= 0:
            raise ValueError(f"sfilter must be a 1-D sequence with a positive sum, got {sfilter!r}")
        kernel = torch.outer(proto, proto)
        kernel = kernel / kernel.sum()
        self.register_buffer("filter", kernel.expand(in_filters, 1, -1, -1).contiguous(), persistent=False)
        n = len(proto)
        # (left, right, top, bottom): an even filter puts the extra pixel on the right/bottom, as the original.
        self.padding = ((n - 1) // 2, math.ceil((n - 1) / 2)) * 2
        self.pad_mode = "constant" if pad_mode == "zero" else pad_mode
        self.sfilter = tuple(float(v) for v in sfilter)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, C, H, W)
        x = F.pad(x, self.padding, mode=self.pad_mode)
        return F.conv2d(x, self.filter.to(x.dtype), groups=x.shape[1])

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        stored = state_dict.pop(prefix + "filter", None)  # the original's frozen Parameter
        if stored is not None and (stored.shape != self.filter.shape
                                   or not torch.allclose(stored.float().cpu(), self.filter.float().cpu())):
            error_msgs.append(f"{prefix}filter: the checkpoint's blur filter (shape {tuple(stored.shape)}) is not "
                              f"this model's sfilter={self.sfilter}; build the model with the sfilter it was "
                              f"trained with")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def extra_repr(self) -> str:
        return f"sfilter={self.sfilter}, pad_mode={self.pad_mode}"


def blur(in_filters: int, sfilter: Sequence[int] = (1, 1), pad_mode: str = "constant") -> nn.Module:
    """The paper's blur: a 2x2 box with zero padding is AvgPool2d(2, stride=1, padding=1) (map grows by 1)."""
    if tuple(sfilter) == (1, 1) and pad_mode in ("constant", "zero"):
        return nn.AvgPool2d(kernel_size=2, stride=1, padding=1)
    return Blur(in_filters, sfilter=sfilter, pad_mode=pad_mode)


# Activations: (x, t) -> tensor. Module-level functions, so models stay picklable and traceable.
def _tanh(x, t):
    return F.relu(t * torch.tanh(x / t))


def _sigmoid(x, t):
    return F.relu(4 * t * (torch.sigmoid(x / t) - 0.5))


def _softmax(x, t):  # (B, C, H, W): softmax over channels; positive, so the original's ReLU is a no-op
    return t * torch.softmax(x / t, dim=1)


def _clip(x, t):
    return torch.clamp(x, 0.0, t)


def _scale(x, t):
    return x / t


def _relu(x, t):
    return F.relu(x)


def _identity(x, t):
    return x


# name -> (activation, default temperature or None, BatchNorm first)
SMOOTHING_BLOCKS = {
    "tanh": (_tanh, 10.0, False),
    "bntanh": (_tanh, 10.0, True),
    "sigmoid": (_sigmoid, 10.0, False),
    "softmax": (_softmax, 10.0, False),
    "relu6": (_clip, 6.0, False),
    "scaling": (_scale, 5.0, False),
    "bn": (_relu, None, True),
    "blur": (_identity, None, False),
}


class SmoothingBlock(nn.Module):
    """[BatchNorm] -> activation(x, temp) -> blur; `activation` names a row of SMOOTHING_BLOCKS.

    State-dict keys are those of the original classes: `bn.*` for the BatchNorm variants, nothing otherwise.
    """

    def __init__(self, in_filters, activation="tanh", temp=None, sfilter=(1, 1), pad_mode="constant", thr=None):
        super().__init__()
        if activation not in SMOOTHING_BLOCKS:
            raise ValueError(f"Unknown smoothing block {activation!r}; choose one of {sorted(SMOOTHING_BLOCKS)}")
        fn, default_temp, with_bn = SMOOTHING_BLOCKS[activation]
        if thr is not None:  # the clip threshold of relu6, under the name earlier versions used
            if activation != "relu6" or temp is not None:
                raise TypeError("thr is the threshold of the relu6 block only (and the same as its temp)")
            temp = thr
        if temp is not None and default_temp is None:
            raise TypeError(f"the {activation!r} smoothing block takes no temperature (got temp={temp})")
        if temp is not None and (isinstance(temp, bool) or not isinstance(temp, (int, float)) or not
                                 math.isfinite(temp) or temp <= 0):
            raise ValueError(f"temp must be a positive finite number (the activation divides by it; "
                             f"{activation}'s default is {default_temp}), got {temp!r}")
        self.activation, self.fn = activation, fn
        self.temp = float(temp) if temp is not None else default_temp
        if with_bn:
            self.bn = nn.BatchNorm2d(in_filters)
        self.blur = blur(in_filters, sfilter, pad_mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (B, C, H, W) -> (B, C, H', W'): H' = H + 1 for the default 2x2 blur
        if hasattr(self, "bn"):
            x = self.bn(x)
        return self.blur(self.fn(x, self.temp))

    def extra_repr(self) -> str:
        return f"activation={self.activation}" + (f", temp={self.temp:g}" if self.temp is not None else "")


def TanhBlurBlock(in_filters: int, temp: float = 10.0, sfilter: Sequence[int] = (1, 1),
                  pad_mode: str = "constant") -> SmoothingBlock:
    """The paper's smoothing block: relu(t * tanh(x / t)) -> 2x2 blur (stride 1), t = 10."""
    return SmoothingBlock(in_filters, "tanh", temp=temp, sfilter=sfilter, pad_mode=pad_mode)


def make_smoothing(block: str | Callable[..., nn.Module] = "tanh", **kwargs: Any) -> Callable[..., nn.Module]:
    """Return a factory `in_filters -> nn.Module` for a smoothing block given by name, class or callable.

    A name is a row of SMOOTHING_BLOCKS; `kwargs` (temp, sfilter, pad_mode, thr) go to the block, and a block
    that does not take one raises (at once for names, when the model is built for callables).
    """
    if isinstance(block, str):
        if block not in SMOOTHING_BLOCKS:
            raise ValueError(f"Unknown smoothing block {block!r}; choose one of {sorted(SMOOTHING_BLOCKS)} "
                             "or pass a class / callable taking in_filters")
        SmoothingBlock(1, block, **kwargs)  # validate the keywords now, not deep inside a network constructor
        return functools.partial(SmoothingBlock, activation=block, **kwargs)
    if not callable(block):
        raise TypeError(f"smoothing must be a name, a class or a callable, got {type(block).__name__}")
    return functools.partial(block, **kwargs) if kwargs else block
