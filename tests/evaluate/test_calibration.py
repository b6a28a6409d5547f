"""Temperature scaling against scipy's bounded minimiser, cross-fitting that never scores a fitted image, and the
adaptive / classwise ECE against brute-force numpy loops (the binned ECE against torchmetrics)."""
import math

import numpy as np
import pytest
import torch
from scipy.optimize import minimize_scalar
from scipy.special import logsumexp

from ops.evaluate import calibration
from ops.evaluate.calibration import apply_temperature, cross_fit, fit_temperature, fold_assignment
from ops.evaluate.metrics import Metrics, adaptive_ece, classwise_ece, summarize


def make_logits(n=300, c=5, s=None, scale=3.0, seed=0):
    """Over-confident logits (true temperature `scale`) with labels drawn from the calibrated softmax."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, c, generator=g, dtype=torch.float64) * 1.5
    y = torch.multinomial(torch.softmax(base, 1), 1, generator=g).squeeze(1)
    if s is None:
        return base * scale, y
    return (base + 0.7 * torch.randn(s, n, c, generator=g, dtype=torch.float64)) * scale, y


def scipy_temperature(z, y):
    """The reference: scipy's bounded Brent on log T of the numpy NLL of the (mean) predictive."""
    z = z.numpy() if z.ndim == 3 else z.numpy()[None]
    y = y.numpy()

    def nll(u):
        lp = z / math.exp(u)
        lp = lp - logsumexp(lp, axis=-1, keepdims=True)
        lp = logsumexp(lp, axis=0) - math.log(z.shape[0])
        return -lp[np.arange(len(y)), y].mean()

    res = minimize_scalar(nll, bounds=(math.log(1e-2), math.log(1e2)), method="bounded",
                          options={"xatol": 1e-10, "maxiter": 1000})
    return math.exp(res.x), nll


@pytest.mark.parametrize("s", [None, 1, 4])
def test_temperature_matches_scipy(s):
    z, y = make_logits(s=s)
    ours = fit_temperature(z, y)
    theirs, nll = scipy_temperature(z, y)
    assert ours == pytest.approx(theirs, rel=1e-5)
    assert nll(math.log(ours)) <= nll(math.log(theirs)) + 1e-12


def test_temperature_recovers_the_scale():
    z, y = make_logits(n=20000, scale=2.5, seed=1)
    assert fit_temperature(z, y) == pytest.approx(2.5, rel=0.06)
    assert fit_temperature(z / 2.5, y) == pytest.approx(1.0, rel=0.06)
    assert fit_temperature(z.float(), y) == pytest.approx(fit_temperature(z, y), rel=1e-5)  # fp32 in: same fit


def test_separable_predictions_go_to_the_lower_bound():
    z = torch.tensor([[5.0, 0.0], [0.0, 5.0]])
    assert fit_temperature(z, torch.tensor([0, 1])) == pytest.approx(1e-2)
    assert fit_temperature(z, torch.tensor([0, 1]), bounds=(0.5, 4)) == pytest.approx(0.5)
    assert fit_temperature(z, torch.tensor([1, 0])) == pytest.approx(1e2)  # all wrong: as flat as allowed


def test_apply_temperature():
    z, _ = make_logits(n=7, s=3)
    p = apply_temperature(z, 2.0)
    assert torch.allclose(p, torch.softmax(z / 2.0, -1).mean(0), atol=1e-14) and p.dtype == torch.float64
    assert torch.allclose(apply_temperature(z, 2.0, log=True).exp(), p, atol=1e-14)
    single = apply_temperature(z[0].float(), 0.5)
    assert single.dtype == torch.float32 and torch.allclose(single, torch.softmax(z[0].float() * 2, -1), atol=1e-6)
    huge = apply_temperature(torch.tensor([[0.0, 2000.0]], dtype=torch.float64), 1.0, log=True)
    assert huge[0, 0].item() == pytest.approx(-2000.0)  # finite log-probability where p underflows
    assert torch.allclose(apply_temperature(np.zeros((2, 4)), 1.0), torch.full((2, 4), 0.25, dtype=torch.float64))


@pytest.mark.parametrize("logits, targets, match", [
    (torch.zeros(4), torch.zeros(4, dtype=torch.long), r"\(N, C\) or \(S, N, C\)"),
    (torch.zeros(1, 1, 4, 3), torch.zeros(4, dtype=torch.long), r"\(N, C\) or \(S, N, C\)"),
    (torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), "empty"),
    (torch.zeros(0, 2, 3), torch.zeros(2, dtype=torch.long), "empty"),
    (torch.zeros(2, 1), torch.zeros(2, dtype=torch.long), "at least 2 classes"),
    (torch.tensor([[0.0, math.nan]]), torch.tensor([0]), "NaN or inf"),
    (torch.tensor([[0.0, math.inf]]), torch.tensor([0]), "NaN or inf"),
    (torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, dtype=torch.long), "floating point"),
    (torch.zeros(2, 3), torch.zeros(3, dtype=torch.long), r"shape \(2,\)"),
    (torch.zeros(2, 3), torch.zeros(2), "integer class labels"),
    (torch.zeros(2, 3), torch.tensor([0, 3]), r"out of range.*\[0, 2\]"),
    (torch.zeros(2, 3), torch.tensor([-1, 0]), "out of range"),
    ("logits", torch.zeros(2, dtype=torch.long), "tensor or an array"),
])
def test_bad_inputs_are_named(logits, targets, match):
    with pytest.raises(ValueError, match=match):
        fit_temperature(logits, targets)


