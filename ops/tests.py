"""Moved to ops.evaluate.engine (the evaluation engine (sweep, test)); this shim keeps `ops.tests` imports working."""
from ops.common.shims import forward

__getattr__, __dir__ = forward(__name__, ['ops.evaluate.engine'])
