"""AlexNet (Krizhevsky et al., 2012) with optional MC dropout and smoothing.

Stages: layer0 = stem conv; layer1 = max-pool + 5x5 conv; layer2 = max-pool + three 3x3 convs; a smoothing
block (`smooth0`..`smooth2`) after each. Convolutions carry no BatchNorm and no bias, as in the original.
As the original: the ImageNet stem (stem=True) is the 11x11/4 conv with 3x3/2 max-pools and a 6x6 MLP input;
the CIFAR stem (stem=False) is a 3x3/2 conv with 2x2/2 max-pools and a 2x2 MLP input (32 -> 16 -> 8 -> 4 -> 2).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch.nn as nn

from .classifiers import make_head
from .layers import conv, dropout
from .registry import register_variants

if TYPE_CHECKING:
    import torch


class AlexConvBlock(nn.Module):
    """conv-ReLU-[MC dropout] (the original's MC block draws its mask after the convolution)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, rate=0.0):
        super().__init__()
        self.conv = conv(in_channels, out_channels, kernel_size, stride=stride, padding=padding)
        self.relu = nn.ReLU(inplace=True)
        self.dropout = dropout(rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.relu(self.conv(x)))


class AlexNet(nn.Module):
    def __init__(self, num_classes=10, stem=False, rate=0.0, smoothing=None, classifier="mlp"):
        super().__init__()
        if stem:
            self.layer0 = nn.Sequential(AlexConvBlock(3, 64, 11, stride=4, padding=2, rate=rate))
        else:
            self.layer0 = nn.Sequential(AlexConvBlock(3, 64, 3, stride=2, padding=1, rate=rate))
        pool = 3 if stem else 2
        self.layer1 = nn.Sequential(nn.MaxPool2d(kernel_size=pool, stride=2),
                                    AlexConvBlock(64, 192, 5, padding=2, rate=rate))
        self.layer2 = nn.Sequential(nn.MaxPool2d(kernel_size=pool, stride=2),
                                    AlexConvBlock(192, 384, 3, padding=1, rate=rate),
                                    AlexConvBlock(384, 256, 3, padding=1, rate=rate),
                                    AlexConvBlock(256, 256, 3, padding=1, rate=rate))
        for i, channels in enumerate((64, 192, 256)):
            setattr(self, f"smooth{i}", nn.Sequential(smoothing(channels)) if smoothing else nn.Identity())
        self.classifier = make_head(classifier, 256, num_classes,
                                    mlp_pool=[nn.MaxPool2d(kernel_size=pool, stride=2)], mlp_size=6 if stem else 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, num_classes)
        x = self.smooth0(self.layer0(x))
        x = self.smooth1(self.layer1(x))
        x = self.smooth2(self.layer2(x))
        return self.classifier(x)


register_variants("alexnet", AlexNet, default_rate=0.1)
