"""Predictive-performance metrics of the spatial-smoothing paper, as a streaming accumulator.

Inputs: `probs` (N, C) predictive probabilities (rows sum to 1), `targets` (N,) integer labels, and optionally
`log_probs` (N, C), the same predictions as log-probabilities (the evaluation engine has them: ops.evaluate.sweep).
conf = max_c probs, pred = argmax_c probs, correct = (pred == target).

    nll          mean of -log p[y]: from `log_probs` when given (exact, also for a confident wrong prediction
                 whose p[y] underflows float32), else from `probs` with p[y] floored at NLL_FLOOR so that an
                 exact zero stays finite
    acc          mean of correct
    top5         share of samples whose label is among the 5 most probable classes: fewer than 5 classes are
                 strictly more probable than the label (so ties count in the label's favour)
    brier        mean over samples of sum_c (p_c - onehot_c)^2
    ece          sum_b (n_b / N) |acc_b - conf_b|   over `bins` equal-width bins; bin b holds conf in
                 (b/B, (b+1)/B] and bin 0 also holds 0 (the same edges for counts, accuracies and confidences)
    ece_signed   sum_b (n_b / N) (conf_b - acc_b)   (positive = over-confident)
    ece_adaptive the same sum over `adaptive_bins` (15) equal-mass bins: predictions sorted by confidence, cut
                 into consecutive bins as numpy.array_split cuts N items (the first N mod B bins hold one more);
                 within a group of equal confidences the correctness is averaged first, so that the value does
                 not depend on the order of the inputs (`adaptive_ece`)
    ece_classwise (1/C) sum_c sum_b (n_cb / N) |freq_cb - conf_cb|: for each class c, its probability p_c of
                 every sample binned into `classwise_bins` (15) equal-width bins (the edges of `ece`), freq_cb the
                 share of samples of bin (c, b) labelled c and conf_cb their mean p_c; every class counts, also
                 one never predicted nor seen (Kull et al. 2019; `classwise_ece`)
    For each cutoff c (keys carry it in percent, 0.9 -> `_90`), with certain = conf > c:
    acc_90       accuracy among certain predictions (0 if none is certain)
    freq_90      share of certain predictions
    unc_90       share of inaccurate predictions that are not certain (0 if none is inaccurate)
    iou_90       mean over classes whose label occurs among certain samples of TP / (TP + FP + FN), counted
                 on certain samples only; `iou` is the same at cutoff 0 (all samples)
    auroc        misclassification detection: P(conf of a correct prediction > conf of a wrong one), ties
                 counting 1/2 (Mann-Whitney); NaN if all predictions are correct or all wrong
    aurc         area under the risk-coverage curve: predictions sorted by decreasing confidence, the mean
                 over k = 1..N of the error rate among the k most confident; within a group of equal
                 confidences the errors count as spread evenly (the expectation over their orders), so the
                 value does not depend on the order of the inputs (one process or many)
    For stochastic predictions (`samples`: (S, N, C) per-sample probabilities of MC passes or ensemble members,
    whose mean is `probs`), in nats:
    entropy            mean predictive entropy H[mean_s p_s]
    expected_entropy   mean over samples of mean_s H[p_s] (aleatoric part)
    mutual_info        entropy - expected_entropy (epistemic part, the BALD score), per sample at least 0

State: sums, per-bin totals, per-class per-bin sums of (onehot_c - p_c) (ece_classwise), and the per-class
marginals of the confusion matrix of certain predictions (diagonal, row and column sums: all IoU needs, C numbers
instead of C^2), all on the input's device. Under DDP `sync()` combines processes with five all-reduces (sums,
bins, class bins, cutoffs, classes) and two all-gathers (the (conf, correct) pairs that auroc / aurc /
ece_adaptive need, and their counts); it keeps the local state aside, so calling it twice, or updating after it,
never counts a prediction twice. `summarize(...)` is `Metrics(...).update(...).compute()`.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

if TYPE_CHECKING:
    from collections.abc import Sequence

NLL_FLOOR = torch.finfo(torch.float32).tiny  # -log(floor) ~ 87.3: only exact zeros are affected
SUM_TOL = 1e-3  # rows of probs must sum to 1 within this


def cutoff_key(cutoff: float) -> str:
    """0.9 -> '90', 0.0 -> '0', 0.995 -> '99.5'."""
    return f"{cutoff * 100:.6g}"


def sum_tolerance(dtype: torch.dtype) -> float:
    """How far a row of probabilities in `dtype` may sum from 1: SUM_TOL, or the dtype's rounding for bf16/fp16."""
    return max(SUM_TOL, torch.finfo(dtype).eps) if dtype.is_floating_point else SUM_TOL


