"""The Hessian of the loss at trained weights: products, top eigenvalues, trace, density, max-eigenvalue spectra.

    op = ops.analysis.hessians.HessianOperator(model, [(x, y)], weight_decay=5e-4)   # v -> H v on flat vectors (dim,)
    ops.analysis.hessians.top_eigenvalues(op, k=3, seed=0)    # power iteration + deflation: {"eigenvalues": [...], ...}
    ops.analysis.hessians.trace(op, seed=0)                   # Hutchinson: {"trace", "std_error", "samples"}
    res = ops.analysis.hessians.slq(op, n_steps=40, n_vectors=4, seed=0)   # stochastic Lanczos quadrature
    ops.analysis.hessians.density(res, grid, sigma=0.05)      # the spectral density on a grid of eigenvalues
    ops.analysis.hessians.max_eigenvalue_spectrum(model, train_set, n_batches=32, batch_size=64, augment=True)

Loss. L(w) = mean over the images of the cross-entropy (NLL) + weight_decay / 2 * ||w||^2, w = the trainable
parameters (all of them, BatchNorm's included). The model is in eval(): BatchNorm uses the checkpoint's running
statistics. MC dropout must not change between products, so by default (dropout="fixed") it uses the seeded masks
of ops.analysis.fixed.FixedMasks (mask `mask`, batch b for the operator's b-th batch; in the spectrum, mini-batch i
gets mask i); dropout="off" switches MC dropout off instead.

Hessian-vector products by double backward: the gradient graph of the loss is built once per operator and kept,
so each product costs one backward pass through it (no new forward). Random vectors (and augmentations) are
drawn on the CPU from `seed` and moved to the device, so CPU and CUDA runs start from the same vectors. On a GPU
the graph and the products run with cuDNN's deterministic algorithms and without TF32 (`exact_kernels`): results
repeat exactly on a CPU, and on a GPU up to the few kernels that have no deterministic version (atomic adds).

- top_eigenvalues: power iteration on H, projected off the eigenvectors already found (deflation), giving the
  eigenvalues of largest magnitude (with their sign, so negative curvature shows) in that order. Stops when the
  Rayleigh quotient changes by less than tol * |lambda|, or after max_iter products (converged=False).
- trace: Hutchinson's estimator mean_i v_i^T H v_i with Rademacher v_i; stops when the standard error is below
  tol * |mean| (at least min_samples), or after max_iter samples.
- slq: stochastic Lanczos quadrature (Ghorbani et al., 2019; Ubaru et al., 2017): n_steps of Lanczos with full
  reorthogonalisation from a random unit vector give a tridiagonal T; its eigenvalues are the nodes and the squared
  first components of its eigenvectors the weights of a quadrature of the spectral density.
- max_eigenvalue_spectrum: the paper's statistic: the top eigenvalue of the mini-batch Hessian for each of many
  mini-batches (optionally augmented, optionally with weight decay), as a list to histogram.
"""
from __future__ import annotations

import contextlib
import math
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from ops.common.runtime import progress_bar, resolve_device

import models

from ops.analysis.fixed import FixedMasks, prepare_batches
from ops.evaluate.engine import require_parameters

if TYPE_CHECKING:
    from collections.abc import Iterator
    from collections.abc import Mapping, Sequence
    from typing import Any

DROPOUT_MODES = ("fixed", "off")


