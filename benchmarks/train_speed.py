"""Training throughput: the project's trainer against a plain fp32 PyTorch loop fed by a torchvision DataLoader
with PIL transforms, on CIFAR-sized synthetic images; each speed switch measured on its own.

    python benchmarks/train_speed.py                                   # CPU: the demo's model (width 16, batch 128)
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python benchmarks/train_speed.py   # imitate an AVX2-only CPU
    python benchmarks/train_speed.py --device cuda --width 64 --batch-size 128 --num-classes 100 --steps 50

Runs (--runs, comma-separated): `plain` (fp32, DataLoader + PIL, 2 workers), and ours as `<precision>[+cl]
[+compile]` with precision fp32 | bf16 | auto: `ops.train.trainer.train` itself, 2 epochs of --steps steps, the second
timed (so set-up and compilation are excluded). Prints the CPU kind (with the imitation variables, if set), one
JSON line per run, and a summary line with every ratio to the plain loop.
"""
import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

# Inductor's on-disk cache does not key on ATEN_CPU_CAPABILITY / ONEDNN_MAX_CPU_ISA: kernels compiled under the
# AVX2 imitation and reused natively (or the reverse) corrupt memory. A fresh cache per benchmark process.
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="inductor-bench-"))

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import models  # noqa: E402
from ops.common import runtime  # noqa: E402
from ops.train import trainer as trains
from ops.data.datasets import synthetic  # noqa: E402

DEFAULT_RUNS = "plain,fp32,fp32+cl,fp32+compile,fp32+cl+compile,auto,auto+cl+compile"


def machine(device):
    info = {"device": str(device), "threads": torch.get_num_threads(), "torch": torch.__version__}
    if device.type == "cpu":
        info["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
        info["native_bf16"] = runtime.native_bf16(device)[0]
        info["imitation"] = {k: os.environ[k] for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA") if k in os.environ}
    else:
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def ours(args, spec):
    precision, *switches = spec.split("+")
    unknown = set(switches) - {"cl", "compile"}
    if unknown or precision not in ("fp32", "bf16", "fp16", "auto"):
        raise SystemExit(f"unknown run {spec!r}: use <fp32|bf16|fp16|auto>[+cl][+compile]")
    n_train = args.batch_size * args.steps
    with tempfile.TemporaryDirectory() as tmp:
        result = trains.train(None, args.model, [
            "dataset.name=synthetic", f"dataset.kwargs={{\"n_train\": {n_train}, \"n_test\": 64, "
                                      f"\"num_classes\": {args.num_classes}}}",
            f"train.batch_size={args.batch_size}", "train.epochs=2", "train.warmup_epochs=0",
            f"env.device={args.device}", f"env.precision={precision}",
            f"env.channels_last={'true' if 'cl' in switches else 'false'}",
            f"env.compile={'true' if 'compile' in switches else 'false'}", "env.progress=false",
            "env.tensorboard=false", f"env.out_dir={tmp}/runs", f"env.checkpoint_root={tmp}/ckpt",
            "val.every=1000", f"model.block.width={args.width}"])
    images_per_s = result["history"][-1]["train_images_per_s"]
    return {"run": spec, "precision": result["config"]["env"]["precision"], "channels_last": "cl" in switches,
            "compile": "compile" in switches, "loader": "ops DeviceLoader", "images_per_s": round(images_per_s, 1)}


class PILDataset(torch.utils.data.Dataset):
    def __init__(self, images, labels, transform):
        from PIL import Image

        self.images = [Image.fromarray(img.permute(1, 2, 0).numpy()) for img in images]
        self.labels, self.transform = labels.tolist(), transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.transform(self.images[i]), self.labels[i]


def plain(args):
    """The loop a user would write: fp32, torchvision transforms on PIL images in DataLoader workers, stock
    F.dropout (not our faster CPU training dropout, models.layers.FAST_CPU_DROPOUT)."""
    import torchvision.transforms as T

    with models.layers.stock_dropout():
        return _plain(args, T)


def _plain(args, T):
    train, _ = synthetic(n_train=args.batch_size * args.steps * 2, n_test=1, num_classes=args.num_classes)
    transform = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                           T.Normalize(train.mean, train.std)])
    loader = torch.utils.data.DataLoader(PILDataset(train.images, train.labels, transform), args.batch_size,
                                         shuffle=True, num_workers=args.workers, drop_last=True,
                                         pin_memory=args.device == "cuda")
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = models.get_model(args.model, num_classes=args.num_classes, width=args.width).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    criterion = torch.nn.CrossEntropyLoss()
    model.train()
    seen, start = 0, None
    for step, (x, y) in enumerate(loader):
        if step == args.steps:  # warm-up done: start the clock
            if device.type == "cuda":
                torch.cuda.synchronize()
            start, seen = time.time(), 0
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        loss = criterion(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seen += x.shape[0]
    if device.type == "cuda":
        torch.cuda.synchronize()
    return {"run": "plain", "precision": "fp32", "channels_last": False, "compile": False,
            "loader": f"torchvision DataLoader + PIL ({args.workers} workers)",
            "images_per_s": round(seen / (time.time() - start), 1)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet_mcdo_smoothing_18")
    parser.add_argument("--width", type=int, default=16, help="ResNet base width (the demo's 16; the paper's 64)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--runs", default=DEFAULT_RUNS)
    parser.add_argument("--repeat", type=int, default=1, help="measure every run this many times, interleaved; "
                                                                "the summary takes medians")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the plain loop")
    parser.add_argument("--epoch-images", type=int, default=50_000,
                        help="images per epoch for the implied time of the paper's 1 + 200 epochs")
    args = parser.parse_args()
    if args.device == "cuda":
        torch.backends.cudnn.benchmark = True
    print(json.dumps({"machine": machine(torch.device(args.device)), "model": args.model, "width": args.width,
                      "batch_size": args.batch_size, "steps": args.steps}), flush=True)
    measured = {}
    for _ in range(args.repeat):  # interleaved, so that a slow minute of the machine hits every run alike
        for spec in args.runs.split(","):
            r = plain(args) if spec == "plain" else ours(args, spec)
            measured.setdefault(spec, []).append(r["images_per_s"])
            hours = 201 * args.epoch_images / r["images_per_s"] / 3600
            print(json.dumps({**r, "paper_201_epochs_hours": round(hours, 2)}), flush=True)
    median = {k: sorted(v)[len(v) // 2] for k, v in measured.items()}
    if "plain" in median:
        print(json.dumps({"summary_median_images_per_s": median, "repeats": args.repeat,
                          "ratio_vs_plain": {k: round(v / median["plain"], 2) for k, v in median.items()}}))


if __name__ == "__main__":
    main()
