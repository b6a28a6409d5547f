"""The seven claims of the original that `make paper` checks: their words, the arms they compare, and the
original's own CIFAR-100 figures where its README gives them.

Each claim's verdict comes from the 95% interval of a paired difference "claimed arm - other arm" over seeds and
test units (ops.evaluate.intervals.verdict): supported, contradicted or not resolved. A claim that one arm
*matches* another is read as "not worse by more than a margin" (settings.FULL["margins"]).
"""
from dataclasses import dataclass


@dataclass(frozen=True)
class Claim:
    number: int
    key: str          # the stage that measures it (settings.STAGES)
    title: str
    words: str        # the claim in the original's words (its README), or the summary of them
    paper: str        # the original's CIFAR-100 value for the same quantity, labelled as such


CLAIMS = (
    Claim(1, "sweep", "MC dropout + smoothing with 2 samples matches MC dropout with 50",
          "\"The predictive performance of 'MC dropout + spatial smoothing' with an ensemble size of two is "
          "comparable to that of the vanilla MC dropout with an ensemble size of fifty.\" And smoothing is better "
          "at every ensemble size.",
          "Paper (CIFAR-100, ResNet-18, the original README's figure): NLL 1.02 -> 0.85 for MC dropout with 1 -> "
          "50 samples; 0.855 for MC dropout + smoothing with 2."),
    Claim(2, "deterministic", "Smoothing helps deterministic networks too",
          "\"Spatial smoothing also can be applied to canonical deterministic NNs to improve the performances.\"",
          "Paper: shown for ImageNet (its figure 8); no CIFAR-100 number in the original README."),
    Claim(3, "ensembles", "Blurs behave like ensembles",
          "The paper's title: spatial smoothing ensembles neighbouring feature-map points, so MC dropout + "
          "smoothing with few samples behaves like a larger ensemble. Compared here with deep ensembles of "
          "1-3 independently trained deterministic networks (the ensembles of 2 are the 3 pairs of the 3 seeds; "
          "they share members, so their spread understates training noise, and the one ensemble of all 3 has "
          "no seed level).",
          "Paper: no deep-ensemble number in the original README (its figures compare MC dropout sizes)."),
    Claim(4, "robustness", "Smoothing improves robustness to corruptions",
          "\"Spatial smoothing improves the predictive performance for corrupted data. Moreover, it undoubtedly "
          "helps in predicting reliable uncertainty.\" (CIFAR-100-C: 15 corruptions x 5 severities)",
          "Paper (CIFAR-100-C figure): lower NLL and ECE and higher accuracy at every severity with smoothing; "
          "the README gives no mCE number."),
    Claim(5, "featuremaps", "Smoothing steadies and low-passes the feature maps",
          "Spatial smoothing ensembles neighbouring points of the feature maps: it lowers their variance across "
          "MC samples and damps their high frequencies (the Fourier profile).",
          "Paper: a figure of feature-map variance and Fourier profiles; no number in the original README."),
    Claim(6, "landscapes", "GAP and smoothing flatten and steady the loss landscape",
          "\"The loss landscape [of the MLP classifier] is chaotic and irregular ... GAP ... flattens and "
          "stabilizes the loss landscape. Likewise ... spatial smoothing also flattens and stabilizes the loss "
          "landscape.\"",
          "Paper: three GIFs (MLP head, GAP head, GAP + smoothing) of CIFAR-100 ResNet-18 landscapes; no number."),
    Claim(7, "hessians", "Smoothing suppresses the large Hessian eigenvalues",
          "The paper: spatial smoothing reduces the magnitude of the top Hessian eigenvalues (the distribution of "
          "the largest eigenvalue over mini-batches).",
          "Paper: a figure of the top-eigenvalue spectra on CIFAR-100; no number in the original README."),
)

BY_KEY = {c.key: c for c in CLAIMS}
