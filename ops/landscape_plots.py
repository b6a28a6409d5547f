"""Moved to ops.plots.landscapes (landscape figures); this shim keeps `ops.landscape_plots` imports working."""
from ops.common.shims import forward

__getattr__, __dir__ = forward(__name__, ['ops.plots.landscapes'])
