"""ops.common.checks: one definition of an integer argument, and the boundaries that use it agree on it."""
import numpy as np
import pytest
import torch

from ops.analysis import featuremaps, landscapes
from ops.common.checks import is_int, is_number
from ops.data import corruptions
from ops.evaluate import engine


@pytest.mark.parametrize("value", [0, 3, -2, 10 ** 12])
def test_python_integers_are_integers(value):
    assert is_int(value) and is_int(value, numpy=True)


@pytest.mark.parametrize("value", [np.int64(3), np.int32(0), np.uint8(5)])
def test_numpy_integers_only_where_asked(value):
    assert is_int(value, numpy=True) and not is_int(value)


@pytest.mark.parametrize("value", [True, False, np.bool_(True), 3.0, "3", None, np.float32(2), [3]])
def test_bools_floats_strings_are_not(value):
    assert not is_int(value) and not is_int(value, numpy=True)


def test_bounds_are_inclusive_and_optional():
    assert is_int(1, 1) and not is_int(0, 1)
    assert is_int(5, 1, 5) and not is_int(6, 1, 5)
    assert is_int(-7, None, 0) and not is_int(1, None, 0)


@pytest.mark.parametrize("value, low, expected", [
    (0, 0, True), (2.5, 0, True), (-1e-9, 0, False), (-3, None, True), (float("inf"), None, False),
    (float("nan"), 0, False), (True, None, False), ("1", None, False), (None, 0, False)])
def test_a_number_is_a_finite_int_or_float_never_a_bool(value, low, expected):
    assert is_number(value, low) is expected


def test_table_indices_take_numpy_integers_and_counts_refuse_them_at_the_boundary():
    # a severity or an ensemble size read from an array indexes a table: accepted like the Python int
    assert corruptions.parameters("contrast", np.int64(2)) == corruptions.parameters("contrast", 2)
    assert engine.check_sizes([np.int64(2), 1]) == (1, 2)
    # a count reaches torch as a size, which must be a Python int: refused here with its name, not inside torch
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        featuremaps.fourier_profiles(torch.nn.Identity(), torch.zeros(2, 1, 4, 4), ["x"], batch_size=np.int64(2))
    with pytest.raises(ValueError, match="max_batch"):
        engine.predict_log_probs(torch.nn.Linear(4, 2), torch.zeros(3, 4), 1, max_batch=np.int64(2))
    with pytest.raises(ValueError, match="n must be an integer >= 1"):
        landscapes.grid_axis(True)
    with pytest.raises(ValueError, match="masks_per_pass must be 'auto' or an integer >= 1"):
        landscapes._check_passes(1, 1, True, False, torch.device("cpu"))  # True was taken as 1