@contextlib.contextmanager
def exact_kernels() -> Iterator[None]:
    """cuDNN's deterministic algorithms and no TF32 inside the block (restored after): fp32 products on a GPU.

    On CPUs, denormal floats are flushed to zero inside the block: second-order graphs of small networks are
    full of them (products of many small factors), and x86 cores without fast denormal handling took minutes for
    one Hessian-vector product of a width-4 ResNet. Values below 1.2e-38 change nothing a product is checked to."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = (cudnn.deterministic, cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32)
    cudnn.deterministic, cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32 = True, False, False, False
    flushed = torch.set_flush_denormal(True)  # torch has no getter: off (its default) again afterwards
    try:
        yield
    finally:
        cudnn.deterministic, cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32 = saved
        if flushed:
            torch.set_flush_denormal(False)


class HessianOperator:
    """v -> H v for the loss of `model` on `batches` ([(x, y)], their mean loss); see the module docstring.

    params: the parameters to differentiate (default: all with requires_grad). The graph of the gradient is kept
    in memory until the operator is deleted. A channels_last model is converted to the contiguous format in place
    first (its values unchanged): see `_contiguous`."""

    def __init__(self, model: torch.nn.Module, batches, weight_decay: float = 0.0, params=None, dropout: str = "fixed",
                 seed: int = 0, mask: int = 0):
        if dropout not in DROPOUT_MODES:
            raise ValueError(f"dropout must be one of {DROPOUT_MODES}, got {dropout!r}")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        if isinstance(batches, tuple) and len(batches) == 2 and torch.is_tensor(batches[0]):
            batches = [batches]
        batches = list(batches)
        if not batches:
            raise ValueError("the Hessian needs at least one (x, y) batch")
        _contiguous(model)  # before the parameters are taken: the conversion replaces their data
        self.params = [p for p in model.parameters() if p.requires_grad] if params is None else list(params)
        if not self.params:
            raise ValueError("no parameter to differentiate: every parameter has requires_grad=False")
        self.dim = sum(p.numel() for p in self.params)
        self.weight_norm_sq = float(sum(p.detach().double().pow(2).sum() for p in self.params))
        self.weight_decay = float(weight_decay)
        self.products = 0
        n = sum(len(y) for _, y in batches)
        was_training = model.training
        model.eval()
        off = models.mc_dropout(model, enabled=False) if dropout == "off" else None
        try:
            with FixedMasks(model, seed=seed, cache=False) as masks, exact_kernels():
                total = None
                for b, (x, y) in enumerate(batches):
                    x = x.contiguous()  # see _contiguous
                    masks.select(mask, b, x)
                    logits = model(x)
                    loss = F.cross_entropy(logits.float() if logits.dtype in (torch.float16, torch.bfloat16)
                                           else logits, y, reduction="sum") / n
                    total = loss if total is None else total + loss
            self.loss = float(total.detach()) + self.weight_decay / 2 * float(
                sum(p.detach().double().pow(2).sum() for p in self.params))
            with exact_kernels():
                self.grads = torch.autograd.grad(total, self.params, create_graph=True)
        finally:
            if off is not None:
                off.__exit__()
            model.train(was_training)
        self.device, self.dtype = self.params[0].device, self.params[0].dtype

    def __call__(self, v):
        """H v for a flat vector v (dim,) on the parameters' device; returns a flat vector."""
        if v.shape != (self.dim,):
            raise ValueError(f"v must be a flat vector of shape ({self.dim},), got {tuple(v.shape)}")
        vs = [t.view_as(p) for t, p in zip(v.split([p.numel() for p in self.params]), self.params)]
        with exact_kernels():
            hv = torch.autograd.grad(self.grads, self.params, grad_outputs=vs, retain_graph=True, allow_unused=True)
        self.products += 1
        out = torch.cat([(h if h is not None else torch.zeros_like(p)).reshape(-1) for h, p in zip(hv, self.params)])
        return out + self.weight_decay * v if self.weight_decay else out

    def random(self, seed: int, kind: str = "normal") -> torch.Tensor:
        """A random flat vector (CPU generator, then the device): 'normal' or 'rademacher' (+-1)."""
        g = torch.Generator().manual_seed(int(seed) % (2 ** 63))
        if kind == "normal":
            v = torch.randn(self.dim, generator=g, dtype=torch.float64)
        elif kind == "rademacher":
            v = torch.randint(0, 2, (self.dim,), generator=g).double() * 2 - 1
        else:
            raise ValueError(f"kind must be 'normal' or 'rademacher', got {kind!r}")
        return v.to(device=self.device, dtype=self.dtype)


def _contiguous(model) -> None:
    """Products are computed in the contiguous memory format: under oneDNN's AVX2 kernels, double backward through
    channels_last convolutions gave products off by 0.1-0.5% on some calls (not repeatably), never in the
    contiguous format. A channels_last model is converted in place (its values are unchanged)."""
    if any(p.ndim == 4 and not p.is_contiguous() for p in model.parameters()):
        model.to(memory_format=torch.contiguous_format)


def _orthogonalize(v, basis):
    for _ in range(2):  # twice is enough (Kahan-Parlett "twice is enough")
        for u in basis:
            v = v - torch.dot(u, v) * u
    return v


def _check_iter(max_iter, tol):
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")
    if tol <= 0:
        raise ValueError(f"tol must be > 0, got {tol}")


