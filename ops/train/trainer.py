"""Training: the paper's recipe from a config, resumable, on one process or many (torchrun + DDP).

    cfg = ops.train.configs.load_config("configs/fashion_mnist_general.json", ["train.epochs=2"])
    result = ops.train.trainer.train(cfg, model_name="resnet_mcdo_smoothing_18")
    result["model"], result["run_dir"], result["history"], result["checkpoint"]

The pieces, in the order `train` runs them:
- `setup`: config checks, devices and precision, data, model, optimizer and schedule, the run folder
  (ops.train.runs: unique uid, lock, resume checks) and the resumed state;
- `train_one_epoch`: one pass over the training data (the first `train.warmup_epochs` epochs warm the lr up
  linearly, per iteration; the config's schedule then runs over `train.epochs` more epochs, as the original);
- `evaluate`: the validation metrics (ops.evaluate, in `val.precision`: fp32 unless asked);
- `save_epoch` / `resume`: the run's checkpoint through models.save_checkpoint / models.load_checkpoint;
- `log_epoch`: metrics.csv, TensorBoard (scalars, and a figure of the metrics if `epoch_figure` is given, e.g.
  ops.plots.reliability_diagram: figures are drawn by ops.plots, never here), the terminal;
- `finish`: the final weights in the original layout (models.save) with their card (ops.train.pretrained).

Randomness is reseeded at the start of every epoch from (seed, epoch, rank), and the loaders' shuffles and
augmentations likewise, so a resumed run draws exactly what the uninterrupted run would have drawn (bitwise on
CPU; on GPU up to nondeterministic kernels). An interrupted epoch is redone from its start. A non-finite loss
stops training with NonFiniteLossError and leaves the last good checkpoint alone; Ctrl-C stops it with the
`env.uid=` that resumes it.

Under torchrun (WORLD_SIZE > 1) each process trains on its shard with DistributedDataParallel (NCCL on GPUs,
gloo on CPU), the global batch is split across processes, BatchNorm can be synchronised (train.sync_bn),
metrics are all-reduced, and only rank 0 writes.
"""
from __future__ import annotations

import csv
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

import models
from models.atomic import atomic_file

from ops.common.runtime import autocast, machine_info, progress_bar, resolve_precision, safe_channels_last, to_device
from ops.data import datasets as datasets_
from ops.data import loaders
from ops.evaluate import engine as evaluation
from ops.evaluate.metrics import SCALAR_KEYS
from ops.train import distributed, pretrained
from ops.train.configs import make_config
from ops.train.runs import RunFolder

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence
    from typing import Any

CHECKPOINT = "checkpoint.pth.tar"


class NonFiniteLossError(RuntimeError):
    pass


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def build_optimizer(parameters: Iterable[torch.nn.Parameter], cfg: dict) -> torch.optim.Optimizer:
    fused = {"fused": True} if cfg["fused"] else {}  # PyTorch's fused kernels (CPU and CUDA)
    if cfg["name"] == "SGD":
        return torch.optim.SGD(parameters, lr=cfg["lr"], momentum=cfg["momentum"], nesterov=cfg["nesterov"],
                               weight_decay=cfg["weight_decay"], **fused)
    return torch.optim.AdamW(parameters, lr=cfg["lr"], betas=tuple(cfg["betas"]), weight_decay=cfg["weight_decay"],
                             **fused)


def lr_factor(step: int, steps_per_epoch: int, epochs: int, warmup_epochs: int, scheduler: str) -> float:
    """Multiplier of the base lr after `step` optimizer steps.

    The first `warmup_epochs` epochs ramp it up linearly (per iteration); the schedule then runs over the
    `epochs` scheduled epochs that follow (MultiStepLR milestones and the cosine count those, as the original,
    whose warm-up epochs come before its 200 scheduled ones)."""
    warmup_steps = warmup_epochs * steps_per_epoch
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    step -= warmup_steps
    name = scheduler["name"]
    if name == "MultiStepLR":
        epoch = step // steps_per_epoch
        return scheduler["gamma"] ** sum(epoch >= m for m in scheduler["milestones"])
    if name == "CosineAnnealingLR":
        ratio = scheduler["eta_min"]  # final lr as a fraction of the base lr (see build_scheduler)
        t = min(1.0, step / max(1, epochs * steps_per_epoch))
        return ratio + (1 - ratio) * 0.5 * (1 + math.cos(math.pi * t))
    return 1.0  # constant


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: dict,
                    steps_per_epoch: int) -> torch.optim.lr_scheduler.LRScheduler:
    sched = dict(cfg["optim"]["scheduler"])
    if sched["name"] == "CosineAnnealingLR":  # eta_min is an lr; the factor is relative to the base lr
        sched["eta_min"] = sched["eta_min"] / cfg["optim"]["lr"]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(
        step, steps_per_epoch, cfg["train"]["epochs"], cfg["train"]["warmup_epochs"], sched))


