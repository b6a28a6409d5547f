"""Bootstrap intervals over test images, for single models and for paired differences between two models.

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
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer, got {n_boot!r}")
    if not (isinstance(level, float) and 0 < level < 1):
        raise ValueError(f"level must be a fraction between 0 and 1 (e.g. 0.95), got {level!r}")
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
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


def _arm_draws(per_image, seed_draw, image_draw, bins):
    """{key: (R,)} of one arm: for each resample r, the mean over its drawn seeds of the metric of that seed's
    drawn images. per_image: one _per_image tuple per seed; seed_draw (R, S); image_draw (R, S, N)."""
    R, S = seed_draw.shape
    out = {k: torch.zeros(R, dtype=torch.float64) for k in KEYS}
    for j in range(S):
        for s, p in enumerate(per_image):
            rows = (seed_draw[:, j] == s).nonzero().squeeze(1)
            if len(rows):
                m = _resampled(p, image_draw[rows, j], bins)
                for k in KEYS:
                    out[k][rows] += m[k]
    return {k: v / S for k, v in out.items()}


def hierarchical_bootstrap(arms: dict, targets: torch.Tensor, n_boot: int = 1000, level: float = 0.95,
                           bins: int = 10, seed: int = 0, chunk: int = 50) -> dict:
    """Intervals over seeds *and* test images for two arms, and their difference (second minus first).

    arms: {label: [(N, C) log-probabilities, one per seed (independently trained network)]}, two labels, the
    same N test images in the same order (targets (N,)). Each resample draws as many seeds as an arm has, with
    replacement, then for each drawn seed position N images with replacement; both arms use the same image draws
    (the difference is paired over images). Returns {label: {key: (estimate, low, high)}, "<b> - <a>": {...},
    "seeds": {label: S}}, estimates being the mean over seeds of the metric on all images. With 3 seeds the seed
    level has few distinct draws: the interval is wide, as it should be. Resamples run `chunk` at a time."""
    labels = list(arms)
    if len(labels) != 2:
        raise ValueError(f"hierarchical_bootstrap compares two arms, got {len(labels)}: {labels}")
    counts = {k: len(v) for k, v in arms.items()}
    if min(counts.values()) < 1:
        raise ValueError(f"every arm needs at least one seed, got {counts}")
    targets = targets.long().cpu()
    N, S = len(targets), max(counts.values())
    per_image = {k: [_per_image(lp.cpu(), targets, bins) for lp in runs] for k, runs in arms.items()}
    full = torch.arange(N)[None]
    point = {k: {m: float(torch.stack([_resampled(p, full, bins)[m][0] for p in per]).mean()) for m in KEYS}
             for k, per in per_image.items()}
    g = torch.Generator().manual_seed(seed)
    draws = {k: {m: [] for m in KEYS} for k in labels}
    for start in range(0, n_boot, chunk):
        R = min(chunk, n_boot - start)
        image_draw = torch.randint(0, N, (R, S, N), generator=g)
        for k in labels:
            seed_draw = torch.randint(0, counts[k], (R, counts[k]), generator=g)
            for m, v in _arm_draws(per_image[k], seed_draw, image_draw[:, :counts[k]], bins).items():
                draws[k][m].append(v)
    draws = {k: {m: torch.cat(v) for m, v in by.items()} for k, by in draws.items()}
    lo_q, hi_q = (1 - level) / 2, 1 - (1 - level) / 2

    def summarise(est, samples):
        q = torch.quantile(samples, torch.tensor([lo_q, hi_q], dtype=torch.float64))
        return float(est), float(q[0]), float(q[1])

    a, b = labels
    out = {k: {m: summarise(point[k][m], draws[k][m]) for m in KEYS} for k in labels}
    out[f"{b} - {a}"] = {m: summarise(point[b][m] - point[a][m], draws[b][m] - draws[a][m]) for m in KEYS}
    out["seeds"] = counts
    return out


def hierarchical_mean(arms: dict, n_boot: int = 1000, level: float = 0.95, seed: int = 0, paired: bool = True) -> dict:
    """Intervals over seeds *and* units for the mean of a per-unit quantity, for two arms and their difference.

    arms: {label: [(U,) values, one array per seed]}, two labels; a unit is whatever the quantity is measured
    on (a test image, a mini-batch, an MC mask, a grid point). The statistic is the mean over seeds of the
    mean over units. Each resample draws as many seeds as an arm has, with replacement, then U units with
    replacement for each drawn seed; paired=True uses the same unit draws for both arms (the units are the same
    images or batches in both, so their difficulty cancels) and needs the same U everywhere. Returns the
    layout of hierarchical_bootstrap with the key "mean": {label: {"mean": (estimate, low, high)}, "<b> - <a>":
    {...}, "seeds": {label: S}}."""
    labels = list(arms)
    if len(labels) != 2:
        raise ValueError(f"hierarchical_mean compares two arms, got {len(labels)}: {labels}")
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer, got {n_boot!r}")
    values = {k: [torch.as_tensor(v, dtype=torch.float64).reshape(-1) for v in runs] for k, runs in arms.items()}
    sizes = {len(v) for runs in values.values() for v in runs}
    if any(not runs for runs in values.values()) or 0 in sizes:
        raise ValueError("every arm needs at least one seed with at least one unit")
    if paired and len(sizes) > 1:
        raise ValueError(f"paired resampling needs the same units in every seed and arm, got unit counts "
                         f"{sorted(sizes)}: pass paired=False for independent units")
    g = torch.Generator().manual_seed(seed)
    draws, shared = {}, {}
    for k in labels:
        S = len(values[k])
        pick = torch.randint(0, S, (n_boot, S), generator=g)  # (R, S) seeds drawn
        total = torch.zeros(n_boot, dtype=torch.float64)
        for j in range(S):
            for s, v in enumerate(values[k]):
                rows = (pick[:, j] == s).nonzero().squeeze(1)
                if not len(rows):
                    continue
                key = (j, len(v))
                if paired and key not in shared:
                    shared[key] = torch.randint(0, len(v), (n_boot, len(v)), generator=g)
                idx = shared[key][rows] if paired else torch.randint(0, len(v), (len(rows), len(v)), generator=g)
                total[rows] += v[idx].mean(1)
        draws[k] = total / S
    point = {k: float(torch.stack([v.mean() for v in runs]).mean()) for k, runs in values.items()}
    q = torch.tensor([(1 - level) / 2, 1 - (1 - level) / 2], dtype=torch.float64)

    def summarise(est, samples):
        lo, hi = torch.quantile(samples, q)
        return float(est), float(lo), float(hi)

    a, b = labels
    out = {k: {"mean": summarise(point[k], draws[k])} for k in labels}
    out[f"{b} - {a}"] = {"mean": summarise(point[b] - point[a], draws[b] - draws[a])}
    out["seeds"] = {k: len(v) for k, v in values.items()}
    return out


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
