"""Loss landscapes of a trained model (Li et al., 2018), fast, one per MC-dropout mask.

    dirs = ops.analysis.landscapes.random_directions(model, n=2, seed=0)            # [{param name: tensor}, {..}]
    land = ops.analysis.landscapes.landscape(model, train_set, dirs, n=11, scale=1.0, n_masks=4, n_images=512)
    land.grid("loss", mask=0)                                               # (ny, nx) numpy array
    land.to_csv("cifar100_resnet_mcdo_18_x1_losslandscape.csv", mask=0)    # the original's 17 columns
    land.save("landscape.json"); ops.analysis.landscape_files.Landscape.load("landscape.json")
    ops.analysis.landscape_files.read_csv(path)    # original (16/17) or successor (19)

Directions. `random_directions` draws Gaussian directions (on the CPU, from `seed`, so every device gets the
same ones) for the trainable parameters and normalises them per *filter*: for a weight w of shape (out, ...),
each slice d[i] is scaled to ||w[i]|| (Li et al.'s filter normalisation; a Linear layer's filters are its rows).
Entries of 1-D tensors (BatchNorm weights and biases, every bias) are zero, and buffers (BatchNorm statistics,
blur filters) and frozen parameters (requires_grad=False) are never perturbed. `norm="original"` reproduces the
original implementation's variant, which normalises along dim 0 (per input position, across output filters);
use it only to reproduce its CSVs. `direction_between(a, b)` gives b - a (e.g. two checkpoints) for 1-D plots.

Grid. The point (x, y) has the weights w0 + x d1 + y d2 (w0 + x d1 for one direction); x, y run over
linspace(-scale, scale, n) as in the original (n = 11 or 21). The CSV lists points with x varying fastest.

Metrics at each point: those of ops.evaluate.metrics.Metrics (Acc, ECE, Brier, cutoff metrics, AUROC, ...), except that
`nll` is computed from log-softmax (log space), so it stays finite however wrong the model is, and
    l1 = sum |w|,   l2 = ||w||_2 (all parameters as one vector),   loss = nll + weight_decay / 2 * l2^2
(`loss` is the training objective of SGD with that weight decay; it equals nll when weight_decay = 0). The
successor's CSVs hold l2 as a sum of per-tensor norms instead; `read_csv` keeps their numbers as they are.

MC dropout: a landscape per fixed, seeded mask (ops.analysis.fixed: the masks do not depend on the weights, so
landscape m is a smooth function of (x, y) and landscapes of several masks can be compared or animated).
Records with mask = -1 hold the MC ensemble of all n_masks masks (mean probability).
The model is evaluated in eval(): BatchNorm uses the checkpoint's running statistics at every point. On a GPU,
PyTorch's default TF32 convolutions apply (set torch.backends.cudnn.allow_tf32 = False for strict fp32).

Speed (benchmarks/landscape_speed.py compares with its naive loop: a deep copy + full evaluation per point):
- weights are set in place with foreach ops (w0 + x d1 + y d2), never copied per point; restored afterwards;
- the evaluation data is a fixed subset (`n_images`), moved to the device once;
- masks are drawn once and replayed (no Bernoulli sampling per point; `cache_masks=False` redraws them);
- channels_last memory layout (default) and `compile=True` (torch.compile, compiled once, reused at every
  point) speed up the forward pass itself;
- `masks_per_pass=K` evaluates K masks in one pass (the batch repeated K times), `points_per_pass=P` P grid
  points in one batched pass with torch.func.vmap over the weights: both pay on a GPU ("auto" stacks the masks
  there); on a 2-core CPU larger passes are not faster;
- under torchrun, grid points are split across ranks (round robin) and gathered on every rank;
- `path=folder` makes a grid resumable: finished points are appended to points.rank{r}.jsonl and skipped when
  the same call runs again (meta.json refuses to mix points of a different landscape).
"""
from __future__ import annotations

import contextlib
import math
from typing import TYPE_CHECKING
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

import models
from models.atomic import exclusive
from ops.common.checks import is_int
from ops.analysis import landscape_files as files
from ops.analysis.fixed import FixedMasks, prepare_batches
from ops.analysis.landscape_files import Landscape
from ops.common.runtime import autocast, check_precision, progress_bar, resolve_device
from ops.evaluate.engine import require_parameters
from ops.evaluate.metrics import SCALAR_KEYS, Metrics, cutoff_key

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Any
    import torch.nn as nn

