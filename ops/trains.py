"""Training: the paper's recipe from a config, resumable, on one process or many (torchrun + DDP).

    result = ops.trains.train(ops.configs.load_config("configs/fashion_mnist_general.json", ["train.epochs=2"]),
                              model_name="resnet_mcdo_smoothing_18")
    result["model"], result["run_dir"], result["history"]

Every epoch: a tqdm bar (loss, lr, img/s), TensorBoard scalars (train loss, lr, every test metric) and the
reliability diagram, a row of `metrics.csv`, and an atomic checkpoint `checkpoint.pth.tar` in the run folder
`{out_dir}/{dataset}/{model}/{uid}` (model, optimizer, scheduler, grad scaler, epoch, history, config).
Starting again with the same uid resumes after the last finished epoch. Randomness is reseeded at the start of
every epoch from (seed, epoch, rank) and the loaders' shuffles and augmentations likewise, so a resumed run
draws exactly what the uninterrupted run would have drawn (bitwise on CPU; on GPU up to nondeterministic
kernels). A non-finite loss stops training with NonFiniteLossError and leaves the last good checkpoint alone.

Under torchrun (WORLD_SIZE > 1) each process trains on its shard with DistributedDataParallel (NCCL on GPUs,
gloo on CPU), the global batch is split across processes, metrics are all-reduced, and only rank 0 writes.
"""
import csv
import json
import math
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from tqdm.auto import tqdm

import models

from . import datasets as datasets_
from . import loaders, plots, pretrained
from . import tests as evaluation
from .configs import make_config
from .metrics import SCALAR_KEYS
from .runtime import autocast, check_precision, resolve_device, to_device

CHECKPOINT = "checkpoint.pth.tar"


class NonFiniteLossError(RuntimeError):
    pass


