"""Moved to ops.train.trainer and ops.train.distributed (the trainer); this shim keeps `ops.trains` imports working."""
from ops.common.shims import forward

__getattr__, __dir__ = forward(
    __name__, ['ops.train.trainer', 'ops.train.distributed'],
    {'save_checkpoint': 'save_epoch'})
