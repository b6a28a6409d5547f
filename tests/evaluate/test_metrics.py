"""ops.evaluate.metrics against deliberately simple references written here (numpy, Python loops)."""
import itertools
import math

import numpy as np
import pytest
import torch

from ops.evaluate.metrics import Metrics, summarize


def reference(probs, targets, bins=10, cutoffs=(0.0, 0.9)):
    """Per-sample loops over numpy arrays, following the written definitions literally."""
    P = probs.astype(np.float64)
    N, C = P.shape
    out = {}
    out["nll"] = np.mean([-math.log(max(P[i, targets[i]], np.finfo(np.float32).tiny)) for i in range(N)])
    pred = [int(np.argmax(P[i])) for i in range(N)]
    conf = [float(P[i].max()) for i in range(N)]
    correct = [pred[i] == targets[i] for i in range(N)]
    out["acc"] = np.mean(correct)
    out["top5"] = np.mean([sum(1 for c in range(C) if P[i, c] > P[i, targets[i]]) < 5 for i in range(N)])
    out["brier"] = np.mean([sum((P[i, c] - (c == targets[i])) ** 2 for c in range(C)) for i in range(N)])
    ece = ece_signed = 0.0
    for b in range(bins):
        members = [i for i in range(N) if b / bins < conf[i] <= (b + 1) / bins or (b == 0 and conf[i] == 0)]
        if members:
            acc_b = np.mean([correct[i] for i in members])
            conf_b = np.mean([conf[i] for i in members])
            ece += len(members) / N * abs(acc_b - conf_b)
            ece_signed += len(members) / N * (conf_b - acc_b)
    out["ece"], out["ece_signed"] = ece, ece_signed
    for c in cutoffs:
        key = f"{c * 100:.6g}"
        certain = [i for i in range(N) if conf[i] > c]
        wrong = [i for i in range(N) if not correct[i]]
        out[f"acc_{key}"] = np.mean([correct[i] for i in certain]) if certain else 0.0
        out[f"freq_{key}"] = len(certain) / N
        out[f"unc_{key}"] = sum(1 for i in wrong if conf[i] <= c) / len(wrong) if wrong else 0.0
        ious = []
        for cls in range(C):
            tp = sum(1 for i in certain if targets[i] == cls and pred[i] == cls)
            fp = sum(1 for i in certain if targets[i] != cls and pred[i] == cls)
            fn = sum(1 for i in certain if targets[i] == cls and pred[i] != cls)
            if any(targets[i] == cls for i in certain):
                ious.append(tp / (tp + fp + fn))
        out[f"iou_{key}"] = np.mean(ious) if ious else 0.0
        if c == 0.0:
            out["iou"] = out[f"iou_{key}"]
    pos = [conf[i] for i in range(N) if correct[i]]
    neg = [conf[i] for i in range(N) if not correct[i]]
    out["auroc"] = (np.mean([(a > b) + 0.5 * (a == b) for a in pos for b in neg]) if pos and neg else math.nan)
    # AURC: error rate among the j most confident, averaged over j; where confidences tie, averaged over every
    # order of the tied predictions (enumerated: the groups are small in these tests).
    order = sorted(range(N), key=lambda i: -conf[i])
    groups = [[i for i in order if conf[i] == v] for v in sorted(set(conf), reverse=True)]
    expected_wrong = []  # expected "is wrong" at each sorted position
    for g in groups:
        perms = list(itertools.permutations(g))
        expected_wrong += [np.mean([not correct[p[j]] for p in perms]) for j in range(len(g))]
    out["aurc"] = np.mean([sum(expected_wrong[:j]) / j for j in range(1, N + 1)])
    return out


