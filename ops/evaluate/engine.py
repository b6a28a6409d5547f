"""The evaluation engine: MC-dropout prediction, and the metrics of a model at every ensemble size.

    results = ops.evaluate.sweep(model, test_loader, sizes=(1, 2, 3, 4, 5, 10, 20, 50))   # {n: metrics dict}
    metrics = ops.evaluate.test(model, mc_samples=5, dataset=test_loader)                 # one size (n_ff=5 too)
    log_probs = ops.evaluate.predict_log_probs(model, x, n_samples=10)                    # (S, B, C)

Prediction. Instead of S sequential forward passes of a (B, ...) batch, the batch is repeated k times along
dim 0 and run as one (k*B, ...) batch, k chosen so that k*B <= max_batch (a memory budget in images). Dropout
draws independent masks for every row, and BatchNorm in eval() uses running statistics, so the k copies are k
independent MC samples. Deterministic models need a single pass, repeated. Probabilities are averaged in log
space (log-mean-exp of log-softmax) in float32, also under bf16 autocast.

Whether a model is stochastic is decided by its behaviour (`behaves_stochastically`), not by its classes: our
`MCDropout` layers say so directly, and any other model (one calling `F.dropout(x, training=True)`, an
`nn.Dropout` left in train mode, the original implementation's classes) is run twice on the batch: if the two
outputs differ, it is stochastic. `stochastic=True/False` overrides the check. (`models.is_stochastic` is the
structural question: does the model contain MC dropout layers.)

Sweeps. `sweep` draws max(sizes) MC samples per batch once and scores every size on prefixes of the same
samples, so it costs max(sizes) forward passes instead of sum(sizes) (95 -> 50 for the paper's sizes). Metrics
stream on the device (ops.evaluate.metrics.Metrics) and are combined across processes under DDP; NLL comes from
the log-probabilities, so a confident wrong prediction counts with its true NLL.

What is evaluated is the model as the user has it:
- Stochastic or not is decided by behaviour on the first batch (behaves_stochastically), or by `mc=`; each
  result says which (`stochastic`, `passes`: forward passes per image).
- The model is put in eval(), except dropout modules that the user switched back to train() in an eval() model
  (the usual MC dropout recipe for models without our MCDropout): those stay in train mode.
- BatchNorm folding (on a traced copy) is checked against the eager model on the first batch with the same
  random draws; if they differ, if tracing fails, or if `forward` changes the model's Python state (side
  effects a traced copy would not repeat), the eager model is used, with a warning.
"""
from __future__ import annotations

import copy
import itertools
import math
import numbers
from typing import TYPE_CHECKING
import warnings

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

import models
from ops.common.checks import is_int
from ops.common.runtime import autocast, check_precision, progress_bar, resolve_device, seeded, to_device
from ops.evaluate.metrics import Metrics

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence
    from typing import Any

# Images per forward pass: MC copies of a small batch are stacked up to it, a larger batch is split into pieces
# of it. On a CPU, convolutions are cache-bound and run fastest at small batches (resnet_mcdo_18 at width 16 on
# 2 cores: 2,670 images/s at 128 images per pass, 1,770 at 500; the smoothing variant 1,810 and 1,050); a GPU
# is fed large batches.
DEFAULT_MAX_BATCH = {"cpu": 128, "cuda": 4096}


def model_device(model: nn.Module, default: torch.device | str = "cpu") -> torch.device:
    """Device of the model's first parameter or buffer (a model without either runs on `default`)."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device(default)


def require_parameters(model: nn.Module, purpose: str) -> torch.Tensor:
    """The model's first parameter, or a ValueError saying that `purpose` needs weights."""
    for p in model.parameters():
        return p
    raise ValueError(f"{type(model).__name__} has no parameters, and {purpose} is taken with respect to the "
                     f"weights: there is nothing to compute")


def _log_softmax_pass(model, x, precision):
    with autocast(x.device, precision):
        return F.log_softmax(model(x).float(), dim=-1)


