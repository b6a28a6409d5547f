"""Moved to ops.analysis.hessians (Hessian spectra); this shim keeps `ops.hessians` imports working."""
from ops.common.shims import forward

__getattr__, __dir__ = forward(__name__, ['ops.analysis.hessians'])
