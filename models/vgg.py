"""VGG and pre-activation VGG from one config table.

A stage is a Sequential that starts with its 2x2 max-pool (except stage 0) followed by conv blocks; a smoothing
block (`smooth0`..`smooth4`) follows each stage. The MLP head starts with the last max-pool and an adaptive
average pool to 7x7, as torchvision's VGG (so the same weights work at 32x32 and 224x224: there is no stem).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch.nn as nn

from .classifiers import make_head
from .layers import conv3x3, dropout
from .registry import register_variants

if TYPE_CHECKING:
    import torch

VGG_DEPTHS = {11: (1, 1, 2, 2, 2), 13: (2, 2, 2, 2, 2), 16: (2, 2, 3, 3, 3), 19: (2, 2, 4, 4, 4)}
VGG_CHANNELS = (64, 128, 256, 512, 512)


class ConvBlock(nn.Module):
    """conv3x3-BN-ReLU-[MC dropout]."""

    def __init__(self, in_channels, out_channels, rate=0.0):
        super().__init__()
        self.conv = conv3x3(in_channels, out_channels)
        self.bn = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.dropout = dropout(rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.relu(self.bn(self.conv(x))))


class PreActConvBlock(nn.Module):
    """BN-ReLU-conv3x3-[MC dropout]: the pre-activation order (the first block normalises the input image)."""

    def __init__(self, in_channels, out_channels, rate=0.0):
        super().__init__()
        self.bn = nn.BatchNorm2d(in_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv = conv3x3(in_channels, out_channels)
        self.dropout = dropout(rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.conv(self.relu(self.bn(x))))


class VGG(nn.Module):
    """layer0 -> smooth0 -> ... -> layer4 -> smooth4 -> classifier. `stem` is accepted for a uniform API and
    ignored: VGG has no stem, and its layout is the same for CIFAR and ImageNet."""

    def __init__(self, block, depths, num_classes=10, stem=False, rate=0.0, smoothing=None, classifier="mlp"):
        super().__init__()
        in_channels = 3
        for i, (n, channels) in enumerate(zip(depths, VGG_CHANNELS)):
            stage = [nn.MaxPool2d(kernel_size=2, stride=2)] if i > 0 else []
            for _ in range(n):
                stage.append(block(in_channels, channels, rate=rate))
                in_channels = channels
            setattr(self, f"layer{i}", nn.Sequential(*stage))
            setattr(self, f"smooth{i}", nn.Sequential(smoothing(channels)) if smoothing else nn.Identity())
        self.num_stages = len(depths)
        self.classifier = make_head(classifier, in_channels, num_classes,
                                    mlp_pool=[nn.MaxPool2d(kernel_size=2, stride=2)], mlp_size=7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, num_classes)
        for i in range(self.num_stages):
            x = getattr(self, f"smooth{i}")(getattr(self, f"layer{i}")(x))
        return self.classifier(x)


register_variants("vgg", VGG, depths={d: dict(block=ConvBlock, depths=n) for d, n in VGG_DEPTHS.items()})
register_variants("prevgg", VGG, depths={d: dict(block=PreActConvBlock, depths=n) for d, n in VGG_DEPTHS.items()})
