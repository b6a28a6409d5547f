"""ops.common.checks: one definition of an integer argument, and the boundaries that use it agree on it."""
import numpy as np
import pytest

from ops.analysis import landscapes
from ops.common.checks import is_int
from ops.data import corruptions
from ops.evaluate import engine


@pytest.mark.parametrize("value", [0, 3, np.int64(3), np.int32(0), np.uint8(5)])
def test_python_and_numpy_integers_are_integers(value):
    assert is_int(value)


@pytest.mark.parametrize("value", [True, False, np.bool_(True), 3.0, "3", None, np.float32(2), [3]])
def test_bools_floats_strings_are_not(value):
    assert not is_int(value)


def test_bounds_are_inclusive_and_optional():
    assert is_int(1, 1) and not is_int(0, 1)
    assert is_int(5, 1, 5) and not is_int(6, 1, 5)
    assert is_int(-7, None, 0) and not is_int(1, None, 0)


def test_boundaries_accept_numpy_counts_and_refuse_bools():
    # a count read from an array works like the Python int; True is refused with the argument's name
    assert landscapes.grid_axis(np.int64(3), 1.0) == landscapes.grid_axis(3, 1.0) == [-1.0, 0.0, 1.0]
    assert corruptions.parameters("contrast", np.int64(2)) == corruptions.parameters("contrast", 2)
    with pytest.raises(ValueError, match="n must be an integer >= 1"):
        landscapes.grid_axis(True)
    with pytest.raises(ValueError, match="sizes must be a non-empty list of positive integers"):
        engine.check_sizes([1, True])