def _check_rows(p, what, tol):
    """One host sync for the cheap checks of (..., C) probabilities: finite, non-negative, rows sum to 1."""
    row_sums = p.sum(-1)
    bad = torch.stack([~torch.isfinite(row_sums).all(), p.amin() < 0,
                       ((row_sums - 1).abs() > tol).any()]).tolist()
    if bad[0]:
        raise ValueError(f"{what} contains NaN or inf")
    if bad[1]:
        raise ValueError(f"{what} contains negative values; pass probabilities (softmax), not logits")
    if bad[2]:
        worst = (row_sums - 1).abs().max().item()
        raise ValueError(f"rows of {what} must sum to 1 (worst row is off by {worst:.3g}, allowed {tol:.3g}); "
                         "pass softmax probabilities, not logits or log-probabilities")


def _check(probs, targets, num_classes=None):
    if not torch.is_tensor(probs) or not torch.is_tensor(targets):
        raise ValueError("probs and targets must be tensors")
    if probs.ndim != 2:
        raise ValueError(f"probs must have shape (N, C), got {tuple(probs.shape)}")
    if targets.shape != probs.shape[:1]:
        raise ValueError(f"targets must have shape ({probs.shape[0]},) to match probs {tuple(probs.shape)}, "
                         f"got {tuple(targets.shape)}")
    if num_classes is not None and probs.shape[1] != num_classes:
        raise ValueError(f"probs has {probs.shape[1]} classes but this accumulator was built for {num_classes}")
    if targets.dtype.is_floating_point or targets.dtype == torch.bool:
        raise ValueError(f"targets must be integer class labels, got dtype {targets.dtype}")
    if probs.shape[1] == 0:
        raise ValueError("probs has no classes (shape (N, 0))")
    if probs.shape[0] == 0:
        return None  # an empty batch: nothing to count
    # float64 inputs stay float64 (exact bin edges); everything else is computed in float32.
    p = probs if probs.dtype == torch.float64 else probs.float()
    _check_rows(p, "probs", sum_tolerance(probs.dtype))
    if ((targets < 0) | (targets >= probs.shape[1])).any():
        raise ValueError(f"targets out of range: labels must be in [0, {probs.shape[1] - 1}], got "
                         f"[{targets.min().item()}, {targets.max().item()}]")
    return p


def _check_log_probs(log_probs, p):
    if log_probs.shape != p.shape:
        raise ValueError(f"log_probs must have the shape of probs {tuple(p.shape)}, got {tuple(log_probs.shape)}")
    lp = log_probs.double()
    if torch.isnan(lp).any() or (lp > 1e-6).any():
        raise ValueError("log_probs must be log-probabilities (no NaN, at most 0)")
    if ((lp.exp() - p.double()).abs() > sum_tolerance(log_probs.dtype)).any():
        raise ValueError("log_probs and probs describe different predictions: exp(log_probs) must equal probs")
    return lp


def _check_samples(samples, p):
    """samples: (S, N, C) per-pass probabilities whose mean over S is `probs`."""
    if not torch.is_tensor(samples) or samples.ndim != 3 or samples.shape[1:] != p.shape or samples.shape[0] < 1:
        shape = tuple(samples.shape) if torch.is_tensor(samples) else type(samples).__name__
        raise ValueError(f"samples must have shape (S, {p.shape[0]}, {p.shape[1]}) with S >= 1, got {shape}")
    s = samples if samples.dtype == torch.float64 else samples.float()
    tol = sum_tolerance(samples.dtype)
    _check_rows(s, "samples", tol)
    if ((s.mean(0) - p).abs() > tol).any():
        raise ValueError("samples do not belong to probs: their mean over the first dimension must equal probs "
                         "(pass the per-pass probabilities of the same predictions)")
    return s


