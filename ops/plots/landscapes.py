"""Figures of loss landscapes and Hessian spectra, kept apart from computing them.

They read Landscape objects (ops.analysis.landscape_files) and the dicts of ops.analysis.hessians; several models go
on shared axes (the same colour levels, z-limits and histogram bins), so that the panels can be compared by eye.

- landscape_figure({label: land}, key, mask, kind): a filled contour ("contourf"), contour lines ("contour") or
  a 3-D surface ("surface") per model; 1-D landscapes are drawn as curves.
- curves_figure({label: land}, key, axis): 1-D slices through the centre of 2-D landscapes (or 1-D ones), a thin
  line per MC mask and a thick one for the MC ensemble.
- animate_masks({label: land}, path, key, kind): a GIF with one frame per MC mask (matplotlib's PillowWriter).
- spectrum_figure({label: eigenvalues}): histograms of the top Hessian eigenvalue per mini-batch.
- density_figure({label: slq result}): spectral densities from stochastic Lanczos quadrature (log scale).

By default a landscape is drawn relative to its own minimum (value - min over the grid and the masks drawn), as
the original's figures are; pass relative=False for raw values.
"""
import matplotlib
import matplotlib.pyplot as plt
import numpy as np  # headless: matplotlib falls back to Agg by itself
from matplotlib.animation import FuncAnimation, PillowWriter

from ops.analysis.hessians import density
from ops.plots.colors import model_color

LABELS = {"loss": "loss", "nll": "NLL", "acc": "accuracy", "ece": "ECE", "l2": "||w||"}


def _values(lands, key, masks, relative):
    """{label: {mask: array}} with each landscape's minimum over the masks subtracted if relative."""
    out = {}
    for label, land in lands.items():
        ms = land.masks if masks == "all" else [masks] if np.isscalar(masks) else list(masks)
        grids = {m: land.grid(key, m) for m in ms}
        if relative:
            low = np.nanmin([np.nanmin(g) for g in grids.values()])
            grids = {m: g - low for m, g in grids.items()}
        out[label] = grids
    return out


def _limits(values, clip):
    finite = np.concatenate([g[np.isfinite(g)].ravel() for grids in values.values() for g in grids.values()])
    low, high = float(finite.min()), float(finite.max())
    if clip is not None:
        high = min(high, low + clip)
    return low, high if high > low else low + 1e-12


def _draw(ax, land, z, kind, levels, limits):
    if land.ys is None:
        ax.plot(land.xs, z)
        ax.set_ylim(*limits)
        return None
    X, Y = np.meshgrid(land.xs, land.ys)
    z = np.clip(z, None, limits[1])
    if kind == "surface":
        art = ax.plot_surface(X, Y, z, cmap="viridis", vmin=limits[0], vmax=limits[1], linewidth=0,
                              antialiased=True)
        ax.set_zlim(*limits)
        ax.view_init(elev=30, azim=-60)
        return art
    if kind == "contourf":
        return ax.contourf(X, Y, z, levels=levels, cmap="viridis", extend="max")
    if kind == "contour":
        art = ax.contour(X, Y, z, levels=levels, cmap="viridis")
        ax.clabel(art, art.levels[::4], inline=True, fontsize=6, fmt="%.2g")  # every 4th level: labels don't overlap
        return art
    raise ValueError(f"kind must be 'contourf', 'contour' or 'surface', got {kind!r}")


def _axes(n, kind, size=3.6):
    fig = plt.figure(figsize=(size * n + 0.8, size))
    proj = {"projection": "3d"} if kind == "surface" else {}
    return fig, [fig.add_subplot(1, n, i + 1, **proj) for i in range(n)]


def landscape_figure(lands, key="loss", mask=0, kind="contourf", relative=True, clip=None, n_levels=20,
                     title=None, max_ticks=None):
    """One panel per model, shared colour levels / z-limits. clip: draw at most `clip` above the minimum.
    max_ticks: at most this many ticks per axis (side-by-side panels' labels otherwise run into each other)."""
    values = _values(lands, key, mask, relative)
    limits = _limits(values, clip)
    levels = np.linspace(*limits, n_levels)
    fig, axes = _axes(len(lands), kind)
    grid = next(iter(lands.values())).ys  # the first panel's y grid: panels on the same one need no tick labels
    art = None
    for ax, (label, land) in zip(axes, lands.items()):
        art = _draw(ax, land, values[label][mask], kind, levels, limits) or art
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("direction 1")
        if max_ticks:
            ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(max_ticks))
            ax.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(max_ticks))
        first = ax is axes[0] or kind == "surface"  # one y label per row: it would run into the panel on its left
        if land.ys is not None:
            ax.set_ylabel("direction 2" if first else "")
            if not first and grid is not None and list(land.ys) == list(grid):
                ax.tick_params(labelleft=False)  # the same grid as the first panel: its tick labels say it
            if kind != "surface":
                ax.set_aspect("equal")
        else:
            ax.set_ylabel(LABELS.get(key, key) + (" - min" if relative else "") if first else "")
    if art is not None and kind != "surface":
        bar = fig.colorbar(art, ax=axes, shrink=0.85, label=LABELS.get(key, key) + (" - min" if relative else ""))
        bar.locator = matplotlib.ticker.MaxNLocator(6)  # a few round ticks, not one per contour level
        bar.formatter = matplotlib.ticker.FormatStrFormatter("%.2g")
        bar.update_ticks()
    suffix = "MC ensemble" if mask == -1 else f"MC mask {mask}"
    fig.suptitle(title or f"{LABELS.get(key, key)} landscape ({suffix})", fontsize=11)
    return fig


