"""ResNet, pre-activation ResNet, ResNeXt and Wide ResNet: one network class, four block classes.

Blocks take the MC dropout `rate` (0 = deterministic) like timm blocks take their optional layers; the network
takes an optional `smoothing` factory and puts one smoothing block after each of the four stages
(`smooth1`..`smooth4`), i.e. right before the next stage subsamples. ResNeXt and Wide ResNet are the
bottleneck ResNet with `groups` / `width_per_group`, as in torchvision. Attribute names and their order
reproduce the original implementation's state_dict keys exactly, so its checkpoints load.

Dropout placement follows the original: after the ReLU that precedes the last convolution of each block.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch.nn as nn

from .classifiers import make_head
from .layers import conv, conv1x1, conv3x3, dropout, set_activation
from .registry import register_variants

if TYPE_CHECKING:
    import torch


def _bottleneck_width(channels, groups, width_per_group):
    """Channels of a bottleneck's grouped 3x3 convolution (ResNeXt / Wide ResNet)."""
    width = int(channels * width_per_group / 64) * groups
    if width == 0:  # a too-small model width for this grouping: a 0-channel conv would fail only at run time
        raise ValueError(f"a bottleneck of {channels} channels with width_per_group={width_per_group} has "
                         f"{channels * width_per_group / 64:g} channels per group (< 1): use a larger width "
                         f"(at least {-(-64 // width_per_group)} for this model)")
    return width


def _shortcut(in_channels, out_channels, stride, bn=True):
    """Projection shortcut (1x1 conv [+ BN]) when the shape changes, else an identity (empty Sequential)."""
    if stride == 1 and in_channels == out_channels:
        return nn.Sequential()
    return nn.Sequential(conv1x1(in_channels, out_channels, stride), *([nn.BatchNorm2d(out_channels)] * bn))


def _bottleneck_layers(block, in_channels, channels, stride, groups, width_per_group, shortcut_bn):
    """The shortcut and the three conv + BN pairs of a bottleneck block, registered in its state_dict order:
    conv then BN over the conv's output (post-activation), or BN over the conv's input then conv (pre-activation)."""
    width = _bottleneck_width(channels, groups, width_per_group)
    out_channels = channels * block.expansion
    block.shortcut = _shortcut(in_channels, out_channels, stride, shortcut_bn)
    _conv_bn_pairs(block, [conv1x1(in_channels, width), conv3x3(width, width, stride, groups),
                           conv1x1(width, out_channels)])


def _basic_layers(block, in_channels, channels, stride, groups, width_per_group, shortcut_bn):
    """The shortcut and the two conv + BN pairs of a basic block (state_dict order as _conv_bn_pairs)."""
    if groups != 1 or width_per_group != 64:
        raise ValueError(f"{type(block).__name__} supports only groups=1 and width_per_group=64")
    block.shortcut = _shortcut(in_channels, channels, stride, shortcut_bn)
    _conv_bn_pairs(block, [conv3x3(in_channels, channels, stride), conv3x3(channels, channels)])


def _conv_bn_pairs(block, convs):
    """conv{i} and bn{i} for each conv, registered in the block's state_dict order: conv then BN over its output
    (post-activation), or BN over the conv's input then conv (pre-activation)."""
    for i, c in enumerate(convs, 1):
        bn = nn.BatchNorm2d(c.in_channels if block.preact else c.out_channels)
        for kind, module in ([("bn", bn), ("conv", c)] if block.preact else [("conv", c), ("bn", bn)]):
            setattr(block, f"{kind}{i}", module)


class _Block(nn.Module):
    """What the four blocks share: the shortcut and conv + BN pairs (basic: two 3x3, bottleneck: 1x1-3x3-1x1),
    then `relu` and `dropout` (MC dropout at `rate`, none at 0). shortcut_bn: BN after a projection shortcut
    (None: yes for post-activation blocks, no for pre-activation ones, as the original)."""
    expansion = 1
    preact = False

    def __init__(self, in_channels, channels, stride=1, groups=1, width_per_group=64, rate=0.0, shortcut_bn=None):
        super().__init__()
        shortcut_bn = not self.preact if shortcut_bn is None else shortcut_bn
        layers = _bottleneck_layers if self.expansion == 4 else _basic_layers
        layers(self, in_channels, channels, stride, groups, width_per_group, shortcut_bn)
        self.relu = nn.ReLU(inplace=not self.preact)
        self.dropout = dropout(rate)


class BasicBlock(_Block):
    """conv3x3-BN-ReLU-[dropout]-conv3x3-BN, added to the shortcut, then ReLU."""
    expansion = 1
    preact = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = self.shortcut(x)
        x = self.dropout(self.relu(self.bn1(self.conv1(x))))
        x = self.bn2(self.conv2(x))
        return self.relu(x + skip)


class Bottleneck(_Block):
    """conv1x1-BN-ReLU-conv3x3(groups)-BN-ReLU-[dropout]-conv1x1-BN, added to the shortcut, then ReLU."""
    expansion = 4
    preact = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = self.shortcut(x)
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.dropout(self.relu(self.bn2(self.conv2(x))))
        x = self.bn3(self.conv3(x))
        return self.relu(x + skip)


