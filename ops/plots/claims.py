"""Figures of `make paper` that the other plot modules do not have: paired differences with their intervals
(a forest plot), metrics against corruption severity, and the convergence of Hessian power iterations."""
import matplotlib.pyplot as plt  # headless: matplotlib falls back to Agg by itself
import numpy as np

from ops.plots.classification import LABELS, PERCENT
from ops.plots.colors import model_color

VERDICT_COLORS = {"supported": "#009E73", "contradicted": "#D55E00", "not resolved": "#999999"}


def forest_figure(rows, title=None):
    """One panel per metric: each row's difference (claimed arm - other arm) with its 95% interval, coloured by
    verdict; the dashed line is 0 (and the margin where a row has one). rows: ops.paper.stages rows."""
    rows = [r for r in rows if "difference" in r]
    metrics = list(dict.fromkeys(r["metric"] for r in rows))
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.4 * len(metrics), 0.5 * max(
        sum(r["metric"] == m for r in rows) for m in metrics) + 1.6), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        mine = [r for r in rows if r["metric"] == metric]
        scale = 100 if metric in PERCENT | {"error"} else 1  # differences of percentages in points
        for i, r in enumerate(mine):
            est, low, high = (scale * v for v in r["difference"])
            ax.errorbar(est, i, xerr=[[est - low], [high - est]], fmt="o", color=VERDICT_COLORS[r["verdict"]],
                        capsize=3)
            if r.get("margin"):
                ax.axvline(scale * (r["margin"] if r["better"] == "lower" else -r["margin"]), color="#999999",
                           ls=":", lw=1)
        ax.axvline(0, color="black", ls="--", lw=1)
        ax.set_yticks(range(len(mine)), [r["quantity"].split(": ", 1)[-1][:48] for r in mine], fontsize=7)
        ax.invert_yaxis()
        name = LABELS.get(metric, metric).split(" (")[0]
        ax.set_xlabel(f"Δ {name}{' (points)' if scale == 100 else ''}: claimed - other", fontsize=8)
        ax.grid(alpha=0.3, axis="x")
    handles = [plt.Line2D([], [], marker="o", ls="", color=c, label=v) for v, c in VERDICT_COLORS.items()]
    axes[0][-1].legend(handles=handles, fontsize=7, loc="best")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def severity_figure(by_severity, sizes, keys=("nll", "acc", "ece")):
    """Metrics against corruption severity (0 = clean): one panel per metric, a line per model and MC size.
    by_severity: {label: {size: {severity: {key: value}}}} (ops.paper.stages.robustness_stage)."""
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.5), squeeze=False)
    shown = sorted({min(sizes), max(sizes)})
    for ax, key in zip(axes[0], keys):
        scale = 100 if key in PERCENT else 1
        for label, per_size in by_severity.items():
            for n, style in zip(shown, ("-", "--")):
                curve = per_size.get(n) or per_size.get(str(n))
                sev = sorted(curve, key=int)
                ax.plot([int(s) for s in sev], [scale * curve[s][key] for s in sev], style, marker="o",
                        color=model_color(label), label=f"{label}, {n} sample{'s' * (n > 1)}")
        ax.set(xlabel="severity (0 = clean)", ylabel=LABELS.get(key, key))
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    return fig


def convergence_figure(spectra):
    """Each mini-batch's power-iteration estimate of the top eigenvalue against the iteration (left), and the
    distribution of the final estimates (right). spectra: {label: [max_eigenvalue_spectrum dict per seed]}."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    finals = {}
    for label, runs in spectra.items():
        color = model_color(label)
        for run in runs:
            for h in run["history"]:
                left.plot(range(1, len(h) + 1), h, color=color, alpha=0.35, lw=0.8)
        finals[label] = np.concatenate([np.asarray(r["eigenvalues"], dtype=float) for r in runs])
        left.plot([], [], color=color, label=label)
    left.set(xlabel="power iteration", ylabel="top eigenvalue estimate", yscale="log")
    left.legend(fontsize=8)
    left.grid(alpha=0.3)
    edges = np.histogram_bin_edges(np.concatenate(list(finals.values())), bins=20)
    for label, vals in finals.items():
        right.hist(vals, bins=edges, alpha=0.45, color=model_color(label), label=f"{label} (median "
                                                                                 f"{np.median(vals):.3g})")
    right.set(xlabel="top Hessian eigenvalue of a mini-batch", ylabel="mini-batches (all seeds)")
    right.legend(fontsize=8)
    right.grid(alpha=0.3)
    fig.tight_layout()
    return fig
