"""MC-dropout prediction: S stochastic passes of a batch, batched along the batch dimension.

Instead of S sequential forward passes of a (B, ...) batch, the batch is repeated k times along dim 0 and run as
one (k*B, ...) batch, k chosen so that k*B <= max_batch (a memory budget in images). Dropout draws independent
masks for every row, and BatchNorm in eval() uses running statistics, so the k copies are k independent MC
samples. Deterministic models need a single pass, repeated.

Whether a model is stochastic is decided by its behaviour, not by its classes: our `MCDropout` layers say so
directly, and any other model (one calling `F.dropout(x, training=True)`, an `nn.Dropout` left in train mode,
the original implementation's classes) is run twice on the batch: if the two outputs differ, it is stochastic.
`stochastic=True/False` overrides the check.

Probabilities are averaged in log space (log-mean-exp of log-softmax) in float32, also under bf16 autocast.
"""
import math

import torch
import torch.nn.functional as F

import models

from .runtime import autocast, to_device

# Images per forward pass when stacking MC copies. On a CPU, convolutions are cache-bound and run fastest at
# small batches (measured on 2 cores: 105 img/s at 64 images, 90 at 512), so copies are not stacked there;
# a GPU is fed large batches.
DEFAULT_MAX_BATCH = {"cpu": 1, "cuda": 4096}


def model_device(model, default="cpu"):
    """Device of the model's first parameter or buffer (a model without either runs on `default`)."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device(default)


def require_parameters(model, purpose):
    """The model's first parameter, or a ValueError saying that `purpose` needs weights."""
    for p in model.parameters():
        return p
    raise ValueError(f"{type(model).__name__} has no parameters, and {purpose} is taken with respect to the "
                     f"weights: there is nothing to compute")


def _log_softmax_pass(model, x, precision):
    with autocast(x.device, precision):
        return F.log_softmax(model(x).float(), dim=-1)


@torch.inference_mode()
def is_stochastic(model, x, precision="fp32"):
    """True if two passes of `x` through `model` (as it is: eval() or not) give different outputs."""
    if models.is_stochastic(model):
        return True
    x = x.to(model_device(model))
    first, second = _log_softmax_pass(model, x, precision), _log_softmax_pass(model, x, precision)
    return not torch.allclose(first, second, rtol=1e-5, atol=1e-6)  # GPU kernels may differ in the last bits


@torch.inference_mode()
def predict_log_probs(model, x, n_samples, max_batch=None, precision="fp32", channels_last=False, stochastic=None):
    """(S, B, C) float32 log-probabilities of `n_samples` passes of `x` (B, ...) through `model` (in eval()).

    max_batch: images per forward pass; None picks DEFAULT_MAX_BATCH for the model's device type.
    stochastic: None decides by the model's behaviour (see the module docstring); False runs one pass and
    repeats it; True runs `n_samples` passes.
    """
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
        raise ValueError(f"n_samples must be a positive integer, got {n_samples!r}")
    device = model_device(model)
    if max_batch is None:
        max_batch = DEFAULT_MAX_BATCH.get(device.type, 4096)
    x = to_device(x, device, channels_last)
    B = x.shape[0]
    if B == 0:
        raise ValueError("x is an empty batch (0 images)")
    if stochastic is None:
        stochastic = is_stochastic(model, x, precision)

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


def log_mean_exp(log_probs, n=None):
    """log of the mean over the first `n` samples of exp(log_probs): (S, B, C) -> (B, C)."""
    lp = log_probs if n is None else log_probs[:n]
    return torch.logsumexp(lp, dim=0) - math.log(lp.shape[0])


@torch.inference_mode()
def predict(model, x, n_samples=1, **kwargs):
    """Predictive probabilities (B, C): the mean of `n_samples` MC passes (see predict_log_probs)."""
    return log_mean_exp(predict_log_probs(model, x, n_samples, **kwargs)).exp()