NORMS = ("filter", "original", "layer", "none")
ENSEMBLE = -1  # the mask id of the MC ensemble's records
MAX_POINTS = 10_000  # a 100 x 100 grid


def perturbable(model: nn.Module) -> dict[str, torch.Tensor]:
    """{name: parameter} of the parameters a direction may move: the trainable ones (buffers never)."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def _vnorm(t, dims):
    return torch.linalg.vector_norm(t, dim=dims, keepdim=True)


def normalize_direction(d: torch.Tensor, w: torch.Tensor, norm: str = "filter", eps: float = 1e-10) -> torch.Tensor:
    """Scale a random direction `d` to the weights `w` (same shape); see the module docstring for the norms."""
    if norm == "filter":  # per output filter: d[i] * ||w[i]|| / ||d[i]||
        dims = tuple(range(1, d.ndim))
        return d * (_vnorm(w, dims) / (_vnorm(d, dims) + eps))
    if norm == "original":  # the original's axis: norms over dim 0, i.e. across output filters
        return d * (_vnorm(w, 0) / (_vnorm(d, 0) + eps))
    if norm == "layer":
        return d * (w.norm() / (d.norm() + eps))
    if norm == "none":
        return d
    raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")


def random_directions(model: nn.Module, n: int = 2, seed: int = 0, norm: str = "filter",
                      ignore_1d: bool = True) -> list[dict[str, torch.Tensor]]:
    """`n` random directions [{name: tensor}] for `model`'s trainable parameters (on their devices).

    Drawn on the CPU from `seed` (the same directions on every device). 1-D tensors are zero unless
    ignore_1d=False (then they are normalised as a whole, as Li et al. suggest for keeping BatchNorm moving)."""
    if n < 1:
        raise ValueError(f"n must be >= 1 direction, got {n}")
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    params = perturbable(model)
    if not params:
        raise ValueError("the model has no trainable parameter to move (all have requires_grad=False)")
    g = torch.Generator().manual_seed(seed)
    directions = []
    for _ in range(n):
        d = {}
        for name, p in params.items():
            r = torch.randn(p.shape, generator=g, dtype=torch.float32)  # every tensor draws: stable order
            w = p.detach().float().cpu()
            if p.ndim <= 1:
                r = torch.zeros_like(r) if ignore_1d else normalize_direction(r, w, "layer")
            else:
                r = normalize_direction(r, w, norm)
            d[name] = r.to(device=p.device, dtype=p.dtype)
        directions.append(d)
    return directions


def direction_between(start: nn.Module | Mapping[str, torch.Tensor], end: nn.Module | Mapping[str, torch.Tensor],
                      ignore_1d: bool = False) -> dict[str, torch.Tensor]:
    """{name: end - start} over `start`'s trainable parameters (models or state dicts with the same keys).

    With it, landscape(start, ..., [d], xs=...) interpolates: x = 0 is `start` and x = 1 is `end` (BatchNorm
    running statistics stay those of `start`)."""
    a = start.state_dict() if isinstance(start, torch.nn.Module) else start
    b = end.state_dict() if isinstance(end, torch.nn.Module) else end
    names = list(perturbable(start)) if isinstance(start, torch.nn.Module) else [k for k, v in a.items()
                                                                                 if v.is_floating_point()]
    missing = [k for k in names if k not in b]
    if missing:
        raise ValueError(f"the end point lacks {missing[:3]}: both must be the same architecture")
    out = {}
    for k in names:
        if a[k].shape != b[k].shape:
            raise ValueError(f"{k}: shape {tuple(a[k].shape)} at the start but {tuple(b[k].shape)} at the end")
        out[k] = torch.zeros_like(a[k]) if ignore_1d and a[k].ndim <= 1 else (b[k].to(a[k]) - a[k]).detach()
    return out


def check_directions(model: nn.Module,
                     directions: Sequence[Mapping[str, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
    """Validate user directions against the model; returns them as float tensors on the parameters' devices."""
    if isinstance(directions, dict):
        directions = [directions]
    if not 1 <= len(directions) <= 2:
        raise ValueError(f"give 1 direction (a 1-D curve) or 2 (a 2-D grid), got {len(directions)}")
    params = dict(model.named_parameters())
    trainable = perturbable(model)
    out = []
    for i, d in enumerate(directions):
        if not isinstance(d, dict):
            raise ValueError(f"direction {i} must be a dict {{parameter name: tensor}}, got {type(d).__name__}")
        checked = {}
        for name, t in d.items():
            if name not in params:
                raise ValueError(f"direction {i} has {name!r}, which is not a parameter of the model (buffers such "
                                 f"as BatchNorm statistics cannot be moved); build it with random_directions(model) "
                                 f"or direction_between(a, b)")
            if tuple(t.shape) != tuple(params[name].shape):
                raise ValueError(f"direction {i}, {name}: shape {tuple(t.shape)} but the parameter has "
                                 f"{tuple(params[name].shape)}")
            if name not in trainable and bool(torch.as_tensor(t).ne(0).any()):
                raise ValueError(f"direction {i} moves {name!r}, which is frozen (requires_grad=False); zero it")
            checked[name] = torch.as_tensor(t).detach().to(params[name])
        out.append(checked)
    return out


