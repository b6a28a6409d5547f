"""`make demo`: the headline experiment on the embedded Fashion-MNIST, one command on a fresh machine.

Checks for Fashion-MNIST (installing Debian's `dataset-fashion-mnist` when it is missing and this process may
run apt-get), executes classification.ipynb with papermill on the CPU recipe of configs/fashion_mnist_demo.json
(training resnet_mcdo_18 and resnet_mcdo_smoothing_18, then sweeping MC ensemble sizes), and prints the recipe,
the table with 95% bootstrap intervals and where the outputs are. Progress shows in the terminal as text bars
(the notebook runs headless, where widgets cannot be drawn).

    python -m ops.demo [--config configs/fashion_mnist_demo.json] [--with-dnn] [--seed 0] [key=value ...]
    python -m ops.demo --evaluate resources/models_checkpoints    # score the shipped models: docs/index.md
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ops.data import datasets
from ops.train import runs

if TYPE_CHECKING:
    from collections.abc import Sequence

ROOT = Path(__file__).resolve().parents[1]


def ensure_fashion_mnist(root: Path | str) -> None:
    try:
        datasets.get_dataset("fashion_mnist", root=root)
        return
    except datasets.DatasetNotFoundError as missing:
        can_apt = shutil.which("apt-get") and hasattr(os, "geteuid") and os.geteuid() == 0
        if not can_apt:
            sys.exit(f"{missing}\n(make demo installs it by itself only when run as root on a Debian-based system.)")
    print("Fashion-MNIST is missing: installing Debian's dataset-fashion-mnist ...", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "dataset-fashion-mnist"]):
        if subprocess.run(cmd, env=env).returncode != 0:
            sys.exit(f"`{' '.join(cmd)}` failed; install dataset-fashion-mnist by hand or put the IDX files in "
                     f"{Path(root) / 'fashion_mnist'}")
    datasets.get_dataset("fashion_mnist", root=root)  # raises with the full message if it is still missing


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/fashion_mnist_demo.json")
    parser.add_argument("--with-dnn", action="store_true", help="also train the deterministic pair")
    parser.add_argument("--out-dir", default="runs/classification")
    parser.add_argument("--evaluate", default=None, metavar="FOLDER",
                        help="score the checkpoints in FOLDER (with cards) instead of training them")
    parser.add_argument("--seed", type=int, default=0, help="seed of the evaluation's MC-dropout masks")
    parser.add_argument("overrides", nargs="*", help="section.key=value changes of the recipe")
    args = parser.parse_args(argv)

    start = time.time()
    ensure_fashion_mnist("./data")
    uid = runs.new_uid()
    names = ["resnet_mcdo_18", "resnet_mcdo_smoothing_18"] + (["resnet_dnn_18", "resnet_dnn_smoothing_18"]
                                                              if args.with_dnn else [])
    out = Path(args.out_dir) / uid
    out.mkdir(parents=True, exist_ok=True)
    what = f"Scoring the checkpoints in {args.evaluate}" if args.evaluate else "Training"
    print(f"{what}: {', '.join(names)} on Fashion-MNIST with {args.config}, then MC ensemble sizes 1..50 (MC seed "
          f"{args.seed}); outputs in {out}", flush=True)
    params = dict(config_path=args.config, model_names=names, overrides=args.overrides, out_dir=args.out_dir,
                  uid=uid, seed=args.seed, evaluate_checkpoints=args.evaluate)
    cmd = [sys.executable, "-m", "papermill", str(ROOT / "classification.ipynb"), str(out / "classification.ipynb"),
           "--log-output", "--cwd", str(Path.cwd())]
    for key, value in params.items():
        cmd += ["-y", f"{key}: {json.dumps(value)}"]
    env = {**os.environ, "SMOOTHING_PROGRESS": "text"}  # text bars: the kernel has no front-end for widgets
    if subprocess.run(cmd, env=env).returncode != 0:
        sys.exit(f"The notebook failed; the partly executed copy is {out / 'classification.ipynb'}")

    saved = json.loads((out / "results.json").read_text())
    recipe = saved["recipe"]
    t, d = recipe["train"], recipe["dataset"]
    minutes = (time.time() - start) / 60
    trained = "Scored (not trained here): " if args.evaluate else "Recipe: "
    print(f"\n{trained}{args.config}: ResNet-18 width {recipe['model']['block'].get('width', 64)}, "
          f"{t['warmup_epochs']} warm-up + {t['epochs']} epochs on {d['train_size'] or 'all 60,000'} training "
          f"images, batch {t['batch_size']}, {recipe['optim']['name']} lr {recipe['optim']['lr']} "
          f"({recipe['optim']['scheduler']['name']}), training precision {recipe['env.precision']}; "
          f"evaluation in fp32 on {d['test_size'] or 'all 10,000'} test images, MC masks from seed {args.seed}.\n")
    print((out / "table.md").read_text())
    print(f"Estimates with 95% bootstrap intervals over test images; a difference row whose interval excludes 0 is "
          f"resolved by this test set.\nWall time {minutes:.1f} min. Outputs in {out.resolve()}: the executed "
          f"notebook, table.md, results.json, ensemble_size.png, reliability_*.png, leaderboard/ CSVs"
          + ("." if args.evaluate else f", weights in models_checkpoints/ and TensorBoard logs in runs/ "
             f"(tensorboard --logdir {out / 'runs'})."))
    return 0


if __name__ == "__main__":
    sys.exit(main())
