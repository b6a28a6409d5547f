"""Classifier heads: (B, C, H, W) features -> (B, num_classes) logits.

GAP (global average pooling) is the paper's recommendation: it is itself an extreme spatial smoothing.
The others are the ablations: BN-GAP (pre-activation nets), global max / median pooling, GAP with clipping,
GAP + MLP, and the flattening MLP of VGG and AlexNet. `make_head` builds the Sequential that networks store
as `.classifier`; its indices reproduce the original state_dict keys (e.g. `classifier.2.dense1`).
"""
import torch
import torch.nn as nn


class GAPBlock(nn.Module):
    def __init__(self, in_features, num_classes):
        super().__init__()
        self.dense = nn.Linear(in_features, num_classes)

    def forward(self, x):  # (B, C, H, W)
        return self.dense(x.mean(dim=(2, 3)))


class BNGAPBlock(nn.Module):
    """BatchNorm -> ReLU -> GAP -> dense: the head of pre-activation networks."""

    def __init__(self, in_features, num_classes):
        super().__init__()
        self.bn = nn.BatchNorm2d(in_features)
        self.relu = nn.ReLU()
        self.dense = nn.Linear(in_features, num_classes)

    def forward(self, x):
        return self.dense(self.relu(self.bn(x)).mean(dim=(2, 3)))


class GMaxPBlock(nn.Module):
    """Global max pooling."""

    def __init__(self, in_features, num_classes):
        super().__init__()
        self.dense = nn.Linear(in_features, num_classes)

    def forward(self, x):
        return self.dense(x.amax(dim=(2, 3)))


class GMedPBlock(nn.Module):
    """Global median pooling (the lower median, as torch.median)."""

    def __init__(self, in_features, num_classes):
        super().__init__()
        self.dense = nn.Linear(in_features, num_classes)

    def forward(self, x):
        return self.dense(x.flatten(2).median(dim=2).values)


class GAPClipBlock(nn.Module):
    """GAP -> 2 * sigmoid(x / t) - 1 -> dense: GAP with a soft clip."""

    def __init__(self, in_features, num_classes, temp=2.0):
        super().__init__()
        self.temp = temp
        self.dense = nn.Linear(in_features, num_classes)

    def forward(self, x):
        x = x.mean(dim=(2, 3))
        return self.dense(2 * torch.sigmoid(x / self.temp) - 1)


class MLPBlock(nn.Module):
    """Flatten -> 4096 -> 4096 -> num_classes with ReLU and (train-only) dropout 0.5, as VGG/AlexNet."""

    def __init__(self, in_features, num_classes, hidden=4096, p=0.5):
        super().__init__()
        self.dense1 = nn.Linear(in_features, hidden)
        self.dense2 = nn.Linear(hidden, hidden)
        self.dense3 = nn.Linear(hidden, num_classes)
        self.relu = nn.ReLU()
        self.dropout = nn.Dropout(p)

    def forward(self, x):
        x = x.flatten(1)
        x = self.dropout(self.relu(self.dense1(x)))
        x = self.dropout(self.relu(self.dense2(x)))
        return self.dense3(x)


class GAPMLPBlock(MLPBlock):
    """GAP followed by the MLP."""

    def forward(self, x):
        return super().forward(x.mean(dim=(2, 3)))


CLASSIFIERS = {
    "gap": GAPBlock,
    "bngap": BNGAPBlock,
    "gmp": GMaxPBlock,
    "gmedp": GMedPBlock,
    "gapclip": GAPClipBlock,
    "gapmlp": GAPMLPBlock,
    "mlp": MLPBlock,
}


def make_head(classifier, in_channels, num_classes, mlp_pool=(), mlp_size=7):
    """Head as an nn.Sequential. The flattening MLP first applies `mlp_pool` (extra modules, e.g. the last
    max-pool of VGG) and an adaptive average pool to `mlp_size` x `mlp_size`; the others see raw features."""
    block = CLASSIFIERS.get(classifier, classifier) if isinstance(classifier, str) else classifier
    if isinstance(classifier, str) and classifier not in CLASSIFIERS:
        raise ValueError(f"Unknown classifier {classifier!r}; choose one of {sorted(CLASSIFIERS)}")
    if block is MLPBlock:
        pools = list(mlp_pool) + [nn.AdaptiveAvgPool2d(mlp_size)]
        return nn.Sequential(*pools, MLPBlock(in_channels * mlp_size * mlp_size, num_classes))
    return nn.Sequential(block(in_channels, num_classes))
