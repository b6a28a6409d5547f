"""Intervals over seeds and images, and the verdict a claim gets from its interval."""
import numpy as np
import pytest
import torch

from ops.evaluate.intervals import bootstrap, hierarchical_bootstrap, hierarchical_mean, verdict


def _arm(shift, seed, targets, classes=10):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(len(targets), classes, generator=g)
    logits[torch.arange(len(targets)), targets] += shift
    return torch.log_softmax(logits, 1)


@pytest.mark.parametrize("interval, better, expected", [
    ((-0.1, -0.2, -0.01), "lower", "supported"), ((-0.1, -0.2, -0.01), "higher", "contradicted"),
    ((0.1, 0.01, 0.2), "lower", "contradicted"), ((0.1, 0.01, 0.2), "higher", "supported"),
    ((0.0, -0.1, 0.1), "lower", "not resolved"), ((0.0, -0.1, 0.1), "higher", "not resolved")])
def test_the_verdict_follows_the_interval_not_the_estimate(interval, better, expected):
    assert verdict(interval, better) == expected


def test_with_one_seed_per_arm_it_is_the_paired_image_bootstrap():
    targets = torch.randint(0, 10, (400,), generator=torch.Generator().manual_seed(0))
    a, b = _arm(2.0, 1, targets), _arm(2.4, 2, targets)
    h = hierarchical_bootstrap({"a": [a], "b": [b]}, targets, n_boot=400)
    plain = bootstrap({"a": a, "b": b}, targets, n_boot=400)
    # the estimates are the metrics on all images: an independent numpy computation
    nll = float(np.mean(-b.numpy()[np.arange(400), targets.numpy()]) - np.mean(-a.numpy()[np.arange(400),
                                                                                        targets.numpy()]))
    assert h["b - a"]["nll"][0] == pytest.approx(nll, abs=1e-6) == pytest.approx(plain["b - a"]["nll"][0])
    width_h = h["b - a"]["nll"][2] - h["b - a"]["nll"][1]
    width_p = plain["b - a"]["nll"][2] - plain["b - a"]["nll"][1]
    assert width_h == pytest.approx(width_p, rel=0.25)  # the same resampling scheme, other draws


def test_seed_to_seed_differences_widen_the_interval():
    targets = torch.randint(0, 10, (300,), generator=torch.Generator().manual_seed(0))
    steady = [_arm(2.0, s, targets) for s in range(3)]
    varied = [_arm(shift, s + 10, targets) for s, shift in enumerate((1.0, 2.0, 3.0))]  # seeds differ a lot
    h = hierarchical_bootstrap({"steady": steady, "varied": varied}, targets, n_boot=300)
    one = hierarchical_bootstrap({"steady": steady[:1], "varied": varied[1:2]}, targets, n_boot=300)
    span = lambda r: r["varied - steady"]["nll"][2] - r["varied - steady"]["nll"][1]  # noqa: E731
    assert span(h) > 2 * span(one) and h["seeds"] == {"steady": 3, "varied": 3}


def test_bad_bootstrap_arguments_are_named():
    targets = torch.zeros(5, dtype=torch.long)
    lp = torch.log_softmax(torch.zeros(5, 3), 1)
    for kwargs, message in [({"n_boot": 0}, "n_boot"), ({"level": 1.5}, "level"), ({"bins": 0}, "bins"),
                            ({"pairs": [("a", "zz")]}, "not in log_probs")]:
        with pytest.raises(ValueError, match=message):
            bootstrap({"a": lp}, targets, **kwargs)
    with pytest.raises(ValueError, match="for 4 targets"):
        bootstrap({"a": lp}, targets[:4])
    with pytest.raises(ValueError, match="two arms"):
        hierarchical_bootstrap({"a": [lp]}, targets)


@pytest.mark.parametrize("interval, better, margin, expected", [
    ((0.002, 0.001, 0.004), "lower", 0.01, "supported"),      # resolvably worse, but by less than the margin
    ((0.02, 0.015, 0.03), "lower", 0.01, "contradicted"),     # worse than the margin everywhere
    ((0.01, 0.002, 0.02), "lower", 0.01, "not resolved"),
    ((-0.3, -0.4, -0.2), "higher", 0.25, "not resolved"),     # accuracy: 0.2-0.4 points lower, margin 0.25
    ((-0.1, -0.2, 0.1), "higher", 0.25, "supported")])
def test_a_margin_reads_the_claim_as_not_worse_by_more_than_it(interval, better, margin, expected):
    assert verdict(interval, better, margin) == expected