def grid_axis(n: int = 11, scale: float = 1.0) -> list[float]:
    """linspace(-scale, scale, n): the original's axis (n = 11 or 21)."""
    if not is_int(n, 1):
        raise ValueError(f"n must be an integer >= 1 (points per axis), got {n!r}")
    return [float(v) for v in np.linspace(-scale, scale, n)]


class _Engine:
    """Evaluates the model at grid points: weights set in place (or stacked for vmap), masks replayed."""

    def __init__(self, model, batches, directions, masks, n_masks, weight_decay, bins, cutoffs, precision,
                 compile, points_per_pass, device, masks_per_pass=1):
        self.model, self.batches, self.masks, self.n_masks = model, batches, masks, n_masks
        self.masks_per_pass = max(1, min(masks_per_pass, n_masks)) if masks.active else 1
        self.weight_decay, self.bins, self.cutoffs, self.precision = weight_decay, bins, cutoffs, precision
        self.device, self.points_per_pass = device, points_per_pass
        named = dict(model.named_parameters())
        # Only parameters that some direction moves are touched; the others keep their tensors.
        self.names = [n for n in named if any(n in d and bool(d[n].ne(0).any()) for d in directions)]
        self.params = [named[n] for n in self.names]
        self.origin = [p.detach().clone() for p in self.params]
        # directions in the parameters' memory layout (channels_last or not), so the foreach adds stream
        self.dirs = [[torch.empty_like(named[n]).copy_(d[n]) if n in d else torch.zeros_like(named[n])
                      for n in self.names] for d in directions]
        self.forward = model
        if compile:
            self.forward = torch.compile(model)
        self.evaluations = 0  # (point, mask, batch) evaluations done (a test counts them)

    def _forward(self, x):
        if self.forward is self.model:
            return self.model(x)
        try:
            return self.forward(x)
        except Exception as exc:  # torch.compile is best effort (no C compiler, unsupported op): stay eager
            warnings.warn(f"torch.compile failed ({type(exc).__name__}: {str(exc)[:200]}); evaluating eagerly",
                          stacklevel=4)
            self.forward = self.model
            return self.model(x)

    @torch.no_grad()
    def set_point(self, coords):
        torch._foreach_copy_(self.params, self.origin)
        for c, d in zip(coords, self.dirs):
            if c != 0:
                torch._foreach_add_(self.params, d, alpha=float(c))

    @torch.no_grad()
    def restore(self):
        torch._foreach_copy_(self.params, self.origin)

    @staticmethod
    def _norms(tensors):  # (l1, l2) of all tensors as one vector, one host sync
        tensors = [t.detach() for t in tensors]
        l1 = torch.stack(torch._foreach_norm(tensors, 1)).double().sum()
        l2 = torch.stack(torch._foreach_norm(tensors, 2)).double().norm()
        return tuple(torch.stack([l1, l2]).tolist())

    def _stacked(self, points):  # {name: (P, ...)} weights of P points
        c = torch.tensor(points, dtype=torch.float32, device=self.device)  # (P, n_dirs)
        out = {}
        for j, name in enumerate(self.names):
            w = self.origin[j].unsqueeze(0).repeat(len(points), *([1] * self.origin[j].ndim))
            for i, d in enumerate(self.dirs):
                w = w + c[:, i].view(-1, *([1] * d[j].ndim)).to(w.dtype) * d[j]
            out[name] = w
        return out

    @torch.no_grad()
    def evaluate(self, points):
        """Records (one per mask, plus the ensemble if n_masks > 1) for each point in `points` (coord tuples)."""
        stacked = self._stacked(points) if len(points) > 1 else None
        if stacked is None:
            self.set_point(points[0])
        meters = nll = None
        for b, (x, y) in enumerate(self.batches):
            lp = self._log_probs(stacked, len(points), b, x)  # (P, M, B, C)
            if meters is None:
                K = self.n_masks + (1 if self.n_masks > 1 else 0)  # the masks, then the ensemble
                meters = [[Metrics(lp.shape[-1], bins=self.bins, cutoffs=self.cutoffs, device=x.device)
                           for _ in range(K)] for _ in points]
                nll = torch.zeros(len(points), K, dtype=torch.float64, device=x.device)
            self._update(meters, nll, lp, y.to(lp.device))
        n = sum(len(y) for _, y in self.batches)
        return [self._records(meters[i], nll[i] / n, [stacked[nm][i] for nm in self.names] if stacked is not None
                              else self.params) for i in range(len(points))]

    def _log_probs(self, stacked, P, b, x):  # (P, M, B, C) log-probabilities of every mask at P points
        fn = None
        if stacked is not None:
            fn = torch.func.vmap(lambda p, x: torch.func.functional_call(self.model, p, (x,)), in_dims=(0, None))
        lps = []
        for first in range(0, self.n_masks, self.masks_per_pass):
            ids = list(range(first, min(first + self.masks_per_pass, self.n_masks)))
            self.masks.select(ids, b, x)
            xs = x.repeat(len(ids), *([1] * (x.ndim - 1))) if len(ids) > 1 else x  # (k * B, ...)
            with autocast(self.device, self.precision):
                logits = fn(stacked, xs) if fn is not None else self._forward(xs)  # (P,) + (k * B, C)
            lps.append(torch.log_softmax(logits.float(), dim=-1).reshape(P, len(ids), len(x), -1))  # (P, k, B, C)
            self.evaluations += len(ids) * P
        return torch.cat(lps, 1)

    def _update(self, meters, nll, lp, y):
        P, M = lp.shape[:2]
        true_lp = lp.gather(-1, y.view(1, 1, -1, 1).expand(P, M, -1, 1)).squeeze(-1)  # (P, M, B)
        nll[:, :M] -= true_lp.double().sum(-1)
        if M > 1:  # the MC ensemble: log of the mean probability over masks
            ens = torch.logsumexp(lp, dim=1) - math.log(M)  # (P, B, C)
            nll[:, -1] -= ens.gather(-1, y.view(1, -1, 1).expand(P, -1, 1)).squeeze(-1).double().sum(-1)
        for i in range(P):
            for m in range(M):
                meters[i][m].update(lp[i, m].exp(), y)
            if M > 1:
                meters[i][-1].update(ens[i].exp(), y, samples=lp[i].exp())

    def _records(self, meters, nll, weights):
        """The records of one point: its meters (masks, then ensemble), mean NLLs and weights."""
        moved = set(self.names)
        rest = [p for name, p in self.model.named_parameters() if name not in moved]
        l1, l2 = self._norms(list(weights) + rest)
        recs = []
        for k, mask in enumerate(list(range(self.n_masks)) + ([ENSEMBLE] if self.n_masks > 1 else [])):
            res = meters[k].compute()
            rec = {key: res[key] for key in SCALAR_KEYS if key in res}
            for c in self.cutoffs:
                for name in ("acc", "unc", "iou", "freq"):
                    rec[f"{name}_{cutoff_key(c)}"] = res[f"{name}_{cutoff_key(c)}"]
            rec.update({key: res[key] for key in ("entropy", "expected_entropy", "mutual_info") if key in res})
            rec["nll"] = float(nll[k])  # log space: finite even where a probability underflows
            rec.update(l1=l1, l2=l2, loss=rec["nll"] + self.weight_decay / 2 * l2 ** 2, mask=mask)
            recs.append(rec)
        return recs


