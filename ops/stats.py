"""Moved to ops.evaluate.intervals (bootstrap intervals); this shim keeps `ops.stats` imports working."""
from ops.common.shims import forward

__getattr__, __dir__ = forward(__name__, ['ops.evaluate.intervals'])
