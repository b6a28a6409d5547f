"""Value checks shared by the public functions' boundaries: one definition of "an integer" (a count, a seed, a
severity), of "a number" (a time, a margin) and of "a file of this folder", so that every function accepts and
refuses the same values.

An integer here is a Python int and never a bool (True is not a count of 1). NumPy integers pass only where the
caller says so (`numpy=True`: values that index tables or seed generators); counts must be Python ints, because
torch treats only those as sizes (`Tensor.split`, `DataLoader(batch_size=)`) and JSON stores only those. Each
caller raises its own error, naming the argument and the fix.
"""
from __future__ import annotations

import math
import numbers
from pathlib import Path


def is_int(value: object, low: int = None, high: int = None, numpy: bool = False) -> bool:
    """True for an integer (a Python int; with numpy=True also a NumPy integer; never a bool) with
    low <= value <= high (either bound may be None)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral if numpy else int):
        return False
    return (low is None or value >= low) and (high is None or value <= high)


def is_number(value: object, low: float = None) -> bool:
    """True for a finite real number (an int or a float, never a bool) with low <= value (low may be None): a
    time, a margin, a rate."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return False
    return low is None or value >= low


MAX_SEED = 2 ** 32 - 1  # numpy's range; torch takes more, but the trainer derives per-epoch seeds from it


def is_seed(value: object) -> bool:
    """True for a seed every generator here accepts: an integer from 0 to MAX_SEED."""
    return is_int(value, 0, MAX_SEED)


def inside(path: Path | str, folder: Path | str) -> bool:
    """True if `path` is a file name of `folder` itself: not a link, and inside it once resolved (untrusted run
    and cache folders may hold links to anywhere)."""
    path = Path(path)
    return not path.is_symlink() and path.resolve().is_relative_to(Path(folder).resolve())
