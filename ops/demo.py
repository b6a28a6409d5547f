"""`make demo`: the headline experiment on the embedded Fashion-MNIST, one command on a fresh machine.

Checks for Fashion-MNIST (installing Debian's `dataset-fashion-mnist` when it is missing and this process may
run apt-get), executes classification.ipynb with papermill (training resnet_mcdo_18 and
resnet_mcdo_smoothing_18), then prints the NLL / Acc / ECE table and where the outputs are.

    python -m ops.demo [--epochs 3] [--width 16] [--test-size 2000] [--with-dnn]
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from . import datasets, reports

ROOT = Path(__file__).resolve().parents[1]
TABLE_SIZES = (1, 2, 5, 10, 20, 50)


def ensure_fashion_mnist(root):
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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--test-size", type=int, default=2000)
    parser.add_argument("--with-dnn", action="store_true", help="also train the deterministic pair")
    parser.add_argument("--out-dir", default="runs/demo")
    args = parser.parse_args(argv)

    start = time.time()
    ensure_fashion_mnist("./data")
    uid = time.strftime("%Y%m%d-%H%M%S")
    names = ["resnet_mcdo_18", "resnet_mcdo_smoothing_18"] + (["resnet_dnn_18", "resnet_dnn_smoothing_18"]
                                                              if args.with_dnn else [])
    out = Path(args.out_dir) / uid
    out.mkdir(parents=True, exist_ok=True)
    print(f"Training {', '.join(names)} on Fashion-MNIST: width {args.width}, {args.epochs} epochs on all 60,000 "
          f"training images (bf16 autocast), then MC sizes 1..50 on {args.test_size} test images (fp32).", flush=True)
    params = dict(model_names=names, epochs=args.epochs, width=args.width, test_size=args.test_size,
                  out_dir=args.out_dir, uid=uid)
    cmd = [sys.executable, "-m", "papermill", str(ROOT / "classification.ipynb"), str(out / "classification.ipynb"),
           "--log-output", "--cwd", str(Path.cwd())]
    for key, value in params.items():
        cmd += ["-y", f"{key}: {json.dumps(value)}"]
    if subprocess.run(cmd).returncode != 0:
        sys.exit(f"The notebook failed; the partly executed copy is {out / 'classification.ipynb'}")

    results = json.loads((out / "results.json").read_text())
    table = reports.format_table({name: {int(n): m for n, m in res.items()} for name, res in results.items()},
                                 keys=("nll", "acc", "ece"), sizes=TABLE_SIZES)
    minutes = (time.time() - start) / 60
    print(f"\nFashion-MNIST test subset ({args.test_size} images), width {args.width}, {args.epochs} epochs:\n")
    print(table)
    print(f"\nWall time {minutes:.1f} min. Outputs in {out.resolve()}: executed notebook classification.ipynb, "
          f"table.md, ensemble_size.png, reliability_*.png, leaderboard/ CSVs, TensorBoard logs in runs/ "
          f"(tensorboard --logdir {out / 'runs'}).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
