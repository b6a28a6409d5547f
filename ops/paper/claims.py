"""The claims of the original that `make paper` checks, numbered as issue 31 lists them (claims 1 and 2 share the
sweep, the deep ensembles are a section beyond the paper, without a number): their words, the arms they compare,
and the original's own CIFAR-100 figures where its README gives them.

Each claim's verdict comes from the 95% interval of a paired difference "claimed arm - other arm" over seeds and
test units (ops.evaluate.intervals.verdict): supported, contradicted or not resolved. A claim that one arm
*matches* another is read as "not worse by more than a margin": for claim 1's "2 samples match 50", 10% of what
plain MC dropout's own 1 -> 50 samples change (stages.RELATIVE_MARGIN). Rows of "beyond the paper" sections (deep
ensembles) carry no verdict.
"""
from dataclasses import dataclass

# What a row says where every seed points the claimed way but its interval crosses zero (issue 31: in words, never
# turned into a verdict): the stages write it as the row's note, the report's tables and the README's repeat it.
ALL_SEEDS = "every seed points the claimed way, but the interval crosses zero"


@dataclass(frozen=True)
class Claim:
    number: str       # "1-2", "3", ...; "" for the section beyond the paper
    key: str          # the stage that measures it (settings.STAGES)
    title: str
    words: str        # the claim in the original's words (its README), or the summary of them
    paper: str        # the original's CIFAR-100 value for the same quantity, labelled as such

    @property
    def heading(self) -> str:
        """The report's section heading: "Claim 3: ...", "Claims 1-2: ...", or the title alone."""
        if not self.number:
            return self.title
        return f"Claim{'s' * ('-' in self.number)} {self.number}: {self.title}"