def build_loss(cfg: dict, num_classes: int) -> tuple[Any, nn.Module]:
    """(mixup_fn or None, criterion). Label smoothing, Mixup and CutMix are opt-in (they change calibration)."""
    t = cfg["train"]
    if t["mixup"] > 0 or t["cutmix"] > 0:
        from timm.data import Mixup
        from timm.loss import SoftTargetCrossEntropy

        mixup = Mixup(mixup_alpha=t["mixup"], cutmix_alpha=t["cutmix"], label_smoothing=t["label_smoothing"],
                      num_classes=num_classes)
        return mixup, SoftTargetCrossEntropy()
    return None, nn.CrossEntropyLoss(label_smoothing=t["label_smoothing"])


def load_data(cfg: dict) -> tuple[str, torch.utils.data.Dataset, torch.utils.data.Dataset]:
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


def _rank0(world_size, rank, fn):
    """Run `fn` on rank 0 and give its result to every rank; an exception there is raised on every rank."""
    result, error = None, None
    if rank == 0:
        try:
            result = fn()
        except Exception as exc:  # handed to the other ranks, which would otherwise wait forever
            error = exc
    if world_size > 1:
        box = [(result, None if error is None else f"{type(error).__name__}: {error}")]
        dist.broadcast_object_list(box, src=0)
        result, message = box[0]
        if rank != 0 and message is not None:
            raise RuntimeError(f"rank 0 failed: {message}")
    if error is not None:
        raise error
    return result


@dataclass
class Run:
    """Everything one training run holds; built by `setup`."""
    cfg: dict
    name: str
    dataset_name: str
    rank: int
    world_size: int
    device: torch.device
    precision: str
    train_loader: object
    test_loader: object
    num_classes: int
    model: nn.Module
    net: nn.Module  # the model as trained: compiled and/or wrapped in DDP
    optimizer: torch.optim.Optimizer
    scheduler: object
    scaler: object
    mixup: object
    criterion: nn.Module
    steps_per_epoch: int
    total_epochs: int
    folder: RunFolder = None
    uid: str = None
    writer: object = None
    start_epoch: int = 0
    history: list = field(default_factory=list)
    epoch_figure: object = None  # (metrics, title) -> matplotlib figure for TensorBoard, e.g. ops.plots
    example_shape: tuple = None  # (1, C, H, W) of one training image, for model.txt


    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def run_dir(self) -> Path:
        return self.folder.path if self.folder is not None else Path(self.cfg["env"]["out_dir"]) / \
            self.dataset_name / self.name / str(self.uid)

    @property
    def checkpoint(self) -> Path:
        return self.run_dir / CHECKPOINT


def setup(config: Mapping | None = None, model_name: str | None = None, overrides: Sequence[str] = (),
          model: nn.Module | None = None, epoch_figure: Any = None) -> "Run":
    """Check the config and build a Run: devices, data, model, optimizer, run folder, resumed state."""
    cfg = make_config(config, overrides)
    env, tcfg = cfg["env"], cfg["train"]
    if env["threads"]:
        torch.set_num_threads(env["threads"])
    name = model_name or cfg["model"]["name"] or getattr(model, "name", None)
    if name is None:
        raise ValueError("No model: pass model_name=..., model=..., or set model.name in the config "
                         "(e.g. model.name=resnet_mcdo_smoothing_18)")
    if model is None and name not in models.list_models():
        models.get_model(name)  # raises with close matches, before any data is loaded
    cfg["model"]["name"] = name
    rank, world_size, device = distributed.init_distributed(env["device"])
    if tcfg["batch_size"] % world_size:
        raise ValueError(f"train.batch_size={tcfg['batch_size']} must be divisible by the {world_size} processes")
    precision, why = resolve_precision(env["precision"], device)
    if rank == 0 and env["precision"] == "auto":
        print(f"precision: {precision} ({why}); set env.precision to choose", flush=True)
    cfg["env"]["precision"] = precision  # the stored config says what was run
    seed_everything(env["seed"])
    run = _build_run(cfg, name, model, rank, world_size, device, precision)
    run.epoch_figure = epoch_figure
    _open_folder(run)
    try:
        if env["resume"] and run.checkpoint.exists():
            resume(run)
        _rank0(world_size, rank, lambda: _prepare_folder(run))
    except BaseException:
        close(run)
        raise
    return run


