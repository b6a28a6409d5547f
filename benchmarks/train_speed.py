"""Training throughput: the project's trainer (in-memory device loader, channels_last, bf16 autocast) against a
plain fp32 PyTorch loop fed by a torchvision DataLoader with PIL transforms, on CIFAR-sized images.

    python benchmarks/train_speed.py --model resnet_mcdo_smoothing_18 --batch-size 64 --steps 20 --device cpu

Ours runs `ops.trains.train` itself (2 epochs of --steps steps; the second is timed, so one-time set-up is
excluded), once with the fast settings (--precision, default bf16, channels_last) and once in fp32. The plain
loop gets --steps untimed warm-up steps, then --steps timed ones. Prints one JSON line per run and a final line
with all figures and the ratios.
"""
import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import models  # noqa: E402
from ops import trains  # noqa: E402
from ops.datasets import synthetic  # noqa: E402


def ours(args, precision, channels_last):
    n_train = args.batch_size * args.steps
    with tempfile.TemporaryDirectory() as tmp:
        result = trains.train(None, args.model, [
            "dataset.name=synthetic", f"dataset.kwargs={{\"n_train\": {n_train}, \"n_test\": 64}}",
            f"train.batch_size={args.batch_size}", "train.epochs=2", "train.warmup_epochs=0",
            f"env.device={args.device}", f"env.precision={precision}",
            f"env.channels_last={'true' if channels_last else 'false'}", "env.progress=false",
            "env.tensorboard=false", f"env.out_dir={tmp}/runs", f"env.checkpoint_root={tmp}/ckpt",
            "val.every=1000", *([f"model.block.width={args.width}"] if args.width else [])])
    images_per_s = result["history"][-1]["train_images_per_s"]
    return {"model": args.model, "batch_size": args.batch_size, "device": args.device, "precision": precision,
            "channels_last": channels_last, "loader": "ops DeviceLoader", "images_per_s": round(images_per_s, 1)}


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
    import torchvision.transforms as T

    train, _ = synthetic(n_train=args.batch_size * args.steps * 2, n_test=1)
    transform = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                           T.Normalize(train.mean, train.std)])
    loader = torch.utils.data.DataLoader(PILDataset(train.images, train.labels, transform), args.batch_size,
                                         shuffle=True, num_workers=args.workers, drop_last=True,
                                         pin_memory=args.device == "cuda")
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = models.get_model(args.model, num_classes=10, **({"width": args.width} if args.width else {})).to(device)
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
    return {"model": args.model, "batch_size": args.batch_size, "device": args.device, "precision": "fp32",
            "channels_last": False, "loader": f"torchvision DataLoader + PIL ({args.workers} workers)",
            "images_per_s": round(seen / (time.time() - start), 1)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet_mcdo_smoothing_18")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default="bf16", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--width", type=int, default=None, help="ResNet base width (default: the model's, 64)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the plain loop")
    args = parser.parse_args()
    if args.device == "cuda":
        torch.backends.cudnn.benchmark = True

    runs = {"plain_fp32": plain(args), "ours_fp32": ours(args, "fp32", True),
            f"ours_{args.precision}": ours(args, args.precision, True)}
    for name, r in runs.items():
        print(json.dumps({"run": name, **r}), flush=True)
    fast = runs[f"ours_{args.precision}"]
    base = runs["plain_fp32"]["images_per_s"]
    print(json.dumps({**fast, "plain_fp32_images_per_s": base, "ours_fp32_images_per_s": runs["ours_fp32"]["images_per_s"],
                      "ratio_fast_vs_plain": round(fast["images_per_s"] / base, 2),
                      "ratio_fp32_vs_plain": round(runs["ours_fp32"]["images_per_s"] / base, 2)}))


if __name__ == "__main__":
    main()
