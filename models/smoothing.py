"""Spatial smoothing blocks: a bounded nonlinearity followed by a blur (Park & Kim, 2021).

The paper's block, `TanhBlurBlock`, is  t * tanh(x / t) -> ReLU -> AvgPool2d(kernel_size=2, stride=1, padding=1)
with t = 10. The average pool makes each feature map one pixel larger and counts the zero padding in border
averages (count_include_pad=True); that is the original behaviour and trained checkpoints depend on it.

The alternatives of the paper's ablations are here too (sigmoid, softmax, ReLU6-style clip, scaling,
BatchNorm + blur, plain blur). Every blur takes any separable filter, e.g. (1, 2, 1) or (1, 3, 3, 1), and a
padding mode. Blocks are built as `block(in_filters, **kwargs)`; `make_smoothing` resolves names.
"""
import functools
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class Blur(nn.Module):
    """Depthwise convolution with a fixed, normalised, separable filter ("same" padding).

    The filter is a non-persistent buffer: it follows .to(device) but is not part of the state_dict.
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
        # (left, right, top, bottom): an even filter puts the extra pixel on the right/bottom.
        self.padding = ((n - 1) // 2, math.ceil((n - 1) / 2)) * 2
        self.pad_mode = "constant" if pad_mode == "zero" else pad_mode
        self.sfilter = tuple(float(v) for v in sfilter)

    def forward(self, x):  # (B, C, H, W) -> (B, C, H, W)
        x = F.pad(x, self.padding, mode=self.pad_mode)
        return F.conv2d(x, self.filter.to(x.dtype), groups=x.shape[1])

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # The original stored this filter as a frozen Parameter; drop it so those checkpoints still load.
        state_dict.pop(prefix + "filter", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self):
        return f"sfilter={self.sfilter}, pad_mode={self.pad_mode}"


def blur(in_filters, sfilter=(1, 1), pad_mode="constant"):
    """The paper's blur: a 2x2 box with zero padding is AvgPool2d(2, stride=1, padding=1) (map grows by 1)."""
    if tuple(sfilter) == (1, 1) and pad_mode in ("constant", "zero"):
        return nn.AvgPool2d(kernel_size=2, stride=1, padding=1)
    return Blur(in_filters, sfilter=sfilter, pad_mode=pad_mode)


class TanhBlurBlock(nn.Module):
    """t * tanh(x / t) -> ReLU -> blur. The paper's default smoothing (t = 10)."""

    def __init__(self, in_filters, temp=10.0, sfilter=(1, 1), pad_mode="constant"):
        super().__init__()
        self.temp = temp
        self.relu = nn.ReLU()
        self.blur = blur(in_filters, sfilter, pad_mode)

    def forward(self, x):
        return self.blur(self.relu(self.temp * torch.tanh(x / self.temp)))

    def extra_repr(self):
        return f"temp={self.temp}"


class SigmoidBlurBlock(nn.Module):
    """t * (sigmoid(x / t) - 1/2) -> blur."""

    def __init__(self, in_filters, temp=2.0, sfilter=(1, 1), pad_mode="constant"):
        super().__init__()
        self.temp = temp
        self.blur = blur(in_filters, sfilter, pad_mode)

    def forward(self, x):
        return self.blur(self.temp * (torch.sigmoid(x / self.temp) - 0.5))

    def extra_repr(self):
        return f"temp={self.temp}"


class SoftmaxBlurBlock(nn.Module):
    """softmax over channels of x / t -> blur."""

    def __init__(self, in_filters, temp=1.0, sfilter=(1, 1), pad_mode="constant"):
        super().__init__()
        self.temp = temp
        self.blur = blur(in_filters, sfilter, pad_mode)

    def forward(self, x):
        return self.blur(torch.softmax(x / self.temp, dim=1))

    def extra_repr(self):
        return f"temp={self.temp}"


class ReLU6BlurBlock(nn.Module):
    """clamp(x, 0, thr) -> blur: ReLU6 as a (weak) smoothing when thr = 6."""

    def __init__(self, in_filters, thr=6.0, sfilter=(1, 1), pad_mode="constant"):
        super().__init__()
        self.thr = thr
        self.blur = blur(in_filters, sfilter, pad_mode)

    def forward(self, x):
        return self.blur(torch.clamp(x, 0.0, self.thr))

    def extra_repr(self):
        return f"thr={self.thr}"


class ScalingBlock(nn.Module):
    """x / t: the scaling part alone, without a blur (an ablation)."""

    def __init__(self, in_filters=None, temp=8.0):
        super().__init__()
        self.temp = temp

    def forward(self, x):
        return x / self.temp

    def extra_repr(self):
        return f"temp={self.temp}"


class BNBlurBlock(nn.Module):
    """BatchNorm -> ReLU -> blur: a trainable normalisation in place of the tanh."""

    def __init__(self, in_filters, sfilter=(1, 1), pad_mode="constant"):
        super().__init__()
        self.bn = nn.BatchNorm2d(in_filters)
        self.relu = nn.ReLU()
        self.blur = blur(in_filters, sfilter, pad_mode)

    def forward(self, x):
        return self.blur(self.relu(self.bn(x)))


class BlurBlock(nn.Module):
    """The blur alone."""

    def __init__(self, in_filters, sfilter=(1, 1), pad_mode="constant"):
        super().__init__()
        self.blur = blur(in_filters, sfilter, pad_mode)

    def forward(self, x):
        return self.blur(x)


SMOOTHING_BLOCKS = {
    "tanh": TanhBlurBlock,
    "sigmoid": SigmoidBlurBlock,
    "softmax": SoftmaxBlurBlock,
    "relu6": ReLU6BlurBlock,
    "scaling": ScalingBlock,
    "bn": BNBlurBlock,
    "blur": BlurBlock,
}


def make_smoothing(block="tanh", **kwargs):
    """Return a factory `in_filters -> nn.Module` for a smoothing block given by name, class or partial.

    `kwargs` (temp, sfilter, pad_mode, thr) are passed to the block; a block that doesn't take one raises.
    """
    if isinstance(block, str):
        if block not in SMOOTHING_BLOCKS:
            raise ValueError(f"Unknown smoothing block {block!r}; choose one of {sorted(SMOOTHING_BLOCKS)} "
                             "or pass a class / callable taking in_filters")
        block = SMOOTHING_BLOCKS[block]
    if not callable(block):
        raise TypeError(f"smoothing must be a name, a class or a callable, got {type(block).__name__}")
    return functools.partial(block, **kwargs) if kwargs else block