def _build_run(cfg, name, model, rank, world_size, device, precision) -> "Run":
    """Data, model, optimizer, schedule and loss of a run (no files yet)."""
    env, tcfg = cfg["env"], cfg["train"]
    dataset_name, train_set, test_set = load_data(cfg)
    num_classes = len(train_set.classes)
    if model is None:
        model = models.get_model(name, num_classes=num_classes, stem=cfg["model"]["stem"], **cfg["model"]["block"])
    env["channels_last"], why = safe_channels_last(model, device, env["channels_last"])
    if why != "asked for" and rank == 0:
        print(why, flush=True)  # and the stored config says the layout that was run
    common = dict(device=device, workers=env["workers"], seed=env["seed"], rank=rank, world_size=world_size,
                  channels_last=env["channels_last"])
    train_loader = loaders.make_loader(train_set, tcfg["batch_size"] // world_size, train=True,
                                       augment=tcfg["augment"], pad=tcfg["crop_padding"], **common)
    test_loader = loaders.make_loader(test_set, cfg["val"]["batch_size"], train=False, **common)
    if len(train_loader) == 0:
        raise ValueError(f"train.batch_size={tcfg['batch_size']} is larger than the {len(train_set)} training "
                         f"images (full batches only): lower it")
    if tcfg["sync_bn"] and world_size > 1:
        model = distributed.convert_sync_batchnorm(model, device)
    model = model.to(device, memory_format=torch.channels_last if env["channels_last"] else torch.preserve_format)
    optimizer = build_optimizer(model.parameters(), cfg["optim"])
    steps_per_epoch = min(len(train_loader), tcfg["max_steps_per_epoch"] or len(train_loader))
    mixup, criterion = build_loss(cfg, num_classes)
    net = torch.compile(model) if env["compile"] else model
    if world_size > 1:
        net = nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    run = Run(cfg=cfg, name=name, dataset_name=dataset_name, rank=rank, world_size=world_size, device=device,
              precision=precision, train_loader=train_loader, test_loader=test_loader, num_classes=num_classes,
              model=model, net=net, optimizer=optimizer, scheduler=build_scheduler(optimizer, cfg, steps_per_epoch),
              scaler=torch.amp.GradScaler(device.type, enabled=precision == "fp16"), mixup=mixup,
              criterion=criterion, steps_per_epoch=steps_per_epoch,
              total_epochs=tcfg["warmup_epochs"] + tcfg["epochs"])
    run.example_shape = (1, *train_set.images.shape[1:]) if hasattr(train_set, "images") else None
    return run


def _open_folder(run):
    """The run folder: unique uid and lock on rank 0 (the others wait), the uid shared with every rank."""
    env = run.cfg["env"]
    folder = RunFolder(env["out_dir"], run.dataset_name, run.name, env["uid"]) if run.is_main else None
    _rank0(run.world_size, run.rank, lambda: folder.open() and None)
    run.folder, run.uid = folder, folder.uid if run.is_main else None
    if run.world_size > 1:
        box = [run.uid]
        dist.broadcast_object_list(box, src=0)
        run.uid = box[0]
    run.cfg["env"]["uid"] = run.uid


def _prepare_folder(run):
    """Rank 0: check a resumption's config, then write what this run is (config.json, model.txt, TensorBoard)."""
    env = run.cfg["env"]
    run.folder.reconcile(run.cfg, run.start_epoch, restart=not env["resume"])
    run.folder.write_config(run.cfg)
    shape = run.example_shape
    (run.run_dir / "model.txt").write_text((f"{models.summary(run.model, shape)}\n\n" if shape else "")
                                           + f"{run.model}\n")
    if env["tensorboard"]:
        from torch.utils.tensorboard import SummaryWriter

        run.writer = SummaryWriter(str(run.run_dir), purge_step=run.start_epoch + 1)