def dirichlet(n, c, alpha=0.3, seed=0):
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.full(c, alpha), size=n).astype(np.float32)
    p /= p.sum(1, keepdims=True)
    y = rng.integers(0, c, size=n)
    # Make accuracy non-trivial: half of the labels follow the argmax.
    y[: n // 2] = p[: n // 2].argmax(1)
    return p, y


def assert_matches(ours, ref, tol=1e-6):
    for key, value in ref.items():
        if math.isnan(value):
            assert math.isnan(ours[key]), key
        else:
            assert ours[key] == pytest.approx(value, abs=tol), key


@pytest.mark.parametrize("n,c,alpha", [(300, 10, 0.3), (200, 10, 3.0), (50, 1000, 0.05), (40, 2, 1.0)])
def test_matches_reference_on_dirichlet(n, c, alpha):
    p, y = dirichlet(n, c, alpha, seed=n + c)
    ours = summarize(torch.from_numpy(p), torch.from_numpy(y), cutoffs=(0.0, 0.5, 0.9))
    assert_matches(ours, reference(p, y, cutoffs=(0.0, 0.5, 0.9)))
    assert ours["acc"] == ours["acc_0"] and ours["iou"] == ours["iou_0"] and ours["freq_0"] == 1.0


def test_saturated_predictions_confidence_exactly_one():
    # One-hot predictions: every confidence is exactly 1.0 and must land in the last bin, for counts,
    # accuracies and confidences alike.
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    pred = torch.tensor([0, 1, 2, 1, 1, 0, 0, 2])
    p = torch.nn.functional.one_hot(pred, 3).float()
    ours = summarize(p, y)
    ref = reference(p.numpy(), y.numpy())
    assert_matches(ours, ref)
    assert ours["bin_count"] == [0] * 9 + [8]
    assert ours["acc"] == 5 / 8
    assert ours["ece"] == pytest.approx(3 / 8) and ours["ece_signed"] == pytest.approx(3 / 8)
    assert math.isfinite(ours["nll"]) and ours["nll"] == pytest.approx(3 / 8 * -math.log(np.finfo(np.float32).tiny))
    assert all(math.isnan(a) for a in ours["bin_acc"][:9])  # empty bins are NaN, not zero accuracy


def test_bin_edges_are_left_open():
    # A confidence exactly on an edge belongs to the lower bin (float64, so that 0.6 is the edge 6/10).
    p = torch.tensor([[0.5, 0.5], [0.6, 0.4], [0.7, 0.3], [1.0, 0.0]], dtype=torch.float64)
    y = torch.tensor([0, 0, 1, 0])
    ours = summarize(p, y, bins=10)
    assert ours["bin_count"] == [0, 0, 0, 0, 1, 1, 1, 0, 0, 1]
    assert_matches(ours, reference(p.numpy(), y.numpy()))


def test_top5_counts_ties_for_the_label():
    p = torch.full((2, 8), 1 / 8)  # all tied: the label is among the top 5
    p2 = torch.tensor([[0.3, 0.2, 0.2, 0.1, 0.1, 0.05, 0.05, 0.0]])
    assert summarize(p, torch.tensor([7, 0]))["top5"] == 1.0
    assert summarize(p2, torch.tensor([4]))["top5"] == 1.0  # 4 classes strictly above 0.1
    assert summarize(p2, torch.tensor([5]))["top5"] == 0.0  # 5 classes strictly above 0.05


def test_single_class():
    p = torch.ones(6, 1)
    y = torch.zeros(6, dtype=torch.long)
    ours = summarize(p, y)
    assert_matches(ours, reference(p.numpy(), y.numpy()))
    assert ours["acc"] == 1.0 and ours["nll"] == 0.0 and ours["ece"] == 0.0 and math.isnan(ours["auroc"])


def test_accumulated_over_batches_equals_one_shot():
    p, y = dirichlet(500, 20, 0.5, seed=3)
    p, y = torch.from_numpy(p), torch.from_numpy(y)
    one = summarize(p, y)
    acc = Metrics(20)
    for i in range(0, 500, 64):
        acc.update(p[i:i + 64], y[i:i + 64])
    many = acc.compute()
    for key in one:
        if isinstance(one[key], float) and not math.isnan(one[key]):
            assert many[key] == pytest.approx(one[key], abs=1e-12), key
        else:
            assert many[key] == one[key] or key.startswith("bin_"), key


def test_stochastic_metrics():
    rng = np.random.default_rng(1)
    samples = torch.from_numpy(rng.dirichlet(np.ones(4), size=(5, 30)).astype(np.float32))  # (S, N, C)
    samples /= samples.sum(-1, keepdim=True)
    mean = samples.mean(0)
    y = torch.from_numpy(rng.integers(0, 4, 30))
    out = summarize(mean, y, samples=samples)

    def H(q):
        return -sum(v * math.log(v) for v in q if v > 0)

    pe = np.mean([H(mean[i].tolist()) for i in range(30)])
    ee = np.mean([np.mean([H(samples[s, i].tolist()) for s in range(5)]) for i in range(30)])
    assert out["entropy"] == pytest.approx(pe, rel=1e-5)
    assert out["expected_entropy"] == pytest.approx(ee, rel=1e-5)
    assert out["mutual_info"] == pytest.approx(pe - ee, rel=1e-4) and out["mutual_info"] >= 0
    assert "mutual_info" not in summarize(mean, y)


def test_ece_agrees_with_torchmetrics_where_binning_coincides():
    # torchmetrics bins with bucketize(conf, linspace(0, 1, B+1), right=True) - 1: bin b = [b/B, (b+1)/B),
    # i.e. closed on the left, unlike ours (open on the left). With confidences away from the bin edges the two
    # coincide; on an edge (and at conf == 1.0, where torchmetrics clamps into the last bin) they can differ.
    from torchmetrics.functional.classification import multiclass_calibration_error

    p, y = dirichlet(400, 10, 0.4, seed=7)
    p, y = torch.from_numpy(p), torch.from_numpy(y)
    conf = p.max(1).values
    assert ((conf * 10 - (conf * 10).round()).abs() > 1e-4).all()  # no confidence on an edge
    theirs = multiclass_calibration_error(p, y, num_classes=10, n_bins=10, norm="l1").item()
    assert summarize(p, y)["ece"] == pytest.approx(theirs, abs=1e-6)


@pytest.mark.parametrize("probs,targets,match", [
    (torch.tensor([[0.5, float("nan")]]), torch.tensor([0]), "NaN or inf"),
    (torch.tensor([[0.5, float("inf")]]), torch.tensor([0]), "NaN or inf"),
    (torch.tensor([[2.0, -1.0]]), torch.tensor([0]), "negative"),
    (torch.tensor([[0.7, 0.7]]), torch.tensor([0]), "sum to 1"),
    (torch.tensor([[0.5, 0.5]]), torch.tensor([2]), "out of range"),
    (torch.tensor([[0.5, 0.5]]), torch.tensor([-1]), "out of range"),
    (torch.tensor([[0.5, 0.5], [0.5, 0.5]]), torch.tensor([0]), "shape"),
    (torch.tensor([0.5, 0.5]), torch.tensor([0]), "shape"),
    (torch.tensor([[0.5, 0.5]]), torch.tensor([0.0]), "integer"),
])
def test_bad_inputs_raise(probs, targets, match):
    with pytest.raises(ValueError, match=match):
        summarize(probs, targets)


def test_accumulator_rejects_wrong_class_count():
    with pytest.raises(ValueError, match="classes"):
        Metrics(3).update(torch.full((2, 4), 0.25), torch.tensor([0, 1]))


def test_nll_from_log_probs_has_no_floor():
    # A confident wrong prediction: p[y] = e^-200 underflows float32, so probs alone would floor it at ~87.3.
    log_probs = torch.log_softmax(torch.tensor([[200.0, 0.0], [0.0, 0.0]]), dim=1)
    y = torch.tensor([1, 0])
    out = summarize(log_probs.exp(), y, log_probs=log_probs)
    assert out["nll"] == pytest.approx((200.0 + math.log(2)) / 2, rel=1e-6)
    assert summarize(log_probs.exp(), y)["nll"] < 45  # the floored value, for contrast
    with pytest.raises(ValueError, match="different predictions"):
        summarize(log_probs.exp(), y, log_probs=log_probs.flip(1))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_probabilities_are_accepted(dtype):
    # A softmax computed in bf16 (as under autocast): rows sum to 1 only within bf16's rounding (~2e-3 here).
    logits = torch.randn(200, 10, generator=torch.Generator().manual_seed(0)) * 3
    y = logits.argmax(1)
    p_half = torch.softmax(logits.to(dtype), dim=1)
    if dtype == torch.bfloat16:
        assert ((p_half.float().sum(1) - 1).abs() > 1e-3).any()  # what float32's tolerance would refuse
    out = summarize(p_half, y)
    assert out["acc"] >= 0.99  # rounding may tie the top two classes of a few rows
    assert out["nll"] == pytest.approx(summarize(torch.softmax(logits, 1), y)["nll"], rel=0.05)
    with pytest.raises(ValueError, match="sum to 1"):  # still not any tensor: a row off by 10% is refused
        summarize(p_half.float() * 1.1, y)


@pytest.mark.parametrize("make,match", [
    (lambda s: s.index_fill(2, torch.tensor([0]), float("nan")), "NaN"),
    (lambda s: s * torch.tensor([-1.0, 1, 1, 1]), "negative"),
    (lambda s: s.flip(1), "do not belong"),  # other images' samples
    (lambda s: s[:, :, :3], "shape"),
])
def test_bad_samples_raise(make, match):
    rng = np.random.default_rng(2)
    samples = torch.from_numpy(rng.dirichlet(np.ones(4), size=(3, 6)).astype(np.float32))
    samples /= samples.sum(-1, keepdim=True)
    y = torch.zeros(6, dtype=torch.long)
    with pytest.raises(ValueError, match=match):
        summarize(samples.mean(0), y, samples=make(samples))


def test_mutual_information_is_never_negative():
    # Identical samples: the mutual information is 0 up to rounding, never below.
    p, y = dirichlet(200, 10, 0.2, seed=9)
    samples = torch.from_numpy(p).expand(5, -1, -1)
    assert summarize(torch.from_numpy(p), torch.from_numpy(y), samples=samples)["mutual_info"] >= 0


def test_empty_inputs_say_so():
    with pytest.raises(ValueError, match="empty"):
        summarize(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))
    m = Metrics(3).update(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))  # an empty batch is skipped
    with pytest.raises(ValueError, match="only with empty batches"):
        m.compute()
    m.update(torch.tensor([[0.2, 0.3, 0.5]]), torch.tensor([2]))
    assert m.compute()["n"] == 1


def test_aurc_does_not_depend_on_the_order_of_tied_predictions():
    conf_levels = torch.tensor([0.9, 0.9, 0.9, 0.6, 0.6, 0.4])
    p = torch.stack([conf_levels, 1 - conf_levels], 1)
    y = torch.tensor([0, 1, 0, 1, 0, 1])  # wrong where the label is 1
    first = summarize(p, y)["aurc"]
    for seed in range(5):
        perm = torch.randperm(6, generator=torch.Generator().manual_seed(seed))
        assert summarize(p[perm], y[perm])["aurc"] == pytest.approx(first, abs=1e-12)
