"""Figures of robustness.ipynb: corrupted examples, metrics against severity, error heatmaps, the corrupted
ensemble-size figure and flip rates. They read what ops.analysis.robustness returns:

    fig = corruption_examples(clean.images[0], {c: [cset.images(c, s)[0] for s in severities] for c in chosen},
                              severities)
    fig = severity_figure(results, sizes, severities, chosen, labels)  # results: {name: evaluate_corrupted(...)}
    fig = error_heatmaps(results, max(sizes), severities, chosen, labels)
    fig = corrupted_ensemble_size_figure(rows, named, chosen, severities)  # rows: corruption_summary(named, ...)
    fig = flip_rate_figure(flip_rows, sizes, perturb_size)   # rows: {model, size, perturbation, flip_prob, ...}

Error bands are 95% binomial intervals (Wilson, ops.evaluate.binomial.binomial_band) of the error pooled over
the images of every corruption at a severity, or of the accuracy pooled over every corrupted cell.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import numpy as np

from ops.evaluate.binomial import binomial_band
from ops.plots.classification import ensemble_size_figure
from ops.plots.colors import model_color

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    import torch
    from matplotlib.figure import Figure

BAND_NOTE = "bands: 95% binomial intervals (Wilson)"


def corruption_examples(clean: torch.Tensor, corrupted: Mapping[str, Sequence[torch.Tensor]],
                        severities: Sequence[int]) -> Figure:
    """One row per corruption: the clean image (C, H, W) in [0, 1], then corrupted[c][j] at severities[j]."""
    rows, cols = len(corrupted), len(severities) + 1
    fig, axes = plt.subplots(rows, cols, figsize=(1.3 * cols, 1.3 * rows), squeeze=False)
    for i, (c, images) in enumerate(corrupted.items()):
        axes[i, 0].imshow(clean.permute(1, 2, 0).numpy())
        for j, image in enumerate(images):
            axes[i, j + 1].imshow(image.permute(1, 2, 0).numpy())
        axes[i, 0].set_ylabel(c.replace("_", " "), rotation=0, ha="right", va="center", fontsize=8)
    for j, title in enumerate(["clean"] + [f"severity {s}" for s in severities]):
        axes[0, j].set_title(title, fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([]), ax.set_yticks([])
    fig.tight_layout()
    return fig


def by_severity(result: Mapping, size: int, key: str, severities: Sequence[int],
                corruptions: Sequence[str]) -> np.ndarray:
    """[clean, severity 1, ...] of a metric at an ensemble size, averaged over corruptions (one model's result
    of ops.analysis.robustness.evaluate_corrupted)."""
    values = [result["clean"][size][key]]
    for s in severities:
        values.append(np.mean([result["corrupted"][c][s][size][key] for c in corruptions]))
    return np.array(values)


def _pooled_counts(result: Mapping, size: int, severities: Sequence[int], corruptions: Sequence[str]) -> np.ndarray:
    """Images behind each entry of by_severity: the clean ones, then every corruption's at each severity."""
    return np.array([result["clean"][size]["n"]] + [sum(result["corrupted"][c][s][size]["n"] for c in corruptions)
                                                      for s in severities])