@torch.inference_mode()
def behaves_stochastically(model: nn.Module, x: torch.Tensor, precision: str = "fp32") -> bool:
    """True if two passes of `x` through `model` (as it is: eval() or not) give different outputs."""
    if models.is_stochastic(model):
        return True
    x = x.to(model_device(model))
    first, second = _log_softmax_pass(model, x, precision), _log_softmax_pass(model, x, precision)
    return not torch.allclose(first, second, rtol=1e-5, atol=1e-6)  # GPU kernels may differ in the last bits


@torch.inference_mode()
def predict_log_probs(model: nn.Module, x: torch.Tensor, n_samples: int, max_batch: int | None = None,
                      precision: str = "fp32", channels_last: bool = False,
                      stochastic: bool | None = None) -> torch.Tensor:
    """(S, B, C) float32 log-probabilities of `n_samples` passes of `x` (B, ...) through `model` (in eval()).

    max_batch: images per forward pass (MC copies of a smaller batch are stacked, a larger batch is split); None
    picks DEFAULT_MAX_BATCH for the model's device type.
    stochastic: None decides by the model's behaviour (see the module docstring); False runs one pass and
    repeats it; True runs `n_samples` passes.
    """
    if not is_int(n_samples, 1):
        raise ValueError(f"n_samples must be a positive integer, got {n_samples!r}")
    device = model_device(model)
    if max_batch is None:
        max_batch = DEFAULT_MAX_BATCH.get(device.type, 4096)
    if not is_int(max_batch, 1):
        raise ValueError(f"max_batch (images per forward pass) must be a positive integer, got {max_batch!r}")
    x = to_device(x, device, channels_last)
    B = x.shape[0]
    if B == 0:
        raise ValueError("x is an empty batch (0 images)")
    if stochastic is None:
        stochastic = behaves_stochastically(model, x, precision)
    if B > max_batch:  # pieces of max_batch images: each image's samples are the same in distribution
        return torch.cat([predict_log_probs(model, piece, n_samples, max_batch, precision, channels_last, stochastic)
                          for piece in x.split(max_batch)], dim=1)

    if not stochastic:
        lp = _log_softmax_pass(model, x, precision)  # (B, C)
        return lp.unsqueeze(0).expand(n_samples, *lp.shape)
    per_chunk = max(1, max_batch // B)
    chunks, done = [], 0
    while done < n_samples:
        k = min(per_chunk, n_samples - done)
        xs = x.repeat(k, *([1] * (x.ndim - 1))) if k > 1 else x  # (k*B, ...)
        if channels_last and xs.ndim == 4:
            xs = xs.contiguous(memory_format=torch.channels_last)
        chunks.append(_log_softmax_pass(model, xs, precision).view(k, B, -1))
        done += k
    return torch.cat(chunks)  # (S, B, C)


def log_mean_exp(log_probs: torch.Tensor, n: int | None = None) -> torch.Tensor:
    """log of the mean over the first `n` samples of exp(log_probs): (S, B, C) -> (B, C)."""
    lp = log_probs if n is None else log_probs[:n]
    return torch.logsumexp(lp, dim=0) - math.log(lp.shape[0])


@torch.inference_mode()
def predict(model: nn.Module, x: torch.Tensor, n_samples: int = 1, **kwargs: Any) -> torch.Tensor:
    """Predictive probabilities (B, C): the mean of `n_samples` MC passes (see predict_log_probs)."""
    return log_mean_exp(predict_log_probs(model, x, n_samples, **kwargs)).exp()


PAPER_SIZES = (1, 2, 3, 4, 5, 10, 20, 50)
MAX_SIZE = 1000  # MC samples per image: memory and time grow with it
FOLD_RTOL = 1e-4  # folded vs eager outputs, relative to the output's scale (folding only reorders rounding)


def check_sizes(sizes: Iterable[int]) -> list[int]:
    """Sorted distinct positive integer ensemble sizes; strings, floats and booleans are refused."""
    if isinstance(sizes, (str, bytes)) or not hasattr(sizes, "__iter__"):
        raise ValueError(f"sizes must be a list of positive integers, e.g. [1, 2, 5], got {sizes!r}")
    sizes = list(sizes)
    bad = [n for n in sizes if not is_int(n, 1, numpy=True)]
    if not sizes or bad:
        raise ValueError(f"sizes must be a non-empty list of positive integers, got {sizes!r}"
                         + (f" ({bad!r} not allowed)" if bad else ""))
    if max(sizes) > MAX_SIZE:
        raise ValueError(f"sizes go up to {max(sizes)}: at most {MAX_SIZE} MC samples per image (the paper's "
                         f"largest is 50)")
    return tuple(sorted(set(int(n) for n in sizes)))


class _KeepMCDropout(torch.fx.Tracer):
    """Trace through everything but MCDropout, which stays a module (so mc_dropout() still switches it)."""

    def is_leaf_module(self, m, qualname):
        return isinstance(m, models.MCDropout) or super().is_leaf_module(m, qualname)


def eval_keeping_dropout(model: nn.Module) -> nn.Module:
    """model.eval(), but dropout modules that were in train() inside an eval() model stay in train()."""
    keep = [] if model.training else [m for m in model.modules()
                                      if isinstance(m, nn.modules.dropout._DropoutNd) and m.training]
    model.eval()
    for m in keep:
        m.train()
    return model


def _python_state(model):
    """The plain Python attributes of every module (numbers, strings, container sizes, tensor identities)."""
    state = {}
    for name, m in model.named_modules():
        for key, value in vars(m).items():
            if key.startswith("_") or key == "training":
                continue
            if isinstance(value, (numbers.Number, str)):
                state[name, key] = value
            elif isinstance(value, (list, tuple, dict, set)):
                state[name, key] = (type(value).__name__, len(value))
            elif torch.is_tensor(value):
                state[name, key] = id(value)
    return state


def _seeded(fn, x, device):
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(0)
        return fn(x)


@torch.no_grad()
def fold_batchnorm(model: nn.Module, example: torch.Tensor) -> tuple[nn.Module | None, str | None]:
    """(folded copy, None) if folding BatchNorm into the convolutions computes what `model` computes on
    `example`, else (None, reason). `model` itself is not changed."""
    from torch.fx.experimental.optimization import fuse

    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return None, "no BatchNorm to fold"
    try:
        traced_copy = copy.deepcopy(model)  # tracing runs forward's Python code: keep it off the user's model
        graph = _KeepMCDropout().trace(traced_copy)
        folded = fuse(torch.fx.GraphModule(traced_copy, graph), no_trace=True)
    except Exception as exc:  # tracing is best effort: the eager model is always correct
        return None, f"the model cannot be traced ({type(exc).__name__}: {exc})"
    folded.name = getattr(model, "name", None)
    device = model_device(model)
    before = _python_state(model)
    eager_out = _seeded(model, example, device)
    if _python_state(model) != before:
        return None, "its forward changes the model's Python state, which a traced copy would not repeat"
    folded_out = _seeded(folded, example, device)
    err = ((eager_out.float() - folded_out.float()).abs().max() / eager_out.float().abs().max().clamp_min(1e-12))
    if not torch.isfinite(err) or err > FOLD_RTOL:
        return None, f"the folded copy differs from the model by {err.item():.3g} of the output scale"
    return folded, None


def prepare_for_inference(model: nn.Module, channels_last: bool = False, fuse_bn: bool = False,
                          example: torch.Tensor | None = None) -> nn.Module:
    """The model in eval() (see eval_keeping_dropout), optionally channels_last and with BatchNorm folded.

    Folding needs `example` (a batch on the model's device) to check the folded copy against the model; without
    one, or when the check fails, the model is returned unfolded (with a warning when the check failed)."""
    model = eval_keeping_dropout(model)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if fuse_bn and example is not None:
        example = example.to(model_device(model))
        if channels_last and example.ndim == 4:
            example = example.contiguous(memory_format=torch.channels_last)
        folded, reason = fold_batchnorm(model, example)
        if folded is not None:
            return folded
        if reason != "no BatchNorm to fold":
            warnings.warn(f"BatchNorm folding skipped: {reason}; evaluating the model as it is", stacklevel=3)
    return model


def _batches(dataset, max_batches):
    """Non-empty (x, y) batches of `dataset`, at most `max_batches` (counting the empty ones)."""
    for step, (x, y) in enumerate(dataset):
        if max_batches is not None and step >= max_batches:
            return
        if len(x) == 0:
            continue  # an empty batch (e.g. a shard's remainder) has nothing to score
        yield x, y


def _agree_on_classes(num_classes, device):
    """Under DDP every rank needs the class count, also a rank whose shard is empty."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        box = torch.tensor([num_classes], device=device if dist.get_backend() == "nccl" else "cpu")
        dist.all_reduce(box, op=dist.ReduceOp.MAX)
        return int(box.item())
    return num_classes


# channels_last and BatchNorm folding per device type: on 2 CPU cores they made the sweep 1.2x faster; on an H100
# (4,096 CIFAR-size images, sizes 1..50) they made it 9% slower (4.66 s vs 4.27 s), so they are off there.
FAST_DEFAULTS = {"cpu": True, "cuda": False}


def sweep(model: "nn.Module | list", dataset: Iterable, sizes: Iterable[int] = PAPER_SIZES, *,
          device: torch.device | str | None = None, precision: str = "fp32", channels_last: bool | None = None,
          fuse_bn: bool | None = None, max_batch: int | None = None, bins: int = 10,
          cutoffs: Sequence[float] = (0.0, 0.9), progress: bool = False, max_batches: int | None = None,
          mc: bool | None = None, keep_predictions: dict | None = None, seed: int = 0) -> dict:
    """Metrics for every ensemble size in `sizes` from one set of max(sizes) predictions per image: {n: dict}.

    model: one model (size n = the mean of its first n MC samples), or a list of models, a deep ensemble (size
    n = the mean of its first n members, one pass each; an MC-dropout member draws one mask). dataset: iterable
    of (x, y) batches (a DataLoader or ops.data.loaders' in-memory loader). mc: None decides by the model's
    behaviour whether it is stochastic (see the module docstring); True/False overrides. A deterministic model
    gets one pass per image and the same figures at every size. seed: the MC-dropout masks are drawn from
    torch's generator seeded with it (restored afterwards), so the same call gives the same numbers. precision:
    "fp32" (default) or "bf16"/"fp16" autocast; channels_last and fuse_bn change the speed, not the figures
    (None: FAST_DEFAULTS for the device; see benchmarks/eval_speed.py). max_batch: images per forward pass when
    MC copies of a batch are stacked (None: DEFAULT_MAX_BATCH for the device). keep_predictions: a dict that
    receives {n: (N, C) float32 log-probabilities on the CPU, "targets": (N,)} of this process's images (for
    ops.evaluate.intervals.bootstrap). Each result also says `stochastic`, `passes` and `seed`.
    """
    sizes = check_sizes(sizes)
    check_precision(precision)
    members = list(model) if isinstance(model, (list, tuple)) else None
    if members is not None and (not members or sizes[-1] > len(members)):
        raise ValueError(f"sizes go up to {sizes[-1]} but the deep ensemble has {len(members or [])} members: "
                         f"ask for sizes up to {len(members or [])}")
    nets = members[:sizes[-1]] if members is not None else [model]
    device = resolve_device(device) if device is not None else model_device(nets[0])
    fast = FAST_DEFAULTS.get(device.type, False)
    options = dict(precision=precision, max_batch=max_batch, mc=mc,
                   channels_last=fast if channels_last is None else channels_last,
                   fuse_bn=fast if fuse_bn is None else fuse_bn)
    batches = _batches(progress_bar(dataset, desc=f"test ({sizes[-1]} {'members' if members else 'samples'})",
                                    unit="batch", leave=False) if progress else dataset, max_batches)
    with seeded(seed, device):
        first = next(batches, None)
        draw, stochastic = _sampler(nets, members is not None, first, sizes[-1], device, options)
        meters, kept = _score_batches(draw, first, batches, sizes, device, bins, cutoffs, keep_predictions)
    if keep_predictions is not None and kept:
        keep_predictions.update({k: torch.cat(v) for k, v in kept.items()})
    passes = sizes[-1] if stochastic or members is not None else 1
    return {n: {**meters[n].sync().compute(), "stochastic": stochastic, "passes": passes, "seed": int(seed)}
            for n in sizes}


def _sampler(nets, ensemble, first, n, device, options) -> tuple:
    """(draw, stochastic): draw(x) gives the (n, B, C) log-probabilities of n MC samples of one model, or one
    pass of each of n deep-ensemble members. Models are prepared (eval, layout, BatchNorm folding) once."""
    nets = [eval_keeping_dropout(net.to(device)) for net in nets]
    flags = [bool(options["mc"])] * len(nets)
    if first is not None:
        x0 = first[0].to(device)
        mc = options["mc"]
        flags = [behaves_stochastically(net, x0, options["precision"]) if mc is None else bool(mc) for net in nets]
        nets = [prepare_for_inference(net, options["channels_last"], options["fuse_bn"], example=x0) for net in nets]
    common = dict(max_batch=options["max_batch"], precision=options["precision"],
                  channels_last=options["channels_last"])
    if ensemble:
        def members(x):
            outs = [predict_log_probs(net, x, 1, stochastic=flag, **common) for net, flag in zip(nets, flags)]
            classes = {o.shape[-1] for o in outs}
            if len(classes) > 1:
                raise ValueError(f"the ensemble's members predict different numbers of classes {sorted(classes)}")
            return torch.cat(outs)
        return members, any(flags)
    return (lambda x: predict_log_probs(nets[0], x, n, stochastic=flags[0], **common)), flags[0]


def _score_batches(draw, first, batches, sizes, device, bins, cutoffs, keep_predictions) -> tuple:
    """({n: Metrics} over every batch, {n: [log-prob chunks]} if kept) of the predictions `draw` makes."""
    meters, kept = None, {}
    for x, y in itertools.chain([first], batches) if first is not None else ():
        log_probs = draw(x)  # (S, B, C)
        y = y.to(log_probs.device, non_blocking=True)
        if meters is None:
            meters = {n: Metrics(log_probs.shape[-1], bins=bins, cutoffs=cutoffs, device=device) for n in sizes}
        for n in sizes:
            lp = log_mean_exp(log_probs, n)  # (B, C)
            meters[n].update(lp.exp(), y, samples=log_probs[:n].exp(), log_probs=lp)
            if keep_predictions is not None:
                kept.setdefault(n, []).append(lp.cpu())
        if keep_predictions is not None:
            kept.setdefault("targets", []).append(y.cpu())
    num_classes = _agree_on_classes(next(iter(meters.values())).num_classes if meters else 0, device)
    if num_classes == 0:
        raise ValueError("the dataset yielded no (non-empty) batches: nothing to evaluate")
    if meters is None:  # this rank's shard was empty: it still takes part in the all-reduce
        meters = {n: Metrics(num_classes, bins=bins, cutoffs=cutoffs, device=device) for n in sizes}
    return meters, kept


def test(model: nn.Module, mc_samples: int | None = None, dataset: Iterable | None = None, *,
         n_ff: int | None = None, **kwargs: Any) -> dict:
    """Metrics of the mean prediction of `mc_samples` MC forward passes (1 for deterministic models); see `sweep`.

    `n_ff` is the original implementation's name of `mc_samples` (its `test(model, n_ff, dataset)`, and the
    `val.n_ff` key of training configs): `test(model, n_ff=5, dataset=loader)` still works; give one of the two."""
    if (mc_samples is None) == (n_ff is None):
        raise TypeError("test() takes the number of MC forward passes once: as mc_samples (or positionally), or as "
                        "n_ff, the original implementation's name")
    if dataset is None:
        raise TypeError("test() needs the dataset to evaluate on")
    n = n_ff if mc_samples is None else mc_samples
    return sweep(model, dataset, sizes=(n,), **kwargs)[check_sizes((n,))[0]]
