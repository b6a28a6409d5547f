"""Evaluation speed and precision, printed as JSON lines (the last one holds everything).

(a) metrics: ops.evaluate.metrics.Metrics on 1000-class predictions against a plain numpy path in the original's style
    (per batch on the host: confusion matrices for every cutoff and every calibration bin, argsort top-5,
    one-hot Brier).
(b) sweep: ops.evaluate.sweep of resnet_mcdo_smoothing_18 at CIFAR size, ensemble sizes 1..50, against the
    naive way of the original's notebook: a full sequential test per size (n separate forward passes per batch,
    F.dropout masks, numpy metrics), i.e. 95 passes.
(c) precision: NLL and ECE of a trained model (resnet_mcdo_smoothing_18, width 16, trained briefly on
    Fashion-MNIST if installed, else the synthetic set) in fp32 against bf16 autocast + channels_last, with MC
    dropout off (so that the precision is the only difference) and with 10 MC samples from the same seed.

    python benchmarks/eval_speed.py [--images 64] [--device cpu]
"""
import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import models  # noqa: E402
from ops.train import trainer as trains  # noqa: E402
from ops.evaluate.metrics import Metrics  # noqa: E402
from ops.evaluate.engine import PAPER_SIZES, sweep  # noqa: E402


def timed(fn, *args, **kwargs):
    """(result, seconds) of one call."""
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start


class NumpyMetrics:
    """The original style: numpy on the host, a C x C confusion matrix per cutoff (certain and uncertain) and
    per calibration bin, accumulated batch by batch."""

    def __init__(self, num_classes, cutoffs=(0.0, 0.9), bins=10):
        C = num_classes
        self.C, self.cutoffs, self.edges = C, cutoffs, np.linspace(0, 1, bins + 1)
        self.cms = [[np.zeros((C, C)), np.zeros((C, C))] for _ in cutoffs]
        self.bin_cms = [np.zeros((C, C)) for _ in range(bins)]
        self.bin_conf = np.zeros(bins)
        self.nll, self.top5, self.brier, self.n = 0.0, 0.0, 0.0, 0

    def cm(self, y, pred, mask):
        return np.bincount(self.C * y[mask] + pred[mask], minlength=self.C ** 2).reshape(self.C, self.C)

    def update(self, probs, y):
        conf, pred = probs.max(1), probs.argmax(1)
        self.nll += -np.log(np.maximum(probs[np.arange(len(y)), y], 1e-38)).sum()
        self.top5 += (probs.argsort(1)[:, -5:] == y[:, None]).any(1).sum()
        self.brier += ((np.eye(self.C)[y] - probs) ** 2).sum()
        self.n += len(y)
        for c, (certain, uncertain) in zip(self.cutoffs, self.cms):
            certain += self.cm(y, pred, conf > c)
            uncertain += self.cm(y, pred, conf <= c)
        for b, (lo, hi) in enumerate(zip(self.edges[:-1], self.edges[1:])):
            mask = (conf > lo) & (conf <= hi) | ((b == 0) & (conf == 0))
            self.bin_cms[b] += self.cm(y, pred, mask)
            self.bin_conf[b] += conf[mask].sum()

    def compute(self):
        counts = np.array([m.sum() for m in self.bin_cms])
        accs = np.array([np.trace(m) / max(m.sum(), 1) for m in self.bin_cms])
        confs = self.bin_conf / np.maximum(counts, 1)
        out = {"nll": self.nll / self.n, "top5": self.top5 / self.n, "brier": self.brier / self.n,
               "ece": float((counts / self.n * np.abs(accs - confs)).sum())}
        for c, (certain, _) in zip(self.cutoffs, self.cms):
            tp, rows, cols = np.diag(certain), certain.sum(1), certain.sum(0)
            iou = np.divide(tp, rows + cols - tp, out=np.zeros(self.C), where=(rows + cols - tp) > 0)
            out[f"acc_{c}"] = np.trace(certain) / max(certain.sum(), 1)
            out[f"iou_{c}"] = iou[rows > 0].mean() if (rows > 0).any() else 0.0
        return out


def bench_metrics(n=20000, classes=1000, batch=500):
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(3 * torch.randn(n, classes, generator=g), -1)
    y = torch.randint(0, classes, (n,), generator=g)
    probs_np, y_np = probs.numpy(), y.numpy()

    def accumulate(meter, p, t):
        for i in range(0, n, batch):
            meter.update(p[i:i + batch], t[i:i + batch])
        return meter.compute()

    ref_out, numpy_s = timed(accumulate, NumpyMetrics(classes), probs_np, y_np)
    out, ours_s = timed(accumulate, Metrics(classes), probs, y)
    assert abs(out["nll"] - ref_out["nll"]) < 1e-4 and abs(out["ece"] - ref_out["ece"]) < 1e-4
    return {"metrics_predictions": n, "metrics_classes": classes, "metrics_numpy_s": round(numpy_s, 3),
            "metrics_ours_s": round(ours_s, 3), "metrics_speedup": round(numpy_s / ours_s, 1),
            "metrics_ours_predictions_per_s": round(n / ours_s)}


