"""Feature-map analyses of spatial smoothing, for any model: forward hooks capture the maps, functions measure them.

    points = [p.module for p in models.plan_smoothing(model)]    # the maps each stage hands to the next
    maps = featuremaps.capture(model, images, points)             # {point: (B, C, H, W)}
    var = featuremaps.mc_variance(model, images, points, samples=20)  # {point: {"variance", "power", "relative"}}
    prof = featuremaps.fourier_profiles(model, images, points)   # {point: (K,) relative log amplitude}

A *point* is a module name; its output is captured (for a model changed by `models.add_smoothing`, the output
after the inserted block). Everything runs under no_grad with the model in eval(): BatchNorm uses its running
statistics, and only MC dropout (which stays on in eval()) makes passes differ.

**MC variance** (Park & Kim, 2021: smoothing stabilises feature maps across MC samples). For every element of a
map, the variance over S MC-dropout passes of the same images (unbiased, divided by S - 1), averaged over batch,
channels and positions. `power` is the mean square of the maps over the same elements and samples, and
`relative` = variance / power, which compares networks whose maps have different scales (a trained smoothing
network is another network). This is not the successor paper's "feature map variance", which is the spatial
variance of a single deterministic map.

**Fourier profile** (Park & Kim, 2022, "How Do Vision Transformers Work?", the low-pass filter analysis), exactly
as the successor's code computes it: the log amplitude `log(|fft2(x)| + 1e-6)` over the last two dimensions,
shifted so that frequency 0 is at the centre (a roll by (H//2, W//2), i.e. fftshift), averaged over batch and
channels (and here over MC samples and batches as well: the mean is linear, so this is the same number as one
big batch); then the diagonal from the centre outwards, f[H//2 + j, W//2 + j], minus its value at j = 0. Point
j is the frequency 2*pi*j/H along both axes, from 0 to just under pi (the successor draws the same values at
evenly spaced x from 0 to pi). The "high-frequency" value plotted against normalised depth (point index / (number
of points - 1)) is the profile at the highest frequency that every compared map reaches (`common_frequency`,
linear interpolation): a smoothing block grows its map by one pixel (33 against 32), and the last points of
maps of different sizes are different frequencies. Negative values: less high-frequency content
than the mean level, i.e. a low-pass map. Maps must be square and at least 3x3.

Their figures are ops.plots.featuremaps.
"""
from __future__ import annotations

import contextlib
import difflib
import math
from typing import TYPE_CHECKING

import numpy as np
import torch

import models
from models.layers import evaluating
from ops.common.checks import is_int
from ops.common.runtime import seeded
from ops.evaluate.engine import model_device

if TYPE_CHECKING:
    from collections.abc import Sequence
    from collections.abc import Mapping
    import torch.nn as nn


class _Capture:
    """Context manager: forward hooks on `points` collect each one's output (a (B, C, H, W) tensor) per pass."""

    def __init__(self, model, points):
        modules = dict(model.named_modules())
        for p in points:
            if p not in modules or p == "":
                close = difflib.get_close_matches(str(p), [n for n in modules if n], n=5, cutoff=0.5)
                hint = f" Did you mean: {', '.join(close)}?" if close else " See dict(model.named_modules())."
                raise ValueError(f"{type(model).__name__} has no module {p!r} to capture.{hint}")
        self.model, self.points, self.modules, self.out = model, list(points), modules, {}

    def _hook(self, name):
        def hook(module, args, output):
            if not isinstance(output, torch.Tensor) or output.ndim != 4:
                raise ValueError(f"{name} returns {type(output).__name__} {tuple(getattr(output, 'shape', ()))}, not "
                                 f"a (B, C, H, W) feature map; capture another module")
            if name in self.out:
                raise ValueError(f"{name} runs more than once per forward pass; capture a module that runs once")
            self.out[name] = output.detach()
        return hook

    def __enter__(self):
        self.handles = [self.modules[p].register_forward_hook(self._hook(p)) for p in self.points]
        return self

    def run(self, x):
        self.out = {}
        self.model(x)
        return {p: self.out[p] for p in self.points}

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
        return False


