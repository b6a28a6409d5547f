"""Loss landscapes of a trained model (Li et al., 2018), fast, one per MC-dropout mask.

    dirs = ops.landscapes.random_directions(model, n=2, seed=0)            # [{param name: tensor}, {..}]
    land = ops.landscapes.landscape(model, train_set, dirs, n=11, scale=1.0, n_masks=4, n_images=512)
    land.grid("loss", mask=0)                                               # (ny, nx) numpy array
    land.to_csv("cifar100_resnet_mcdo_18_x1_losslandscape.csv", mask=0)    # the original's 17 columns
    land.save("landscape.json"); ops.landscapes.Landscape.load("landscape.json")
    ops.landscapes.read_csv(path)                                           # original (16/17) or successor (19)

Directions. `random_directions` draws Gaussian directions (on the CPU, from `seed`, so every device gets the
same ones) for the trainable parameters and normalises them per *filter*: for a weight w of shape (out, ...),
each slice d[i] is scaled to ||w[i]|| (Li et al.'s filter normalisation; a Linear layer's filters are its rows).
Entries of 1-D tensors (BatchNorm weights and biases, every bias) are zero, and buffers (BatchNorm statistics,
blur filters) and frozen parameters (requires_grad=False) are never perturbed. `norm="original"` reproduces the
original implementation's variant, which normalises along dim 0 (per input position, across output filters);
use it only to reproduce its CSVs. `direction_between(a, b)` gives b - a (e.g. two checkpoints) for 1-D plots.

Grid. The point (x, y) has the weights w0 + x d1 + y d2 (w0 + x d1 for one direction); x, y run over
linspace(-scale, scale, n) as in the original (n = 11 or 21). The CSV lists points with x varying fastest.

Metrics at each point: those of ops.metrics.Metrics (Acc, ECE, Brier, cutoff metrics, AUROC, ...), except that
`nll` is computed from log-softmax (log space), so it stays finite however wrong the model is, and
    l1 = sum |w|,   l2 = ||w||_2 (all parameters as one vector),   loss = nll + weight_decay / 2 * l2^2
(`loss` is the training objective of SGD with that weight decay; it equals nll when weight_decay = 0). The
successor's CSVs hold l2 as a sum of per-tensor norms instead; `read_csv` keeps their numbers as they are.

MC dropout: a landscape per fixed, seeded mask. Mask m (0 <= m < n_masks) gives every active MCDropout layer,
for batch b of the evaluation data, the Bernoulli(1 - p) mask keep = (U < 1 - p), U uniform float32 drawn by a
CPU generator seeded with mask_seed(seed, m, b), layer after layer in forward order, scaled by 1 / (1 - p) as
dropout does (the same masks on every device). The masks do not depend on the weights, so landscape m is a
smooth function of (x, y) and landscapes of several masks can be compared or animated. Records with mask = -1
hold the MC ensemble of all n_masks masks (mean probability).
The model is evaluated in eval(): BatchNorm uses the checkpoint's running statistics at every point. On a GPU,
PyTorch's default TF32 convolutions apply (set torch.backends.cudnn.allow_tf32 = False for strict fp32).

Speed (benchmarks/landscape_speed.py compares with a deep copy + full evaluation per point):
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
import copy
import hashlib
import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

import models

from .metrics import SCALAR_KEYS, Metrics, cutoff_key
from .predict import require_parameters
from .runtime import autocast, check_precision, resolve_device

NORMS = ("filter", "original", "layer", "none")
ENSEMBLE = -1  # the mask id of the MC ensemble's records
MASK_BUFFER = "_landscape_mask"

# The original implementation's landscape CSV (no header): 16 columns, or 17 with ECSE; the successor
# (how-do-vits-work) adds l1 and l2 after x and y (19 columns).
ORIGINAL_COLUMNS = ["x", "y", "NLL", "Cutoff1", "Cutoff2", "Acc", "Acc-90", "Unc", "Unc-90", "IoU", "IoU-90",
                    "Freq", "Freq-90", "Top-5", "Brier", "ECE", "ECSE"]
SUCCESSOR_COLUMNS = ["x", "y", "l1", "l2"] + ORIGINAL_COLUMNS[2:]
CSV_KEYS = {"NLL": "nll", "Acc": "acc", "Acc-90": "acc_90", "Unc": "unc_0", "Unc-90": "unc_90", "IoU": "iou_0",
            "IoU-90": "iou_90", "Freq": "freq_0", "Freq-90": "freq_90", "Top-5": "top5", "Brier": "brier",
            "ECE": "ece", "ECSE": "ece_signed", "l1": "l1", "l2": "l2"}


# --- Directions ------------------------------------------------------------------------------------------------

def perturbable(model):
    """{name: parameter} of the parameters a direction may move: the trainable ones (buffers never)."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def _vnorm(t, dims):
    return torch.linalg.vector_norm(t, dim=dims, keepdim=True)