def top_eigenvalues(op: "HessianOperator", k: int = 1, max_iter: int = 100, tol: float = 1e-3, seed: int = 0) -> dict:
    """The k eigenvalues of largest magnitude by power iteration with deflation (see the module docstring).

    Returns {"eigenvalues": [k floats], "eigenvectors": [k flat unit tensors], "iterations": [...],
    "converged": [...], "history": [k lists: the estimate after each iteration]}."""
    _check_iter(max_iter, tol)
    if not 1 <= k <= op.dim:
        raise ValueError(f"k must be between 1 and the number of parameters ({op.dim}), got {k}")
    values, vectors, iterations, converged, history = [], [], [], [], []
    for i in range(k):
        v = _orthogonalize(op.random(seed * 1_000_003 + i), vectors)
        v = v / v.norm()
        lam, done, it, estimates = None, False, 0, []
        for it in range(1, max_iter + 1):
            hv = _orthogonalize(op(v), vectors)
            new = float(torch.dot(v, hv))
            estimates.append(new)
            norm = hv.norm()
            if float(norm) == 0.0:  # H is zero on what is left: the eigenvalue is 0
                lam, done = 0.0, True
                break
            v = hv / norm
            if lam is not None and abs(new - lam) <= tol * max(abs(lam), 1e-12):
                lam, done = new, True
                break
            lam = new
        values.append(lam)
        vectors.append(v)
        iterations.append(it)
        converged.append(done)
        history.append(estimates)
    return {"eigenvalues": values, "eigenvectors": vectors, "iterations": iterations, "converged": converged,
            "history": history}


def trace(op: "HessianOperator", max_iter: int = 200, tol: float = 1e-2, seed: int = 0, min_samples: int = 10) -> dict:
    """Hutchinson's estimate of tr(H): {"trace", "std_error", "samples", "converged"}."""
    _check_iter(max_iter, tol)
    samples = []
    for i in range(max_iter):
        v = op.random(seed * 1_000_003 + i, kind="rademacher")
        samples.append(float(torch.dot(v, op(v))))
        if len(samples) >= max(2, min_samples):
            mean = float(np.mean(samples))
            err = float(np.std(samples, ddof=1) / math.sqrt(len(samples)))
            if err <= tol * abs(mean):
                return {"trace": mean, "std_error": err, "samples": len(samples), "converged": True}
    err = float(np.std(samples, ddof=1) / math.sqrt(len(samples))) if len(samples) > 1 else math.nan
    return {"trace": float(np.mean(samples)), "std_error": err, "samples": len(samples), "converged": False}


def lanczos(op: HessianOperator, v: torch.Tensor, n_steps: int) -> tuple[list[float], list[float]]:
    """(alphas, betas) of n_steps of Lanczos from v with full reorthogonalisation (fewer if an invariant subspace
    is found): T = tridiag(betas, alphas, betas)."""
    v = v / v.norm()
    basis, alphas, betas = [v], [], []
    w = op(v)
    for j in range(n_steps):
        alpha = torch.dot(w, basis[-1])
        alphas.append(float(alpha))
        w = _orthogonalize(w - alpha * basis[-1], basis)
        if j == n_steps - 1:
            break
        beta = w.norm()
        if float(beta) <= 1e-10 * max(1.0, abs(alphas[0])):  # invariant subspace: T is exact already
            break
        betas.append(float(beta))
        basis.append(w / beta)
        w = op(basis[-1]) - beta * basis[-2]
    return alphas, betas


def slq(op: "HessianOperator", n_steps: int = 30, n_vectors: int = 1, seed: int = 0) -> dict:
    """Stochastic Lanczos quadrature: {"nodes": [[...]], "weights": [[...]]}, one list per start vector (each
    weights list sums to 1). Use `density(result, grid, sigma)` to draw it."""
    if not 1 <= n_steps <= op.dim:
        raise ValueError(f"n_steps must be between 1 and the number of parameters ({op.dim}), got {n_steps}")
    if n_vectors < 1:
        raise ValueError(f"n_vectors must be >= 1, got {n_vectors}")
    nodes, weights = [], []
    for j in range(n_vectors):
        v = op.random(seed * 1_000_003 + j, kind="rademacher")
        alphas, betas = lanczos(op, v, n_steps)
        T = np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1)
        theta, vecs = np.linalg.eigh(T)
        nodes.append(theta.tolist())
        weights.append((vecs[0] ** 2).tolist())
    return {"nodes": nodes, "weights": weights}


