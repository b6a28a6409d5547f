"""The report's figures: each stage names a kind and hands over its data; the drawing lives in ops.plots."""
from __future__ import annotations

from typing import TYPE_CHECKING

from ops.plots import claims as claim_plots
from ops.plots.classification import ensemble_size_figure, save_figure
from ops.plots.featuremaps import fourier_figure, variance_figure
from ops.plots.landscapes import landscape_figure

if TYPE_CHECKING:
    from pathlib import Path
    from typing import Any


def _ensemble_size(lines, bands, title=None):
    return [ensemble_size_figure(lines, intervals=bands, title=title)]


def _landscapes(lands):
    return [landscape_figure(lands, title="Loss - min on the original's grid (+-0.1), one MC mask", max_ticks=3)]


def _featuremaps(variances, profiles):
    return [variance_figure(variances), fourier_figure(profiles)]


KINDS = {"ensemble_size": _ensemble_size, "forest": lambda *a: [claim_plots.forest_figure(*a)],
         "severity": lambda *a: [claim_plots.severity_figure(*a)],
         "hessians": lambda *a: [claim_plots.convergence_figure(*a)], "featuremaps": _featuremaps,
         "landscapes": _landscapes}


def draw(path: Path, kind: str, *data: Any) -> list[Path]:
    """Draw the figures of `kind` from `data` and save them as PNG: `path`, then `path-2`, ...; returns the
    paths."""
    paths = []
    for i, fig in enumerate(KINDS[kind](*data), 1):
        paths.append(save_figure(fig, path if i == 1 else path.with_name(f"{path.stem}-{i}{path.suffix}")))
    return paths
