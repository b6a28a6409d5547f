"""Moved to ops.train.configs (run configs); this shim keeps `ops.configs` imports working."""
from ops.common.shims import forward

__getattr__, __dir__ = forward(__name__, ['ops.train.configs'])
