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


def bootstrap(log_probs: dict, targets: torch.Tensor, n_boot: int = 1000, level: float = 0.95, bins: int = 10,
              seed: int = 0, pairs="last-first") -> dict:
    """Estimates and percentile intervals: {label: {key: (estimate, low, high)}} for every model in `log_probs`
    ({label: (N, C) log-probabilities of the same N images}), plus paired differences.

    pairs: "last-first" adds "<last> - <first>" (e.g. smoothing - plain when given in that order); a list of
    (a, b) label pairs adds "b - a" for each; None adds none."""
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
    for a, b in pairs or []:
        out[f"{b} - {a}"] = {m: summarise(point[b][m][0] - point[a][m][0], draws[b][m] - draws[a][m]) for m in KEYS}
    return out
