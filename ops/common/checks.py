"""Value checks shared by the public functions' boundaries: one definition of "an integer" (a count, a seed, a
severity) so that every function accepts and refuses the same values.

An integer here is a Python or NumPy integer and never a bool (True is not a count of 1); each caller raises
its own error, naming the argument and the fix.
"""
import numbers


def is_int(value, low: int = None, high: int = None) -> bool:
    """True for an integer (Python or NumPy, not a bool) with low <= value <= high (either bound may be None)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        return False
    return (low is None or value >= low) and (high is None or value <= high)
