"""Moved to ops.data.corruptions and ops.data.corrupted_sets (corruptions (the functions) and corrupted sets (-C/-P)).

This shim keeps `ops.corruptions` imports working."""
from ops.common.shims import forward

__getattr__, __dir__ = forward(__name__, ['ops.data.corruptions', 'ops.data.corrupted_sets'])