def curves_figure(lands, key="loss", axis="x", relative=True, title=None):
    """1-D curves through the centre (y = the middle row for axis="x", the middle column for "y"); a thin line
    per MC mask, a thick one for the ensemble (mask -1) when present. Shared y-axis."""
    if axis not in ("x", "y"):
        raise ValueError(f"axis must be 'x' or 'y', got {axis!r}")
    values = _values(lands, key, "all", relative)
    fig, axes = plt.subplots(1, len(lands), figsize=(3.8 * len(lands), 3.2), sharey=True, squeeze=False)
    for ax, (label, land) in zip(axes[0], lands.items()):
        coords = land.xs if axis == "x" or land.ys is None else land.ys
        for m, grid in sorted(values[label].items()):
            if land.ys is None:
                line = grid
            else:
                line = grid[len(land.ys) // 2, :] if axis == "x" else grid[:, len(land.xs) // 2]
            ens = m == -1
            ax.plot(coords, line, color="black" if ens else None, lw=2.2 if ens else 0.9,
                    alpha=1.0 if ens else 0.6, label="MC ensemble" if ens else f"mask {m}")
        ax.set_title(label, fontsize=10)
        ax.set_xlabel(f"direction {1 if axis == 'x' else 2}")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(LABELS.get(key, key) + (" - min" if relative else ""))
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(title or f"{LABELS.get(key, key)} along direction {1 if axis == 'x' else 2}", fontsize=11)
    fig.tight_layout()
    return fig


def animate_masks(lands, path, key="loss", kind="surface", relative=True, clip=None, fps=2, dpi=80):
    """Write a GIF with one frame per MC mask (all models side by side, shared limits); returns the path."""
    masks = sorted(set.intersection(*[{m for m in land.masks if m >= 0} for land in lands.values()]))
    if not masks:
        raise ValueError("the landscapes share no MC mask to animate")
    if all(-1 in land.masks for land in lands.values()):
        masks.append(-1)  # the MC ensemble (mean probability over the masks) as the last frame
    values = _values(lands, key, masks, relative)
    limits = _limits(values, clip)
    levels = np.linspace(*limits, 20)
    fig, axes = _axes(len(lands), kind, size=3.4)

    def frame(i):
        for ax, (label, land) in zip(axes, lands.items()):
            ax.clear()
            _draw(ax, land, values[label][masks[i]], kind, levels, limits)
            ax.set_title(label, fontsize=9)
        which = "MC ensemble of all masks" if masks[i] == -1 else f"MC mask {masks[i]}"
        fig.suptitle(f"{LABELS.get(key, key)} landscape, {which}", fontsize=10)

    anim = FuncAnimation(fig, frame, frames=len(masks))
    from pathlib import Path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    anim.save(str(path), writer=PillowWriter(fps=fps), dpi=dpi)
    plt.close(fig)
    return path


def spectrum_figure(spectra, bins=30, title=None):
    """Histograms of the top Hessian eigenvalue per mini-batch, one per model on shared bins; the dashed lines
    are the medians. spectra: {label: list of eigenvalues or a max_eigenvalue_spectrum dict}."""
    spectra = {k: np.asarray(v["eigenvalues"] if isinstance(v, dict) else v, dtype=float) for k, v in spectra.items()}
    all_values = np.concatenate(list(spectra.values()))
    edges = np.histogram_bin_edges(all_values, bins=bins)
    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    for label, vals in spectra.items():
        color = model_color(label)
        ax.hist(vals, bins=edges, alpha=0.45, color=color, label=f"{label} (median {np.median(vals):.3g})")
        ax.axvline(np.median(vals), color=color, ls="--", lw=1.2)
    ax.set(xlabel="top Hessian eigenvalue of a mini-batch", ylabel="mini-batches")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax.set_title(title or "Hessian max-eigenvalue spectra", fontsize=11)
    fig.tight_layout()
    return fig


def density_figure(results, sigma=None, points=1000, title=None):
    """Spectral densities of SLQ results on one eigenvalue axis (log scale). results: {label: slq dict}."""
    nodes = np.concatenate([np.concatenate([np.asarray(n) for n in r["nodes"]]) for r in results.values()])
    span = float(nodes.max() - nodes.min()) or 1.0
    grid = np.linspace(nodes.min() - 0.05 * span, nodes.max() + 0.05 * span, points)
    sigma = sigma or 0.01 * span
    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    for label, res in results.items():
        ax.semilogy(grid, density(res, grid, sigma) + 1e-30, label=label, color=model_color(label))
    # the outliers carry weights near 1/dim: put the floor a decade below the peak of each top node
    tops = [w[int(np.argmax(n))] for r in results.values() for n, w in zip(r["nodes"], r["weights"])]
    floor = min(max(min(tops) / (sigma * np.sqrt(2 * np.pi)) / 10, 1e-14), 1e-3)
    ax.set(xlabel="eigenvalue", ylabel="density (log)", ylim=(floor, None))
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax.set_title(title or "Hessian eigenvalue density (SLQ)", fontsize=11)
    fig.tight_layout()
    return fig