def landscape(model: "torch.nn.Module", data: Any, directions: list = None, *, xs: list = None, ys: list = None,
              n: int = 11, scale: float = 1.0, n_masks: int = 1, seed: int = 0, direction_seed: int = 0,
              norm: str = "filter", n_images: int = None, batch_size: int = 128, weight_decay: float = 0.0,
              path: Path | str | None = None, points_per_pass: int = 1, masks_per_pass: int | str = "auto",
              compile: bool = False, channels_last: bool = True, cache_masks: bool = True, precision: str = "fp32",
              device: torch.device | str | None = None, bins: int = 10, cutoffs: Sequence[float] = (0.0, 0.9),
              progress: bool = False, on_point: Any = None) -> Landscape:
    """Evaluate `model` over a grid of weights; returns a Landscape (see the module docstring).

    data: an ImageTensorDataset or an iterable of (x, y) batches; `n_images` of it (a fixed `seed` subset) are
    evaluated at every point, in batches of `batch_size`. directions: None (2 random filter-normalised ones from
    `direction_seed` and `norm`), or 1 or 2 dicts {parameter name: tensor}. xs, ys: the coordinates (default
    grid_axis(n, scale)). n_masks: landscapes per MC-dropout mask (seeded by `seed`); must be 1 for a model
    without active MC dropout. points_per_pass / masks_per_pass: grid points (vmap) and masks (the batch
    repeated) evaluated in one pass; masks_per_pass="auto" stacks all masks on a GPU and none on a CPU, where
    larger passes are not faster. channels_last: evaluate in that memory layout (1.6x faster eager convolutions
    on a CPU here; the model's layout is restored afterwards). path: a folder that makes the run resumable and
    receives landscape.json. on_point(index, records) is called after each finished point (e.g. to stop early).
    """
    check_precision(precision)
    weights = require_parameters(model, "a loss landscape")
    device = resolve_device(device) if device is not None else weights.device
    masks_per_pass = _check_passes(n_masks, points_per_pass, masks_per_pass, cache_masks, device)
    _check_numbers(scale, weight_decay, batch_size, n_images)
    model = model.to(device)
    if directions is None:
        directions = random_directions(model, 2, seed=direction_seed, norm=norm)
    directions = check_directions(model, directions)
    xs, ys, coords = grid_coords(len(directions), xs, ys, n, scale)
    batches = prepare_batches(data, n_images, batch_size, seed=seed, device=device)
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() \
        else (0, 1)
    with _evaluation_layout(model, batches, channels_last) as (batches, channels_last):
        masks = _masks(model, n_masks, seed, cache_masks, channels_last)
        meta = _identity(model, batches, len(directions)) | {
            "xs": xs, "ys": ys, "batch_size": batch_size,
            "scale": scale, "norm": norm, "direction_seed": direction_seed, "n_masks": n_masks, "seed": seed,
            "weight_decay": weight_decay, "bins": bins, "cutoffs": list(cutoffs), "precision": precision,
            "stochastic": masks.active}
        with masks:
            engine = _Engine(model, batches, directions, masks, n_masks, weight_decay, bins, tuple(cutoffs),
                             precision, compile, points_per_pass, device, masks_per_pass)
            try:
                writer = exclusive(Path(path) / f"lock.rank{rank}", f"the landscape folder {path}") if path else \
                    contextlib.nullcontext()
                with writer:  # one writer per folder (and rank): a second run on it is refused, naming the first
                    fp = files.fingerprint(engine, coords, meta)
                    done = files.resume(path, fp, meta, rank, world, coords) if path else {}
                    todo = [i for i in range(len(coords)) if i not in done][rank::world]
                    finished = _evaluate_points(engine, coords, todo, path, rank, points_per_pass, on_point,
                                                progress_bar(total=len(todo), desc=f"landscape {meta['model']}",
                                                             leave=False, disable=not progress), fp)
            finally:
                engine.restore()
    done = _gather(done, finished, world)
    result = Landscape(xs, ys, [r for i in sorted(done) for r in done[i]], meta)
    result.meta["evaluations"] = engine.evaluations
    if path is not None and rank == 0:
        result.save(Path(path) / "landscape.json")
    return result


