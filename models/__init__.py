"""The spatial-smoothing model zoo.

    import models
    models.list_models("resnet_mcdo*")                  # names, filtered by shell wildcards
    model = models.get_model("resnet_mcdo_smoothing_18", num_classes=100, stem=False)
    with models.mc_dropout(model, enabled=False):       # MC dropout is on in eval(); switch it off here
        logits = model(x)
    models.save(model, "cifar100", uid)                 # models_checkpoints/cifar100/<name>/...pth.tar
    models.load(model, "cifar_100", uid)                # dataset aliases name the same folder
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from . import alexnet, resnet, vgg  # noqa: F401  (importing registers the families)
from .checkpoints import (CheckpointError, atomic_save, canonical_dataset, check_identity, check_state_dict,
                          checkpoint_path, find_checkpoint, load, load_checkpoint, read_checkpoint, save,
                          save_checkpoint, unwrap)
from .layers import MCDropout, evaluating, is_stochastic, mc_dropout
from .registry import get_model, list_models, register, smoothing_variant
from .smoothing import SMOOTHING_BLOCKS, SmoothingBlock, TanhBlurBlock, make_smoothing
from .surgery import add_mc_dropout, add_smoothing, plan_smoothing
from . import ensemble  # noqa: E402

if TYPE_CHECKING:
    from collections.abc import Sequence
    import torch.nn as nn

__all__ = [
    "get_model", "list_models", "register", "smoothing_variant", "save", "load", "checkpoint_path", "atomic_save",
    "check_state_dict", "check_identity", "unwrap", "save_checkpoint", "load_checkpoint", "read_checkpoint",
    "find_checkpoint", "canonical_dataset", "CheckpointError", "mc_dropout", "is_stochastic", "MCDropout",
    "TanhBlurBlock", "SmoothingBlock", "SMOOTHING_BLOCKS", "make_smoothing", "count_parameters", "summary",
    "ensemble",
]
__all__ += ["add_smoothing", "add_mc_dropout", "plan_smoothing", "evaluating"]


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (all, or only those with requires_grad)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def summary(model: nn.Module, input_size: Sequence[int] = (1, 3, 32, 32)) -> str:
    """One line: name, parameter count, input and output shape (one eval forward pass on the model's device)."""
    with evaluating(model):
        p = next(iter([*model.parameters(), *model.buffers()]), None)  # a model may have neither
        out = model(torch.zeros(input_size, device=p.device if p is not None else "cpu",
                                dtype=p.dtype if p is not None and p.is_floating_point() else torch.float32))
    name = getattr(unwrap(model), "name", type(model).__name__)
    return (f"{name}: {count_parameters(model):,} parameters, input {tuple(input_size)} "
            f"-> output {tuple(out.shape)}")
