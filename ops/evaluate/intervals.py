"""Intervals over test images (a bootstrap), and over seeds and images, for single models and for paired
differences between two models; the verdict a claim gets from its interval.

    preds = {}
    results = ops.evaluate.sweep(model, loader, sizes=(1, 2, 50), keep_predictions=preds)  # preds[n]: (N, C)
    ci = ops.evaluate.intervals.bootstrap({"plain": preds_a[2], "smooth": preds_b[2]}, preds_a["targets"])
    ci["plain"]["nll"]             # (estimate, low, high): a 95% percentile interval
    ci["smooth - plain"]["nll"]    # the paired difference, with the same resampled images for both models

Each of `n_boot` resamples draws N test images with replacement (the same draw for every model, which is what
makes the difference *paired*: image difficulty cancels) and recomputes NLL, accuracy and ECE exactly as
ops.evaluate.metrics defines them (ECE with the same bins, (b/B, (b+1)/B]). The estimate is the metric on all images.
"""
import torch

from ops.common.checks import is_int

KEYS = ("nll", "acc", "ece")


def _per_image(log_probs, targets, bins):
    """(nll, correct, conf, bin index) per image: (N,) each."""
    lp = log_probs.double()
    conf, pred = lp.exp().max(dim=1)
    nll = -lp.gather(1, targets[:, None]).squeeze(1)
    edges = torch.arange(1, bins, dtype=torch.float64) / bins
    return nll, (pred == targets).double(), conf, torch.bucketize(conf, edges)


def _resampled(per_image, idx, bins):
    """Metrics of every resample: idx (R, N) image indices -> {key: (R,)}."""
    nll, correct, conf, b = (t[idx] for t in per_image)  # (R, N) each
    R, N = idx.shape
    gap = torch.zeros(R, bins, dtype=torch.float64).scatter_add_(1, b, conf - correct)  # per bin: sum(conf - acc)
    return {"nll": nll.mean(1), "acc": correct.mean(1), "ece": gap.abs().sum(1) / N}


def _check_bootstrap(log_probs, targets, n_boot, level, bins):
    if not is_int(n_boot, 1):
        raise ValueError(f"n_boot must be a positive integer, got {n_boot!r}")
    if not (isinstance(level, float) and 0 < level < 1):
        raise ValueError(f"level must be a fraction between 0 and 1 (e.g. 0.95), got {level!r}")
    if not is_int(bins, 1):
        raise ValueError(f"bins must be a positive integer, got {bins!r}")
    if not log_probs or len(targets) == 0:
        raise ValueError("bootstrap needs at least one model's log-probabilities and at least one image")
    for label, lp in log_probs.items():
        if lp.ndim != 2 or len(lp) != len(targets):
            raise ValueError(f"{label!r}: log-probabilities of shape {tuple(lp.shape)} for {len(targets)} targets; "
                             f"expected ({len(targets)}, classes)")
        if int(targets.min()) < 0 or int(targets.max()) >= lp.shape[1]:
            raise ValueError(f"targets must be class indices from 0 to {lp.shape[1] - 1}")


def bootstrap(log_probs: dict, targets: torch.Tensor, n_boot: int = 1000, level: float = 0.95, bins: int = 10,
              seed: int = 0, pairs="last-first") -> dict:
    """Estimates and percentile intervals: {label: {key: (estimate, low, high)}} for every model in `log_probs`
    ({label: (N, C) log-probabilities of the same N images}), plus paired differences.

    pairs: "last-first" adds "<last> - <first>" (e.g. smoothing - plain when given in that order); a list of
    (a, b) label pairs adds "b - a" for each; None adds none."""
    _check_bootstrap(log_probs, targets, n_boot, level, bins)
    targets = targets.long().cpu()
    labels = list(log_probs)
    N = len(targets)
    per_image = {k: _per_image(v.cpu(), targets, bins) for k, v in log_probs.items()}
    full = torch.arange(N)[None]
    idx = torch.randint(0, N, (n_boot, N), generator=torch.Generator().manual_seed(seed))
    lo_q, hi_q = (1 - level) / 2, 1 - (1 - level) / 2
    point = {k: _resampled(p, full, bins) for k, p in per_image.items()}
    draws = {k: _resampled(p, idx, bins) for k, p in per_image.items()}

    def summarise(est, samples):
        q = torch.quantile(samples, torch.tensor([lo_q, hi_q], dtype=torch.float64))
        return float(est), float(q[0]), float(q[1])

    out = {k: {m: summarise(point[k][m][0], draws[k][m]) for m in KEYS} for k in labels}
    if pairs == "last-first":
        pairs = [(labels[0], labels[-1])] if len(labels) > 1 else []
    unknown = [p for pair in pairs or [] for p in pair if p not in log_probs]
    if unknown:
        raise ValueError(f"pairs name models that are not in log_probs: {unknown}; they are {labels}")
    for a, b in pairs or []:
        out[f"{b} - {a}"] = {m: summarise(point[b][m][0] - point[a][m][0], draws[b][m] - draws[a][m]) for m in KEYS}
    return out