def _check_inputs(images, points, batch_size):
    if not torch.is_tensor(images) or images.ndim != 4 or len(images) == 0:
        raise ValueError(f"images must be a non-empty (N, C, H, W) tensor, got "
                         f"{tuple(images.shape) if torch.is_tensor(images) else type(images).__name__}")
    if isinstance(points, str) or not list(points):
        raise ValueError(f"points must be a non-empty list of module names (e.g. stage_points(model)), got {points!r}")
    if not is_int(batch_size, 1):
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")


def _maybe_seeded(seed, model):
    """seeded(seed) on the model's device; seed=None draws from the caller's generator as it is."""
    return contextlib.nullcontext() if seed is None else seeded(seed, model_device(model))


def capture(model: nn.Module, x: torch.Tensor, points: Sequence[str]) -> dict[str, torch.Tensor]:
    """{point: (B, C, H, W) output} of one forward pass of `x` (B, 3, H, W) through `model` (in eval())."""
    with evaluating(model), _Capture(model, points) as cap:
        return cap.run(x.to(model_device(model)))


def mc_samples(model: nn.Module, x: torch.Tensor, points: Sequence[str], samples: int,
               seed: int = 0) -> dict[str, torch.Tensor]:
    """{point: (S, B, C, H, W)}: the maps of `samples` MC passes of `x` (masks from `seed`). Memory grows with S:
    use few images; seed=None: the caller's generator)."""
    with evaluating(model), _Capture(model, points) as cap, _maybe_seeded(seed, model):
        runs = [cap.run(x.to(model_device(model))) for _ in range(samples)]
    return {p: torch.stack([r[p] for r in runs]) for p in points}


def mc_variance(model: nn.Module, images: torch.Tensor, points: Sequence[str], samples: int = 10, batch_size: int = 64,
                seed: int = 0) -> dict[str, dict]:
    """{point: {"variance", "power", "relative"}} over `samples` MC passes of `images` (N, 3, H, W).

    variance: per element over the S passes (unbiased), averaged over images, channels and positions; power: the
    mean square of the maps; relative: variance / power. Streams over batches of `batch_size` images, keeping
    two float64 sums per element of one batch. Raises if the passes do not differ (no active MC dropout). The
    masks are drawn from `seed`: the same call gives the same numbers.
    """
    if not is_int(samples, 2):
        raise ValueError(f"the variance over MC samples needs an integer samples >= 2, got {samples!r}")
    _check_inputs(images, points, batch_size)
    totals = {p: torch.zeros(3, dtype=torch.float64) for p in points}  # variance sum, power sum, element count
    with evaluating(model), _Capture(model, points) as cap, _maybe_seeded(seed, model):
        for batch in images.split(batch_size):
            batch = batch.to(model_device(model))
            s1, s2 = {}, {}
            for _ in range(samples):
                for p, f in cap.run(batch).items():  # f: (B, C, H, W)
                    f = f.double()
                    s1[p] = s1[p] + f if p in s1 else f.clone()
                    s2[p] = s2[p] + f * f if p in s2 else f * f
            for p in points:
                var = ((s2[p] - s1[p] ** 2 / samples) / (samples - 1)).clamp_min(0)  # (B, C, H, W)
                totals[p] += torch.stack([var.sum(), s2[p].sum() / samples, torch.tensor(var.numel())]).cpu()
    if all(t[0] == 0 for t in totals.values()):
        raise ValueError(f"{samples} passes of {type(model).__name__} gave identical maps: it has no active MC "
                         f"dropout. Use an mcdo model or models.add_mc_dropout(model, rate)")
    out = {}
    for p, (v, power, n) in totals.items():
        out[p] = {"variance": float(v / n), "power": float(power / n), "relative": float(v / power) if power else 0.0}
    return out