def test_bad_temperatures_and_bounds():
    for T in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="temperature must be"):
            apply_temperature(torch.zeros(2, 3), T)
    for bounds in ((0, 1), (2, 1), (1, math.inf)):
        with pytest.raises(ValueError, match="bounds"):
            fit_temperature(torch.zeros(2, 3), torch.tensor([0, 1]), bounds=bounds)


def test_folds_are_a_seeded_balanced_partition():
    fold = fold_assignment(11, 2, seed=3)
    assert sorted(torch.bincount(fold).tolist()) == [5, 6]
    assert torch.equal(fold, fold_assignment(11, 2, seed=3))
    assert not torch.equal(fold_assignment(100, 2, seed=0), fold_assignment(100, 2, seed=1))
    assert sorted(torch.bincount(fold_assignment(10, 3)).tolist()) == [3, 3, 4]
    with pytest.raises(ValueError, match="folds must be >= 2"):
        fold_assignment(10, 1)
    with pytest.raises(ValueError, match="non-empty folds"):
        fold_assignment(1, 2)


@pytest.mark.parametrize("s", [None, 3])
def test_cross_fit_never_scores_a_fitted_image(s):
    z, y = make_logits(n=101, s=s, seed=2)
    out = cross_fit(z, y, folds=2, seed=5)
    zz = z if z.ndim == 3 else z[None]
    assert len(out.temperatures) == 2 and out.probs.shape == (101, 5) and out.fold.shape == (101,)
    for k in range(2):
        held = out.fold == k
        assert out.temperatures[k] == fit_temperature(zz[:, ~held], y[~held])  # fitted on the other fold only
        assert torch.allclose(out.probs[held], apply_temperature(zz[:, held], out.temperatures[k]), atol=1e-15)
    assert torch.allclose(out.probs.sum(1), torch.ones(101, dtype=torch.float64))
    assert torch.allclose(out.log_probs.exp(), out.probs)
    # The labels of fold 0 never reach the temperature that scores fold 0.
    y2 = y.clone()
    y2[out.fold == 0] = (y2[out.fold == 0] + 1) % 5
    again = cross_fit(z, y2, folds=2, seed=5)
    assert again.temperatures[0] == out.temperatures[0] and again.temperatures[1] != out.temperatures[1]
    assert calibration.cross_fitted_temperature_scaling is cross_fit


def test_cross_fit_tiny_and_float32():
    out = cross_fit(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0]))
    assert out.probs.dtype == torch.float32 and out.fold.tolist() in ([0, 1], [1, 0])
    with pytest.raises(ValueError, match="non-empty folds"):
        cross_fit(torch.zeros(1, 3), torch.tensor([0]))


def test_cross_fitted_calibration_helps_an_overconfident_model():
    z, y = make_logits(n=4000, scale=3.0, seed=4)
    raw = summarize(torch.softmax(z, 1), y)
    fitted = cross_fit(z, y)
    cal = summarize(fitted.probs, y, log_probs=fitted.log_probs)
    assert cal["nll"] < raw["nll"] and cal["ece"] < raw["ece"] / 2
    assert all(t == pytest.approx(3.0, rel=0.15) for t in fitted.temperatures)


# --- ECE variants ------------------------------------------------------------------------------------------------

def brute_adaptive(conf, correct, bins):
    """Sort, average correctness over equal confidences (O(N^2)), array_split, sum |acc - conf| weighted."""
    conf, correct = np.asarray(conf, np.float64), np.asarray(correct, np.float64)
    acc = np.array([correct[conf == c].mean() for c in conf])
    order = np.argsort(conf, kind="stable")
    total = 0.0
    for part in np.array_split(order, bins):
        if len(part):
            total += len(part) / len(conf) * abs(acc[part].mean() - conf[part].mean())
    return total


def brute_classwise(p, y, bins):
    p, y = np.asarray(p, np.float64), np.asarray(y)
    N, C = p.shape
    total = 0.0
    for c in range(C):
        for b in range(bins):
            lo, hi = b / bins, (b + 1) / bins
            inside = (p[:, c] > lo) & (p[:, c] <= hi) | ((p[:, c] == 0) if b == 0 else False)
            if inside.any():
                total += inside.sum() / N * abs((y[inside] == c).mean() - p[inside, c].mean())
    return total / C


