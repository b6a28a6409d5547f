"""Old module names of ops/ (before the subpackages), kept working as thin forwards to where the code lives now.

    # ops/tests.py
    __getattr__, __dir__ = forward(__name__, ["ops.evaluate.engine"])

Attribute access on the old module (`ops.tests.sweep`, `from ops.tests import sweep`) is answered by the first
target module that has the name (after `renames`: old name -> new name), so code written against the old names
keeps working; importing an old name warns once (DeprecationWarning) with the new place.
"""
import importlib
import warnings


def forward(old: str, targets: list, renames: dict = None) -> tuple:
    """(__getattr__, __dir__) for the module `old`, forwarding to the modules named in `targets`."""
    renames = dict(renames or {})
    warnings.warn(f"{old} moved to {', '.join(targets)}; import it from there", DeprecationWarning, stacklevel=3)

    def __getattr__(name):
        new = renames.get(name, name)
        for target in targets:
            module = importlib.import_module(target)
            if hasattr(module, new):
                return getattr(module, new)
        raise AttributeError(f"module {old!r} has no attribute {name!r} (its code moved to {', '.join(targets)})")

    def __dir__():
        names = set(renames)
        for target in targets:
            names |= {n for n in dir(importlib.import_module(target)) if not n.startswith("__")}
        return sorted(names)

    return __getattr__, __dir__
