"""ops.evaluate.binomial.binomial_band against scipy.stats: Wilson's score interval and the Wald interval."""
import numpy as np
import pytest
from scipy import stats

from ops.evaluate.binomial import binomial_band


@pytest.mark.parametrize("level", [0.9, 0.95, 0.99])
@pytest.mark.parametrize("k,n", [(0, 10), (1, 10), (5, 10), (10, 10), (3, 8), (137, 1500), (1499, 1500)])
def test_wilson_matches_scipy(k, n, level):
    expected = stats.binomtest(k, n).proportion_ci(confidence_level=level, method="wilson")
    low, high = binomial_band(k / n, n, level=level)
    assert (float(low), float(high)) == pytest.approx((expected.low, expected.high), abs=1e-12)


@pytest.mark.parametrize("level", [0.9, 0.95])
def test_wald_is_the_normal_approximation(level):
    rates, n = np.array([0.01, 0.05, 0.5, 0.83]), np.array([40, 200, 1000, 75])
    low, high = binomial_band(rates, n, level=level, method="wald")
    exp_low, exp_high = stats.norm.interval(level, loc=rates, scale=np.sqrt(rates * (1 - rates) / n))
    np.testing.assert_allclose(low, exp_low, atol=1e-12)
    np.testing.assert_allclose(high, exp_high, atol=1e-12)


def test_arrays_broadcast_and_each_entry_is_its_own_band():
    rates = np.array([0.1, 0.5, 0.9])
    low, high = binomial_band(rates, 100)
    assert low.shape == high.shape == (3,)
    for i, p in enumerate(rates):
        ci = stats.binomtest(round(p * 100), 100).proportion_ci(method="wilson")
        assert (low[i], high[i]) == pytest.approx((ci.low, ci.high), abs=1e-12)
    assert np.all((low <= rates) & (rates <= high))


@pytest.mark.parametrize("kwargs", [dict(rate=1.2, n=10), dict(rate=0.5, n=0), dict(rate=0.5, n=10, level=95),
                                    dict(rate=0.5, n=10, method="exact")])
def test_bad_arguments_are_refused(kwargs):
    with pytest.raises(ValueError):
        binomial_band(**kwargs)
