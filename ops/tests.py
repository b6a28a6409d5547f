"""Evaluation: predictive performance of a model, and its sweep over MC ensemble sizes.

    results = ops.tests.sweep(model, test_loader, sizes=(1, 2, 3, 4, 5, 10, 20, 50))   # {n: metrics dict}
    metrics = ops.tests.test(model, n_ff=5, dataset=test_loader)                       # one size

`sweep` draws max(sizes) MC samples per batch once and scores every size on prefixes of the same samples, so it
costs max(sizes) forward passes instead of sum(sizes) (95 -> 50 for the paper's sizes). Metrics stream on the
device (ops.metrics.Metrics) and are all-reduced across processes under DDP.
"""
import warnings

import torch
from tqdm.auto import tqdm

import models

from .metrics import Metrics
from .predict import log_mean_exp, predict_log_probs
from .runtime import check_precision, resolve_device

PAPER_SIZES = (1, 2, 3, 4, 5, 10, 20, 50)


class _KeepMCDropout(torch.fx.Tracer):
    """Trace through everything but MCDropout, which stays a module (so mc_dropout() still switches it)."""

    def is_leaf_module(self, m, qualname):
        return isinstance(m, models.MCDropout) or super().is_leaf_module(m, qualname)


def prepare_for_inference(model, channels_last=False, fuse_bn=False):
    """eval() model, optionally channels_last and with BatchNorm folded into the preceding convolutions.

    Folding (torch.fx, on a copy) is exact up to float rounding (~1e-8 here) and saves the BatchNorm passes.
    Models that cannot be traced are returned unfused, with a warning.
    """
    model = model.eval()
    if fuse_bn:
        from torch.fx.experimental.optimization import fuse

        try:
            graph = _KeepMCDropout().trace(model)
            traced = torch.fx.GraphModule(model, graph)
            fused = fuse(traced, no_trace=True)
            fused.name = getattr(model, "name", None)
            model = fused
        except Exception as exc:  # tracing is best effort: fall back to the eager model
            warnings.warn(f"BatchNorm folding skipped ({type(exc).__name__}: {exc})", stacklevel=3)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def sweep(model, dataset, sizes=PAPER_SIZES, *, device=None, precision="fp32", channels_last=True,
          fuse_bn=True, max_batch=None, bins=10, cutoffs=(0.0, 0.9), progress=False, max_batches=None):
    """Metrics for every ensemble size in `sizes` from one set of max(sizes) MC samples: {n: dict}.

    dataset: iterable of (x, y) batches (a DataLoader or ops.datasets' in-memory loader). For a deterministic
    model the figures are the same at every size. The model is evaluated in eval() with MC dropout as it is
    set (models.mc_dropout). precision: "fp32" (default) or "bf16"/"fp16" autocast; channels_last and fuse_bn
    (BatchNorm folded into convolutions, on a copy) change the speed, not the figures (see
    benchmarks/eval_speed.py). max_batch: images per forward pass when MC copies of a batch are stacked
    (None: ops.predict.DEFAULT_MAX_BATCH for the device).
    """
    sizes = tuple(sorted(set(int(n) for n in sizes)))
    if not sizes or sizes[0] < 1:
        raise ValueError(f"sizes must be positive integers, got {sizes}")
    check_precision(precision)
    device = resolve_device(device) if device is not None else next(model.parameters()).device
    model = prepare_for_inference(model.to(device), channels_last, fuse_bn)
    meters = None
    batches = tqdm(dataset, desc="test", leave=False) if progress else dataset
    for step, (x, y) in enumerate(batches):
        if max_batches is not None and step >= max_batches:
            break
        log_probs = predict_log_probs(model, x, sizes[-1], max_batch=max_batch, precision=precision,
                                      channels_last=channels_last)  # (S, B, C)
        y = y.to(log_probs.device, non_blocking=True)
        if meters is None:
            meters = {n: Metrics(log_probs.shape[-1], bins=bins, cutoffs=cutoffs, device=device) for n in sizes}
        for n in sizes:
            probs = log_mean_exp(log_probs, n).exp()  # (B, C)
            meters[n].update(probs, y, samples=log_probs[:n].exp())
    if meters is None:
        raise ValueError("the dataset yielded no batches")
    return {n: meters[n].sync().compute() for n in sizes}


def test(model, n_ff, dataset, **kwargs):
    """Metrics of the mean prediction of `n_ff` MC passes (1 for deterministic models); see `sweep`."""
    return sweep(model, dataset, sizes=(n_ff,), **kwargs)[n_ff]
