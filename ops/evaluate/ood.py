"""Out-of-distribution detection: per-image scores of an MC ensemble and the threshold-free detection metrics.

Scores (`scores`), higher = more in-distribution, from probabilities `probs_samples` (S, N, C) of S MC passes or
ensemble members (an (N, C) array counts as S = 1), p = (1/S) sum_s p_s the mean predictive, in nats:

    msp          max_c p_c                                    (maximum softmax probability, Hendrycks & Gimpel)
    neg_entropy  -H[p] = sum_c p_c log p_c
    neg_mi       -(H[p] - (1/S) sum_s H[p_s])                 (minus the mutual information, BALD; 0 for S = 1)
    energy       logsumexp_c of (1/S) sum_s z_s               (minus the free energy, Liu et al. 2020; only when
                                                              the logits `logits_samples` (S, N, C) are given)

Metrics (`detection_metrics`) of scores `score_in` (n,) of in-distribution images against `score_out` (m,):

    auroc     P(score_in > score_out) + P(score_in = score_out) / 2   (Mann-Whitney)
    aupr_in   average precision with the in-distribution images as positives: over the distinct thresholds t of
              all scores, in decreasing order, sum_t (R(t) - R(t_prev)) P(t) with R, P the recall and precision
              of "score >= t" (R = 0 before the first); the step-wise sum of sklearn's average_precision_score
    aupr_out  the same with OOD images as positives and the scores negated
    fpr95     mean(score_out >= t95), t95 = the largest t with mean(score_in >= t) >= 0.95: the k-th largest
              in-distribution score, k = ceil(0.95 n) (exact integer arithmetic, ties included)
"""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import torch

from ops.evaluate.metrics import _check_rows, _entropy, auroc, sum_tolerance


def _scores_1d(x, what):
    """A finite, non-empty 1-D float64 numpy array from a tensor, an array or a list."""
    if torch.is_tensor(x):
        x = x.detach().cpu().double().numpy()
    try:
        a = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a 1-D array of numbers, got {type(x).__name__}") from None
    if a.ndim != 1:
        raise ValueError(f"{what} must be 1-D (one score per image), got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"{what} is empty: pass at least one score")
    if not np.isfinite(a).all():
        raise ValueError(f"{what} contains NaN or inf; scores must be finite (clip or drop those images)")
    return a


def average_precision(scores: np.ndarray, positive: np.ndarray) -> float:
    """Average precision of `scores` (higher = positive) for boolean labels `positive`: sum over distinct
    thresholds t, decreasing, of (R(t) - R(t_prev)) P(t), as sklearn's average_precision_score."""
    if not np.any(positive):
        raise ValueError("average precision needs at least one positive")
    order = np.argsort(-scores, kind="stable")
    s, pos = scores[order], positive[order].astype(np.float64)
    last = np.r_[np.flatnonzero(np.diff(s) != 0), s.size - 1]  # last index of each group of equal scores
    tp = np.cumsum(pos)[last]
    precision, recall = tp / (last + 1), tp / tp[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def fpr_at_tpr(score_in: np.ndarray, score_out: np.ndarray, tpr: float = 0.95) -> float:
    """mean(score_out >= t), t = the largest threshold with mean(score_in >= t) >= tpr (the k-th largest
    in-distribution score, k = ceil(tpr * n), in exact rational arithmetic)."""
    if not 0 < tpr <= 1:
        raise ValueError(f"tpr must be in (0, 1], got {tpr}")
    score_in, score_out = _scores_1d(score_in, "score_in"), _scores_1d(score_out, "score_out")
    k = math.ceil(Fraction(str(tpr)) * score_in.size)
    threshold = np.sort(score_in)[::-1][k - 1]
    return float(np.mean(score_out >= threshold))


def detection_metrics(score_in: np.ndarray | torch.Tensor, score_out: np.ndarray | torch.Tensor) -> dict:
    """{"auroc", "aupr_in", "aupr_out", "fpr95"} of scores `score_in` (n,) against `score_out` (m,), higher
    score = more in-distribution; see the module docstring for the definitions."""
    a, b = _scores_1d(score_in, "score_in"), _scores_1d(score_out, "score_out")
    scores = np.concatenate([a, b])
    is_in = np.r_[np.ones(a.size, bool), np.zeros(b.size, bool)]
    return {"auroc": auroc(torch.from_numpy(scores), torch.from_numpy(is_in)),
            "aupr_in": average_precision(scores, is_in),
            "aupr_out": average_precision(-scores, ~is_in),
            "fpr95": fpr_at_tpr(a, b, 0.95)}


def _as_samples(x, what):
    x = torch.as_tensor(x) if not torch.is_tensor(x) else x
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3 or 0 in x.shape:
        raise ValueError(f"{what} must have shape (S, N, C) (MC samples) or (N, C), non-empty, got "
                         f"{tuple(x.shape)}")
    if not x.dtype.is_floating_point:
        raise ValueError(f"{what} must be floating point, got dtype {x.dtype}")
    return x.double()


def scores(probs_samples: torch.Tensor, logits_samples: torch.Tensor | None = None) -> dict:
    """Per-image OOD scores (N,) float64 of an MC ensemble, higher = more in-distribution: "msp", "neg_entropy",
    "neg_mi", and "energy" when `logits_samples` is given. probs_samples and logits_samples: (S, N, C), or (N, C)
    for one sample; the probabilities must be the softmax of the logits when both are given."""
    p_s = _as_samples(probs_samples, "probs_samples")  # (S, N, C)
    _check_rows(p_s, "probs_samples", sum_tolerance(torch.as_tensor(probs_samples).dtype))
    p = p_s.mean(0)  # (N, C)
    entropy = _entropy(p)
    out = {"msp": p.amax(-1), "neg_entropy": -entropy,
           "neg_mi": -(entropy - _entropy(p_s).mean(0)).clamp_min(0)}  # MI >= 0; clamp float rounding
    if logits_samples is not None:
        z = _as_samples(logits_samples, "logits_samples")
        if z.shape != p_s.shape:
            raise ValueError(f"logits_samples must have the shape of probs_samples {tuple(p_s.shape)}, got "
                             f"{tuple(z.shape)}")
        if not torch.isfinite(z).all():
            raise ValueError("logits_samples contain NaN or inf")
        if ((torch.softmax(z, -1) - p_s).abs() > sum_tolerance(torch.as_tensor(logits_samples).dtype)).any():
            raise ValueError("probs_samples are not the softmax of logits_samples: pass both of the same passes")
        out["energy"] = torch.logsumexp(z.mean(0), dim=-1)
    return out
