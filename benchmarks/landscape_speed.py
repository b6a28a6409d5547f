"""Loss-landscape speed: ops.analysis.landscapes.landscape against the naive loop, same grid, subset and MC masks.

naive: per grid point and MC mask, copy.deepcopy(model) + load_state_dict(w0 + x d1 + y d2), then a full
       evaluation of the subset, the dropout masks fixed by reseeding torch's generator before every batch
       (stock F.dropout, as the original's, draws them again at every point), metrics with ops.evaluate.metrics.
ours:  ops.analysis.landscapes.landscape: weights set in place, masks drawn once and replayed, and the variants below
       (each a separate row): eager, stacked (all masks in one pass), vmap over `--points-per-pass` points with
       the masks stacked, torch.compile with one mask or all masks per pass (compiled with an empty on-disk
       cache unless --warm-cache), torch.compile + bf16 autocast (opt-in: it moves the numbers, see
       max_abs_nll_diff_vs_eager).

Timing: every variant first runs once on one point (the warm-up, where torch.compile compiles; reported apart).
Then `--rounds` rounds each run the naive loop and every variant on the same n x n grid, one after the other, so
that a busy neighbour on a shared machine slows them alike; the summary takes medians of seconds per point.
`ratio` = naive / ours per point; `cost_over_forward_floor` = ours / the forward passes alone (every batch
under every mask at fixed weights, masks replayed, no metrics: what a point cannot cost less than);
`ratio_121_points_with_warmup` charges the warm-up to a 121-point grid (the
notebook's 11 x 11). Each line of output is JSON; the last one holds the summary. The share of CPU time taken by
other processes during each run is printed too (`others_cpu_share`, from /proc/stat and our own CPU time).

    python benchmarks/landscape_speed.py [--n 3] [--images 256] [--masks 4] [--rounds 3] [--device cpu]
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

import models  # noqa: E402
from ops.data import datasets  # noqa: E402
from ops.train import pretrained
from ops.analysis import landscapes as L  # noqa: E402
from benchmarks.naive_landscape import naive_landscape  # noqa: E402
from ops.analysis.fixed import FixedMasks, prepare_batches  # noqa: E402


@torch.no_grad()
def forward_floor(model, data, images, batch_size, masks, device):
    """Seconds of the forward passes one grid point needs and nothing else: every batch under every MC mask
    (masks replayed as the landscape does, channels_last, eval), no weight update, no metrics."""
    batches = prepare_batches(data, images, batch_size, seed=0, device=device)
    batches = [(x.contiguous(memory_format=torch.channels_last), y) for x, y in batches]
    model = model.eval().to(memory_format=torch.channels_last)
    with FixedMasks(model, seed=0, channels_last=True) as fixed:
        def one_point():
            for m in range(masks):
                for b, (x, _) in enumerate(batches):
                    fixed.select(m, b, x)
                    model(x)
        one_point()  # draws and caches the masks, as the landscape's first point does
        start = time.perf_counter()
        one_point()
        seconds = time.perf_counter() - start
    model.to(memory_format=torch.contiguous_format)
    return seconds


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
    parser.add_argument("--n", type=int, default=3, help="grid points per axis (n x n) of each round")
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--images", type=int, default=256, help="fixed evaluation subset")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--masks", type=int, default=4, help="MC-dropout masks (a landscape each)")
    parser.add_argument("--points-per-pass", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--variants", default="eager,stacked,vmap,compile,compile_stacked,compile_bf16")
    parser.add_argument("--warm-cache", action="store_true", help="keep torch.compile's on-disk cache")
    parser.add_argument("--rounds", type=int, default=3, help="naive and ours alternate this many times")
    parser.add_argument("--total-points", type=int, default=121, help="grid size for the ratio with warm-up")
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
    common = dict(n_masks=args.masks, n_images=args.images, batch_size=args.batch_size)
    print(json.dumps({"config": {**vars(args), "data": data_name, "threads": torch.get_num_threads(),
                                 "points_per_round": args.n ** 2, "torch": torch.__version__}}), flush=True)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    M = args.masks
    variants = {"eager": {"masks_per_pass": 1}, "stacked": {"masks_per_pass": M},
                "vmap": {"points_per_pass": args.points_per_pass, "masks_per_pass": M},
                "compile": {"compile": True, "masks_per_pass": 1},
                "compile_stacked": {"compile": True, "masks_per_pass": M},
                "compile_bf16": {"compile": True, "precision": "bf16", "masks_per_pass": 1}}
    names = args.variants.split(",")

    def ours(kw, xs, ys):
        out = L.landscape(model, data, dirs, xs=xs, ys=ys, **common, **kw)
        sync()
        return out

    # Warm-up: each variant once on one point (torch.compile compiles here; its time is reported apart).
    compile_s = {}
    for name in names:
        _, compile_s[name], _ = timed(lambda: ours(variants[name], [0.0], [0.0]))
        print(json.dumps({"warmup": name, "seconds": round(compile_s[name], 2)}), flush=True)

    # Rounds: naive then every variant on the same grid, so that a busy neighbour slows all of them alike.
    per_point = {"naive": [], "floor": [], **{name: [] for name in names}}
    nll = {}
    for r in range(args.rounds):
        # The naive loop draws its masks with stock F.dropout, as the original does (our faster CPU dropout is
        # part of what this library brings; the landscape itself replays stored masks and draws none).
        with models.layers.stock_dropout():
            naive, s, others = timed(lambda: (naive_landscape(model, data, dirs, xs=axis, ys=axis, masks="reseed",
                                                                 **common), sync())[0])
        per_point["naive"].append(s / args.n ** 2)
        per_point["floor"].append(forward_floor(model, data, args.images, args.batch_size, M, device))
        print(json.dumps({"round": r, "run": "naive", "seconds": round(s, 2), "others_cpu_share": others}), flush=True)
        for name in names:
            land, s, others = timed(lambda: ours(variants[name], axis, axis))
            per_point[name].append(s / args.n ** 2)
            nll[name] = land.grid("nll", 0).ravel()
            print(json.dumps({"round": r, "run": name, "seconds": round(s, 2), "others_cpu_share": others}),
                  flush=True)

    naive_pp = float(np.median(per_point["naive"]))
    summary = {"grid": f"{args.n}x{args.n}", "images": args.images, "masks": M, "batch_size": args.batch_size,
               "rounds": args.rounds, "naive_s_per_point": round(naive_pp, 3),
               "floor_s_per_point": round(float(np.median(per_point["floor"])), 3)}
    for name in names:
        pp = float(np.median(per_point[name]))
        summary[name] = {
            "s_per_point": round(pp, 3), "ratio": round(naive_pp / pp, 2), "warmup_seconds": round(compile_s[name], 1),
            "cost_over_forward_floor": round(pp / float(np.median(per_point["floor"])), 2),
            # a whole grid of args.total_points points, the warm-up (compilation) included
            f"ratio_{args.total_points}_points_with_warmup": round(
                naive_pp * args.total_points / (pp * args.total_points + compile_s[name]), 2),
            "max_abs_nll_diff_vs_eager": (float(np.abs(nll[name] - nll["eager"]).max()) if "eager" in nll else None)}
    print(json.dumps({"summary": summary}), flush=True)


if __name__ == "__main__":
    main()
