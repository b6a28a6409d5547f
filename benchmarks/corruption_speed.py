"""Speed of -C generation (ops.data.corrupted_sets), printed as JSON lines (the last one holds everything).

(a) generation: generate_corrupted on Fashion-MNIST's 10,000 test images (synthetic images if it is missing),
    every corruption at 5 severities, for each profile, with one worker process per core; wall time and the
    per-corruption seconds recorded in meta.json.
(b) the imagecorruptions package on the same images, one image at a time (its API), timed on --sample images
    per corruption and extrapolated to the whole set and 5 severities (imagenet severities: the only ones it has).

    python benchmarks/corruption_speed.py [--corruptions all|standard] [--sample 100] [--device cpu]
"""
import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ops.data import corruptions as oc  # noqa: E402
from ops.data import corrupted_sets as csets  # noqa: E402
from ops.data import datasets  # noqa: E402


def test_images():
    try:
        return datasets.get_dataset("fashion_mnist")[1]
    except datasets.DatasetNotFoundError:
        return datasets.synthetic(n_train=1, n_test=10_000)[1]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corruptions", choices=["all", "standard"], default="all")
    parser.add_argument("--sample", type=int, default=100, help="images per corruption for the package timing")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--profiles", nargs="+", default=list(oc.PROFILES))
    args = parser.parse_args()
    names = oc.ALL_CORRUPTIONS if args.corruptions == "all" else oc.CORRUPTIONS
    test = test_images()
    out = {"images": len(test), "corruptions": len(names), "severities": 5, "cores": torch.get_num_threads()}
    for profile in args.profiles:
        with tempfile.TemporaryDirectory() as root:
            start = time.perf_counter()
            cset = csets.generate_corrupted(test, root, corruptions=names, profile=profile, device=args.device,
                                         progress=False)
            wall = time.perf_counter() - start
        line = {"profile": profile, "wall_s": round(wall, 1), "per_corruption_s": cset.meta["seconds"]}
        print(json.dumps(line), flush=True)
        out[f"generate_{profile}_s"] = line["wall_s"]

    from imagecorruptions import corrupt

    sample = test.images[:args.sample].permute(0, 2, 3, 1).numpy()
    total = 0.0
    per = {}
    for c in names:
        corrupt(sample[0], 1, c)  # compile numba kernels outside the clock
        start = time.perf_counter()
        for s in (1, 3, 5):
            for img in sample:
                corrupt(np.ascontiguousarray(img), s, c)
        per[c] = (time.perf_counter() - start) / (3 * len(sample))
        total += per[c] * len(test) * 5
    line = {"package_one_process_s_estimated": round(total, 1),
            "package_per_image_ms": {c: round(1e3 * v, 3) for c, v in per.items()}}
    print(json.dumps(line), flush=True)
    out["package_one_process_s_estimated"] = line["package_one_process_s_estimated"]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