def log_amplitude(maps: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (H, W): log(|fft2| + 1e-6), zero frequency moved to (H//2, W//2), mean over B and C."""
    f = torch.fft.fft2(maps.float()).abs().add(1e-6).log()  # (B, C, H, W)
    return torch.fft.fftshift(f, dim=(-2, -1)).mean(dim=(0, 1))


def diagonal_profile(spectrum: torch.Tensor) -> torch.Tensor:
    """(H, W) centred log amplitude -> (K,) its diagonal from the centre outwards minus the value at frequency 0."""
    h, w = spectrum.shape
    if h != w or h < 3:
        raise ValueError(f"the Fourier profile needs square maps of at least 3x3 (a 2x2 map has no frequency "
                         f"between 0 and pi on its diagonal), got {h}x{w}; use larger inputs")
    j = torch.arange(h - h // 2)
    diag = spectrum[h // 2 + j, w // 2 + j]
    return diag - diag[0]


def fourier_profile(maps: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (K,) relative log amplitude along the diagonal, K = H - H//2 (see the module docstring)."""
    return diagonal_profile(log_amplitude(maps))


def frequencies(size: int) -> torch.Tensor:
    """Frequency of each point of the profile of a size x size map: 2*pi*j/size for j = 0 .. size - size//2 - 1."""
    return 2 * math.pi * torch.arange(size - size // 2) / size


def fourier_profiles(model: nn.Module, images: torch.Tensor, points: Sequence[str], samples: int = 1,
                     batch_size: int = 64, seed: int = 0) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{point: (frequencies (K,), profile (K,))}: the log amplitude averaged over all `images` and `samples`
    passes (MC dropout on, as the model predicts; masks from `seed`), then its diagonal profile."""
    if not is_int(samples, 1):
        raise ValueError(f"samples must be a positive integer, got {samples!r}")
    _check_inputs(images, points, batch_size)
    sums, count = {}, 0
    with evaluating(model), _Capture(model, points) as cap, _maybe_seeded(seed, model):
        for batch in images.split(batch_size):
            batch = batch.to(model_device(model))
            for _ in range(samples):
                for p, f in cap.run(batch).items():
                    spectrum = log_amplitude(f).double() * len(f)  # (H, W), weighted by the batch size
                    sums[p] = sums[p] + spectrum if p in sums else spectrum
                count += len(batch)
    return {p: (frequencies(s.shape[0]), diagonal_profile(s / count).float()) for p, s in sums.items()}


def common_frequency(*profile_sets: Mapping) -> float:
    """The highest frequency that every profile of every {point: (freqs, profile)} set reaches: where maps of
    different sizes (a blur grows a map by one pixel: 33 against 32) can be compared."""
    return min(float(freqs[-1]) for profiles in profile_sets for freqs, _ in profiles.values())


def profile_at(freqs: torch.Tensor | Sequence[float], profile: torch.Tensor | Sequence[float], at: float) -> float:
    """The profile's value at frequency `at` (linear interpolation between its points)."""
    return float(np.interp(float(at), np.asarray(freqs, dtype=np.float64), np.asarray(profile, dtype=np.float64)))


def high_frequency(profiles: Mapping[str, tuple], at: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(normalised depths (P,), high-frequency values (P,)) of {point: (freqs, profile)} in point order: each
    profile's value at the frequency `at` (default: common_frequency(profiles)), so that maps of different
    sizes are compared at the same frequency; `at` may also be a list, one frequency per point (compare models
    stage by stage, each at the highest frequency both models' maps of that stage reach)."""
    at = common_frequency(profiles) if at is None else at
    at = list(at) if isinstance(at, (list, tuple)) else [at] * len(profiles)  # one frequency, or one per point
    values = torch.tensor([profile_at(freqs, profile, f) for (freqs, profile), f in zip(profiles.values(), at)])
    return torch.linspace(0, 1, len(values)), values


def stage_points(model: nn.Module, example_input: torch.Tensor | None = None) -> list[str]:
    """The modules whose outputs each stage hands to the next: models.plan_smoothing's hosts (outputs only)."""
    plan = models.surgery.plan_smoothing(model, example_input=example_input)
    inputs = [p for p in plan if p.position != "after"]
    if inputs:
        raise ValueError(f"{inputs[0].module}: the stage map is that module's input, which capture() cannot read; "
                         f"name the points yourself")
    return [p.module for p in plan]


def strongest_channel(maps: torch.Tensor) -> int:
    """(S, C, H, W) -> index of the channel with the largest mean activation (a neutral choice of what to show)."""
    return int(maps.abs().mean(dim=(0, 2, 3)).argmax())