def _identity(model, batches, dims) -> dict:
    """What the landscape is of: the model (name, class, build arguments, a fingerprint of its whole
    state_dict), the number of evaluation images and the grid's dimensions."""
    net = models.unwrap(model)
    return {"model": getattr(net, "name", type(net).__name__), "model_class": type(net).__qualname__,
            "arch": getattr(net, "arch", None), "weights": files.weights_fingerprint(model),
            "n_images": sum(len(y) for _, y in batches), "dims": dims}


def _masks(model, n_masks, seed, cache, channels_last) -> FixedMasks:
    masks = FixedMasks(model, seed=seed, cache=cache, channels_last=channels_last)
    if n_masks > 1 and not masks.active:
        raise ValueError(f"n_masks={n_masks} but the model has no active MC dropout, so every mask gives the same "
                         "landscape; use n_masks=1 (or switch MC dropout on with models.mc_dropout(model, True))")
    return masks


def _check_numbers(scale, weight_decay, batch_size, n_images):
    if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a positive finite number, got {scale!r}")
    if not (isinstance(weight_decay, (int, float)) and math.isfinite(weight_decay) and weight_decay >= 0):
        raise ValueError(f"weight_decay must be a finite number >= 0, got {weight_decay!r}")
    for name, value in (("batch_size", batch_size), ("n_images", n_images)):
        if value is not None and not is_int(value, 1):
            raise ValueError(f"{name} must be a positive integer{' or None' if name == 'n_images' else ''}, "
                             f"got {value!r}")