def normalize_direction(d, w, norm="filter", eps=1e-10):
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


def random_directions(model, n=2, seed=0, norm="filter", ignore_1d=True):
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


def direction_between(start, end, ignore_1d=False):
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


def check_directions(model, directions):
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


# --- Fixed MC-dropout masks ------------------------------------------------------------------------------------

def mask_seed(seed, mask, batch):
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

    def draw(self, mask, batch, x):
        """The boolean keep-masks of (mask, batch), one per dropout layer, on x's device."""
        g = torch.Generator().manual_seed(mask_seed(self.seed, mask, batch))
        # keep = U < 1 - p with U ~ Uniform[0, 1) float32: a Bernoulli(1 - p) draw, twice as fast as bernoulli_
        keep = [(torch.rand(s, generator=g) < 1.0 - m.p).to(x.device, non_blocking=True)
                for m, s in zip(self.modules, self._layer_shapes(x))]
        if self.channels_last:  # the layout of the maps they multiply
            keep = [k.contiguous(memory_format=torch.channels_last) if k.ndim == 4 else k for k in keep]
        return keep

    def select(self, mask, batch, x):
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
    return output * keep * (1.0 / (1.0 - module.p))


# --- Data ------------------------------------------------------------------------------------------------------

def prepare_batches(data, n_images=None, batch_size=128, seed=0, device="cpu", augment=False):
    """A list of (x, y) batches on `device`: the fixed evaluation data of a landscape or a Hessian.

    data: an ImageTensorDataset (the first `n_images` of a `seed` permutation; `augment` crops and flips them
    with ops.loaders, seeded) or an iterable of (x, y) batches (cut after `n_images` images)."""
    from .datasets import ImageTensorDataset
    from .loaders import DeviceLoader

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


# --- Results ---------------------------------------------------------------------------------------------------

