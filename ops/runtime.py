"""Moved to ops.common.runtime (execution switches); this shim keeps `ops.runtime` imports working."""
from ops.common.shims import forward

__getattr__, __dir__ = forward(__name__, ['ops.common.runtime'])
