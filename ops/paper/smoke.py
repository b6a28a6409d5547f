"""The CI smoke run's reference set: tiny untrained networks of every variant, exported with cards as a
trained set would be, so that the whole report runs in seconds on synthetic data."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

import models
from ops.train import pretrained

if TYPE_CHECKING:
    from collections.abc import Sequence

WIDTH = 4  # channels of the first stage: the networks only have to run, not to be good


def make_set(root: str | Path, spec: dict, seeds: Sequence[int], dataset: str = "synthetic",
             num_classes: int = 10) -> Path:
    """Write `{root}/{dataset}/{model}/{dataset}_{model}_{set}-{variant}-s{seed}.pth.tar` + card for every
    variant of the set config's `spec` and every seed; returns root."""
    root = Path(root)
    for seed in seeds:
        for index, variant in enumerate(spec["networks"]):
            entry = spec["networks"][variant]
            if seed not in entry.get("seeds", spec["seeds"]):
                continue
            torch.manual_seed(1000 * seed + index)  # distinct weights per network, as a trained set has
            block = {**entry.get("block", {}), "width": WIDTH}
            model = models.get_model(entry["model"], num_classes=num_classes, stem=False, **block)
            uid = f"{spec['name']}-{variant}-s{seed}"
            path = models.save(model, dataset, uid, root=root)
            cfg = {"model": {"name": entry["model"], "stem": False, "block": block}, "dataset": {"name": dataset},
                   "env": {"seed": seed, "uid": uid}}
            pretrained.write_card(path, cfg, num_classes, history=[], note="untrained smoke-test network")
    return root
