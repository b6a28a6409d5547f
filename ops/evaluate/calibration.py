"""Temperature scaling (Guo et al., 2017) for single models and MC ensembles, and a cross-fitted variant.

Shapes: `logits` is (N, C) for one prediction per image, or (S, N, C) for S MC passes / ensemble members;
`targets` is (N,) integer labels in [0, C).

    single model    p_T(x) = softmax(z / T)
    MC ensemble     p_T(x) = (1/S) sum_s softmax(z_s / T)        (one T shared by every sample)
    fit_temperature T* = argmin_T  -(1/N) sum_i log p_T(x_i)[y_i]

The fit is a 1-D minimisation over u = log T in float64 on the bounded interval [log T_min, log T_max]: a grid
of GRID points finds the best cell (so a non-convex ensemble NLL cannot trap it in a far local minimum), then
golden-section search refines u within the two cells around the best grid point to U_TOL. For one model the NLL
is convex in 1/T, hence unimodal in u, and the result is its global minimiser within the bounds. A minimiser at a
bound (e.g. every prediction correct and separable: the NLL keeps falling as T -> 0) returns that bound.

Fitting and scoring T on the same images flatters the calibrated metrics; `cross_fit` never does: it splits the
images into folds by a seeded permutation, fits T on all other folds and applies it to each fold, so every
image's calibrated probabilities come from a temperature fitted without it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

BOUNDS = (1e-2, 1e2)  # T_min, T_max
GRID = 41  # grid points on [log T_min, log T_max] before the golden-section refinement
U_TOL = 1e-9  # width in log T at which the golden-section search stops
_CHUNK = 1 << 22  # elements of (S, n, C) evaluated at a time, to bound memory on large ensembles
_INVPHI = (math.sqrt(5) - 1) / 2


def _as_tensor(x, what):
    if torch.is_tensor(x):
        return x
    try:
        return torch.as_tensor(x)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"{what} must be a tensor or an array, got {type(x).__name__}") from None


def check_logits(logits: torch.Tensor, targets: torch.Tensor | None = None) -> tuple:
    """(logits as float64 (S, N, C), targets as int64 (N,) or None) after checking shapes and values."""
    z = _as_tensor(logits, "logits")
    if z.ndim not in (2, 3):
        raise ValueError(f"logits must have shape (N, C) or (S, N, C) (MC samples), got {tuple(z.shape)}")
    if not z.dtype.is_floating_point:
        raise ValueError(f"logits must be floating point, got dtype {z.dtype}")
    shape = tuple(z.shape)
    z = (z if z.ndim == 3 else z[None]).double()
    S, N, C = z.shape
    if S == 0 or N == 0:
        raise ValueError(f"logits are empty (shape {shape}): pass at least one image and one sample")
    if C < 2:
        raise ValueError(f"logits need at least 2 classes, got shape {shape}")
    if not torch.isfinite(z).all():
        raise ValueError("logits contain NaN or inf; pass the network's finite raw outputs (before softmax)")
    if targets is None:
        return z, None
    t = _as_tensor(targets, "targets")
    if t.shape != (N,):
        raise ValueError(f"targets must have shape ({N},) to match logits {shape}, got {tuple(t.shape)}")
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise ValueError(f"targets must be integer class labels, got dtype {t.dtype}")
    t = t.long().to(z.device)
    if ((t < 0) | (t >= C)).any():
        raise ValueError(f"targets out of range: labels must be in [0, {C - 1}], got [{t.min().item()}, "
                         f"{t.max().item()}]")
    return z, t


def _log_predictive(z, temperature):
    """log p_T: (S, n, C) float64 logits -> (n, C) log of the mean over S of softmax(z / T)."""
    lp = torch.log_softmax(z / temperature, dim=-1)
    return torch.logsumexp(lp, dim=0) - math.log(z.shape[0]) if z.shape[0] > 1 else lp[0]


def _nll(z, t, u):
    """Mean NLL of the temperature-scaled (mean) predictive at T = exp(u); chunked over images."""
    S, N, C = z.shape
    step = max(1, _CHUNK // (S * C))
    total = 0.0
    for i in range(0, N, step):
        lp = _log_predictive(z[:, i:i + step], math.exp(u))
        total -= lp.gather(1, t[i:i + step, None]).sum().item()
    return total / N


def _minimise(f, lo, hi):
    """argmin of f on [lo, hi]: best of a GRID-point grid, then golden-section search in its two cells."""
    grid = [lo + (hi - lo) * k / (GRID - 1) for k in range(GRID)]
    values = [f(u) for u in grid]
    k = min(range(GRID), key=values.__getitem__)
    a, b = grid[max(k - 1, 0)], grid[min(k + 1, GRID - 1)]
    best_u, best = grid[k], values[k]
    c, d = b - _INVPHI * (b - a), a + _INVPHI * (b - a)
    fc, fd = f(c), f(d)
    while b - a > U_TOL:
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - _INVPHI * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + _INVPHI * (b - a)
            fd = f(d)
    u, fu = (c, fc) if fc <= fd else (d, fd)
    return u if fu <= best else best_u


def fit_temperature(logits: torch.Tensor, targets: torch.Tensor, bounds: tuple = BOUNDS) -> float:
    """The temperature T in `bounds` that minimises the NLL of softmax(logits / T) (N, C), or of the mean
    predictive (1/S) sum_s softmax(logits_s / T) for MC samples (S, N, C), on labels `targets` (N,)."""
    lo, hi = (float(b) for b in bounds)
    if not (0 < lo < hi < math.inf):
        raise ValueError(f"bounds must be 0 < T_min < T_max < inf, got {bounds}")
    z, t = check_logits(logits, targets)
    with torch.no_grad():
        u = _minimise(lambda u: _nll(z, t, u), math.log(lo), math.log(hi))
    return math.exp(u)


def _check_temperature(temperature):
    T = float(temperature)
    if not (math.isfinite(T) and T > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
    return T


def apply_temperature(logits: torch.Tensor, temperature: float, log: bool = False) -> torch.Tensor:
    """Calibrated predictive probabilities (N, C): softmax(logits / T) for (N, C) logits, the mean over samples
    (1/S) sum_s softmax(logits_s / T) for (S, N, C). `log=True` gives their logarithms (exact in float64, also
    where a probability underflows). Float64 in, float64 out; any other dtype gives float32."""
    T = _check_temperature(temperature)
    z, _ = check_logits(logits)
    with torch.no_grad():
        lp = _log_predictive(z, T)
    out = lp if log else lp.exp()
    return out if _as_tensor(logits, "logits").dtype == torch.float64 else out.float()


@dataclass
class CrossFitted:
    """Result of `cross_fit`: every image scored by a temperature fitted on the other folds."""
    probs: torch.Tensor  # (N, C) calibrated predictive probabilities
    log_probs: torch.Tensor  # (N, C) their logarithms (float64)
    temperatures: tuple  # (folds,) the temperature applied to fold k (fitted on all folds but k)
    fold: torch.Tensor  # (N,) int64: the fold of each image


def fold_assignment(n: int, folds: int = 2, seed: int = 0) -> torch.Tensor:
    """(n,) fold index of each image: image perm[i] of a seeded permutation goes to fold floor(i * folds / n), so
    fold sizes differ by at most one."""
    if folds < 2:
        raise ValueError(f"folds must be >= 2 (fit on some images, score on others), got {folds}")
    if n < folds:
        raise ValueError(f"{n} images cannot be split into {folds} non-empty folds; pass at least {folds} images")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    fold = torch.empty(n, dtype=torch.long)
    fold[perm] = torch.arange(n) * folds // n
    return fold


def cross_fit(logits: torch.Tensor, targets: torch.Tensor, folds: int = 2, seed: int = 0,
              bounds: tuple = BOUNDS) -> CrossFitted:
    """Cross-fitted temperature scaling: for each fold k of a seeded split of the N images, fit T_k on the other
    folds (`fit_temperature`) and apply it to fold k (`apply_temperature`). logits (N, C) or (S, N, C), targets
    (N,). With folds=2: fit on one half, score the other, and the other way round."""
    z, t = check_logits(logits, targets)
    fold = fold_assignment(z.shape[1], folds, seed).to(z.device)
    log_probs = torch.empty(z.shape[1:], dtype=torch.float64, device=z.device)
    temperatures = []
    for k in range(folds):
        held = fold == k
        T = fit_temperature(z[:, ~held], t[~held], bounds)
        log_probs[held] = apply_temperature(z[:, held], T, log=True)
        temperatures.append(T)
    probs = log_probs.exp()
    return CrossFitted(probs if _as_tensor(logits, "logits").dtype == torch.float64 else probs.float(),
                       log_probs, tuple(temperatures), fold.cpu())


cross_fitted_temperature_scaling = cross_fit  # the name the issue asks for
