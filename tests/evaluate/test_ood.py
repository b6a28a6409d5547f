"""OOD detection metrics against scikit-learn (roc_auc_score, average_precision_score, roc_curve) and the MC
ensemble scores against numpy / scipy formulas; ties, tiny inputs and bad inputs."""
import math

import numpy as np
import pytest
import torch
from scipy.special import logsumexp
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from ops.evaluate.ood import average_precision, detection_metrics, fpr_at_tpr, scores


def sklearn_metrics(a, b):
    """The reference: in-distribution positive; FPR95 = fpr at the first (largest) threshold of an
    intermediate-keeping ROC curve whose tpr reaches 0.95."""
    s = np.r_[a, b]
    y = np.r_[np.ones(len(a)), np.zeros(len(b))]
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    return {"auroc": roc_auc_score(y, s), "aupr_in": average_precision_score(y, s),
            "aupr_out": average_precision_score(1 - y, -s), "fpr95": fpr[np.argmax(tpr >= 0.95)]}


def check(a, b):
    ours, theirs = detection_metrics(a, b), sklearn_metrics(np.asarray(a, float), np.asarray(b, float))
    assert set(ours) == {"auroc", "aupr_in", "aupr_out", "fpr95"}
    for key in theirs:
        assert ours[key] == pytest.approx(theirs[key], abs=1e-12), key
    return ours


@pytest.mark.parametrize("n, m, seed", [(200, 300, 0), (57, 13, 1), (20, 20, 2), (1000, 50, 3)])
def test_continuous_scores_match_sklearn(n, m, seed):
    rng = np.random.default_rng(seed)
    check(rng.normal(1, 1, n), rng.normal(0, 1, m))


@pytest.mark.parametrize("n", list(range(1, 45)))
def test_ties_and_every_rounding_of_the_95_percent_cut(n):
    rng = np.random.default_rng(n)
    check(rng.integers(0, 4, n).astype(float), rng.integers(0, 4, 2 * n + 1).astype(float))


def test_tiny_and_extreme_inputs():
    assert check([1.0], [0.0]) == {"auroc": 1.0, "aupr_in": 1.0, "aupr_out": 1.0, "fpr95": 0.0}
    tie = check([0.5], [0.5])
    assert tie["auroc"] == 0.5 and tie["fpr95"] == 1.0 and tie["aupr_in"] == 0.5
    assert check([0.0, 0.0], [1.0, 2.0])["auroc"] == 0.0
    assert check(torch.tensor([3.0, 2.0, 1.0]), torch.tensor([2.0]))["auroc"] == 0.5  # 1 + 1/2 + 0 of 3


def test_fpr95_uses_the_largest_threshold_keeping_95_percent():
    score_in = np.arange(1.0, 21.0)  # 20 in-distribution scores: keep 19, threshold 2
    assert fpr_at_tpr(score_in, np.array([1.0, 2.0, 2.5, 30.0])) == 0.75
    assert fpr_at_tpr(np.arange(1.0, 22.0), np.array([2.0])) == 1.0  # 21 scores: ceil(19.95) = 20 kept, t = 2
    assert fpr_at_tpr(np.r_[np.ones(5), np.full(15, 9.0)], np.array([1.0])) == 1.0  # a tie group is kept whole
    assert fpr_at_tpr(score_in, np.array([15.0]), tpr=0.5) == 1.0 and fpr_at_tpr(score_in, [16.0], tpr=0.25) == 1.0
    with pytest.raises(ValueError, match="tpr"):
        fpr_at_tpr(score_in, score_in, tpr=0)


def test_average_precision_matches_sklearn_with_ties():
    rng = np.random.default_rng(9)
    s, y = rng.integers(0, 6, 80).astype(float), rng.random(80) < 0.3
    assert average_precision(s, y) == pytest.approx(average_precision_score(y, s), abs=1e-12)


@pytest.mark.parametrize("a, b, match", [
    ([], [1.0], "score_in is empty"),
    ([1.0], [], "score_out is empty"),
    ([[1.0, 2.0]], [1.0], "1-D"),
    ([1.0, math.nan], [1.0], "NaN or inf"),
    ([1.0], [math.inf], "NaN or inf"),
    (["a"], [1.0], "numbers"),
])
def test_bad_scores_are_named(a, b, match):
    with pytest.raises(ValueError, match=match):
        detection_metrics(a, b)


def ensemble(s=4, n=6, c=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = 2 * torch.randn(s, n, c, generator=g, dtype=torch.float64)
    return z, torch.softmax(z, -1)


def test_scores_match_numpy_formulas():
    z, p = ensemble()
    out = scores(p, z)
    pn, zn = p.numpy(), z.numpy()
    mean = pn.mean(0)
    entropy = -(mean * np.log(mean)).sum(-1)
    expected = -(pn * np.log(pn)).sum(-1).mean(0)
    assert np.allclose(out["msp"].numpy(), mean.max(-1), atol=1e-14)
    assert np.allclose(out["neg_entropy"].numpy(), -entropy, atol=1e-12)
    assert np.allclose(out["neg_mi"].numpy(), -(entropy - expected), atol=1e-12)
    assert np.allclose(out["energy"].numpy(), logsumexp(zn.mean(0), axis=-1), atol=1e-12)
    assert (out["neg_mi"] <= 0).all() and all(v.shape == (6,) for v in out.values())
    assert set(scores(p)) == {"msp", "neg_entropy", "neg_mi"}  # no energy without logits


def test_one_sample_has_no_mutual_information_and_agreement_none():
    z, p = ensemble(s=1)
    single = scores(p[0], z[0])
    assert torch.equal(single["neg_mi"], torch.zeros(6, dtype=torch.float64))
    assert torch.allclose(single["msp"], scores(p)["msp"])
    same = scores(p.expand(3, -1, -1))
    assert torch.allclose(same["neg_mi"], torch.zeros(6, dtype=torch.float64), atol=1e-12)
    with_zeros = scores(torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]]))  # 0 log 0 = 0
    assert with_zeros["neg_mi"].item() == pytest.approx(-math.log(2)) and with_zeros["msp"].item() == 0.5


def test_scores_separate_confident_from_uniform_predictions():
    confident = torch.softmax(torch.tensor([[[8.0, 0, 0]] * 10] * 2), -1)
    uniform = torch.full((2, 10, 3), 1 / 3)
    for key in ("msp", "neg_entropy"):
        assert detection_metrics(scores(confident)[key], scores(uniform)[key])["auroc"] == 1.0


def test_bad_ensembles_are_named():
    z, p = ensemble()
    with pytest.raises(ValueError, match=r"\(S, N, C\)"):
        scores(p[0, 0])
    with pytest.raises(ValueError, match=r"\(S, N, C\)"):
        scores(torch.zeros(0, 2, 3))
    with pytest.raises(ValueError, match="negative values.*not logits"):
        scores(z)  # logits passed as probabilities
    with pytest.raises(ValueError, match="sum to 1"):
        scores(2 * p)
    with pytest.raises(ValueError, match="shape of probs_samples"):
        scores(p, z[:2])
    with pytest.raises(ValueError, match="not the softmax"):
        scores(p, z + torch.randn(z.shape, dtype=torch.float64))
    with pytest.raises(ValueError, match="NaN or inf"):
        scores(p, torch.full_like(z, math.nan))
    with pytest.raises(ValueError, match="floating point"):
        scores(torch.ones(1, 2, 1, dtype=torch.long))