def test_the_hierarchical_mean_with_one_seed_is_the_unit_level_interval():
    rng = np.random.default_rng(0)
    a, b = rng.normal(1.0, 1.0, 2000), rng.normal(1.1, 1.0, 2000)
    h = hierarchical_mean({"a": [a], "b": [b]}, n_boot=2000, paired=False)
    assert h["a"]["mean"][0] == pytest.approx(a.mean())
    assert h["b - a"]["mean"][0] == pytest.approx(b.mean() - a.mean())
    # an independent normal-theory interval: the difference of two means of 2,000 unit-variance values
    half = 1.96 * np.sqrt(2 / 2000)
    low, high = h["b - a"]["mean"][1:]
    assert (high - low) / 2 == pytest.approx(half, rel=0.1)
    assert low < b.mean() - a.mean() < high


def test_pairing_cancels_what_the_units_share_and_seeds_widen_the_interval():
    rng = np.random.default_rng(1)
    difficulty = rng.normal(0, 5, 500)  # the same units (images, batches) in both arms
    plain = [difficulty + rng.normal(0, 0.1, 500) for _ in range(3)]
    smooth = [difficulty - 0.2 + rng.normal(0, 0.1, 500) for _ in range(3)]
    paired = hierarchical_mean({"plain": plain, "smooth": smooth})["smooth - plain"]["mean"]
    unpaired = hierarchical_mean({"plain": plain, "smooth": smooth}, paired=False)["smooth - plain"]["mean"]
    assert verdict(paired) == "supported" and paired[2] - paired[1] < 0.1
    assert verdict(unpaired) == "not resolved"  # the unit-to-unit spread swamps a 0.2 shift unpaired
    # seeds that disagree: with no noise within seeds, the interval is the seeds' spread and nothing narrower
    spread = hierarchical_mean({"a": [np.zeros(50)] * 3, "b": [np.full(50, v) for v in (-1.0, 0.0, 1.0)]})
    low, high = spread["b - a"]["mean"][1:]
    assert low < -0.3 and high > 0.3 and spread["b - a"]["mean"][0] == pytest.approx(0.0)


def test_hierarchical_mean_names_bad_arms():
    with pytest.raises(ValueError, match="two arms"):
        hierarchical_mean({"a": [np.ones(3)]})
    with pytest.raises(ValueError, match="same units"):
        hierarchical_mean({"a": [np.ones(3)], "b": [np.ones(4)]})
    with pytest.raises(ValueError, match="at least one seed"):
        hierarchical_mean({"a": [], "b": [np.ones(4)]})


def test_three_seeds_keep_the_false_verdict_rate_at_most_nominal():
    """No true difference, variance mostly between seeds: a verdict other than 'not resolved' is a false one.
    A percentile bootstrap over 3 seeds gave 20% of them; Student's t with the seed variance keeps it <= 5%."""
    rng = np.random.default_rng(3)
    false, sims = 0, 300
    for _ in range(sims):
        a, b = ([rng.normal(0, 1.0) + rng.normal(0, 0.1, 100) for _ in range(3)] for _ in range(2))
        h = hierarchical_mean({"a": a, "b": b}, n_boot=200, paired=False)
        false += verdict(h["b - a"]["mean"]) != "not resolved"
    assert false / sims <= 0.06


def test_without_unit_noise_the_interval_is_the_t_interval_of_the_seed_means():
    from scipy import stats

    a, b = [np.full(20, v) for v in (1.0, 1.4, 0.9)], [np.full(20, v) for v in (0.5, 0.2, 0.6)]
    ma, mb = np.array([1.0, 1.4, 0.9]), np.array([0.5, 0.2, 0.6])
    half = stats.t.ppf(0.975, 2) * np.sqrt(ma.var(ddof=1) / 3 + mb.var(ddof=1) / 3)
    est, low, high = hierarchical_mean({"a": a, "b": b})["b - a"]["mean"]
    assert est == pytest.approx(mb.mean() - ma.mean())
    assert (low, high) == pytest.approx((est - half, est + half))
    # the same networks in both arms (e.g. 1 and 50 MC samples): the seed variance of the differences
    c = [x - 0.3 for x in a]
    paired = hierarchical_mean({"a": a, "c": c}, paired_seeds=True)["c - a"]["mean"]
    assert paired == pytest.approx((-0.3, -0.3, -0.3))
    one = hierarchical_mean({"a": a[:1], "b": b[:1]})
    assert one["seed_level"] is False and hierarchical_mean({"a": a, "b": b})["seed_level"] is True