@torch.no_grad()
def naive_sweep(model, batches, sizes):
    """A full sequential test per ensemble size, as the original did: sum(sizes) passes per batch."""
    model.eval()
    results = {}
    for n in sizes:
        meter = NumpyMetrics(10)
        for x, y in batches:
            probs = torch.stack([F.softmax(model(x), dim=1) for _ in range(n)]).mean(0)
            meter.update(probs.cpu().numpy(), y.numpy())
        results[n] = meter.compute()
    return results


def bench_sweep(images, device, width=64):
    torch.manual_seed(0)
    model = models.get_model("resnet_mcdo_smoothing_18", num_classes=10, width=width).to(device).eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(images, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (images,), generator=g)
    batches = [(x[i:i + 64].to(device), y[i:i + 64]) for i in range(0, images, 64)]

    with models.layers.stock_dropout():  # the original draws its masks with F.dropout (ours is part of the gain)
        naive, naive_s = timed(naive_sweep, model, batches, PAPER_SIZES)
    ours, ours_s = timed(sweep, model, batches, PAPER_SIZES, device=device)
    _, plain_s = timed(sweep, model, batches, PAPER_SIZES, device=device, channels_last=False, fuse_bn=False)
    _, stacked_s = timed(sweep, model, batches, PAPER_SIZES, device=device, max_batch=1024)
    with models.layers.stock_dropout():
        _, stock_s = timed(sweep, model, batches, PAPER_SIZES, device=device)
    return {"sweep_images": images, "sweep_width": width, "sweep_sizes": list(PAPER_SIZES),
            "sweep_passes_naive": sum(PAPER_SIZES), "sweep_passes_ours": max(PAPER_SIZES),
            "sweep_naive_s": round(naive_s, 2), "sweep_ours_s": round(ours_s, 2),
            "sweep_speedup": round(naive_s / ours_s, 2),
            "sweep_ours_without_channels_last_and_bn_folding_s": round(plain_s, 2),
            "sweep_speedup_prefix_reuse_only": round(naive_s / plain_s, 2),
            "sweep_ours_stacking_16_copies_per_pass_s": round(stacked_s, 2),
            "sweep_ours_with_stock_dropout_s": round(stock_s, 2),
            "sweep_nll_at_50_naive_vs_ours": [round(float(naive[50]["nll"]), 4), round(ours[50]["nll"], 4)]}


def bench_precision(device):
    with tempfile.TemporaryDirectory() as tmp:
        try:
            from ops.data.datasets import get_dataset

            get_dataset("fashion_mnist")
            data = ["dataset.name=fashion_mnist", "dataset.train_size=6000", "dataset.test_size=2000"]
        except FileNotFoundError:
            data = ["dataset.name=synthetic", "dataset.kwargs={\"n_train\": 4000, \"n_test\": 2000}"]
        result = trains.train(None, "resnet_mcdo_smoothing_18", data + [
            "model.block.width=16", "train.epochs=2", "train.warmup_epochs=0", "env.precision=fp32",
            "optim.scheduler.name=CosineAnnealingLR", "env.progress=false",
            f"env.device={device}", "env.tensorboard=false", f"env.out_dir={tmp}/r", f"env.checkpoint_root={tmp}/c"])
    model, loader = result["model"], result["test_loader"]
    out = {"precision_dataset": data[0].split("=")[1], "precision_model": "resnet_mcdo_smoothing_18 (width 16)"}
    for label, mc in (("deterministic", False), ("mc10", True)):
        figures = {}
        for precision in ("fp32", "bf16"):
            torch.manual_seed(0)
            with models.mc_dropout(model, enabled=mc):
                r = sweep(model, loader, (10 if mc else 1,), device=device, precision=precision,
                          channels_last=precision != "fp32", fuse_bn=False)
            figures[precision] = r[10 if mc else 1]
        for key in ("nll", "ece"):
            a, b = figures["fp32"][key], figures["bf16"][key]
            out[f"precision_{label}_{key}_fp32"] = round(a, 5)
            out[f"precision_{label}_{key}_bf16"] = round(b, 5)
            out[f"precision_{label}_{key}_rel_change"] = round(abs(b - a) / abs(a), 4) if a else math.nan
    out["precision_acc_fp32"] = round(figures["fp32"]["acc"], 4)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=64, help="test images of the sweep benchmark")
    parser.add_argument("--width", type=int, default=64, help="model width of the sweep (64: the paper's; the "
                                                               "reference set of make paper has 16)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: metrics,sweep,precision")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    results = {"device": args.device, "threads": torch.get_num_threads()}
    for name, fn in (("metrics", bench_metrics), ("sweep", lambda: bench_sweep(args.images, args.device, args.width)),
                     ("precision", lambda: bench_precision(args.device))):
        if name not in skip:
            part = fn()
            print(json.dumps({"part": name, **part}), flush=True)
            results.update(part)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