def _t_multiplier(level, df) -> float:
    """The two-sided `level` quantile of Student's t with df degrees of freedom (the normal one if df is None)."""
    from scipy import stats

    q = 1 - (1 - level) / 2
    return float(stats.norm.ppf(q) if df is None else stats.t.ppf(q, df))


def combine(per_seed: dict, draws: dict, level: float, paired_seeds: bool = False) -> dict:
    """Intervals of two arms and of their difference (second minus first) from two sources of uncertainty:

    per_seed: {label: (S,) the statistic of each seed's network on all units}; draws: {label: (R,) the mean over
    seeds of the statistic on resampled units, the seeds fixed} (the same unit draws for both arms where the
    units are the same). Variance = between-seed variance / S (from the per-seed values) + the variance over the
    unit resamples; the interval is estimate +- t(level, S - 1) x its square root. Student's t and not a
    bootstrap over seeds: with 3 seeds a percentile bootstrap shrinks the seed variance by 2/3 and uses 1.96
    where t with 2 degrees of freedom is 4.30 (a simulated null with seed-dominated variance came out
    "resolved" 20% of the time instead of 5%). paired_seeds: both arms are the same networks (e.g. 1 vs 50 MC
    samples of each), so the seed variance is that of the per-seed differences. An arm with one seed has no
    seed level: its interval covers the units only, and `seed_level` says False."""
    (a, pa), (b, pb) = ((k, torch.as_tensor(v, dtype=torch.float64)) for k, v in per_seed.items())
    out = {}
    for k, p in ((a, pa), (b, pb)):
        seed_var = float(p.var()) / len(p) if len(p) > 1 else 0.0
        half = _t_multiplier(level, len(p) - 1 if len(p) > 1 else None) * (seed_var + float(draws[k].var())) ** 0.5
        out[k] = (float(p.mean()), float(p.mean()) - half, float(p.mean()) + half)
    if paired_seeds:
        if len(pa) != len(pb):
            raise ValueError(f"paired seeds need the same seeds in both arms, got {len(pa)} and {len(pb)}")
        seed_var, df = (float((pb - pa).var()) / len(pa), len(pa) - 1) if len(pa) > 1 else (0.0, None)
    else:
        seed_var = sum(float(p.var()) / len(p) for p in (pa, pb) if len(p) > 1)
        df = min(len(pa), len(pb)) - 1 or None  # conservative: the smaller arm's degrees of freedom
    est = float(pb.mean() - pa.mean())
    half = _t_multiplier(level, df) * (seed_var + float((draws[b] - draws[a]).var())) ** 0.5
    out[f"{b} - {a}"] = (est, est - half, est + half)
    out["seed_level"] = min(len(pa), len(pb)) > 1
    return out


def _check_levels(n_boot, level):
    if not is_int(n_boot, 2):
        raise ValueError(f"n_boot must be an integer >= 2, got {n_boot!r}")
    if not (isinstance(level, float) and 0 < level < 1):
        raise ValueError(f"level must be a fraction between 0 and 1 (e.g. 0.95), got {level!r}")


def hierarchical_bootstrap(arms: dict, targets: torch.Tensor, n_boot: int = 1000, level: float = 0.95,
                           bins: int = 10, seed: int = 0, chunk: int = 50, paired_seeds: bool = False) -> dict:
    """Intervals over seeds *and* test images for two arms' NLL, accuracy and ECE, and their difference (second
    minus first): see `combine`.

    arms: {label: [(N, C) log-probabilities, one per seed (independently trained network)]}, two labels, the
    same N test images in the same order (targets (N,)). The image level: `n_boot` resamples of the N images,
    the same draw for every seed and both arms (the difference is paired over images), each seed's metric
    recomputed on them and averaged over seeds. Returns {label: {key: (estimate, low, high)}, "<b> - <a>":
    {...}, "seeds": {label: S}, "seed_level": bool, "per_seed": {label: {key: [each seed's value]}}};
    estimates are the mean over seeds of the metric on all images."""
    labels = list(arms)
    if len(labels) != 2:
        raise ValueError(f"hierarchical_bootstrap compares two arms, got {len(labels)}: {labels}")
    counts = {k: len(v) for k, v in arms.items()}
    if min(counts.values()) < 1:
        raise ValueError(f"every arm needs at least one seed, got {counts}")
    _check_levels(n_boot, level)
    targets = targets.long().cpu()
    N = len(targets)
    per_image = {k: [_per_image(lp.cpu(), targets, bins) for lp in runs] for k, runs in arms.items()}
    full = torch.arange(N)[None]
    per_seed = {k: {m: torch.stack([_resampled(p, full, bins)[m][0] for p in per]) for m in KEYS}
                for k, per in per_image.items()}
    g = torch.Generator().manual_seed(seed)
    draws = {k: {m: [] for m in KEYS} for k in labels}
    for start in range(0, n_boot, chunk):
        idx = torch.randint(0, N, (min(chunk, n_boot - start), N), generator=g)  # (R, N), shared by everything
        for k in labels:
            by_seed = [_resampled(p, idx, bins) for p in per_image[k]]
            for m in KEYS:
                draws[k][m].append(torch.stack([d[m] for d in by_seed]).mean(0))
    out = {k: {} for k in labels}
    diff = f"{labels[1]} - {labels[0]}"
    out[diff] = {}
    for m in KEYS:
        c = combine({k: per_seed[k][m] for k in labels}, {k: torch.cat(draws[k][m]) for k in labels}, level,
                    paired_seeds)
        for k in labels + [diff]:
            out[k][m] = c[k]
        out["seed_level"] = c["seed_level"]
    out["per_seed"] = {k: {m: [float(v) for v in per_seed[k][m]] for m in KEYS} for k in labels}
    out["seeds"] = counts
    return out


