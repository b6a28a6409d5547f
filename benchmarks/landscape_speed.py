"""Loss-landscape speed: ops.landscapes.landscape against the naive loop, same grid, subset and MC masks.

naive: per grid point and MC mask, copy.deepcopy(model) + load_state_dict(w0 + x d1 + y d2), then a full
       evaluation of the subset, the dropout masks fixed by reseeding torch's generator before every batch
       (F.dropout draws them again at every point), metrics with ops.metrics.
ours:  ops.landscapes.landscape: weights set in place, masks drawn once and replayed, and the variants below
       (each a separate row): eager, stacked (all masks in one pass), vmap over `--points-per-pass` points with
       the masks stacked, torch.compile with one mask or all masks per pass (its compile time, with
       an empty on-disk cache unless --warm-cache, is in the total and in the first point's time),
       torch.compile + bf16 autocast (opt-in: it moves the numbers, see max_abs_nll_diff_vs_eager).
ratio_total = naive seconds / our seconds; ratio_steady uses our time per point after the first (compiled).

Each line of output is JSON; the last one holds the ratios. On a shared machine the share of CPU time taken by
other processes during each run is printed too (`others_cpu_share`, from /proc/stat and our own CPU time).

    python benchmarks/landscape_speed.py [--n 7] [--images 256] [--masks 2] [--device cpu]
"""
import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

if "--warm-cache" not in sys.argv:  # a first-time user's compile: an empty inductor cache (set before torch loads)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor_")

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ops import datasets, pretrained  # noqa: E402
from ops import landscapes as L  # noqa: E402


def cpu_snapshot():
    """(busy jiffies of the whole machine, our own CPU seconds), to see how much others used meanwhile."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        busy = sum(fields) - fields[3] - fields[4]  # minus idle and iowait
    except OSError:
        busy = None
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return busy, usage.ru_utime + usage.ru_stime


def timed(fn):
    """(result, seconds, share of the machine's busy CPU time used by other processes)."""
    busy0, own0 = cpu_snapshot()
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    busy1, own1 = cpu_snapshot()
    others = None
    if busy0 is not None:
        total = (busy1 - busy0) / os.sysconf("SC_CLK_TCK")
        others = max(0.0, total - (own1 - own0)) / max(seconds * (os.cpu_count() or 1), 1e-9)
    return result, seconds, others


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="resnet_mcdo_smoothing_18")
    parser.add_argument("--n", type=int, default=7, help="grid points per axis (n x n)")
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--images", type=int, default=256, help="fixed evaluation subset")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--masks", type=int, default=2, help="MC-dropout masks (a landscape each)")
    parser.add_argument("--points-per-pass", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--variants", default="eager,stacked,vmap,compile,compile_stacked,compile_bf16")
    parser.add_argument("--warm-cache", action="store_true", help="keep torch.compile's on-disk cache")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    model = pretrained.load_models([args.model], device=device, verbose=False)[args.model]
    try:
        data = datasets.get_dataset("fashion_mnist")[0]
        data_name = "fashion_mnist (train)"
    except FileNotFoundError:
        data, data_name = datasets.synthetic(n_train=args.images, n_test=8)[0], "synthetic"
    dirs = L.random_directions(model, 2, seed=0)
    axis = L.grid_axis(args.n, args.scale)
    common = dict(xs=axis, ys=axis, n_masks=args.masks, n_images=args.images, batch_size=args.batch_size)
    print(json.dumps({"config": {**vars(args), "data": data_name, "threads": torch.get_num_threads(),
                                 "points": args.n ** 2, "torch": torch.__version__}}), flush=True)

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def run_naive():
        out = L.naive_landscape(model, data, dirs, masks="reseed", **common)
        sync()
        return out

    naive, naive_s, naive_others = timed(run_naive)
    print(json.dumps({"run": "naive", "seconds": round(naive_s, 2), "others_cpu_share": naive_others}), flush=True)
    ref = np.array([r["nll"] for r in naive if r["mask"] == 0])

    M = args.masks
    variants = {"eager": {"masks_per_pass": 1}, "stacked": {"masks_per_pass": M},
                "vmap": {"points_per_pass": args.points_per_pass, "masks_per_pass": M},
                "compile": {"compile": True, "masks_per_pass": 1},
                "compile_stacked": {"compile": True, "masks_per_pass": M},
                "compile_bf16": {"compile": True, "precision": "bf16", "masks_per_pass": 1}}
    rows = {}
    for name in args.variants.split(","):
        kw = variants[name]
        stamps = []
        if kw.get("compile"):
            torch._dynamo.reset()  # each compiled variant compiles afresh (the on-disk cache starts empty)

        def run():
            stamps.append(time.perf_counter())
            out = L.landscape(model, data, dirs, **common, **kw,
                              on_point=lambda i, recs: stamps.append(time.perf_counter()))
            sync()
            return out

        land, s, others = timed(run)
        # stamps[0] is the start, stamps[k] the end of the k-th finished point (a vmap pass ends several at once)
        per_pass = kw.get("points_per_pass", 1)
        first = float(stamps[per_pass] - stamps[0])
        later = len(stamps) - 1 - per_pass
        steady = float(stamps[-1] - stamps[per_pass]) / later if later > 0 else None
        rows[name] = {"run": name, "seconds": round(s, 2), "first_pass_seconds": round(first, 2),
                      "steady_s_per_point": None if steady is None else round(steady, 3),
                      "ratio_total": round(naive_s / s, 2),
                      "ratio_steady": None if steady is None else round(naive_s / (steady * args.n ** 2), 2),
                      "others_cpu_share": others}
        rows[name]["_nll"] = land.grid("nll", 0).ravel()
        print(json.dumps({k: v for k, v in rows[name].items() if k != "_nll"}), flush=True)
    for row in rows.values():  # same masks as eager: how far each variant moves the numbers
        row["max_abs_nll_diff_vs_eager"] = (float(np.abs(row["_nll"] - rows["eager"]["_nll"]).max())
                                            if "eager" in rows else None)
    summary = {"naive_seconds": round(naive_s, 2), "points": args.n ** 2, "images": args.images, "masks": args.masks,
               "naive_nll_range": [float(ref.min()), float(ref.max())],
               **{name: {k: r[k] for k in ("seconds", "ratio_total", "ratio_steady", "max_abs_nll_diff_vs_eager")}
                  for name, r in rows.items()}}
    print(json.dumps({"summary": summary}), flush=True)


if __name__ == "__main__":
    main()