class PreActBasicBlock(_Block):
    """BN-ReLU-conv3x3-BN-ReLU-[dropout]-conv3x3, added to the shortcut (He et al., 2016b).

    A projection shortcut reads the pre-activated input, an identity shortcut the raw input.
    """
    expansion = 1
    preact = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu(self.bn1(x))
        skip = self.shortcut(h) if len(self.shortcut) else x
        h = self.conv1(h)
        h = self.conv2(self.dropout(self.relu(self.bn2(h))))
        return h + skip


class PreActBottleneck(_Block):
    """BN-ReLU-conv1x1-BN-ReLU-conv3x3-BN-ReLU-[dropout]-conv1x1, added to the shortcut."""
    expansion = 4
    preact = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu(self.bn1(x))
        skip = self.shortcut(h) if len(self.shortcut) else x
        h = self.conv1(h)
        h = self.conv2(self.relu(self.bn2(h)))
        h = self.conv3(self.dropout(self.relu(self.bn3(h))))
        return h + skip


class ResNet(nn.Module):
    """layer0 (stem) -> [layerN -> smoothN] x 4 -> classifier.

    block: one of the block classes above; depths: blocks per stage; width: channels of the stem and first
    stage (64 in the paper; smaller trains faster on a CPU); stem: False = CIFAR (3x3 conv, 32x32 inputs),
    True = ImageNet (7x7/2 conv + 3x3/2 max-pool, 224x224 inputs); smoothing: factory `in_filters -> module`
    or None; classifier: head name or class (default GAP, BN-GAP for pre-activation blocks); smooth_last: False
    leaves the last stage unsmoothed (the original pre-activation ResNet, whose BN-GAP head follows directly);
    act: "relu" or "relu6", the activation of every ReLU of the network (stem, blocks and head).
    """

    def __init__(self, block, depths, num_classes=10, stem=False, width=64, groups=1, width_per_group=64,
                 rate=0.0, smoothing=None, classifier=None, shortcut_bn=True, smooth_last=True, act="relu"):
        super().__init__()
        if act not in ("relu", "relu6"):
            raise ValueError(f"act must be 'relu' or 'relu6', got {act!r}")
        # A pre-activation stem is the bare convolution: the first block normalises and activates.
        stem_act = [] if block.preact else [nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        if stem:
            self.layer0 = nn.Sequential(conv(3, width, 7, stride=2, padding=3), *stem_act,
                                        nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
        else:
            self.layer0 = nn.Sequential(conv3x3(3, width), *stem_act)

        in_channels = width
        for i, n in enumerate(depths):
            channels = width * 2 ** i
            blocks = []
            for j in range(n):
                blocks.append(block(in_channels, channels, stride=2 if (i > 0 and j == 0) else 1, groups=groups,
                                    width_per_group=width_per_group, rate=rate, shortcut_bn=shortcut_bn))
                in_channels = channels * block.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            # Wrapped in a Sequential so a smoothing block with parameters gets the original's `smoothN.0.` keys.
            smooth = smoothing and (smooth_last or i + 1 < len(depths))
            setattr(self, f"smooth{i + 1}", nn.Sequential(smoothing(in_channels)) if smooth else nn.Identity())
        self.num_stages = len(depths)

        classifier = classifier or ("bngap" if block.preact else "gap")
        self.classifier = make_head(classifier, in_channels, num_classes)
        set_activation(self, act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, num_classes)
        x = self.layer0(x)
        for i in range(1, self.num_stages + 1):
            x = getattr(self, f"smooth{i}")(getattr(self, f"layer{i}")(x))
        return self.classifier(x)


RESNET_DEPTHS = {18: (BasicBlock, (2, 2, 2, 2)), 34: (BasicBlock, (3, 4, 6, 3)), 50: (Bottleneck, (3, 4, 6, 3)),
                 101: (Bottleneck, (3, 4, 23, 3)), 152: (Bottleneck, (3, 8, 36, 3))}
PREACT = {BasicBlock: PreActBasicBlock, Bottleneck: PreActBottleneck}
EXTRA = ("width", "act")

register_variants("resnet", ResNet, extra_kwargs=EXTRA, depths={
    d: dict(block=b, depths=n) for d, (b, n) in RESNET_DEPTHS.items()})

# In the original, only the MC dropout *bottleneck* of the pre-act family has a BatchNorm in its shortcut
# (7,680 parameters for depth 50..152): kept so that its checkpoints load. Its +smoothing variants smooth
# stages 1-3 only (no smooth4 before the BN-GAP head).
register_variants("preresnet", ResNet, extra_kwargs=EXTRA, depths={
    d: dict(block=PREACT[b], depths=n, smooth_last=False) for d, (b, n) in RESNET_DEPTHS.items()},
    fixed_by=lambda mcdo, block, **_: dict(shortcut_bn=mcdo and block is PreActBottleneck))

# ResNeXt-50 is 32x4d and ResNeXt-101 32x8d; Wide ResNet-50/101 are "-2" (bottleneck twice as wide).
register_variants("resnext", ResNet, extra_kwargs=EXTRA, depths={
    50: dict(block=Bottleneck, depths=RESNET_DEPTHS[50][1], groups=32, width_per_group=4),
    101: dict(block=Bottleneck, depths=RESNET_DEPTHS[101][1], groups=32, width_per_group=8)})
register_variants("wideresnet", ResNet, extra_kwargs=EXTRA, depths={
    d: dict(block=Bottleneck, depths=RESNET_DEPTHS[d][1], width_per_group=128) for d in (50, 101)})
