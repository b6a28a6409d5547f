"""Batches for training and evaluation.

`DeviceLoader` (airbench style) serves an in-memory `ImageTensorDataset`: the uint8 images move to the device
once; each epoch shuffles with `randperm`, and random crop (zero padding 4) and horizontal flip run as batched
tensor ops there; no worker processes, no PIL per image. Shuffling and augmentation draw from generators seeded
by (seed, epoch[, rank]), so an epoch's batches are the same whether a run was interrupted and resumed or not.
Under DDP each rank takes every world_size-th index of the same permutation.

`make_loader` picks it for in-memory datasets and a torchvision-style DataLoader (workers, pinned memory) for the
others (ImageNet). Under DDP, training shards pad to equal length (every rank must take the same number of
steps), but evaluation shards never do: `ShardSampler` gives each image to exactly one rank, so N processes score
exactly the images one process scores.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from typing import Any


class DeviceLoader:
    def __init__(self, dataset, batch_size, train=False, device="cpu", augment=None, drop_last=None,
                 channels_last=False, seed=0, rank=0, world_size=1, pad=4):
        self.dataset, self.batch_size, self.train = dataset, batch_size, train
        self.device = torch.device(device)
        self.augment = train if augment is None else augment
        self.drop_last = train if drop_last is None else drop_last
        self.channels_last, self.seed, self.rank, self.world_size, self.pad = channels_last, seed, rank, world_size, pad
        self.epoch = 0
        self.images = dataset.images.to(self.device)  # (N, C, H, W) uint8, once
        self.labels = dataset.labels.to(self.device)
        self.mean = torch.tensor(dataset.mean, device=self.device).view(1, -1, 1, 1) * 255
        self.std = torch.tensor(dataset.std, device=self.device).view(1, -1, 1, 1) * 255
        self.classes = dataset.classes

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _indices(self):
        n = len(self.images)
        if self.train:  # same permutation on every rank: the seed, not the rank, decides it
            g = torch.Generator(device="cpu").manual_seed(self.seed * 100_003 + self.epoch)
            perm = torch.randperm(n, generator=g).to(self.device)
        else:
            perm = torch.arange(n, device=self.device)
        if self.world_size > 1:
            if self.train:  # pad so that every rank gets the same number of batches (as DistributedSampler)
                per_rank = math.ceil(n / self.world_size)
                perm = torch.cat([perm, perm[: per_rank * self.world_size - n]])
            perm = perm[self.rank::self.world_size]  # evaluation: disjoint shards, no duplicates
        return perm

    def __len__(self):
        n = len(self._indices()) if self.world_size > 1 else len(self.images)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def _augment(self, x, g):  # x: (B, C, H, W) uint8; crops of `pad` (0: flips only), then flips
        B, C, H, W = x.shape
        p = self.pad
        if p == 0:
            flip = torch.rand(B, generator=g, device=self.device) < 0.5
            return torch.where(flip[:, None, None, None], x.flip(3), x)
        x = F.pad(x, (p, p, p, p))  # zero padding, as torchvision's RandomCrop(padding=4)
        dy = torch.randint(0, 2 * p + 1, (B,), generator=g, device=self.device)
        dx = torch.randint(0, 2 * p + 1, (B,), generator=g, device=self.device)
        rows = (dy[:, None] + torch.arange(H, device=self.device))[:, None, :, None]  # (B, 1, H, 1)
        cols = (dx[:, None] + torch.arange(W, device=self.device))[:, None, None, :]  # (B, 1, 1, W)
        batch = torch.arange(B, device=self.device)[:, None, None, None]
        chans = torch.arange(C, device=self.device)[None, :, None, None]
        x = x[batch, chans, rows, cols]  # (B, C, H, W) crops
        flip = torch.rand(B, generator=g, device=self.device) < 0.5
        return torch.where(flip[:, None, None, None], x.flip(3), x)

    def __iter__(self):
        idx = self._indices()
        g = None
        if self.augment:
            g = torch.Generator(device=self.device).manual_seed(
                (self.seed * 100_003 + self.epoch) * 1_009 + self.rank)
        stop = len(idx) - len(idx) % self.batch_size if self.drop_last else len(idx)
        for start in range(0, stop, self.batch_size):
            b = idx[start:start + self.batch_size]
            x = self.images[b]
            if self.augment:
                x = self._augment(x, g)
            x = (x.float() - self.mean) / self.std  # (B, C, H, W) float32, normalised
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, self.labels[b]


class ShardSampler(torch.utils.data.Sampler):
    """Indices rank, rank + world_size, ...: disjoint evaluation shards without padding or duplicates."""

    def __init__(self, dataset, rank, world_size):
        self.n, self.rank, self.world_size = len(dataset), rank, world_size

    def __iter__(self):
        return iter(range(self.rank, self.n, self.world_size))

    def __len__(self):
        return len(range(self.rank, self.n, self.world_size))


def make_loader(dataset: torch.utils.data.Dataset, batch_size: int, train: bool = False,
                device: torch.device | str = "cpu", workers: int = 4, seed: int = 0, rank: int = 0, world_size: int = 1,
                channels_last: bool = False, augment: bool | None = None, pad: int = 4) -> Any:
    """DeviceLoader for in-memory datasets, else a DataLoader (with a DistributedSampler under DDP)."""
    from ops.data.datasets import ImageTensorDataset

    if isinstance(dataset, ImageTensorDataset):
        return DeviceLoader(dataset, batch_size, train=train, device=device, seed=seed, rank=rank,
                            world_size=world_size, channels_last=channels_last, augment=augment, pad=pad)
    sampler = None
    if world_size > 1 and train:
        sampler = torch.utils.data.distributed.DistributedSampler(
            dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=False)
    elif world_size > 1:
        sampler = ShardSampler(dataset, rank, world_size)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=train and sampler is None, sampler=sampler, num_workers=workers,
        pin_memory=torch.device(device).type == "cuda", drop_last=train, persistent_workers=workers > 0)
    loader.set_epoch = getattr(sampler, "set_epoch", lambda epoch: None)
    loader.classes = getattr(dataset, "classes", None)
    return loader
