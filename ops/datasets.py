"""Moved to ops.data.datasets (datasets); this shim keeps `ops.datasets` imports working."""
from ops.common.shims import forward

__getattr__, __dir__ = forward(__name__, ['ops.data.datasets'])
