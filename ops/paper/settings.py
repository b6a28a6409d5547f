"""What `make paper` measures and how much of it: the settings of each stage, the quick and smoke variants, and
their validation.

A paper run is described by a set config (ops.train.sets: the recipe, the variants and seeds, where the trained
networks were exported) plus these settings. A set config may carry a `paper` section that overrides them
(`"paper": {"sweep": {"images": 5000}}`); QUICK=1 applies QUICK on top, the CI smoke run SMOKE. Units: images
and batches are counts.
"""

from ops.analysis.landscapes import NORMS
from ops.common.checks import is_int, is_number
from ops.data.corruptions import CORRUPTIONS, PROFILES
from ops.train.configs import merge as merged  # one nested-dict merge for configs and settings

FULL = {
    "seed": 0,            # MC masks, bootstrap draws, image subsets and directions all derive from it
    "n_boot": 1000,       # bootstrap resamples per interval
    "level": 0.95,
    "batch_size": 128,    # evaluation batch (on a CPU, 128-image passes are the fastest: ops.evaluate.engine)
    "sweep": {"images": 10000, "max_size": 50, "interval_sizes": [1, 2, 3, 4, 5, 10, 20, 30, 40, 50]},
    # the time budget (2 h on 2 CPU cores for 33 networks, issue 31) sets the images per cell, the landscape
    # images, the Hessian mini-batches and claim 8's largest size; the sweep keeps all 10,000 test images
    "robustness": {"images_per_cell": 500, "corruptions": list(CORRUPTIONS), "severities": [1, 2, 3, 4, 5],
                   "sizes": [1, 2, 3], "profile": "cifar"},
    # the paper's figure 9: the MC ensemble-size curve under corruption, on a share of each cell's images
    "corruption_curve": {"sizes": [1, 2, 3, 5, 10], "images_per_cell": 50},
    "featuremaps": {"images": 256, "groups": 16, "samples": 10},
    # claim 6: the original notebook's grid (+-0.1, 21 x 21, its direction normalisation, training images, one
    # MC sample per point; here one mask per landscape and 128 images, not its 50,000), then a filter-normalised
    # +-1 grid with several masks
    "landscapes": {"n": 21, "scale": 0.1, "norm": "original", "images": 128, "masks": 1},
    "landscapes_filter": {"n": 7, "scale": 1.0, "norm": "filter", "images": 128, "masks": 3},
    "hessians": {"batches": 8, "batch_size": 64, "max_iter": 30, "tol": 1e-3},
    "ood": {"images": 1000, "sizes": [2, 10]},  # beyond the paper: test images vs each OOD set, MC sizes
    # the special cases (claim 8): test images and MC sizes, and training images for the training NLL (Table 1)
    "special": {"images": 10000, "sizes": [1, 5], "train_images": 10000},
}

# QUICK=1: fewer images, masks and batches (the report says so in its header); within 10 minutes here.
QUICK = {
    "n_boot": 200,
    "sweep": {"images": 200, "max_size": 50, "interval_sizes": [1, 2, 5, 10, 50]},
    "robustness": {"images_per_cell": 30, "sizes": [1, 2]},
    "corruption_curve": {"sizes": [1, 2, 5], "images_per_cell": 10},
    "featuremaps": {"images": 64, "groups": 8, "samples": 5},
    "landscapes": {"n": 5, "images": 32},
    "landscapes_filter": {"n": 5, "images": 32, "masks": 2},
    "hessians": {"batches": 2, "max_iter": 6},
    "ood": {"images": 100},
    "special": {"images": 200, "train_images": 300},  # the sweep's images: its MC dropout predictions serve
}

# The CI smoke run: tiny untrained networks on synthetic data, every stage and section in seconds.
SMOKE = {
    "n_boot": 50,
    "batch_size": 32,
    "sweep": {"images": 64, "max_size": 4, "interval_sizes": [1, 2, 4]},
    "robustness": {"images_per_cell": 16, "corruptions": ["gaussian_noise", "contrast"], "severities": [1, 5],
                   "sizes": [1, 2]},
    "corruption_curve": {"sizes": [1, 3], "images_per_cell": 8},
    "featuremaps": {"images": 16, "groups": 4, "samples": 3},
    "landscapes": {"n": 3, "images": 16},
    "landscapes_filter": {"n": 3, "images": 16, "masks": 2},
    "hessians": {"batches": 2, "batch_size": 8, "max_iter": 3},
    "ood": {"images": 16, "sizes": [2]},
    "special": {"images": 64, "sizes": [1, 2], "train_images": 32},  # the sweep's images: its predictions serve
}


def sweep_kept(sweep: dict) -> list[int]:
    """The ensemble sizes whose predictions claim 1's sweep keeps (its interval sizes, 1, 2 and the largest)."""
    return sorted(set(sweep["interval_sizes"]) | {1, 2, sweep["max_size"]})


def special_reuses_sweep(s: dict) -> bool:
    """Whether claim 8 takes the plain MC dropout networks' predictions from claim 1's sweep: the same test images
    and sizes the sweep keeps (else it makes its own pass)."""
    return s["special"]["images"] == s["sweep"]["images"] and set(s["special"]["sizes"]) <= set(sweep_kept(s["sweep"]))


STAGES = ("sweep", "deterministic", "ensembles", "robustness", "featuremaps", "landscapes", "hessians", "special")