def hierarchical_mean(arms: dict, n_boot: int = 1000, level: float = 0.95, seed: int = 0, paired: bool = True,
                      paired_seeds: bool = False) -> dict:
    """Intervals over seeds *and* units for the mean of a per-unit quantity, for two arms and their difference.

    arms: {label: [(U,) values, one array per seed]}, two labels; a unit is whatever the quantity is measured
    on (a test image, a mini-batch, an MC mask). The statistic is the mean over seeds of the mean over units;
    the interval combines the seed level and `n_boot` resamples of the units (`combine`). paired=True uses the
    same unit draws for every seed and both arms (the units are the same images or batches, so their difficulty
    cancels) and needs the same U everywhere. A quantity with one value per seed has no unit level. Returns the
    layout of hierarchical_bootstrap with the key "mean"."""
    labels = list(arms)
    if len(labels) != 2:
        raise ValueError(f"hierarchical_mean compares two arms, got {len(labels)}: {labels}")
    _check_levels(n_boot, level)
    values = {k: [torch.as_tensor(v, dtype=torch.float64).reshape(-1) for v in runs] for k, runs in arms.items()}
    sizes = {len(v) for runs in values.values() for v in runs}
    if any(not runs for runs in values.values()) or 0 in sizes:
        raise ValueError("every arm needs at least one seed with at least one unit")
    if paired and len(sizes) > 1:
        raise ValueError(f"paired resampling needs the same units in every seed and arm, got unit counts "
                         f"{sorted(sizes)}: pass paired=False for independent units")
    g = torch.Generator().manual_seed(seed)
    shared = torch.randint(0, max(sizes), (n_boot, max(sizes)), generator=g) if paired else None
    draws = {}
    for k in labels:
        means = [v[shared if paired else torch.randint(0, len(v), (n_boot, len(v)), generator=g)].mean(1)
                 for v in values[k]]  # (R,) per seed
        draws[k] = torch.stack(means).mean(0)
    per_seed = {k: torch.stack([v.mean() for v in runs]) for k, runs in values.items()}
    c = combine(per_seed, draws, level, paired_seeds)
    diff = f"{labels[1]} - {labels[0]}"
    out = {k: {"mean": c[k]} for k in labels + [diff]}
    return out | {"seeds": {k: len(v) for k, v in values.items()}, "seed_level": c["seed_level"],
                  "per_seed": {k: {"mean": [float(v) for v in per_seed[k]]} for k in labels}}


VERDICTS = ("supported", "contradicted", "not resolved")


def verdict(interval: tuple, better: str = "lower", margin: float = 0.0) -> str:
    """The verdict of a claim from the interval (estimate, low, high) of a difference "claimed arm - other arm":
    supported if the interval excludes 0 in the claimed direction (better="lower": below 0, for NLL and ECE;
    "higher": above 0, for accuracy), contradicted if it excludes 0 the other way, else not resolved.

    margin > 0 reads the claim as "not worse by more than margin" (a claim that one arm *matches* another):
    supported if the whole interval is better than `margin` on the worse side, contradicted if the whole
    interval is worse than that."""
    if better not in ("lower", "higher"):
        raise ValueError(f"better must be 'lower' or 'higher', got {better!r}")
    if not (isinstance(margin, (int, float)) and margin >= 0):
        raise ValueError(f"margin must be a number >= 0, got {margin!r}")
    _, low, high = interval
    if better == "higher":  # mirror: "higher is better" with margin m is "lower is better" of the negation
        low, high = -high, -low
    if high < margin:
        return VERDICTS[0]
    if low > margin:
        return VERDICTS[1]
    return VERDICTS[2]
