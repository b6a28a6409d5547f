"""Figures of calibration and out-of-distribution detection, drawn from arrays (the numbers come from ops.evaluate).

- `reliability_before_after(probs_before, probs_after, targets)`: one reliability diagram of the predictive before
  and after temperature scaling (ops.evaluate.calibration), accuracy per equal-width confidence bin as two sets of
  bars beside the diagonal, each set's ECE (ops.evaluate.metrics, the same `bins`) in the legend. Empty bins are
  drawn empty, never as zero accuracy.
- `score_histograms(score_in, score_out, name)`: histograms of an OOD score (ops.evaluate.ood.scores) of the
  in-distribution images against the OOD images, on shared bins, normalised to densities (the two sets may differ
  in size), with AUROC and FPR95 (ops.evaluate.ood.detection_metrics) in the title.

Both draw on `ax` (a new figure when None) and return that Axes; `ax.figure` is the figure (for save_figure).
"""
from __future__ import annotations

import math

import matplotlib.axes
import matplotlib.pyplot as plt  # headless: matplotlib falls back to Agg by itself
import numpy as np
import torch

from ops.evaluate.metrics import summarize
from ops.evaluate.ood import _scores_1d, detection_metrics

BEFORE_AFTER = ("before (T = 1)", "after temperature scaling")
IN_OUT = ("in-distribution", "out-of-distribution")


def _axes(ax, figsize):
    if ax is None:
        _, ax = plt.subplots(figsize=figsize)
    return ax


def _binned(probs, targets, bins):
    """summarize's {"ece", "bin_acc", "bin_count", ...} of probs (N, C) against targets (N,), at `bins` bins."""
    p, t = torch.as_tensor(probs), torch.as_tensor(targets)
    return summarize(p if p.dtype == torch.float64 else p.float(), t.long() if not t.dtype.is_floating_point else t,
                     bins=bins)


def reliability_before_after(probs_before: torch.Tensor | np.ndarray, probs_after: torch.Tensor | np.ndarray,
                             targets: torch.Tensor | np.ndarray, bins: int = 15,
                             ax: matplotlib.axes.Axes | None = None, labels: tuple[str, str] = BEFORE_AFTER,
                             title: str | None = None) -> matplotlib.axes.Axes:
    """Accuracy per confidence bin (`bins` equal-width bins, in percent) of `probs_before` (N, C) and
    `probs_after` (N, C) against `targets` (N,), side by side in each bin, the diagonal of perfect calibration,
    and the ECE of each in the legend. Returns the Axes."""
    ax = _axes(ax, (4.6, 4.2))
    width = 100 / bins
    for k, (probs, label, color) in enumerate(zip((probs_before, probs_after), labels, ("tab:red", "tab:blue"))):
        m = _binned(probs, targets, bins)
        filled = [(100 * (b + 0.25 + 0.5 * k) / bins, 100 * a)
                  for b, (a, n) in enumerate(zip(m["bin_acc"], m["bin_count"])) if n > 0 and not math.isnan(a)]
        xs, ys = zip(*filled) if filled else ((), ())
        ax.bar(xs, ys, width=width / 2, color=color, edgecolor="black", linewidth=0.5, alpha=0.75,
               label=f"{label}: ECE {100 * m['ece']:.2f}%")
    ax.plot([0, 100], [0, 100], linestyle=(0, (1, 1)), color="black", label="perfect calibration")
    ax.set(xlim=(0, 100), ylim=(0, 100), xlabel="Confidence (%)", ylabel="Accuracy (%)",
           title=title or f"Reliability ({bins} bins)")
    ax.legend(fontsize=8, loc="upper left")
    return ax


def score_histograms(score_in: torch.Tensor | np.ndarray, score_out: torch.Tensor | np.ndarray, name: str,
                     ax: matplotlib.axes.Axes | None = None, labels: tuple[str, str] = IN_OUT,
                     bins: int = 40) -> matplotlib.axes.Axes:
    """Density histograms of the OOD score `name` of the in-distribution images `score_in` (n,) and the OOD
    images `score_out` (m,) on `bins` shared bins (higher score = more in-distribution), AUROC and FPR95 in the
    title. Returns the Axes."""
    a, b = _scores_1d(score_in, "score_in"), _scores_1d(score_out, "score_out")
    d = detection_metrics(a, b)
    lo, hi = min(a.min(), b.min()), max(a.max(), b.max())
    edges = np.linspace(lo, hi, bins + 1) if hi > lo else np.linspace(lo - 0.5, hi + 0.5, bins + 1)
    ax = _axes(ax, (4.6, 3.4))
    for scores, label, color in zip((a, b), labels, ("tab:blue", "tab:orange")):
        ax.hist(scores, bins=edges, density=True, alpha=0.55, color=color, edgecolor="black", linewidth=0.3,
                label=f"{label} ({scores.size:,})")
    ax.set(xlabel=f"{name} (higher = more in-distribution)", ylabel="Density",
           title=f"{name}: AUROC {100 * d['auroc']:.1f}%, FPR95 {100 * d['fpr95']:.1f}%")
    ax.legend(fontsize=8)
    return ax
