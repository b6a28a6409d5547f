"""Moved to ops.evaluate.reports (leaderboards and tables); this shim keeps `ops.reports` imports working."""
from ops.common.shims import forward

__getattr__, __dir__ = forward(__name__, ['ops.evaluate.reports'])