def resume(run: Run) -> None:
    """Load the run's checkpoint: weights, optimizer, schedule, grad scaler, epoch and history."""
    # The stored optimizer and schedule bring their hyper-parameters along (lr, momentum, weight decay, betas, the
    # base lrs). Those of the config in effect win (they differ only after env.force_resume), so that what is
    # trained is what config.json says; the stored state keeps the momentum buffers and the step count.
    config_groups = [{k: v for k, v in group.items() if k != "params"} for group in run.optimizer.param_groups]
    config_base_lrs = list(run.scheduler.base_lrs)
    state = models.load_checkpoint(run.checkpoint, run.model, run.optimizer, map_location=run.device)
    run.scheduler.load_state_dict(state["scheduler"])
    for group, config_group in zip(run.optimizer.param_groups, config_groups):
        group.update(config_group)
    run.scheduler.base_lrs = config_base_lrs
    for group, base_lr, factor in zip(run.optimizer.param_groups, config_base_lrs, run.scheduler.lr_lambdas):
        group["lr"] = base_lr * factor(run.scheduler.last_epoch)
    run.scaler.load_state_dict(state["scaler"])
    run.start_epoch, run.history = state["epoch"], state["history"]
    if run.start_epoch >= run.total_epochs and run.is_main:
        print(f"{run.checkpoint} has finished all {run.total_epochs} epochs; raise train.epochs to continue",
              flush=True)
    elif run.is_main:
        print(f"Resuming {run.checkpoint} after epoch {run.start_epoch}", flush=True)


def save_epoch(run: Run, epoch: int) -> None:
    models.save_checkpoint(run.checkpoint, run.model, run.optimizer, scheduler=run.scheduler.state_dict(),
                           scaler=run.scaler.state_dict(), epoch=epoch, history=run.history, config=run.cfg)


def train_one_epoch(run: Run, epoch: int) -> dict:
    """One epoch of training; returns its row of metrics.csv (loss, lr, images/s)."""
    env = run.cfg["env"]
    # Reseed from (seed, epoch, rank): a resumed run draws the same dropout masks and mixup pairs.
    seed_everything(env["seed"] * 1_000_003 + epoch * 1_009 + run.rank)
    run.train_loader.set_epoch(epoch)
    run.net.train()
    loss_sum = torch.zeros((), device=run.device)
    seen, steps, start = 0, 0, time.time()
    bar = progress_bar(total=run.steps_per_epoch, desc=f"epoch {epoch + 1}/{run.total_epochs}", unit="batch",
                       disable=not (run.is_main and env["progress"]), leave=False)
    for step, (x, y) in enumerate(run.train_loader):
        if step >= run.steps_per_epoch:
            break
        x, y = to_device(x, run.device, env["channels_last"]), y.to(run.device, non_blocking=True)
        target = y
        if run.mixup is not None:
            x, target = run.mixup(x, y)
        with autocast(run.device, run.precision):
            logits = run.net(x)
        loss = run.criterion(logits.float(), target)
        run.optimizer.zero_grad(set_to_none=True)
        run.scaler.scale(loss).backward()
        run.scaler.step(run.optimizer)
        run.scaler.update()
        run.scheduler.step()
        loss_sum += loss.detach()
        seen, steps = seen + x.shape[0], step + 1
        if step % 10 == 0 or steps == run.steps_per_epoch:  # one host sync every 10 steps
            value = loss.item()
            if not math.isfinite(value):
                raise NonFiniteLossError(
                    f"Loss is {value} at epoch {epoch + 1}, step {step + 1}; training stopped. The last good "
                    f"checkpoint ({run.checkpoint if run.checkpoint.exists() else 'none yet'}) is untouched. "
                    f"Lower optim.lr or use env.precision=fp32.")
            bar.set_postfix(loss=f"{value:.3f}", lr=f"{run.optimizer.param_groups[0]['lr']:.4f}",
                            img_s=f"{seen * run.world_size / (time.time() - start):.0f}", refresh=False)
        bar.update(1)
    bar.close()
    if run.world_size > 1:
        dist.all_reduce(loss_sum)
        loss_sum /= run.world_size
    train_loss = loss_sum.item() / max(1, steps)
    if not math.isfinite(train_loss):
        raise NonFiniteLossError(f"Mean training loss of epoch {epoch + 1} is {train_loss}; training stopped. "
                                 f"The last good checkpoint is untouched.")
    return {"epoch": epoch + 1, "train_loss": train_loss, "lr": run.optimizer.param_groups[0]["lr"],
            "train_images_per_s": seen * run.world_size / (time.time() - start)}


def evaluate(run: Run) -> dict:
    """Validation metrics of the model (val.n_ff: MC forward passes, val.precision) on the run's test images."""
    val = run.cfg["val"]
    return evaluation.test(run.model, val["n_ff"], run.test_loader, precision=val["precision"],
                           channels_last=run.cfg["env"]["channels_last"], fuse_bn=False)


def _write_csv(path, history):
    keys = list(dict.fromkeys(k for row in history for k in row))
    with atomic_file(path, "w") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(history)