def _check_passes(n_masks, points_per_pass, masks_per_pass, cache_masks, device) -> int:
    """The number of masks per pass ("auto": all of them on a GPU, one on a CPU), after checking the others."""
    if points_per_pass < 1:
        raise ValueError(f"points_per_pass must be >= 1, got {points_per_pass}")
    if masks_per_pass == "auto":
        masks_per_pass = n_masks if device.type == "cuda" else 1
    if not is_int(masks_per_pass, 1):
        raise ValueError(f"masks_per_pass must be 'auto' or an integer >= 1, got {masks_per_pass!r}")
    if not is_int(n_masks, 1):
        raise ValueError(f"n_masks must be an integer >= 1, got {n_masks!r}")
    if points_per_pass > 1 and not cache_masks:
        raise ValueError("points_per_pass > 1 replays cached masks inside vmap: set cache_masks=True")
    return masks_per_pass


def grid_coords(dims: int, xs: Sequence[float] | None = None, ys: Sequence[float] | None = None, n: int = 11,
                scale: float = 1.0) -> tuple:
    """(xs, ys or None, coords) of a 1-D or 2-D grid; coords list x fastest, as the original's CSV. At most
    MAX_POINTS points: each one is a full evaluation of the data."""
    if (xs is None or dims == 2 and ys is None) and isinstance(n, int) and n ** dims > MAX_POINTS:
        raise ValueError(f"n={n} gives {n ** dims:,} grid points; at most {MAX_POINTS:,} (each point evaluates all "
                         f"n_images images for every mask: 21 x 21 = 441 is the original's largest)")
    xs = grid_axis(n, scale) if xs is None else [float(v) for v in xs]
    if not xs or dims == 2 and ys is not None and not list(ys):
        raise ValueError("xs and ys must hold at least one coordinate each")
    if dims == 2:
        ys = grid_axis(n, scale) if ys is None else [float(v) for v in ys]
        if len(xs) * len(ys) > MAX_POINTS:
            raise ValueError(f"{len(xs)} x {len(ys)} grid points; at most {MAX_POINTS:,}")
        return xs, ys, [(x, y) for y in ys for x in xs]
    if ys is not None:
        raise ValueError("ys was given but there is only one direction; give two directions for a 2-D grid")
    return xs, None, [(x,) for x in xs]


@contextlib.contextmanager
def _evaluation_layout(model, batches, channels_last):
    """The model in eval() and, if asked (4-D inputs), channels_last with the batches to match; the model's
    mode and layout are restored afterwards. Yields (batches, channels_last in effect)."""
    was_training = model.training
    model.eval()
    channels_last = channels_last and batches[0][0].ndim == 4
    was_contiguous = all(p.is_contiguous() for p in model.parameters())
    if channels_last:
        model.to(memory_format=torch.channels_last)  # in place: the same Parameter objects, new layout
        batches = [(x.contiguous(memory_format=torch.channels_last), y) for x, y in batches]
    try:
        yield batches, channels_last
    finally:
        if channels_last and was_contiguous:
            model.to(memory_format=torch.contiguous_format)
        model.train(was_training)


