"""Moved to ops.train.distributed (synchronised BatchNorm); this shim keeps `ops.syncbn` imports working."""
from ops.common.shims import forward

__getattr__, __dir__ = forward(__name__, ['ops.train.distributed'], {'convert': 'convert_sync_batchnorm'})