CLAIMS = (
    Claim("1-2", "sweep", "Smoothing helps MC dropout at every ensemble size; with 2 samples it matches 50 without",
          "\"Spatial smoothing improves accuracy, uncertainty estimation, and robustness of BNNs across a whole range "
          "of ensemble sizes\" (abstract; NLL, accuracy and ECE, figures 2-3), and \"the predictive performance of "
          "'MC dropout + spatial smoothing' with an ensemble size of two is comparable to that of the vanilla MC "
          "dropout with an ensemble size of fifty. In other words, 'MC dropout + spatial smoothing' is 25x faster "
          "than canonical MC dropout\" (figures 2-3). The second (claim 2) is measured as a quantity, the "
          "equivalent ensemble size: the number of plain MC samples whose NLL equals smoothing's with 2 (\"> 50\" "
          "where smoothing with 2 beats plain with 50), and read as 'not worse than plain MC dropout with 50 by "
          "more than 10% of what its own 1 -> 50 samples gain' (the paper gives no margin; ours is relative so "
          "that it scales with the data set; where MC sampling gains little, as on Fashion-MNIST, that margin is "
          "narrower than any interval five seeds give, and the equivalent size says more).",
          "Paper (CIFAR-100, ResNet-18, read off its NLL figure, figures 2-3): NLL 1.02 -> 0.85 for MC dropout "
          "with 1 -> 50 samples (0.856 at 30); 0.856 for MC dropout + smoothing with 2, 0.005 above plain MC "
          "dropout with 50 (3% of its 1 -> 50 gain): an equivalent ensemble size of about 30."),
    Claim("3", "deterministic", "Smoothing helps deterministic networks too",
          "\"Spatial smoothing also can be applied to canonical deterministic NNs to improve the performances.\"",
          "Paper (CIFAR-100, ResNet-18, deterministic, read off its figures 2 and 3): NLL 0.886 -> 0.863, accuracy "
          "77.9% -> 79.0%, ECE 5.1% -> 4.4% with smoothing."),
    Claim("", "ensembles", "Beyond the paper: MC dropout + smoothing beside deep ensembles",
          "Not a claim of the paper (it compares MC dropout ensemble sizes, never deep ensembles): context only, "
          "with no verdict for or against the paper. MC dropout + smoothing with 2 samples beside deep ensembles "
          "of independently trained deterministic networks (the ensembles of k are all k-subsets of the seeds; "
          "they share members, so their spread understates training noise, and the one ensemble of all seeds has "
          "no seed level). And smoothing vs plain after temperature scaling of both arms (2-fold cross-fitted on "
          "the test images, so no image is scored with a temperature fitted on it): does the calibration gain "
          "survive the standard post-hoc baseline? And out-of-distribution detection with and without smoothing "
          "(AUROC and FPR95 of the max probability, negative entropy and negative mutual information of the MC "
          "predictive; test images against real handwritten digits for Fashion-MNIST and synthetic noise).",
          "Paper: no deep-ensemble comparison, no temperature scaling, no OOD detection."),
    Claim("4", "robustness", "Smoothing improves robustness to corruptions",
          "\"Spatial smoothing improves the predictive performance for corrupted data. Moreover, it undoubtedly "
          "helps in predicting reliable uncertainty.\" (CIFAR-100-C: 15 corruptions x 5 severities), for MC "
          "dropout and deterministic networks alike: the error, NLL and ECE under corruption.",
          "Paper (CIFAR-100-C, its figure 9, read off the plot): mCE about 90.5 -> 88.6 (MC dropout, 1 sample), "
          "86.8 -> 85.5 (50 samples) and 86.5 -> 84.9 (deterministic) with smoothing, AlexNet-normalised (ours is "
          "not: the raw mean error), and lower NLL and ECE under corruption (its NLL box plots per severity "
          "overlap at the lower severities). Our primary rows stop "
          "at the robustness sizes of the settings; the ensemble-size curve under corruption (its figure 9) goes "
          "further on a share of each cell's images (corruption_curve; the paper's curves go to 50)."),
    Claim("5", "featuremaps", "Smoothing steadies and low-passes the feature maps",
          "Spatial smoothing ensembles neighbouring points of the feature maps: it lowers their variance across "
          "MC samples and damps their high frequencies (the Fourier profile). Right after a 2x2 blur the second "
          "half cannot fail (the blur has no response at the Nyquist frequency): that row is shown, marked true by "
          "construction, but does not decide; the rows at the end of the following stage, where both halves can "
          "fail, do.",
          "Paper: its figure 5 (feature-map variance and Fourier profiles, as the original README cites it); no "
          "number in the original README."),
    Claim("6", "landscapes", "GAP and smoothing flatten and steady the loss landscape",
          "\"The loss landscape [of the MLP classifier] is chaotic and irregular ... GAP ... flattens and "
          "stabilizes the loss landscape. Likewise ... spatial smoothing also flattens and stabilizes the loss "
          "landscape.\" Primary, on the original notebook's protocol (a +-0.1 grid of 21 x 21 points, two random "
          "directions normalised along the weights' first axis with 1-D tensors left still, training images, one "
          "MC sample per point): the mean rise of the loss over the grid (flatness) and its roughness, the RMS "
          "of what a quadratic surface leaves unexplained (\"chaotic and irregular\"; 0 for any smooth bowl). "
          "Secondary: a filter-normalised +-1 grid with several masks, for the spread of the loss across MC masks "
          "(\"stabilizes\") and the curvature at the centre. Where ours differs: a fixed subset of training "
          "images without augmentation (the original: all 50,000, augmented), and one MC mask held fixed across a "
          "landscape (the original draws fresh masks for every batch at every point, so its surfaces carry the "
          "masks' noise: part of what looks chaotic there), so that our roughness is the weights', not the "
          "masks'; the masks' own share is the spread across masks on the secondary grid.",
          "Paper: three GIFs (MLP head, GAP head, GAP + smoothing) of CIFAR-100 ResNet-18 landscapes; no number."),
    Claim("7", "hessians", "Smoothing and GAP suppress the large Hessian eigenvalues",
          "The paper: spatial smoothing reduces the magnitude of the top Hessian eigenvalues (the distribution of "
          "the largest eigenvalue over mini-batches, its Algorithm 1, each mini-batch's top eigenvalue kept with its "
          "sign). Rows: the mean magnitude (the claim) and the share of negative top eigenvalues beside it, for "
          "smoothing vs plain and for the GAP head vs the MLP head (the same mini-batches for every network).",
          "Paper: a figure of the top-eigenvalue spectra on CIFAR-100; no number in the original README."),
)

CLAIMS += (
    Claim("8", "special", "GAP, pre-activation and ReLU6 are special cases of spatial smoothing that help",
          "\"We provide a fundamental explanation for prior works - namely, global average pooling, pre-activation, "
          "and ReLU6 - by addressing them as special cases of spatial smoothing. These not only enhance accuracy, "
          "but also improve uncertainty estimation\" (abstract). Each is compared with the plain MC dropout "
          "ResNet-18 of the set: GAP head vs MLP head, pre-activation (`preresnet_mcdo_18`) vs post-activation, "
          "ReLU6 (every ReLU replaced) vs ReLU; NLL, accuracy and ECE on test images at 1 sample and at the "
          "largest size of the settings, and the training NLL of the MLP vs GAP heads (the paper's Table 1: the "
          "MLP head does not overfit, so GAP's gain is not regularisation). The original code builds no ReLU6 "
          "network; replacing every ReLU is our reading.",
          "Paper: the abstract's claim, on CIFAR-100 (its section on prior works and its Table 1; values not "
          "reproduced here)."),
)

BY_KEY = {c.key: c for c in CLAIMS}