@dataclass
class Landscape:
    """Metrics over a 1-D or 2-D grid: one record per (point, mask). ys is None for a 1-D landscape."""
    xs: list
    ys: list = None
    records: list = field(default_factory=list)
    meta: dict = field(default_factory=dict)

    @property
    def masks(self):
        return sorted({r["mask"] for r in self.records})

    @property
    def shape(self):
        return (len(self.xs),) if self.ys is None else (len(self.ys), len(self.xs))

    def grid(self, key="loss", mask=0):
        """(ny, nx) array of `key` for `mask` (row i is y = ys[i]); (nx,) for a 1-D landscape."""
        values = np.full(self.shape, np.nan)
        found = False
        for r in self.records:
            if r["mask"] != mask:
                continue
            if key not in r:
                raise KeyError(f"{key!r} is not in the records; available: {sorted(k for k in r if k != 'mask')}")
            values[r["index"] if self.ys is None else divmod(r["index"], len(self.xs))] = r[key]
            found = True
        if not found:
            raise KeyError(f"no records for mask {mask}; masks here: {self.masks}")
        return values

    def table(self):
        """The records as a pandas DataFrame."""
        import pandas as pd

        return pd.DataFrame(self.records)

    def to_csv(self, path, mask=0, layout="original"):
        """Write the original's landscape CSV of one mask: 17 columns (x, y, NLL, Cutoff1, Cutoff2, Acc, ...,
        ECE, ECSE), no header, x varying fastest; layout="successor" adds l1, l2 after x, y (19 columns)."""
        columns = {"original": ORIGINAL_COLUMNS, "successor": SUCCESSOR_COLUMNS}.get(layout)
        if columns is None:
            raise ValueError(f"layout must be 'original' or 'successor', got {layout!r}")
        cut = self.meta.get("cutoffs", [0.0, 0.9])
        if [float(c) for c in cut] != [0.0, 0.9]:
            raise ValueError(f"the CSV layout has the cutoffs 0 and 0.9; this landscape has {cut}")
        rows = sorted((r for r in self.records if r["mask"] == mask), key=lambda r: r["index"])
        if not rows:
            raise KeyError(f"no records for mask {mask}; masks here: {self.masks}")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = []
        for r in rows:
            values = {"x": r["x"], "y": r.get("y") or 0.0, "Cutoff1": 0.0, "Cutoff2": 0.9}
            values.update({c: r[CSV_KEYS[c]] for c in columns if c in CSV_KEYS})
            lines.append(",".join(repr(float(values[c])) for c in columns))
        path.write_text("\n".join(lines) + "\n")
        return path

    def save(self, path):
        """JSON with everything (grid, meta, all records)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps({"xs": self.xs, "ys": self.ys, "meta": self.meta, "records": self.records},
                                  default=_json_default))
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path):
        raw = json.loads(Path(path).read_text())
        return cls(raw["xs"], raw["ys"], raw["records"], raw.get("meta", {}))


def _json_default(obj):
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if torch.is_tensor(obj):
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def read_csv(path, mask=0):
    """A Landscape from a landscape CSV: the original's 16 or 17 columns, or the successor's 19 (with l1, l2).

    The grid is rebuilt from the distinct x and y values; `loss` is NLL (add a weight-decay term yourself: the
    successor's l2 is a sum of per-tensor norms, ours is the norm of all weights)."""
    text = [line for line in Path(path).read_text().splitlines() if line.strip()]
    if not text:
        raise ValueError(f"{path} is empty")
    try:
        float(text[0].split(",")[0])
    except ValueError:  # a header row: ours never writes one, pandas users sometimes do
        text = text[1:]
    rows = [[float(v) for v in line.split(",")] for line in text]
    widths = {len(r) for r in rows}
    if len(widths) != 1:
        raise ValueError(f"{path}: rows have different numbers of columns {sorted(widths)}")
    width = widths.pop()
    layouts = {16: ("original", ORIGINAL_COLUMNS[:16]), 17: ("original", ORIGINAL_COLUMNS),
               19: ("successor", SUCCESSOR_COLUMNS)}
    if width not in layouts:
        raise ValueError(f"{path} has {width} columns; a landscape CSV has 16 or 17 (the original: x, y, NLL, "
                         f"Cutoff1, ...) or 19 (the successor, with l1 and l2)")
    source, columns = layouts[width]
    xs, ys = sorted({r[0] for r in rows}), sorted({r[1] for r in rows})
    records = []
    for r in rows:
        values = dict(zip(columns, r))
        rec = {"mask": mask, "index": ys.index(values["y"]) * len(xs) + xs.index(values["x"]),
               "x": values["x"], "y": values["y"]}
        rec.update({CSV_KEYS[c]: v for c, v in values.items() if c in CSV_KEYS})
        rec["iou"] = rec["iou_0"]
        rec["loss"] = rec["nll"]
        records.append(rec)
    return Landscape(xs, ys, records, {"source": source, "columns": len(columns), "path": str(path)})


# --- Evaluation ------------------------------------------------------------------------------------------------

def grid_axis(n=11, scale=1.0):
    """linspace(-scale, scale, n): the original's axis (n = 11 or 21)."""
    if n < 1:
        raise ValueError(f"n must be >= 1 point per axis, got {n}")
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
        P = len(points)
        stacked = None
        if P > 1:
            stacked = self._stacked(points)
            fn = torch.func.vmap(lambda p, x: torch.func.functional_call(self.model, p, (x,)), in_dims=(0, None))
        else:
            self.set_point(points[0])
        num_classes = None
        meters = nll = None
        K = self.masks_per_pass
        for b, (x, y) in enumerate(self.batches):
            lps = []
            for first in range(0, self.n_masks, K):
                ids = list(range(first, min(first + K, self.n_masks)))
                self.masks.select(ids, b, x)
                xs = x.repeat(len(ids), *([1] * (x.ndim - 1))) if len(ids) > 1 else x  # (k * B, ...)
                with autocast(self.device, self.precision):
                    logits = fn(stacked, xs) if stacked is not None else self._forward(xs)  # (P,) + (k * B, C)
                lp_k = torch.log_softmax(logits.float(), dim=-1).reshape(P, len(ids), len(x), -1)  # (P, k, B, C)
                lps.append(lp_k)
                self.evaluations += len(ids) * P
            lp = torch.cat(lps, 1)  # (P, M, B, C)
            if meters is None:
                num_classes = lp.shape[-1]
                K = self.n_masks + (1 if self.n_masks > 1 else 0)
                meters = [[Metrics(num_classes, bins=self.bins, cutoffs=self.cutoffs, device=x.device)
                           for _ in range(K)] for _ in range(P)]
                nll = torch.zeros(P, K, dtype=torch.float64, device=x.device)
            yy = y.to(lp.device)
            true_lp = lp.gather(-1, yy.view(1, 1, -1, 1).expand(P, self.n_masks, -1, 1)).squeeze(-1)  # (P, M, B)
            nll[:, :self.n_masks] -= true_lp.double().sum(-1)
            if self.n_masks > 1:  # the MC ensemble: log of the mean probability over masks
                ens = torch.logsumexp(lp, dim=1) - math.log(self.n_masks)  # (P, B, C)
                nll[:, -1] -= ens.gather(-1, yy.view(1, -1, 1).expand(P, -1, 1)).squeeze(-1).double().sum(-1)
            for i in range(P):
                for m in range(self.n_masks):
                    meters[i][m].update(lp[i, m].exp(), yy)
                if self.n_masks > 1:
                    meters[i][-1].update(ens[i].exp(), yy, samples=lp[i].exp())
        n = sum(len(y) for _, y in self.batches)
        out = []
        for i, point in enumerate(points):
            weights = [stacked[nm][i] for nm in self.names] if stacked is not None else self.params
            moved = set(self.names)
            rest = [p for name, p in self.model.named_parameters() if name not in moved]
            l1, l2 = self._norms(list(weights) + rest)
            recs = []
            ids = list(range(self.n_masks)) + ([ENSEMBLE] if self.n_masks > 1 else [])
            for k, mask in enumerate(ids):
                res = meters[i][k].compute()
                rec = {key: res[key] for key in SCALAR_KEYS if key in res}
                for c in self.cutoffs:
                    for name in ("acc", "unc", "iou", "freq"):
                        rec[f"{name}_{cutoff_key(c)}"] = res[f"{name}_{cutoff_key(c)}"]
                for key in ("entropy", "expected_entropy", "mutual_info"):
                    if key in res:
                        rec[key] = res[key]
                rec["nll"] = float(nll[i, k]) / n  # log space: finite even where a probability underflows
                rec.update(l1=l1, l2=l2, loss=rec["nll"] + self.weight_decay / 2 * l2 ** 2, mask=mask)
                recs.append(rec)
            out.append(recs)
        return out


def _fingerprint(engine, coords, settings):
    h = hashlib.sha1()
    h.update(json.dumps({"coords": coords, **settings}, sort_keys=True, default=_json_default).encode())
    for t in engine.origin + [d for ds in engine.dirs for d in ds]:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    for x, y in engine.batches:
        h.update(x.detach().cpu().contiguous().numpy().tobytes())
        h.update(y.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _read_done(folder):
    done = {}
    for f in sorted(Path(folder).glob("points.rank*.jsonl")):
        for line in f.read_text().splitlines():
            try:
                item = json.loads(line)
            except json.JSONDecodeError:  # a line cut by an interruption: that point is recomputed
                continue
            done[item["index"]] = item["records"]
    return done


def _resume(path, fingerprint, meta, rank, world):
    """{point index: records} already finished in the folder `path` (rank 0 reads, then tells the others)."""
    folder, done, error = Path(path), {}, None
    if rank == 0:
        folder.mkdir(parents=True, exist_ok=True)
        meta_file = folder / "meta.json"
        if meta_file.exists() and json.loads(meta_file.read_text()).get("fingerprint") != fingerprint:
            error = (f"{folder} holds points of another landscape (a different model, directions, grid, data or "
                     "settings); use a new path or delete that folder")
        else:
            if not meta_file.exists():
                meta_file.write_text(json.dumps({**meta, "fingerprint": fingerprint}, indent=1))
            done = _read_done(folder)
    if world > 1:  # every rank must agree on what is left (and on an error)
        box = [(done, error)]
        dist.broadcast_object_list(box, src=0)
        done, error = box[0]
    if error:
        raise ValueError(error)
    return {int(k): v for k, v in done.items()}


def landscape(model, data, directions=None, *, xs=None, ys=None, n=11, scale=1.0, n_masks=1, seed=0,
              direction_seed=0, norm="filter", n_images=None, batch_size=128, weight_decay=0.0, path=None,
              points_per_pass=1, masks_per_pass="auto", compile=False, channels_last=True, cache_masks=True,
              precision="fp32", device=None, bins=10, cutoffs=(0.0, 0.9), progress=False, on_point=None):
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
    if points_per_pass < 1:
        raise ValueError(f"points_per_pass must be >= 1, got {points_per_pass}")
    weights = require_parameters(model, "a loss landscape")
    device = resolve_device(device) if device is not None else weights.device
    if masks_per_pass == "auto":
        masks_per_pass = n_masks if device.type == "cuda" else 1
    if not isinstance(masks_per_pass, int) or masks_per_pass < 1:
        raise ValueError(f"masks_per_pass must be 'auto' or an integer >= 1, got {masks_per_pass!r}")
    if n_masks < 1:
        raise ValueError(f"n_masks must be >= 1, got {n_masks}")
    if points_per_pass > 1 and not cache_masks:
        raise ValueError("points_per_pass > 1 replays cached masks inside vmap: set cache_masks=True")
    model = model.to(device)
    if directions is None:
        directions = random_directions(model, 2, seed=direction_seed, norm=norm)
    directions = check_directions(model, directions)
    xs = grid_axis(n, scale) if xs is None else [float(v) for v in xs]
    if len(directions) == 2:
        ys = grid_axis(n, scale) if ys is None else [float(v) for v in ys]
        coords = [(x, y) for y in ys for x in xs]  # x varies fastest, as in the original's CSV
    else:
        if ys is not None:
            raise ValueError("ys was given but there is only one direction; give two directions for a 2-D grid")
        coords = [(x,) for x in xs]
    batches = prepare_batches(data, n_images, batch_size, seed=seed, device=device)

    was_training = model.training
    model.eval()
    channels_last = channels_last and batches[0][0].ndim == 4
    was_contiguous = all(p.is_contiguous() for p in model.parameters())
    if channels_last:
        model.to(memory_format=torch.channels_last)  # in place: the same Parameter objects, new layout
        batches = [(x.contiguous(memory_format=torch.channels_last), y) for x, y in batches]
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() \
        else (0, 1)
    masks = FixedMasks(model, seed=seed, cache=cache_masks, channels_last=channels_last)
    if n_masks > 1 and not masks.active:
        raise ValueError(f"n_masks={n_masks} but the model has no active MC dropout, so every mask gives the same "
                         "landscape; use n_masks=1 (or switch MC dropout on with models.mc_dropout(model, True))")
    settings = {"n_masks": n_masks, "seed": seed, "weight_decay": weight_decay, "bins": bins,
                "cutoffs": list(cutoffs), "precision": precision, "stochastic": masks.active}
    meta = {"model": getattr(models.unwrap(model), "name", type(model).__name__), "n_images":
            sum(len(y) for _, y in batches), "scale": scale, "norm": norm, "direction_seed": direction_seed,
            "dims": len(directions), **settings}
    engine = None
    try:
        with masks:
            engine = _Engine(model, batches, directions, masks, n_masks, weight_decay, bins, tuple(cutoffs),
                             precision, compile, points_per_pass, device, masks_per_pass)
            done = _resume(path, _fingerprint(engine, coords, settings), meta, rank, world) if path else {}
            todo = [i for i in range(len(coords)) if i not in done]
            mine = todo[rank::world]
            log = open(Path(path) / f"points.rank{rank}.jsonl", "a") if path is not None else None
            finished = {}
            try:
                chunks = [mine[i:i + points_per_pass] for i in range(0, len(mine), points_per_pass)]
                bar = tqdm(total=len(mine), desc=f"landscape {meta['model']}", leave=False, disable=not progress)
                for chunk in chunks:
                    results = engine.evaluate([coords[i] for i in chunk])
                    for i, recs in zip(chunk, results):
                        for r in recs:
                            r.update(index=i, x=coords[i][0], y=coords[i][1] if len(coords[i]) > 1 else None)
                        finished[i] = recs
                        if log is not None:  # one write per point: a crash leaves at most one cut line
                            log.write(json.dumps({"index": i, "records": recs}, default=_json_default) + "\n")
                            log.flush()
                        if on_point is not None:
                            on_point(i, recs)
                    bar.update(len(chunk))
                bar.close()
            finally:
                if log is not None:
                    log.close()
    finally:
        if engine is not None:
            engine.restore()
        if channels_last and was_contiguous:
            model.to(memory_format=torch.contiguous_format)
        model.train(was_training)
    if world > 1:
        gathered = [None] * world
        dist.all_gather_object(gathered, finished)
        for part in gathered:
            done.update({int(k): v for k, v in part.items()})
    else:
        done.update(finished)
    records = [r for i in sorted(done) for r in done[i]]
    result = Landscape(xs, ys if len(directions) == 2 else None, records, meta)
    result.meta["evaluations"] = engine.evaluations
    if path is not None and rank == 0:
        result.save(Path(path) / "landscape.json")
    return result


def naive_landscape(model, data, directions, *, xs, ys=None, n_masks=1, seed=0, n_images=None, batch_size=128,
                    masks="reseed", bins=10, cutoffs=(0.0, 0.9)):
    """The plain way, for benchmarks and tests: per point and mask, a deep copy of the model with the new weights
    (load_state_dict) and a full evaluation of the data. masks="reseed" fixes MC-dropout masks by reseeding
    torch's generator before every batch (the same masks at every point, but not the masks of `landscape`);
    masks="fixed" uses FixedMasks without a cache (the masks of `landscape`, for tests). Returns records."""
    if masks not in ("reseed", "fixed"):
        raise ValueError(f"masks must be 'reseed' or 'fixed', got {masks!r}")
    device = require_parameters(model, "a loss landscape").device
    batches = prepare_batches(data, n_images, batch_size, seed=seed, device=device)
    w0 = copy.deepcopy(model.state_dict())
    coords = [(x, y) for y in ys for x in xs] if ys is not None else [(x,) for x in xs]
    records = []
    for i, c in enumerate(coords):
        for m in range(n_masks):
            net = copy.deepcopy(model).eval()
            state = {k: v.clone() for k, v in w0.items()}
            for coef, d in zip(c, directions):
                for k, t in d.items():
                    state[k] = state[k] + coef * t
            net.load_state_dict(state)
            meter, nll, n = None, 0.0, 0
            with torch.no_grad(), FixedMasks(net, seed=seed, cache=False) if masks == "fixed" else _nothing() as fm:
                for b, (x, y) in enumerate(batches):
                    if fm is not None:
                        fm.select(m, b, x)
                    elif models.is_stochastic(net):
                        torch.manual_seed(mask_seed(seed, m, b))
                    lp = torch.log_softmax(net(x).float(), dim=-1)
                    if meter is None:
                        meter = Metrics(lp.shape[-1], bins=bins, cutoffs=cutoffs, device=x.device)
                    meter.update(lp.exp(), y)
                    nll -= float(lp.gather(1, y[:, None]).double().sum())
                    n += len(y)
            res = meter.compute()
            res["nll"] = nll / n
            records.append({"index": i, "mask": m, **{k: v for k, v in res.items() if not k.startswith("bin_")}})
    return records


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False
