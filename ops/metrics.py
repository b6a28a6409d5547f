"""Moved to ops.evaluate.metrics (streaming metrics); this shim keeps `ops.metrics` imports working."""
from ops.common.shims import forward

__getattr__, __dir__ = forward(__name__, ['ops.evaluate.metrics'])
