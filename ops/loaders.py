"""Moved to ops.data.loaders (in-memory loaders); this shim keeps `ops.loaders` imports working."""
from ops.common.shims import forward

__getattr__, __dir__ = forward(__name__, ['ops.data.loaders'])
