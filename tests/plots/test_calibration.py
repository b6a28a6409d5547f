"""ops.plots.calibration draws headless (Agg) and labels what it shows: the ECE of each predictive, the detection
metrics of the scores, the axes' quantities."""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from ops.evaluate.calibration import apply_temperature, fit_temperature  # noqa: E402
from ops.evaluate.metrics import summarize  # noqa: E402
from ops.evaluate.ood import detection_metrics  # noqa: E402
from ops.plots import calibration  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def _overconfident(n=600, c=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    targets = torch.randint(0, c, (n,), generator=g)
    logits = torch.randn(n, c, generator=g) + 1.5 * torch.nn.functional.one_hot(targets, c)
    return 4 * logits, targets  # sharpened: over-confident


def test_reliability_before_after_draws_both_with_their_ece_in_the_legend(tmp_path):
    logits, targets = _overconfident()
    before, after = torch.softmax(logits, -1), apply_temperature(logits, fit_temperature(logits, targets))
    ax = calibration.reliability_before_after(before, after, targets, bins=10)
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    for probs, label in zip((before, after), calibration.BEFORE_AFTER):
        ece = summarize(probs, targets, bins=10)["ece"]
        assert f"{label}: ECE {100 * ece:.2f}%" in legend
    assert "perfect calibration" in legend
    assert ax.get_xlabel() == "Confidence (%)" and ax.get_ylabel() == "Accuracy (%)"
    assert "10 bins" in ax.get_title()
    bars = [p for c in ax.containers for p in c]
    assert 0 < len(bars) <= 20 and all(0 <= b.get_height() <= 100 for b in bars)
    ax.figure.savefig(tmp_path / "reliability.png")
    assert (tmp_path / "reliability.png").stat().st_size > 0


def test_reliability_before_after_leaves_empty_bins_empty_and_uses_the_given_axes():
    targets = np.array([0, 1, 0, 1])
    confident = np.array([[0.95, 0.05], [0.05, 0.95], [0.95, 0.05], [0.95, 0.05]])  # every prediction in one bin
    fig, axes = plt.subplots(1, 2)
    ax = calibration.reliability_before_after(confident, confident, targets, bins=15, ax=axes[1],
                                              labels=("plain", "scaled"), title="model")
    assert ax is axes[1] and ax.figure is fig and ax.get_title() == "model"
    heights = [p.get_height() for c in ax.containers for p in c]
    assert heights == [75.0, 75.0]  # one filled bin per predictive, no zero-height bars for the empty ones


def test_score_histograms_title_has_the_detection_metrics():
    rng = np.random.default_rng(0)
    score_in, score_out = rng.normal(1, 1, 500), rng.normal(-1, 1, 300)
    ax = calibration.score_histograms(score_in, score_out, "msp")
    d = detection_metrics(score_in, score_out)
    assert ax.get_title() == f"msp: AUROC {100 * d['auroc']:.1f}%, FPR95 {100 * d['fpr95']:.1f}%"
    assert ax.get_xlabel().startswith("msp") and ax.get_ylabel() == "Density"
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["in-distribution (500)", "out-of-distribution (300)"]
    densities = [sum(p.get_height() * p.get_width() for p in c) for c in ax.containers]
    assert densities == pytest.approx([1.0, 1.0])  # each set normalised on its own


def test_score_histograms_takes_tensors_and_constant_scores():
    ax = calibration.score_histograms(torch.zeros(10), torch.zeros(5), "neg_mi")  # S = 1: mutual information 0
    assert "AUROC 50.0%" in ax.get_title()
    with pytest.raises(ValueError, match="score_out"):
        calibration.score_histograms(np.ones(3), np.array([np.nan]), "msp")