@pytest.mark.parametrize("n, bins", [(1, 15), (7, 15), (15, 15), (200, 15), (203, 10), (50, 1)])
def test_adaptive_ece_matches_brute_force(n, bins):
    g = torch.Generator().manual_seed(n)
    conf = torch.rand(n, generator=g, dtype=torch.float64)
    correct = torch.rand(n, generator=g, dtype=torch.float64) < conf
    assert adaptive_ece(conf, correct, bins) == pytest.approx(brute_adaptive(conf, correct, bins), abs=1e-12)


def test_adaptive_ece_with_ties_is_order_free():
    g = torch.Generator().manual_seed(0)
    conf = torch.randint(1, 5, (60,), generator=g).double() / 5  # 4 distinct values: bins cut through ties
    correct = torch.rand(60, generator=g, dtype=torch.float64) < conf
    value = adaptive_ece(conf, correct, 15)
    assert value == pytest.approx(brute_adaptive(conf, correct, 15), abs=1e-12)
    for seed in range(3):
        perm = torch.randperm(60, generator=torch.Generator().manual_seed(seed))
        assert adaptive_ece(conf[perm], correct[perm], 15) == pytest.approx(value, abs=1e-12)
    assert math.isnan(adaptive_ece(torch.zeros(0), torch.zeros(0, dtype=torch.bool)))
    with pytest.raises(ValueError, match="bins"):
        adaptive_ece(conf, correct, 0)
    with pytest.raises(ValueError, match=r"shape \(N,\)"):
        adaptive_ece(conf, correct[:3])


@pytest.mark.parametrize("n, c, bins", [(1, 2, 15), (9, 3, 15), (300, 10, 15), (300, 4, 5)])
def test_classwise_ece_matches_brute_force(n, c, bins):
    g = torch.Generator().manual_seed(n + c)
    p = torch.softmax(3 * torch.randn(n, c, generator=g, dtype=torch.float64), 1)
    y = torch.randint(0, c, (n,), generator=g)
    assert classwise_ece(p, y, bins) == pytest.approx(brute_classwise(p, y, bins), abs=1e-12)


def test_classwise_ece_on_bin_edges_and_zeros():
    p = torch.tensor([[0.2, 0.8, 0.0], [0.4, 0.6, 0.0], [1.0, 0.0, 0.0], [0.0, 0.4, 0.6]], dtype=torch.float64)
    y = torch.tensor([1, 0, 0, 2])
    assert classwise_ece(p, y, 5) == pytest.approx(brute_classwise(p, y, 5), abs=1e-12)
    assert classwise_ece(torch.eye(3), torch.arange(3)) == 0.0
    with pytest.raises(ValueError, match="empty"):
        classwise_ece(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match="out of range"):
        classwise_ece(torch.eye(3), torch.tensor([0, 1, 3]))


def test_metrics_name_the_variants_and_stream_them():
    g = torch.Generator().manual_seed(7)
    p = torch.softmax(2 * torch.randn(257, 6, generator=g), 1)
    y = torch.randint(0, 6, (257,), generator=g)
    one = summarize(p, y)
    conf, pred = p.max(1)
    assert one["ece_adaptive"] == pytest.approx(brute_adaptive(conf, pred == y, 15), abs=1e-9)
    assert one["ece_classwise"] == pytest.approx(brute_classwise(p, y, 15), abs=1e-9)
    acc = Metrics(6)
    for part in torch.arange(257).split(50):
        acc.update(p[part], y[part])
    many = acc.compute()
    for key in ("ece", "ece_adaptive", "ece_classwise"):
        assert many[key] == pytest.approx(one[key], abs=1e-12)
    other = summarize(p, y, adaptive_bins=4, classwise_bins=3)
    assert other["ece_adaptive"] == pytest.approx(adaptive_ece(conf, pred == y, 4), abs=1e-12)
    assert other["ece_classwise"] == pytest.approx(classwise_ece(p, y, 3), abs=1e-12)
    assert other["ece"] == one["ece"]  # the binned ECE keeps its own bins
    with pytest.raises(ValueError, match="classwise_bins"):
        Metrics(6, classwise_bins=0)


def test_binned_ece_still_matches_torchmetrics():
    from torchmetrics.functional.classification import multiclass_calibration_error

    g = torch.Generator().manual_seed(3)
    p = torch.softmax(2 * torch.randn(500, 4, generator=g), 1)
    y = torch.randint(0, 4, (500,), generator=g)
    theirs = multiclass_calibration_error(p, y, num_classes=4, n_bins=15, norm="l1").item()
    assert summarize(p, y, bins=15)["ece"] == pytest.approx(theirs, abs=1e-6)
