"""Moved to ops.train.runs and models.atomic (run folders); this shim keeps `ops.runs` imports working."""
from ops.common.shims import forward

__getattr__, __dir__ = forward(__name__, ['ops.train.runs', 'models.atomic'])