def _problems(settings, path="", reference=FULL) -> list:
    """Unknown keys and values of the wrong kind, each named with its path and what it should be."""
    problems = []
    for key, value in settings.items():
        where = f"{path}{key}"
        if key not in reference:
            problems.append(f"paper.{where} is not a setting (known here: {', '.join(sorted(reference))})")
        elif isinstance(reference[key], dict):
            if not isinstance(value, dict):
                problems.append(f"paper.{where} must be an object like {reference[key]}")
            else:
                problems += _problems(value, f"{where}.", reference[key])
        elif isinstance(reference[key], list):
            if not isinstance(value, list) or not value:
                problems.append(f"paper.{where} must be a non-empty list, got {value!r}")
        elif isinstance(reference[key], str):
            if not isinstance(value, str):
                problems.append(f"paper.{where} must be a string, got {value!r}")
        elif isinstance(reference[key], int) and not is_int(value, 1) and key != "seed":
            problems.append(f"paper.{where} must be a positive integer, got {value!r}")
        elif isinstance(reference[key], float) and not is_number(value, 0):
            problems.append(f"paper.{where} must be a number >= 0, got {value!r}")
    return problems


def _consistency(s) -> list:
    problems = []
    if not (0 < s["level"] < 1):
        problems.append(f"paper.level must be between 0 and 1 (e.g. 0.95), got {s['level']!r}")
    if not is_int(s["seed"], 0):
        problems.append(f"paper.seed must be an integer >= 0, got {s['seed']!r}")
    sizes = s["sweep"]["interval_sizes"]
    if not all(is_int(n, 1) and n <= s["sweep"]["max_size"] for n in sizes) or 2 not in sizes:
        problems.append(f"paper.sweep.interval_sizes must be sizes from 1 to sweep.max_size "
                        f"({s['sweep']['max_size']}) and include 2 (the headline), got {sizes!r}")
    if s["sweep"]["max_size"] < 2:
        problems.append("paper.sweep.max_size must be at least 2 (the headline compares 2 samples)")
    unknown = [c for c in s["robustness"]["corruptions"] if c not in CORRUPTIONS]
    if unknown:
        problems.append(f"paper.robustness.corruptions: {unknown} are not corruptions (known: {list(CORRUPTIONS)})")
    if not all(n in (1, 2, 3, 4, 5) for n in s["robustness"]["severities"]):
        problems.append(f"paper.robustness.severities must be among 1-5, got {s['robustness']['severities']!r}")
    if not all(is_int(n, 1) for n in s["robustness"]["sizes"]):
        problems.append(f"paper.robustness.sizes must be positive integers, got {s['robustness']['sizes']!r}")
    curve = s["corruption_curve"]
    if not all(is_int(n, 1) for n in curve["sizes"]):
        problems.append(f"paper.corruption_curve.sizes must be positive integers, got {curve['sizes']!r}")
    if curve["images_per_cell"] > s["robustness"]["images_per_cell"]:
        problems.append(f"paper.corruption_curve.images_per_cell ({curve['images_per_cell']}) must not exceed "
                        f"paper.robustness.images_per_cell ({s['robustness']['images_per_cell']}): the curve "
                        f"scores a share of the same corrupted images")
    if s["robustness"]["profile"] not in PROFILES:
        problems.append(f"paper.robustness.profile must be one of {PROFILES}, got {s['robustness']['profile']!r}")
    if s["n_boot"] < 2:
        problems.append("paper.n_boot must be at least 2")
    for key in ("landscapes", "landscapes_filter"):
        land = s[key]
        if land["n"] < 3 or land["n"] % 2 == 0:
            problems.append(f"paper.{key}.n must be odd and >= 3 (the trained weights at the centre), got "
                            f"{land['n']!r}")
        if land["norm"] not in NORMS:
            problems.append(f"paper.{key}.norm must be one of {NORMS}, got {land['norm']!r}")
        if key == "landscapes_filter" and land["masks"] < 2:
            problems.append("paper.landscapes_filter.masks must be at least 2: its primary row is the spread of "
                            "the loss across MC masks")
        if not land["scale"] > 0:
            problems.append(f"paper.{key}.scale must be > 0 (the grid spans -scale..scale), got {land['scale']!r}")
    if s["featuremaps"]["groups"] > s["featuremaps"]["images"]:
        problems.append("paper.featuremaps.groups must not exceed paper.featuremaps.images")
    if not all(is_int(n, 1) for n in s["ood"]["sizes"]):
        problems.append(f"paper.ood.sizes must be positive integers (MC samples), got {s['ood']['sizes']!r}")
    if s["featuremaps"]["samples"] < 2:
        problems.append("paper.featuremaps.samples must be at least 2 (a variance over MC samples)")
    return problems


def resolve(override: dict = None, quick: bool = False, smoke: bool = False) -> dict:
    """FULL with a config's `paper` section, then QUICK or SMOKE, applied and checked; raises a ValueError
    listing every problem."""
    if override is not None and not isinstance(override, dict):
        raise ValueError(f"the config's `paper` section must be an object of settings, got {override!r}")
    problems = _problems(override or {})
    if problems:
        raise ValueError("; ".join(problems))
    s = merged(FULL, override)
    s = merged(s, SMOKE if smoke else QUICK if quick else {})
    problems = _consistency(s)
    if problems:
        raise ValueError("; ".join(problems))
    s["mode"] = "smoke" if smoke else "quick" if quick else "full"
    return s
