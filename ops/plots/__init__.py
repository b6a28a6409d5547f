"""Every figure of the library, drawn from the data the analyses return (figures are kept apart from computation).

- ops.plots.classification: reliability diagram, ensemble-size figure, save_figure (also importable from
  ops.plots itself, as before the subpackages);
- ops.plots.landscapes: loss-landscape contours and surfaces, curves, the mask GIF, Hessian spectra;
- ops.plots.featuremaps: sample feature maps, MC variance, Fourier profiles;
- ops.plots.calibration: reliability diagram before/after temperature scaling, OOD score histograms;
- ops.plots.colors: one colour per model (`model_color(name or label)`) for every figure.
"""
from ops.plots import calibration, colors
from ops.plots.classification import LABELS, PERCENT, ensemble_size_figure, reliability_diagram, save_figure
from ops.plots.colors import model_color

__all__ = ["LABELS", "PERCENT", "calibration", "colors", "ensemble_size_figure", "model_color", "reliability_diagram",
           "save_figure"]