def density(result: Mapping, grid: torch.Tensor | Sequence[float], sigma: float | None = None) -> torch.Tensor:
    """The spectral density of an `slq` result on `grid` (1-D): the mean over start vectors of
    sum_i w_i N(grid; node_i, sigma^2). sigma defaults to 1% of the range of the nodes."""
    grid = np.asarray(grid, dtype=np.float64)
    all_nodes = np.concatenate([np.asarray(n) for n in result["nodes"]])
    if sigma is None:
        sigma = max(1e-12, 0.01 * float(all_nodes.max() - all_nodes.min()))
    out = np.zeros_like(grid)
    for nodes, w in zip(result["nodes"], result["weights"]):
        z = (grid[:, None] - np.asarray(nodes)[None, :]) / sigma
        out += (np.exp(-0.5 * z ** 2) / (sigma * math.sqrt(2 * math.pi))) @ np.asarray(w)
    return out / len(result["nodes"])


def max_eigenvalue_spectrum(model: torch.nn.Module, data: Any, *, n_batches: int = 32, batch_size: int = 64,
                            augment: bool = False, weight_decay: float = 0.0, dropout: str = "fixed", seed: int = 0,
                            max_iter: int = 20, tol: float = 1e-3, device: torch.device | str | None = None,
                            progress: bool = False) -> dict:
    """The top Hessian eigenvalue of each of `n_batches` mini-batches of `data` (the paper's spectrum).

    data: an ImageTensorDataset (n_batches * batch_size images of a `seed` permutation; `augment` crops and flips
    them, seeded) or an iterable of (x, y) batches. Returns {"eigenvalues", "iterations", "converged", "losses",
    "normalised", "history" (each power iteration's estimate)}, lists with one entry per mini-batch, and
    "weight_norm_sq".

    "normalised" is the eigenvalue times the squared norm of the differentiated weights, lambda * ||w||^2. The raw
    eigenvalue is not scale-invariant: a weight followed by BatchNorm can be multiplied by a > 0 without changing
    the function, which divides its curvature by a^2, so two networks (or two trainings) can differ in raw
    eigenvalue by their weight scale alone. lambda * ||w||^2 is unchanged when all weights are rescaled together;
    it is not invariant to rescaling layers by different factors (the filter-normalised landscape curvature of
    ops.analysis.landscapes is). Report both and read neither alone."""
    weights = require_parameters(model, "a Hessian")
    device = resolve_device(device) if device is not None else weights.device
    model = model.to(device)
    if not (isinstance(weight_decay, (int, float)) and math.isfinite(weight_decay) and weight_decay >= 0):
        raise ValueError(f"weight_decay must be a finite number >= 0, got {weight_decay!r}")
    if not (isinstance(tol, (int, float)) and math.isfinite(tol) and tol > 0):
        raise ValueError(f"tol must be a positive finite number, got {tol!r}")
    if n_batches < 1 or batch_size < 1:
        raise ValueError(f"n_batches and batch_size must be >= 1, got {n_batches} and {batch_size}")
    batches = prepare_batches(data, n_batches * batch_size, batch_size, seed=seed, device=device, augment=augment)
    have = sum(len(y) for _, y in batches)
    if have < n_batches * batch_size:  # never fewer results (or smaller mini-batches) than asked without a word
        raise ValueError(f"the spectrum needs n_batches x batch_size = {n_batches * batch_size} images, the data "
                         f"have {have}: lower n_batches or batch_size")
    out = {"eigenvalues": [], "iterations": [], "converged": [], "losses": [], "normalised": [], "history": []}
    name = getattr(model, "name", type(model).__name__)
    for b, batch in enumerate(progress_bar(batches, desc=f"hessian {name}", leave=False, disable=not progress)):
        op = HessianOperator(model, [batch], weight_decay=weight_decay, dropout=dropout, seed=seed, mask=b)
        res = top_eigenvalues(op, k=1, max_iter=max_iter, tol=tol, seed=seed * 10_007 + b)
        out["eigenvalues"].append(res["eigenvalues"][0])
        out["iterations"].append(res["iterations"][0])
        out["converged"].append(res["converged"][0])
        out["history"].append(res["history"][0])
        out["losses"].append(op.loss)
        out["normalised"].append(res["eigenvalues"][0] * op.weight_norm_sq)
        del op  # frees the kept gradient graph before the next batch
    out["weight_norm_sq"] = float(sum(p.detach().double().pow(2).sum() for p in model.parameters() if p.requires_grad))
    return out
