"""Moved to ops.analysis.landscapes and ops.analysis.fixed and ops.analysis.landscape_files (loss landscapes).

This shim keeps `ops.landscapes` imports working."""
from ops.common.shims import forward

__getattr__, __dir__ = forward(
    __name__, ['ops.analysis.landscapes', 'ops.analysis.fixed', 'ops.analysis.landscape_files'])
