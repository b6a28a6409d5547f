"""What the landscape and Hessian analyses share: fixed, seeded MC-dropout masks and fixed evaluation batches.

    with FixedMasks(model, seed=0) as masks:       # every active MCDropout multiplies by a stored mask
        masks.select(mask=2, batch=b, x=x)         # before each forward pass of batch b
    batches = prepare_batches(train_set, n_images=512, batch_size=128, seed=0, device="cpu")

Mask m (0 <= m < n_masks) gives every active MCDropout layer, for batch b of the evaluation data, the
Bernoulli(1 - p) mask keep = (U < 1 - p), U uniform float32 drawn by a CPU generator seeded with
mask_seed(seed, m, b), layer after layer in forward order, scaled by 1 / (1 - p) as dropout does (the same masks
on every device). The masks do not depend on the weights, so a landscape or a Hessian of mask m is a smooth
function of the weights, and analyses of several masks can be compared.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

import models
from ops.data.datasets import ImageTensorDataset
from ops.data.loaders import DeviceLoader

if TYPE_CHECKING:
    from collections.abc import Iterable

MASK_BUFFER = "_landscape_mask"


def mask_seed(seed: int, mask: int, batch: int) -> int:
    """The generator seed of mask `mask` for batch `batch` (distinct for distinct triples)."""
    return ((int(seed) * 1_000_003 + int(mask)) * 1_000_033 + int(batch)) % (2 ** 63)


class FixedMasks:
    """While active (a context), every active MCDropout of `model` multiplies by a stored mask.

        with FixedMasks(model, seed=0) as masks:
            masks.select(mask=2, batch=b, x=x)     # before each forward pass of batch b
            logits = model(x)

    The masks are defined in the module docstring (they depend on seed, mask, batch and the layers' shapes, not
    on the weights). Drawing them needs the layers' output shapes, taken once per input shape by a shape-only
    forward pass. With cache=True the boolean masks stay on the device and later selections replay them.
    Inactive (every method a no-op) when the model has no active MC dropout."""

    def __init__(self, model, seed=0, cache=True, channels_last=False):
        self.model, self.seed, self.cache, self.channels_last = model, seed, cache, channels_last
        self.modules = [m for m in model.modules() if isinstance(m, models.MCDropout) and m.mc]
        self.active = bool(self.modules)
        self._shapes, self._masks, self._handles, self._previous = {}, {}, [], []

    def __enter__(self):
        for m in self.modules:
            self._previous.append(m.mc)
            m.mc = False  # eval(): F.dropout becomes the identity, the hook applies the mask
            m.register_buffer(MASK_BUFFER, None, persistent=False)
            self._handles.append(m.register_forward_hook(_apply_mask))
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        for m, mc in zip(self.modules, self._previous):
            m.mc = mc
            m._buffers.pop(MASK_BUFFER, None)
            m._non_persistent_buffers_set.discard(MASK_BUFFER)
        self._handles, self._previous = [], []
        return False

    @torch.no_grad()
    def _layer_shapes(self, x):
        key = tuple(x.shape)
        if key not in self._shapes:
            shapes = []
            hooks = [m.register_forward_pre_hook(lambda mod, inp: shapes.append(tuple(inp[0].shape)))
                     for m in self.modules]
            for m in self.modules:  # the shape pass needs no mask
                setattr(m, MASK_BUFFER, None)
            try:
                self.model(x[:1])  # one image: the maps' shapes are (1, ...) and scale with the batch
            finally:
                for h in hooks:
                    h.remove()
            if len(shapes) != len(self.modules):
                raise RuntimeError(f"{len(self.modules)} MC dropout layers but {len(shapes)} were called in a forward "
                                   "pass; fixed masks need every dropout layer called exactly once per pass")
            if any(s[0] != 1 for s in shapes):
                raise RuntimeError("a dropout layer's input does not keep the batch dimension first; fixed masks "
                                   f"need (batch, ...) maps, got shapes {shapes} for one image")
            self._shapes[key] = [(x.shape[0],) + s[1:] for s in shapes]
        return self._shapes[key]

    def draw(self, mask: int, batch: int, x: torch.Tensor) -> list[torch.Tensor]:
        """The boolean keep-masks of (mask, batch), one per dropout layer, on x's device."""
        g = torch.Generator().manual_seed(mask_seed(self.seed, mask, batch))
        # keep = U < 1 - p with U ~ Uniform[0, 1) float32: a Bernoulli(1 - p) draw, twice as fast as bernoulli_
        keep = [(torch.rand(s, generator=g) < 1.0 - m.p).to(x.device, non_blocking=True)
                for m, s in zip(self.modules, self._layer_shapes(x))]
        if self.channels_last:  # the layout of the maps they multiply
            keep = [k.contiguous(memory_format=torch.channels_last) if k.ndim == 4 else k for k in keep]
        return keep

    def select(self, mask: int, batch: int, x: torch.Tensor) -> None:
        """Make the next forward passes use mask `mask` of batch `batch` (x: that batch, for its shape).

        mask may be a list of K ids: the next pass then takes x repeated K times along dim 0 (K * B rows), row
        block k with mask mask[k] (several masks in one pass)."""
        if not self.active:
            return
        ids = tuple(int(m) for m in mask) if isinstance(mask, (list, tuple)) else (int(mask),)
        key = (ids, int(batch), tuple(x.shape))
        masks = self._masks.get(key)
        if masks is None:
            per_id = [self.draw(m, batch, x) for m in ids]  # [K][layers]
            masks = [torch.cat(layer) if len(ids) > 1 else layer[0] for layer in zip(*per_id)]
            if self.cache:
                self._masks[key] = masks
        for m, k in zip(self.modules, masks):
            setattr(m, MASK_BUFFER, k)


def _apply_mask(module, inputs, output):
    keep = getattr(module, MASK_BUFFER)
    if keep is None:
        return output
    # the mask converted first: mul's own bool promotion is 3x slower (models.layers._KeepScale), same bits
    return output.mul(keep.to(output.dtype)).mul_(1.0 / (1.0 - module.p))


def prepare_batches(data: Iterable | torch.utils.data.Dataset, n_images: int | None = None, batch_size: int = 128,
                    seed: int = 0, device: torch.device | str | None = "cpu",
                    augment: bool = False) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A list of (x, y) batches on `device`: the fixed evaluation data of a landscape or a Hessian.

    data: an ImageTensorDataset (the first `n_images` of a `seed` permutation; `augment` crops and flips them
    with ops.data.loaders, seeded) or an iterable of (x, y) batches (cut after `n_images` images)."""

    if n_images is not None and n_images < 1:
        raise ValueError(f"n_images must be >= 1 or None (all), got {n_images}")
    if isinstance(data, ImageTensorDataset):
        subset = data.subset(n_images, seed=seed) if n_images else data
        # built on the CPU (its generator), then moved: the same crops and flips whatever the device
        loader = DeviceLoader(subset, batch_size, train=False, augment=augment, device="cpu", seed=seed)
        batches = [(x.to(device), y.to(device)) for x, y in loader]
    else:
        batches, count = [], 0
        for x, y in data:
            if n_images is not None and count >= n_images:
                break
            if n_images is not None and count + len(y) > n_images:
                x, y = x[:n_images - count], y[:n_images - count]
            batches.append((x.to(device), y.to(device)))
            count += len(y)
    if not batches:
        raise ValueError("the evaluation data yielded no batches")
    return batches
