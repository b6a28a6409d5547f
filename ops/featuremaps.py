"""Moved to ops.analysis.featuremaps and ops.plots.featuremaps (feature-map analyses and their figures).

This shim keeps `ops.featuremaps` imports working."""
from ops.common.shims import forward

__getattr__, __dir__ = forward(__name__, ['ops.analysis.featuremaps', 'ops.plots.featuremaps'])
