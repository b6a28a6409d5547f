"""Classifier heads: (B, C, H, W) features -> (B, num_classes) logits.

GAP (global average pooling) is the paper's recommendation: it is itself an extreme spatial smoothing. The
other pooled heads are the ablations; all are one `PoolHead` with another pooling, computed as the original
implementation's classes compute them (tests/models/test_exactness.py checks their outputs):

    name     original class   head
    gap      GAPBlock         mean over H, W -> dense
    bngap    BNGAPBlock       BN -> ReLU -> mean -> dense (pre-activation networks)
    gmp      GMaxPBlock       max over H, W -> dense
    gmedp    GMedPBlock       the (H*W // 2)-th largest value (the upper median for an even count) -> dense
    gapclip  GAPClipBlock     mean -> t * (sigmoid(x / t) - 1/2), t = 2 -> dense
    mlp      MLPBlock         flatten -> 4096 -> 4096 -> classes, ReLU and train-only dropout 0.5 (VGG, AlexNet)
    gapmlp   GAPMLPBlock      mean -> the same MLP

`make_head` builds the Sequential that networks store as `.classifier`; its indices reproduce the original
state_dict keys (e.g. `classifier.2.dense1`).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn as nn

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence


def _mean(x):  # (B, C, H, W) -> (B, C)
    return x.mean(dim=(2, 3))


def _max(x):
    return x.amax(dim=(2, 3))


def _median(x):
    """The k-th largest value per channel with k = H*W // 2 (at least 1): the original's topk definition."""
    flat = x.flatten(2)  # (B, C, H*W)
    k = max(1, flat.shape[2] // 2)
    return flat.topk(k, dim=2).values[..., -1]


def _mean_clip(x, temp=2.0):
    return temp * (torch.sigmoid(_mean(x) / temp) - 0.5)


# name -> (pooling, BatchNorm + ReLU first)
POOLS = {"gap": (_mean, False), "bngap": (_mean, True), "gmp": (_max, False), "gmedp": (_median, False),
         "gapclip": (_mean_clip, False)}


class PoolHead(nn.Module):
    """[BN -> ReLU] -> global pooling -> dense. State-dict keys: `bn.*` (bngap only) and `dense.*`."""

    def __init__(self, in_features, num_classes, pool="gap"):
        super().__init__()
        if pool not in POOLS:
            raise ValueError(f"Unknown pooling {pool!r}; choose one of {sorted(POOLS)}")
        self.pool_name = pool
        self.pool, with_bn = POOLS[pool]
        if with_bn:
            self.bn = nn.BatchNorm2d(in_features)
            self.relu = nn.ReLU()
        self.dense = nn.Linear(in_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, num_classes)
        if hasattr(self, "bn"):
            x = self.relu(self.bn(x))
        return self.dense(self.pool(x))

    def extra_repr(self) -> str:
        return f"pool={self.pool_name}"


class MLPBlock(nn.Module):
    """[GAP or flatten] -> 4096 -> 4096 -> num_classes with ReLU and (train-only) dropout 0.5, as VGG/AlexNet."""

    def __init__(self, in_features, num_classes, hidden=4096, p=0.5, gap=False):
        super().__init__()
        self.gap = gap
        self.dense1 = nn.Linear(in_features, hidden)
        self.dense2 = nn.Linear(hidden, hidden)
        self.dense3 = nn.Linear(hidden, num_classes)
        self.relu = nn.ReLU()
        self.dropout = nn.Dropout(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _mean(x) if self.gap else x.flatten(1)
        x = self.dropout(self.relu(self.dense1(x)))
        x = self.dropout(self.relu(self.dense2(x)))
        return self.dense3(x)


CLASSIFIERS = sorted(POOLS) + ["gapmlp", "mlp"]


def make_head(classifier: str | Callable[..., nn.Module], in_channels: int, num_classes: int,
              mlp_pool: Sequence[nn.Module] = (), mlp_size: int = 7) -> nn.Sequential:
    """Head as an nn.Sequential. The flattening MLP first applies `mlp_pool` (extra modules, e.g. the last
    max-pool of VGG) and an adaptive average pool to `mlp_size` x `mlp_size`; the others see raw features.
    `classifier` is a name of CLASSIFIERS or a class taking (in_channels, num_classes)."""
    if not isinstance(classifier, str):
        return nn.Sequential(classifier(in_channels, num_classes))
    if classifier not in CLASSIFIERS:
        raise ValueError(f"Unknown classifier {classifier!r}; choose one of {CLASSIFIERS}")
    if classifier == "mlp":
        pools = list(mlp_pool) + [nn.AdaptiveAvgPool2d(mlp_size)]
        return nn.Sequential(*pools, MLPBlock(in_channels * mlp_size * mlp_size, num_classes))
    if classifier == "gapmlp":
        return nn.Sequential(MLPBlock(in_channels, num_classes, gap=True))
    return nn.Sequential(PoolHead(in_channels, num_classes, classifier))