def log_epoch(run: Run, row: Mapping, metrics: Mapping) -> None:
    """metrics.csv, TensorBoard and one line in the terminal (rank 0)."""
    writer, epoch = run.writer, row["epoch"]
    if writer is not None:
        for key in ("train_loss", "lr", "train_images_per_s"):
            writer.add_scalar(f"train/{key.removeprefix('train_')}", row[key], epoch)
        for key, value in row.items():
            if key.startswith("test_") and isinstance(value, float) and math.isfinite(value):
                writer.add_scalar(f"test/{key[5:]}", value, epoch)
        if metrics is not None and run.epoch_figure is not None:
            writer.add_figure("test/reliability", run.epoch_figure(metrics, run.name), epoch)
        writer.flush()
    _write_csv(run.run_dir / "metrics.csv", run.history)
    if run.cfg["env"]["progress"]:
        line = f"{run.name} epoch {epoch}/{run.total_epochs}: train loss {row['train_loss']:.4f}, " \
               f"{row['train_images_per_s']:.0f} img/s"
        if metrics is not None:
            line += f", test NLL {metrics['nll']:.4f}, Acc {100 * metrics['acc']:.2f}%, ECE {100 * metrics['ece']:.2f}%"
        print(line, flush=True)


def finish(run: Run) -> Path:
    """The final weights in the original layout, with the card that rebuilds the model; returns the path."""
    env = run.cfg["env"]
    final = models.save(run.model, run.dataset_name, run.uid, optimizer=run.optimizer, root=env["checkpoint_root"])
    pretrained.write_card(final, run.cfg, run.num_classes, run.history, machine=machine_info(run.device),
                          wall_time_s=sum(row.get("epoch_time_s", 0.0) for row in run.history))
    return final


def close(run: Run) -> None:
    if run.writer is not None:
        run.writer.close()
        run.writer = None
    if run.folder is not None and run.is_main:
        run.folder.close()


def train(config: dict = None, model_name: str = None, overrides: Sequence[str] = (), model: nn.Module = None,
          epoch_figure: Any = None) -> dict:
    """Train according to `config` (a dict as from ops.train.configs.load_config, or None for the defaults).

    model_name overrides `config["model"]["name"]`; `model` may be given ready-built (it must carry `.name`);
    epoch_figure(metrics, title) draws the figure logged to TensorBoard after each validation (e.g.
    ops.plots.reliability_diagram; none by default: the trainer draws nothing itself).
    Returns {"model", "run_dir", "history", "checkpoint", "config", "uid", "test_loader"}.
    """
    run = setup(config, model_name, overrides, model, epoch_figure)
    cfg, epoch = run.cfg, run.start_epoch
    try:
        for epoch in range(run.start_epoch, run.total_epochs):
            started = time.time()
            row = train_one_epoch(run, epoch)
            last = epoch + 1 == run.total_epochs
            metrics = None
            if last or (epoch + 1) % cfg["val"]["every"] == 0:
                metrics = evaluate(run)
                row.update({f"test_{k}": metrics[k] for k in SCALAR_KEYS + ("acc_90", "unc_90", "iou_90", "freq_90")
                            if k in metrics})
            row["epoch_time_s"] = time.time() - started  # training and validation: the card sums these
            run.history.append(row)
            if run.is_main:
                log_epoch(run, row, metrics)
                save_epoch(run, epoch + 1)
            if run.world_size > 1:
                dist.barrier()
        try:
            final = finish(run) if run.is_main else None
        finally:  # the other ranks tear their process group down only once rank 0 has exported (or failed to):
            if run.world_size > 1:  # rank 1 leaving early aborted once ("terminate called without an active
                dist.barrier()      # exception")
    except KeyboardInterrupt:
        if run.is_main:
            # What the checkpoint file holds, not what was in memory: an interrupt may land between the two.
            saved = models.read_checkpoint(run.checkpoint).get("epoch") if run.checkpoint.exists() else None
            if saved is None:
                print(f"\nInterrupted in epoch {epoch + 1}, before any epoch was saved: the same command with "
                      f"env.uid={run.uid} starts it again", flush=True)
            else:
                print(f"\nInterrupted in epoch {epoch + 1}; {run.checkpoint} holds epoch {saved}. Resume with the "
                      f"same command and env.uid={run.uid}", flush=True)
        raise
    finally:
        close(run)
    return {"model": run.model, "run_dir": run.run_dir, "history": run.history, "checkpoint": final, "config": cfg,
            "uid": run.uid, "test_loader": run.test_loader}
