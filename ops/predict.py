"""Moved to ops.evaluate.engine (MC prediction, now part of the evaluation engine).

This shim keeps `ops.predict` imports working."""
from ops.common.shims import forward

__getattr__, __dir__ = forward(__name__, ['ops.evaluate.engine'], {'is_stochastic': 'behaves_stochastically'})
