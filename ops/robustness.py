"""Moved to ops.analysis.robustness (corruption robustness); this shim keeps `ops.robustness` imports working."""
from ops.common.shims import forward

__getattr__, __dir__ = forward(__name__, ['ops.analysis.robustness'], {'summary': 'corruption_summary'})