def _entropy(p):  # (..., C) -> (...), 0 log 0 = 0
    return -torch.special.xlogy(p, p).sum(-1)


class Metrics:
    """Streaming accumulator: `update(probs, targets[, samples])` any number of times, then `compute()`."""

    def __init__(self, num_classes: int, bins: int = 10, cutoffs=(0.0, 0.9), device=None,
                 adaptive_bins: int = 15, classwise_bins: int = 15):
        for name, value in (("bins", bins), ("adaptive_bins", adaptive_bins), ("classwise_bins", classwise_bins)):
            if int(value) != value or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value}")
        self.adaptive_bins, self.classwise_bins = int(adaptive_bins), int(classwise_bins)
        if any(not 0.0 <= c < 1.0 for c in cutoffs):
            raise ValueError(f"cutoffs must be in [0, 1), got {cutoffs}")
        self.num_classes, self.bins, self.cutoffs = num_classes, bins, tuple(float(c) for c in cutoffs)
        # Cutoff 0 is always tracked: it gives `iou`.
        self._cuts = tuple(sorted(set(self.cutoffs) | {0.0}))
        self.device = device
        self.reset()

    def reset(self) -> None:
        K, B, C = len(self._cuts), self.bins, self.num_classes
        z = lambda *s: torch.zeros(s, dtype=torch.float64, device=self.device)  # noqa: E731
        self.sums = z(8)  # n, nll, correct, top5, brier, entropy, expected_entropy, n_stochastic
        self.bin_stats = z(3, B)  # count, correct, sum of conf
        self.cut_stats = z(3, K)  # certain, certain & correct, uncertain & wrong
        self.class_stats = z(K, 3, C)  # per class among certain: TP, label count (row), prediction count (col)
        self.class_bins = z(C, self.classwise_bins)  # per class c and bin of p_c: sum of (onehot_c - p_c)
        self.confs, self.corrects = [], []  # concatenated (auroc, aurc)
        self.edges = (torch.arange(1, B, dtype=torch.float64, device=self.device) / B)
        Bc = self.classwise_bins
        self.class_edges = torch.arange(1, Bc, dtype=torch.float64, device=self.device) / Bc
        self.cut_values = torch.tensor(self._cuts, dtype=torch.float32, device=self.device)
        self._local = None  # the local state while a synced one is in place (see sync)
        return self

    def _to(self, device):
        if self.sums.device != device:
            self.device = device
            for name in ("sums", "bin_stats", "cut_stats", "class_stats", "class_bins", "edges", "class_edges",
                         "cut_values"):
                setattr(self, name, getattr(self, name).to(device))

    @torch.no_grad()
    def update(self, probs: torch.Tensor, targets: torch.Tensor, samples: torch.Tensor = None,
               log_probs: torch.Tensor = None) -> "Metrics":
        """Add a batch: probs (N, C), targets (N,), optional samples (S, N, C) and log_probs (N, C)."""
        self._unsync()
        p = _check(probs, targets, self.num_classes)  # (N, C) float32 or float64; None for an empty batch
        if p is None:
            return self
        self._to(p.device)
        t = targets.to(p.device).long()
        N, C = p.shape
        conf, pred = p.max(dim=1)  # (N,), (N,)
        p_true = p.gather(1, t[:, None]).squeeze(1)  # (N,)
        correct = pred == t
        top5 = (p > p_true[:, None]).sum(1) < 5  # fewer than 5 classes strictly more probable than the label
        brier = (p * p).sum(1) - 2 * p_true + 1  # sum_c (p_c - onehot_c)^2
        if log_probs is not None:
            nll = -_check_log_probs(log_probs.to(p.device), p).gather(1, t[:, None]).squeeze(1)
        else:
            nll = -p_true.double().clamp_min(NLL_FLOOR).log()

        stoch = torch.zeros(3, dtype=torch.float64, device=p.device)
        if samples is not None:
            s = _check_samples(samples.to(p.device), p)
            entropy, expected = _entropy(p).double(), _entropy(s).double().mean(0)  # (N,), (N,)
            # Mutual information is >= 0 per sample (concavity of entropy); clamp away float rounding.
            stoch = torch.stack([entropy.sum(), (entropy - (entropy - expected).clamp_min(0)).sum(),
                                 torch.tensor(float(N), dtype=torch.float64, device=p.device)])
        self.sums += torch.cat([torch.stack([torch.tensor(float(N), dtype=torch.float64, device=p.device),
                                             nll.sum(), correct.double().sum(), top5.double().sum(),
                                             brier.double().sum()]), stoch])

        idx = torch.bucketize(conf.double(), self.edges)  # (N,) bin b <=> b/B < conf <= (b+1)/B, 0 in bin 0
        self.bin_stats[0] += torch.bincount(idx, minlength=self.bins)
        self.bin_stats[1] += torch.bincount(idx, weights=correct.double(), minlength=self.bins)
        self.bin_stats[2] += torch.bincount(idx, weights=conf.double(), minlength=self.bins)
        self.class_bins += _classwise_bin_sums(p, t, self.class_edges)

        certain = conf[None, :] > self.cut_values[:, None]  # (K, N)
        self.cut_stats[0] += certain.sum(1)
        self.cut_stats[1] += (certain & correct).sum(1)
        self.cut_stats[2] += (~certain & ~correct).sum(1)
        w = certain.double()  # (K, N)
        K = len(self._cuts)
        offset = torch.arange(K, device=p.device)[:, None] * C  # one bincount for all cutoffs
        for j, (cls, keep) in enumerate(((t, w * correct), (t, w), (pred, w))):  # TP, row, column
            counts = torch.bincount((offset + cls).flatten(), weights=keep.flatten(), minlength=K * C)
            self.class_stats[:, j] += counts.view(K, C)
        self.confs.append(conf)
        self.corrects.append(correct)
        return self

    _STATE = ("sums", "bin_stats", "cut_stats", "class_stats", "class_bins", "confs", "corrects")

    def sync(self) -> "Metrics":
        """Combine the states of all processes (call on every rank before compute() under DDP).

        The local state is kept aside: sync() again, or update() after it, starts from the local state, so no
        prediction is ever counted twice."""
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return self
        self._unsync()
        self._local = {name: getattr(self, name) for name in self._STATE}
        for name in ("sums", "bin_stats", "cut_stats", "class_stats", "class_bins"):
            tensor = getattr(self, name).clone()
            dist.all_reduce(tensor)
            setattr(self, name, tensor)
        conf, correct = self._cat()
        n = torch.tensor([conf.numel()], device=conf.device)
        sizes = [torch.zeros_like(n) for _ in range(dist.get_world_size())]
        dist.all_gather(sizes, n)
        m = int(max(s.item() for s in sizes))
        both = torch.zeros(2, m, dtype=torch.float64, device=conf.device)
        both[0, :conf.numel()], both[1, :conf.numel()] = conf.double(), correct.double()
        gathered = [torch.zeros_like(both) for _ in sizes]
        dist.all_gather(gathered, both)
        self.confs = [g[0, :int(s.item())] for g, s in zip(gathered, sizes)]
        self.corrects = [g[1, :int(s.item())].bool() for g, s in zip(gathered, sizes)]
        return self

    def _unsync(self):
        local = getattr(self, "_local", None)
        if local is not None:
            for name, value in local.items():
                setattr(self, name, value)
            self._local = None

    def _cat(self):
        if not self.confs:
            return torch.zeros(0, device=self.sums.device), torch.zeros(0, dtype=torch.bool, device=self.sums.device)
        return torch.cat(self.confs), torch.cat(self.corrects)

    @torch.no_grad()
    def compute(self) -> dict:
        n, nll, correct, top5, brier, ent, exp_ent, n_stoch = self.sums.tolist()
        if n == 0:
            raise ValueError("no predictions were accumulated: update() was not called, or only with empty "
                             "batches")
        count, bin_correct, bin_conf = self.bin_stats
        nonempty = count > 0
        bin_acc = torch.where(nonempty, bin_correct / count.clamp_min(1), torch.nan)
        bin_mean_conf = torch.where(nonempty, bin_conf / count.clamp_min(1), torch.nan)
        gap = torch.where(nonempty, bin_mean_conf - bin_acc, 0.0) * count / n
        out = {"n": int(n), "nll": nll / n, "acc": correct / n, "top5": top5 / n, "brier": brier / n,
               "ece": gap.abs().sum().item(), "ece_signed": gap.sum().item()}
        conf, corr = self._cat()
        out["ece_adaptive"] = adaptive_ece(conf, corr, self.adaptive_bins)
        out["ece_classwise"] = (self.class_bins.abs().sum() / (n * self.num_classes)).item()

        certain, certain_correct, uncertain_wrong = self.cut_stats.tolist()
        tp, rows, cols = self.class_stats.unbind(1)  # (K, C) each
        present = rows > 0
        iou_c = tp / (rows + cols - tp).clamp_min(1)
        ious = torch.where(present, iou_c, 0.0).sum(1) / present.sum(1).clamp_min(1)  # (K,)
        wrong = n - correct
        for k, c in enumerate(self._cuts):
            if c not in self.cutoffs:
                continue
            key = cutoff_key(c)
            out[f"acc_{key}"] = certain_correct[k] / certain[k] if certain[k] else 0.0
            out[f"unc_{key}"] = uncertain_wrong[k] / wrong if wrong else 0.0
            out[f"iou_{key}"] = ious[k].item()
            out[f"freq_{key}"] = certain[k] / n
        out["iou"] = ious[self._cuts.index(0.0)].item()

        out["auroc"] = auroc(conf, corr)
        out["aurc"] = aurc(conf, corr)
        if n_stoch:  # exp_ent holds sum(entropy - clamp(mutual_info, 0)): see update()
            out.update(entropy=ent / n_stoch, expected_entropy=exp_ent / n_stoch,
                       mutual_info=(ent - exp_ent) / n_stoch)
        out["bin_count"] = count.long().tolist()
        out["bin_acc"] = bin_acc.tolist()
        out["bin_conf"] = bin_mean_conf.tolist()
        return out


