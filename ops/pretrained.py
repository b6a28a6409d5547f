"""Moved to ops.train.pretrained (trained checkpoints); this shim keeps `ops.pretrained` imports working."""
from ops.common.shims import forward

__getattr__, __dir__ = forward(
    __name__, ['ops.train.pretrained'],
    {'load_checkpoint': 'load_trained', 'find_checkpoint': 'find_trained'})
