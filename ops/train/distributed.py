"""Distributed training under torchrun: the process group, and BatchNorm synchronised over the global batch.

    rank, world_size, device = init_distributed("auto")            # WORLD_SIZE > 1: NCCL on GPUs, gloo on CPU
    model = convert_sync_batchnorm(model, device)     # train.sync_bn=true in a config does this under torchrun

Under torchrun each process sees only its share of the global batch, so plain BatchNorm normalises with
statistics of B / world_size images. `convert_sync_batchnorm` swaps every BatchNorm for a synchronised one, keeping the
state_dict keys (checkpoints stay interchangeable): on CUDA PyTorch's `nn.SyncBatchNorm` (fused NCCL kernels);
on other devices `SyncBatchNorm2d` below, which combines the statistics with differentiable all-reduces and so
works with gloo on CPU (PyTorch's class refuses CPU tensors). Outside DDP both behave as plain BatchNorm.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist
import torch.nn as nn

from ops.common.runtime import resolve_device


def _distributed():
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class SyncBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training-mode mean and variance are those of the global batch (any DDP backend)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W)
        if not (self.training and _distributed()):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce  # differentiable: gradients cross processes too

        C = x.shape[1]
        count = all_reduce(torch.tensor([x.numel() / C], dtype=x.dtype, device=x.device))
        mean = all_reduce(x.sum(dim=(0, 2, 3))) / count  # (C,)
        centred = x - mean[None, :, None, None]
        var = all_reduce((centred * centred).sum(dim=(0, 2, 3))) / count  # (C,) biased, as BatchNorm normalises
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                momentum = 1.0 / self.num_batches_tracked.item() if self.momentum is None else self.momentum
                unbiased = var * count / (count - 1).clamp_min(1)
                self.running_mean.mul_(1 - momentum).add_(momentum * mean.detach())
                self.running_var.mul_(1 - momentum).add_(momentum * unbiased.detach())
        out = centred * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            out = out * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return out


def _convert_cpu(module):
    if isinstance(module, nn.BatchNorm2d) and not isinstance(module, SyncBatchNorm2d):
        new = SyncBatchNorm2d(module.num_features, module.eps, module.momentum, module.affine,
                              module.track_running_stats, device=module.weight.device if module.affine else None)
        new.load_state_dict(module.state_dict())
        new.train(module.training)
        return new
    for name, child in module.named_children():
        setattr(module, name, _convert_cpu(child))
    return module


def convert_sync_batchnorm(model: nn.Module, device: torch.device | str = "cpu") -> nn.Module:
    """`model` with every BatchNorm2d synchronised across DDP processes (state_dict keys unchanged)."""
    if torch.device(device).type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _convert_cpu(model)


def init_distributed(device: torch.device | str) -> tuple[int, int, torch.device]:
    """(rank, world_size, device) from torchrun's environment; initialises the process group if needed."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return 0, 1, resolve_device(device)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and str(device) not in ("cpu",)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        return dist.get_rank(), world_size, torch.device("cuda", local_rank)
    return dist.get_rank(), world_size, torch.device("cpu")