def severity_figure(results: Mapping[str, Mapping], sizes: Sequence[int], severities: Sequence[int],
                    corruptions: Sequence[str], labels: Mapping[str, str] | None = None,
                    title: str | None = None) -> Figure:
    """Error, NLL and ECE against severity (0: clean), one line per model and ensemble size; the error of the
    largest size with its 95% binomial band. results: {model name: evaluate_corrupted(...)}."""
    labels = labels or {}
    styles = dict(zip(sizes, ["-", "--", ":", "-."] * 4))
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    xs = [0] + list(severities)
    for name, res in results.items():
        color = model_color(name)
        for n in sizes:
            kw = dict(color=color, linestyle=styles[n], marker="o", label=f"{labels.get(name, name)}, {n}")
            err = 1 - by_severity(res, n, "acc", severities, corruptions)
            axes[0].plot(xs, 100 * err, **kw)
            if n == max(sizes):
                low, high = binomial_band(err, _pooled_counts(res, n, severities, corruptions))
                axes[0].fill_between(xs, 100 * low, 100 * high, color=color, alpha=0.15, lw=0)
            axes[1].plot(xs, by_severity(res, n, "nll", severities, corruptions), **kw)
            axes[2].plot(xs, 100 * by_severity(res, n, "ece", severities, corruptions), **kw)
    for ax, ylabel in zip(axes, ["Error (%)", "NLL", "ECE (%)"]):
        ax.set(xlabel="Severity (0: clean)", ylabel=ylabel, xticks=xs)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, title="model, ensemble size", title_fontsize=7)
    axes[0].annotate(f"{BAND_NOTE}, size {max(sizes)}", (0.02, 0.94), xycoords="axes fraction", fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def error_heatmaps(results: Mapping[str, Mapping], size: int, severities: Sequence[int], corruptions: Sequence[str],
                   labels: Mapping[str, str] | None = None) -> Figure:
    """Error (%) per corruption and severity at one ensemble size, one panel per model; with two models a third
    panel is the second's error minus the first's (blue: the second is better)."""
    import pandas as pd
    import seaborn as sns

    labels = labels or {}
    frames = {name: pd.DataFrame({s: {c: 100 * (1 - res["corrupted"][c][s][size]["acc"]) for c in corruptions}
                                  for s in severities}) for name, res in results.items()}
    names = list(results)
    panels = [(labels.get(m, m), frames[m], "rocket_r", None) for m in names]
    if len(names) == 2:
        panels.append((f"{labels.get(names[1], names[1])} - {labels.get(names[0], names[0])}",
                       frames[names[1]] - frames[names[0]], "RdBu_r", 0))
    vmax = max(f.values.max() for f in frames.values())
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 0.38 * len(corruptions) + 1.6),
                             squeeze=False)
    for ax, (title, frame, cmap, center) in zip(axes[0], panels):
        lim = dict(vmin=0, vmax=vmax) if center is None else dict(center=0)
        sns.heatmap(frame, ax=ax, cmap=cmap, annot=True, fmt=".0f", annot_kws={"fontsize": 7}, cbar=True, **lim)
        ax.set(title=f"{title}\n(error %, {size} samples)", xlabel="Severity", ylabel="")
    fig.tight_layout()
    return fig


def corrupted_ensemble_size_figure(rows: Sequence[Mapping], results: Mapping[str, Mapping],
                                   corruptions: Sequence[str], severities: Sequence[int],
                                   title: str | None = None) -> Figure:
    """The paper's robustness figure: corrupted NLL, accuracy and ECE against the ensemble size, the accuracy
    with its 95% binomial band pooled over every corrupted cell. rows: ops.analysis.robustness.corruption_summary
    of `results` ({label: evaluate_corrupted(...)}, keyed by the labels the rows name)."""
    by_size, bands = {r["model"]: {} for r in rows}, {}
    for r in rows:
        by_size[r["model"]][r["size"]] = {"nll": r["nll_c"], "acc": r["acc_c"], "ece": r["ece_c"]}
        corrupted = results[r["model"]]["corrupted"]
        count = sum(corrupted[c][s][r["size"]]["n"] for c in corruptions for s in severities)
        low, high = binomial_band(r["acc_c"], count)
        bands.setdefault(r["model"], {})[r["size"]] = {"acc": (r["acc_c"], float(low), float(high))}
    fig = ensemble_size_figure(by_size, title=title, intervals=bands)
    for text in fig.axes[0].texts:  # ensemble_size_figure names bootstrap bands; these are binomial
        if text.get_text().startswith("bands:"):
            text.set_text(BAND_NOTE)
    return fig


def flip_rate_figure(flip_rows: Sequence[Mapping], sizes: Sequence[int], sequences: int) -> Figure:
    """Flip probability (%) per perturbation type at the smallest and largest ensemble size (hatched), one bar per
    model and size. flip_rows: {"model", "size", "perturbation", "flip_prob", ...} per model, size and type."""
    import pandas as pd
    import seaborn as sns

    flips = pd.DataFrame(list(flip_rows))
    sub = flips[flips["size"].isin([min(sizes), max(sizes)])].copy()
    sub["model, size"] = sub["model"] + ", " + sub["size"].astype(str)
    sub["flip_prob"] *= 100
    palette = {h: model_color(h.split(",")[0]) for h in sub["model, size"].unique()}
    order = list(dict.fromkeys(sub["model, size"]))
    fig, ax = plt.subplots(figsize=(7.5, 3.4))
    sns.barplot(sub, x="perturbation", y="flip_prob", hue="model, size", hue_order=order, palette=palette, ax=ax)
    for bar_group, hatch in zip(ax.containers, ["", "//"] * len(order)):  # the larger ensemble size hatched
        for patch in bar_group:
            patch.set_hatch(hatch)
    ax.set(ylabel="Flip probability (%)", xlabel="",
           title=f"Prediction flips on perturbation sequences ({sequences} per type; sizes {min(sizes)} and "
                 f"{max(sizes)})")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