def init_distributed(device):
    """(rank, world_size, device) from torchrun's environment; initialises the process group if needed."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return 0, 1, resolve_device(device)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and str(device) not in ("cpu",)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        return dist.get_rank(), world_size, torch.device("cuda", local_rank)
    return dist.get_rank(), world_size, torch.device("cpu")


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def build_optimizer(parameters, cfg):
    if cfg["name"] == "SGD":
        return torch.optim.SGD(parameters, lr=cfg["lr"], momentum=cfg["momentum"], nesterov=cfg["nesterov"],
                               weight_decay=cfg["weight_decay"])
    if cfg["name"] == "AdamW":
        return torch.optim.AdamW(parameters, lr=cfg["lr"], betas=tuple(cfg["betas"]),
                                 weight_decay=cfg["weight_decay"])
    raise ValueError(f"optim.name must be SGD or AdamW, got {cfg['name']!r}")


def lr_factor(step, steps_per_epoch, epochs, warmup_epochs, scheduler):
    """Multiplier of the base lr after `step` optimizer steps: linear warm-up x the epoch schedule."""
    warmup_steps = warmup_epochs * steps_per_epoch
    warm = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    name = scheduler["name"]
    if name == "MultiStepLR":
        epoch = step // steps_per_epoch
        main = scheduler["gamma"] ** sum(epoch >= m for m in scheduler["milestones"])
    elif name == "CosineAnnealingLR":
        ratio = scheduler["eta_min"]  # final lr as a fraction of the base lr (see build_scheduler)
        t = min(1.0, step / max(1, epochs * steps_per_epoch))
        main = ratio + (1 - ratio) * 0.5 * (1 + math.cos(math.pi * t))
    elif name == "constant":
        main = 1.0
    else:
        raise ValueError(f"optim.scheduler.name must be MultiStepLR, CosineAnnealingLR or constant, got {name!r}")
    return warm * main


def build_scheduler(optimizer, cfg, steps_per_epoch):
    sched = dict(cfg["optim"]["scheduler"])
    if sched["name"] == "CosineAnnealingLR":  # eta_min is an lr; the factor is relative to the base lr
        sched["eta_min"] = sched["eta_min"] / cfg["optim"]["lr"]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(
        step, steps_per_epoch, cfg["train"]["epochs"], cfg["train"]["warmup_epochs"], sched))


def build_loss(cfg, num_classes):
    """(mixup_fn or None, criterion). Label smoothing, Mixup and CutMix are opt-in (they change calibration)."""
    t = cfg["train"]
    if t["mixup"] > 0 or t["cutmix"] > 0:
        from timm.data import Mixup
        from timm.loss import SoftTargetCrossEntropy

        mixup = Mixup(mixup_alpha=t["mixup"], cutmix_alpha=t["cutmix"], label_smoothing=t["label_smoothing"],
                      num_classes=num_classes)
        return mixup, SoftTargetCrossEntropy()
    return None, nn.CrossEntropyLoss(label_smoothing=t["label_smoothing"])


def load_data(cfg):
    """(canonical dataset name, train set, test set) of a config, cut to dataset.train_size / test_size.

    The subsets are fixed by env.seed, so `python -m ops.run test` scores the test images the run validated on.
    """
    d, seed = cfg["dataset"], cfg["env"]["seed"]
    name = datasets_.canonical_name(d["name"])
    train_set, test_set = datasets_.get_dataset(name, root=d["root"], download=d["download"], mean=d["mean"],
                                                std=d["std"], **d["kwargs"])
    if d["train_size"] or d["test_size"]:
        train_set = train_set.subset(d["train_size"], seed=seed)
        test_set = test_set.subset(d["test_size"], seed=seed + 1)
    return name, train_set, test_set


def run_folder(cfg, dataset_name, model_name, rank, world_size):
    uid = cfg["env"]["uid"] or time.strftime("%Y%m%d-%H%M%S")
    if world_size > 1:  # every rank must agree on the folder (rank 0's clock)
        box = [uid]
        dist.broadcast_object_list(box, src=0)
        uid = box[0]
    return Path(cfg["env"]["out_dir"]) / dataset_name / model_name / str(uid), str(uid)


def _write_csv(path, history):
    keys = list(dict.fromkeys(k for row in history for k in row))
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(history)
    os.replace(tmp, path)


def train(config=None, model_name=None, overrides=(), model=None):
    """Train according to `config` (a dict as from ops.configs.load_config, or None for the defaults).

    model_name overrides config["model"]["name"]; `model` may be given ready-built (it must carry `.name`).
    Returns {"model", "run_dir", "history", "checkpoint", "config", "uid"}.
    """
    cfg = make_config(config, overrides)
    env, tcfg = cfg["env"], cfg["train"]
    check_precision(env["precision"])
    rank, world_size, device = init_distributed(env["device"])
    is_main = rank == 0
    seed_everything(env["seed"])

    # Data
    dataset_name, train_set, test_set = load_data(cfg)
    if tcfg["batch_size"] % world_size:
        raise ValueError(f"train.batch_size={tcfg['batch_size']} must be divisible by the {world_size} processes")
    common = dict(device=device, workers=env["workers"], seed=env["seed"], rank=rank, world_size=world_size,
                  channels_last=env["channels_last"])
    train_loader = loaders.make_loader(train_set, tcfg["batch_size"] // world_size, train=True,
                                       augment=tcfg["augment"], **common)
    test_loader = loaders.make_loader(test_set, cfg["val"]["batch_size"], train=False, **common)
    num_classes = len(train_set.classes)

    # Model, optimizer, schedule
    name = model_name or cfg["model"]["name"] or getattr(model, "name", None)
    if name is None:
        raise ValueError("No model: pass model_name=..., model=..., or set model.name in the config "
                         "(e.g. model.name=resnet_mcdo_smoothing_18)")
    cfg["model"]["name"] = name
    if model is None:
        model = models.get_model(name, num_classes=num_classes, stem=cfg["model"]["stem"], **cfg["model"]["block"])
    model = model.to(device, memory_format=torch.channels_last if env["channels_last"] else torch.preserve_format)
    optimizer = build_optimizer(model.parameters(), cfg["optim"])
    steps_per_epoch = len(train_loader)
    if tcfg["max_steps_per_epoch"]:
        steps_per_epoch = min(steps_per_epoch, tcfg["max_steps_per_epoch"])
    scheduler = build_scheduler(optimizer, cfg, steps_per_epoch)
    scaler = torch.amp.GradScaler(device.type, enabled=env["precision"] == "fp16")
    mixup, criterion = build_loss(cfg, num_classes)

    run_dir, uid = run_folder(cfg, dataset_name, name, rank, world_size)
    ckpt_path = run_dir / CHECKPOINT
    start_epoch, history = 0, []
    if env["resume"] and ckpt_path.exists():
        state = torch.load(ckpt_path, map_location=device, weights_only=True)
        models.check_state_dict(model, state["state_dict"], source=str(ckpt_path), checkpoint_name=state["name"])
        model.load_state_dict(state["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        start_epoch, history = state["epoch"], state["history"]
        if is_main:
            print(f"Resuming {ckpt_path} after epoch {start_epoch}")

    writer = None
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(cfg, indent=2))
        (run_dir / "model.txt").write_text(f"{models.summary(model, (1, *train_set.images.shape[1:]))}\n\n{model}\n"
                                           if hasattr(train_set, "images") else f"{model}\n")
        if env["tensorboard"]:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(run_dir), purge_step=start_epoch + 1)

    net = model
    if env["compile"]:
        net = torch.compile(net)
    if world_size > 1:
        net = nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)

    for epoch in range(start_epoch, tcfg["epochs"]):
        # Reseed from (seed, epoch, rank): a resumed run draws the same dropout masks and mixup pairs.
        seed_everything(env["seed"] * 1_000_003 + epoch * 1_009 + rank)
        train_loader.set_epoch(epoch)
        net.train()
        loss_sum = torch.zeros((), device=device)
        seen, start = 0, time.time()
        bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch + 1}/{tcfg['epochs']}", disable=not (
            is_main and env["progress"]), leave=False)
        for step, (x, y) in enumerate(train_loader):
            if step >= steps_per_epoch:
                break
            x, y = to_device(x, device, env["channels_last"]), y.to(device, non_blocking=True)
            target = y
            if mixup is not None:
                x, target = mixup(x, y)
            with autocast(device, env["precision"]):
                logits = net(x)
            loss = criterion(logits.float(), target)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            loss_sum += loss.detach()
            seen += x.shape[0]
            if step % 10 == 0 or step == steps_per_epoch - 1:  # one host sync every 10 steps
                value = loss.item()
                if not math.isfinite(value):
                    raise NonFiniteLossError(
                        f"Loss is {value} at epoch {epoch + 1}, step {step + 1}; training stopped. The last good "
                        f"checkpoint ({ckpt_path if ckpt_path.exists() else 'none yet'}) is untouched. Lower "
                        f"optim.lr or use env.precision=fp32.")
                bar.set_postfix(loss=f"{value:.3f}", lr=f"{optimizer.param_groups[0]['lr']:.4f}",
                                img_s=f"{seen * world_size / (time.time() - start):.0f}")
            bar.update(1)
        bar.close()
        steps = min(steps_per_epoch, step + 1)
        if world_size > 1:
            dist.all_reduce(loss_sum)
            loss_sum /= world_size
        train_loss = loss_sum.item() / steps
        if not math.isfinite(train_loss):
            raise NonFiniteLossError(f"Mean training loss of epoch {epoch + 1} is {train_loss}; training stopped. "
                                     f"The last good checkpoint is untouched.")
        row = {"epoch": epoch + 1, "train_loss": train_loss, "lr": optimizer.param_groups[0]["lr"],
               "train_images_per_s": seen * world_size / (time.time() - start)}

        last = epoch + 1 == tcfg["epochs"]
        metrics = None
        if last or (epoch + 1) % cfg["val"]["every"] == 0:
            metrics = evaluation.test(model, cfg["val"]["n_ff"], test_loader, precision=env["precision"],
                                      channels_last=env["channels_last"], fuse_bn=False)
            row.update({f"test_{k}": metrics[k] for k in SCALAR_KEYS + ("acc_90", "unc_90", "iou_90", "freq_90")
                        if k in metrics})
        history.append(row)

        if is_main:
            if writer is not None:
                writer.add_scalar("train/loss", train_loss, epoch + 1)
                writer.add_scalar("train/lr", row["lr"], epoch + 1)
                writer.add_scalar("train/images_per_s", row["train_images_per_s"], epoch + 1)
                for key, value in row.items():
                    if key.startswith("test_") and isinstance(value, float) and math.isfinite(value):
                        writer.add_scalar(f"test/{key[5:]}", value, epoch + 1)
                if metrics is not None:
                    writer.add_figure("test/reliability", plots.reliability_diagram(metrics, name), epoch + 1)
                writer.flush()
            _write_csv(run_dir / "metrics.csv", history)
            models.atomic_save({"name": name, "state_dict": model.state_dict(), "optimizer": optimizer.state_dict(),
                                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                                "epoch": epoch + 1, "history": history, "config": cfg}, ckpt_path)
            summary = f"epoch {epoch + 1}: train loss {train_loss:.4f}"
            if metrics is not None:
                summary += f", test NLL {metrics['nll']:.4f}, Acc {100 * metrics['acc']:.2f}%, " \
                           f"ECE {100 * metrics['ece']:.2f}%"
            if env["progress"]:
                tqdm.write(summary)
        if world_size > 1:
            dist.barrier()

    final = None
    if is_main:
        final = models.save(model, dataset_name, uid, optimizer=optimizer, root=env["checkpoint_root"])
        pretrained.write_card(final, cfg, num_classes, history)
        if writer is not None:
            writer.close()
    return {"model": model, "run_dir": run_dir, "history": history, "checkpoint": final, "config": cfg,
            "uid": uid, "test_loader": test_loader}