def auroc(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """Area under the ROC curve of `scores` separating positive from negative (Mann-Whitney, ties 1/2)."""
    n_pos = int(positive.sum())
    n_neg = positive.numel() - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    _, inverse, counts = torch.unique(scores.double(), return_inverse=True, return_counts=True)
    avg_rank = counts.cumsum(0) - (counts - 1) / 2  # 1-based average rank of each distinct value
    rank_sum = avg_rank[inverse][positive].sum().item()
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def _classwise_bin_sums(p, t, edges):
    """(C, B) sums of (onehot_c - p_c) over the samples whose p_c falls in each bin (edges as `ece`'s)."""
    N, C = p.shape
    B = edges.numel() + 1
    p = p.double()
    idx = torch.bucketize(p, edges)  # (N, C): bin of each class probability
    diff = torch.nn.functional.one_hot(t, C).double() - p  # (N, C)
    flat = (torch.arange(C, device=p.device) * B + idx).flatten()
    return torch.bincount(flat, weights=diff.flatten(), minlength=C * B).view(C, B)


def classwise_ece(probs: torch.Tensor, targets: torch.Tensor, bins: int = 15) -> float:
    """Classwise ECE of `probs` (N, C) against `targets` (N,): (1/C) sum_c sum_b (n_cb / N) |freq_cb - conf_cb|
    over `bins` equal-width bins of each class's probability p_c (see the module docstring)."""
    p = _check(probs, targets)
    if p is None:
        raise ValueError("probs is empty (0 predictions): nothing to score")
    if int(bins) != bins or bins < 1:
        raise ValueError(f"bins must be an integer >= 1, got {bins}")
    edges = torch.arange(1, bins, dtype=torch.float64, device=p.device) / bins
    sums = _classwise_bin_sums(p, targets.to(p.device).long(), edges)
    return (sums.abs().sum() / p.numel()).item()


def adaptive_ece(conf: torch.Tensor, correct: torch.Tensor, bins: int = 15) -> float:
    """Adaptive (equal-mass) ECE of confidences `conf` (N,) and booleans `correct` (N,): sum_b (n_b / N)
    |acc_b - conf_b| over `bins` consecutive bins of the confidence-sorted predictions, sized as numpy.array_split
    sizes them; correctness is averaged within groups of equal confidence (order-free). NaN if N = 0."""
    if int(bins) != bins or bins < 1:
        raise ValueError(f"bins must be an integer >= 1, got {bins}")
    if conf.shape != correct.shape or conf.ndim != 1:
        raise ValueError(f"conf and correct must both have shape (N,), got {tuple(conf.shape)} and "
                         f"{tuple(correct.shape)}")
    n = conf.numel()
    if n == 0:
        return math.nan
    c, order = torch.sort(conf.double(), stable=True)
    _, group, counts = torch.unique_consecutive(c, return_inverse=True, return_counts=True)
    hits = torch.zeros(len(counts), dtype=torch.float64, device=c.device).index_add_(0, group,
                                                                                   correct[order].double())
    acc = (hits / counts)[group]  # (N,) the mean correctness of each sample's tie group
    sizes = torch.full((bins,), n // bins, device=c.device)
    sizes[: n % bins] += 1
    which = torch.repeat_interleave(torch.arange(bins, device=c.device), sizes)  # (N,) bin of each sorted sample
    gaps = torch.zeros(bins, dtype=torch.float64, device=c.device).index_add_(0, which, acc - c)
    return (gaps.abs().sum() / n).item()


def aurc(conf: torch.Tensor, correct: torch.Tensor) -> float:
    """Area under the risk-coverage curve (lower is better); ties spread their errors evenly (order-free)."""
    if conf.numel() == 0:
        return math.nan
    order = torch.sort(conf.double(), descending=True, stable=True).indices
    conf_sorted, wrong = conf.double()[order], (~correct[order]).double()
    _, counts = torch.unique_consecutive(conf_sorted, return_counts=True)  # tie groups, in sorted order
    group = torch.repeat_interleave(torch.arange(len(counts), device=conf.device), counts)  # (N,)
    ends = counts.cumsum(0)
    starts = ends - counts
    group_errors = torch.zeros(len(counts), dtype=torch.float64, device=conf.device).index_add_(0, group, wrong)
    before = group_errors.cumsum(0) - group_errors  # errors of all more confident groups
    k = torch.arange(1, conf.numel() + 1, device=conf.device, dtype=torch.float64)
    within = k - starts[group]  # 1..count inside each group
    errors = before[group] + group_errors[group] * within / counts[group]
    return (errors / k).mean().item()


def summarize(probs: torch.Tensor, targets: torch.Tensor, *, bins: int = 10, cutoffs: Sequence[float] = (0.0, 0.9),
              samples: torch.Tensor | None = None, log_probs: torch.Tensor | None = None, adaptive_bins: int = 15,
              classwise_bins: int = 15) -> dict:
    """All metrics of `probs` (N, C) against `targets` (N,) in one call; see the module docstring."""
    if _check(probs, targets) is None:
        raise ValueError("probs is empty (0 predictions): nothing to score")
    return Metrics(probs.shape[1], bins=bins, cutoffs=cutoffs, device=probs.device, adaptive_bins=adaptive_bins,
                   classwise_bins=classwise_bins).update(
        probs, targets, samples, log_probs).compute()


SCALAR_KEYS = ("nll", "acc", "top5", "brier", "ece", "ece_signed", "iou", "auroc", "aurc")
