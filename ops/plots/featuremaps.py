"""Figures of the feature-map analyses (ops.analysis.featuremaps): sample maps, MC variance, Fourier profiles."""
import math

import matplotlib.pyplot as plt

from ops.analysis.featuremaps import common_frequency, high_frequency
from ops.plots.colors import model_color


def feature_map_figure(maps, shown=3, title=None):
    """Maps of `shown` MC samples side by side, and their standard deviation over all samples.

    maps: {model label: {point label: (S, H, W)}} (one image, one channel). One column per point; per model,
    `shown` rows of samples and a last row with the std over S. Panels that are compared share a scale: the
    samples of a point share one colour scale across models, and every std panel of a point shares one, each with
    its colourbar, so a lower MC variance shows as a darker std panel.
    """
    labels = list(maps)
    points = list(maps[labels[0]])
    rows = len(labels) * (shown + 1)
    fig, axes = plt.subplots(rows, len(points), figsize=(1.9 * len(points) + 1.4, 1.6 * rows), squeeze=False)
    for j, point in enumerate(points):
        samples = {label: maps[label][point].float().cpu() for label in labels}  # (S, H, W) each
        lo = min(float(m[:shown].min()) for m in samples.values())
        hi = max(float(m[:shown].max()) for m in samples.values())
        std_hi = max(float(m.std(dim=0).max()) for m in samples.values()) or 1.0
        for i, label in enumerate(labels):
            m = samples[label]
            for r in range(shown + 1):
                ax = axes[i * (shown + 1) + r][j]
                art = ax.imshow(m[r].numpy(), cmap="viridis", vmin=lo, vmax=hi) if r < shown else \
                    ax.imshow(m.std(dim=0).numpy(), cmap="magma", vmin=0, vmax=std_hi)
                ax.set_xticks([])
                ax.set_yticks([])
                if i == 0 and r == 0:
                    ax.set_title(point, fontsize=9)
                if j == 0:
                    ax.set_ylabel(f"{label}\n" + (f"sample {r + 1}" if r < shown else f"std ({len(m)})"), fontsize=8)
                # a colourbar on every panel: the panels stay aligned, and each says its (shared) scale
                fig.colorbar(art, ax=ax, fraction=0.046, pad=0.03).ax.tick_params(labelsize=5)
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 1, 0.985 if title else 1))
    return fig


def _common_per_point(profiles):
    """Per depth (the i-th point of every model), the highest frequency all models' maps reach; one frequency
    for all points if the models have different numbers of points."""
    per_model = [list(p.values()) for p in profiles.values()]
    if len({len(p) for p in per_model}) != 1:
        return common_frequency(*profiles.values())
    return [min(float(points[i][0][-1]) for points in per_model) for i in range(len(per_model[0]))]


def variance_figure(variances, keys=("variance", "relative"), title=None):
    """Variance across MC samples per point, one line per model. variances: {label: {point: mc_variance dict}}."""
    names = {"variance": "MC variance", "relative": "MC variance / mean square", "power": "Mean square"}
    fig, axes = plt.subplots(1, len(keys), figsize=(4.6 * len(keys), 3.6), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for label, per_point in variances.items():
            ax.plot(range(len(per_point)), [v[key] for v in per_point.values()], marker="o", label=label,
                    color=model_color(label))
        ticks = list(next(iter(variances.values())))
        ax.set_xticks(range(len(ticks)), ticks, rotation=30, fontsize=8)
        ax.set(yscale="log", ylabel=names.get(key, key), xlabel="Stage output")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def fourier_figure(profiles, marks=None, title=None):
    """Relative log amplitude vs frequency (one panel per model, colour = depth) and the high-frequency value vs
    normalised depth (last panel, one line per model). profiles: {label: {point: (freqs, profile)}}; marks:
    {label: [point names]} drawn as markers on the last panel (e.g. the smoothing blocks)."""
    labels = list(profiles)
    fig, axes = plt.subplots(1, len(labels) + 1, figsize=(3.6 * len(labels) + 4.8, 3.6), squeeze=False)
    axes = axes[0]
    for ax, label in zip(axes, labels):
        per_point = profiles[label]
        for i, (freqs, profile) in enumerate(per_point.values()):
            ax.plot(freqs / math.pi, profile, color=plt.cm.plasma_r(i / max(1, len(per_point) - 1)), lw=1.2)
        ax.set(xlim=(0, 1), xlabel="Frequency (x pi)", ylabel="Relative log amplitude", title=label)
        ax.grid(alpha=0.3)
    sm = plt.cm.ScalarMappable(cmap="plasma_r", norm=plt.Normalize(0, 1))
    fig.colorbar(sm, ax=axes[len(labels) - 1], label="Normalised depth")
    ax = axes[-1]
    at = _common_per_point(profiles)  # each stage compared across models at one frequency all its maps reach
    for label in labels:
        depths, values = high_frequency(profiles[label], at=at)
        line, = ax.plot(depths, values, marker=".", label=label, color=model_color(label))
        names = list(profiles[label])
        for point in (marks or {}).get(label, []):
            i = names.index(point)
            ax.plot(depths[i], values[i], marker="D", color=line.get_color(), markersize=6, linestyle="none")
    ax.set_title("each depth at a frequency all models reach", fontsize=9)
    ax.set(xlim=(0, 1), xlabel="Normalised depth", ylabel="High-frequency log amplitude")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
