"""Figures, kept apart from computation: they read the metric dicts of ops.evaluate.metrics / ops.evaluate.engine.

- `reliability_diagram(metrics)`: confidence histogram + accuracy per confidence bin. Empty bins are drawn
  empty (no bar), never as zero accuracy.
- `ensemble_size_figure({label: {n: metrics}})`: NLL, Acc and ECE against ensemble size, one line per model on
  shared axes (the paper's main figure).
"""
import math
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt  # headless: matplotlib falls back to Agg by itself

from ops.plots.colors import model_color

LABELS = {"nll": "NLL (lower is better)", "acc": "Accuracy (%)", "ece": "ECE (%)", "brier": "Brier",
          "acc_90": "Acc-90 (%)", "unc_90": "Unc-90 (%)", "iou": "IoU (%)", "top5": "Top-5 (%)"}
PERCENT = {"acc", "ece", "acc_90", "unc_90", "iou", "iou_90", "freq_90", "top5"}


def reliability_diagram(metrics, title=None):
    """Figure with the confidence histogram (left) and the reliability diagram (right)."""
    counts, accs, n = metrics["bin_count"], metrics["bin_acc"], metrics["n"]
    B = len(counts)
    centers = [(b + 0.5) / B * 100 for b in range(B)]
    fig, (ax_h, ax_r) = plt.subplots(1, 2, figsize=(9, 3.8))
    ax_h.bar(centers, [100 * c / n for c in counts], width=100 / B, color="tab:green", edgecolor="black",
             alpha=0.8)
    ax_h.set(xlim=(0, 100), ylim=(0, 100), xlabel="Confidence (%)", ylabel="Frequency (%)")
    filled = [(c, 100 * a) for c, a, k in zip(centers, accs, counts) if k > 0 and not math.isnan(a)]
    if filled:
        xs, ys = zip(*filled)
        ax_r.bar(xs, ys, width=100 / B, color="tab:red", edgecolor="black", alpha=0.8, label="accuracy")
    ax_r.plot([0, 100], [0, 100], linestyle=(0, (1, 1)), color="black", label="perfect calibration")
    ax_r.set(xlim=(0, 100), ylim=(0, 100), xlabel="Confidence (%)", ylabel="Accuracy (%)")
    ax_r.text(3, 92, f"ECE {100 * metrics['ece']:.2f}%  NLL {metrics['nll']:.3f}", fontsize=9)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def ensemble_size_figure(sweeps, keys=("nll", "acc", "ece"), title=None, intervals=None):
    """One panel per metric, x = ensemble size (log scale), one line per model. sweeps: {label: {n: metrics}}.

    intervals: {label: {n: {key: (estimate, low, high)}}} (e.g. ops.evaluate.intervals.bootstrap per size) draws
    each model's 95% interval as a band (for the keys it has). Colours: one per model across the library
    (ops.plots.colors)."""
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.6), squeeze=False)
    for ax, key in zip(axes[0], keys):
        scale = 100 if key in PERCENT else 1
        for label, results in sweeps.items():
            ns = sorted(results)
            color = model_color(label)
            ax.plot(ns, [scale * results[n][key] for n in ns], marker="o", label=label, color=color)
            band = (intervals or {}).get(label)
            if band:
                have = [n for n in ns if n in band and key in band[n]]  # the metrics that have bands
                ax.fill_between(have, [scale * band[n][key][1] for n in have], [scale * band[n][key][2] for n in have],
                                color=color, alpha=0.18, linewidth=0)
        ax.set_xscale("log")
        sizes = sorted({n for r in sweeps.values() for n in r})
        if len(sizes) > 12:  # 1..50: label a readable subset, not fifty overlapping numbers
            sizes = [n for n in sizes if n in (1, 2, 3, 5, 10, 20, 30, 50, 100, 200, 500, 1000) or n == sizes[-1]]
        ax.set_xticks(sizes)
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.get_xaxis().set_minor_formatter(matplotlib.ticker.NullFormatter())  # no stray "3x10^0" labels
        ax.set(xlabel="Ensemble size", ylabel=LABELS.get(key, key))
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8)
    if intervals:
        axes[0][0].annotate("bands: 95% bootstrap intervals", (0.02, 0.02), xycoords="axes fraction", fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def save_figure(fig, path, dpi=110):
    """Save as PNG (creating folders) and close the figure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
