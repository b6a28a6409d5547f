"""Intervals over seeds and images, and the verdict a claim gets from its interval."""
import numpy as np
import pytest
import torch

from ops.evaluate.intervals import bootstrap, hierarchical_bootstrap, verdict


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