def _evaluate_points(engine, coords, todo, path, rank, points_per_pass, on_point, bar, fingerprint=None) -> dict:
    """{index: records} of the grid points `todo`, appended to points.rank{rank}.jsonl as they finish."""
    log = files.open_points(path, rank) if path is not None else None
    finished = {}
    try:
        for start in range(0, len(todo), points_per_pass):
            chunk = todo[start:start + points_per_pass]
            for i, recs in zip(chunk, engine.evaluate([coords[i] for i in chunk])):
                for r in recs:
                    r.update(index=i, x=coords[i][0], y=coords[i][1] if len(coords[i]) > 1 else None)
                finished[i] = recs
                if log is not None:  # one write per point: a crash leaves at most one cut line
                    files.append_point(log, i, recs, fingerprint)
                if on_point is not None:
                    on_point(i, recs)
            bar.update(len(chunk))
    finally:
        bar.close()
        if log is not None:
            log.close()
    return finished


def _gather(done, finished, world) -> dict:
    """Every rank's finished points, on every rank."""
    if world > 1:
        gathered = [None] * world
        dist.all_gather_object(gathered, finished)
        for part in gathered:
            done.update({int(k): v for k, v in part.items()})
    else:
        done.update(finished)
    return done


def roughness(grid: np.ndarray, xs: Sequence[float], ys: Sequence[float]) -> float:
    """How irregular a 2-D landscape is: the root mean square of what a least-squares quadratic surface
    (1, x, y, x^2, xy, y^2) over the grid leaves unexplained, in the loss's units. 0 for any quadratic bowl or
    saddle, however steep; it grows with bumps between neighbouring points ("chaotic and irregular")."""
    x, y = np.meshgrid(np.asarray(xs, float), np.asarray(ys, float))  # (ny, nx), as land.grid
    basis = np.stack([np.ones_like(x), x, y, x * x, x * y, y * y], axis=-1).reshape(-1, 6)
    values = np.asarray(grid, float).reshape(-1)
    coef, *_ = np.linalg.lstsq(basis, values, rcond=None)
    return float(np.sqrt(np.mean(np.square(values - basis @ coef))))


def summary(land: Landscape) -> dict:
    """How flat and how steady a 2-D landscape is, per MC mask and per grid point (the units an interval
    resamples): {"rise": (M,) mean over the grid of loss - centre loss, per mask; "curvature": (M,) second
    difference of the loss at the centre, mean of the x and y axes, per mask; "spread": (P,) standard deviation
    of the loss across masks at each grid point (zeros for one mask); "roughness": (M,) `roughness` of each
    mask's grid} as lists, plus their means.

    Flatter means a lower rise and curvature; steadier across MC masks means a lower spread. The grid must be
    2-D with an odd number of points per axis (the trained weights at its centre)."""
    if land.ys is None or len(land.xs) % 2 == 0 or len(land.ys) % 2 == 0 or min(len(land.xs), len(land.ys)) < 3:
        raise ValueError(f"summary needs a 2-D grid with an odd number (>= 3) of points per axis, centred on the "
                         f"trained weights; this one has shape {land.shape}")
    masks = [m for m in land.masks if m >= 0]
    grids = np.stack([land.grid("loss", m) for m in masks])  # (M, ny, nx)
    cy, cx = len(land.ys) // 2, len(land.xs) // 2
    centre = grids[:, cy, cx]  # (M,)
    hx, hy = land.xs[1] - land.xs[0], land.ys[1] - land.ys[0]
    curv_x = (grids[:, cy, cx + 1] + grids[:, cy, cx - 1] - 2 * centre) / hx ** 2
    curv_y = (grids[:, cy + 1, cx] + grids[:, cy - 1, cx] - 2 * centre) / hy ** 2
    rise = (grids - centre[:, None, None]).mean(axis=(1, 2))
    spread = grids.std(0).reshape(-1) if len(masks) > 1 else np.zeros(grids[0].size)
    out = {"rise": rise.tolist(), "curvature": ((curv_x + curv_y) / 2).tolist(), "spread": spread.tolist(),
           "roughness": [roughness(g, land.xs, land.ys) for g in grids], "centre_loss": centre.tolist()}
    return out | {f"mean_{k}": float(np.mean(v)) for k, v in out.items()}
