"""Training: it learns, it resumes exactly, it stops on a non-finite loss, and DDP agrees with one process."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import models
from ops.evaluate import engine as evaluation
from ops.train import trainer as trains
from ops.train.trainer import NonFiniteLossError, train

ROOT = Path(__file__).resolve().parents[2]


def overrides(tmp_path, *extra):
    return ["dataset.name=synthetic", "dataset.kwargs={\"n_train\": 512, \"n_test\": 256}", "train.batch_size=64",
            "model.block.width=8", "optim.scheduler.name=constant", "optim.lr=0.05", "env.progress=false",
            "train.warmup_epochs=0", "env.precision=fp32", "env.device=cpu", f"env.out_dir={tmp_path / 'runs'}",
            f"env.checkpoint_root={tmp_path / 'ckpt'}", *extra]


def test_short_run_learns_and_writes_its_run_folder(tmp_path):
    result = train(None, "resnet_mcdo_smoothing_18", overrides(
        tmp_path, "train.epochs=4", "env.uid=a", "dataset.kwargs={\"n_train\": 1024, \"n_test\": 256}",
        "optim.lr=0.1", "optim.scheduler.name=CosineAnnealingLR"))
    history = result["history"]
    assert history[-1]["train_loss"] < 0.6 * history[0]["train_loss"]
    assert history[-1]["test_acc"] > 0.5  # 10 classes: chance is 0.1
    run = result["run_dir"]
    assert {p.name for p in run.iterdir()} >= {"config.json", "model.txt", "metrics.csv", "checkpoint.pth.tar"}
    assert any(p.name.startswith("events.out.tfevents") for p in run.iterdir())
    assert len((run / "metrics.csv").read_text().strip().splitlines()) == 5  # header + 4 epochs
    assert result["checkpoint"] == tmp_path / "ckpt" / "synthetic" / "resnet_mcdo_smoothing_18" / \
        "synthetic_resnet_mcdo_smoothing_18_a.pth.tar"
    loaded = models.load(models.get_model("resnet_mcdo_smoothing_18", width=8), "synthetic", "a",
                         root=tmp_path / "ckpt")
    for a, b in zip(loaded.state_dict().values(), result["model"].state_dict().values(), strict=True):
        assert torch.equal(a, b.cpu())


def test_resume_after_interruption_equals_uninterrupted_run(tmp_path, monkeypatch):
    common = overrides(tmp_path, "train.epochs=3", "train.max_steps_per_epoch=3", "optim.scheduler.name=MultiStepLR",
                       "optim.scheduler.milestones=[2]")
    full = train(None, "resnet_mcdo_smoothing_18", common + ["env.uid=full"])

    saves = []
    real_save = models.checkpoints.atomic_save

    def save_then_die(obj, path):
        real_save(obj, path)
        saves.append(path)
        if len(saves) == 2:  # killed right after the checkpoint of epoch 2
            raise KeyboardInterrupt

    monkeypatch.setattr(models.checkpoints, "atomic_save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(None, "resnet_mcdo_smoothing_18", common + ["env.uid=cut"])
    monkeypatch.setattr(models.checkpoints, "atomic_save", real_save)
    state = torch.load(saves[-1], weights_only=True)
    assert state["epoch"] == 2 and set(state) >= {"optimizer", "scheduler", "scaler", "history"}

    resumed = train(None, "resnet_mcdo_smoothing_18", common + ["env.uid=cut"])
    assert [h["epoch"] for h in resumed["history"]] == [1, 2, 3]
    for (k, a), b in zip(full["model"].state_dict().items(), resumed["model"].state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    assert resumed["history"][-1]["test_nll"] == full["history"][-1]["test_nll"]


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    model = models.get_model("resnet_dnn_18", width=4)
    calls = {"n": 0}

    def poison(module, args, output):  # the 6th training step (epoch 2, step 1) produces NaN
        calls["n"] += module.training
        return output * float("nan") if calls["n"] > 5 and module.training else output

    model.register_forward_hook(poison)
    with pytest.raises(NonFiniteLossError, match="epoch 2"):
        train(None, overrides=overrides(tmp_path, "train.epochs=3", "train.max_steps_per_epoch=5", "env.uid=nan"),
              model=model)
    state = torch.load(tmp_path / "runs" / "synthetic" / "resnet_dnn_18" / "nan" / "checkpoint.pth.tar",
                       weights_only=True)
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point())


def test_channels_last_is_off_where_onednn_computes_wrong_weight_gradients():
    """uxlfoundation/oneDNN#6035: a strided 1x1 convolution with fewer input channels than oneDNN's channel block gets
    wrong weight gradients in channels_last on CPUs (a width-4 network trained to other weights on every run under
    AVX2, or hung). Exactly those convolutions are named; none at width 16 (the reference set) or on a GPU."""
    from ops.common.runtime import channels_last_hazards, safe_channels_last

    assert channels_last_hazards(models.get_model("resnet_mcdo_18", width=4), "cpu") == [
        "layer2.0.shortcut.0", "layer3.0.shortcut.0"]  # 4 and 8 input channels; layer4's has 16
    assert channels_last_hazards(models.get_model("resnet_mcdo_18", width=8), "cpu") == ["layer2.0.shortcut.0"]
    assert channels_last_hazards(models.get_model("resnet_mcdo_18", width=16), "cpu") == []
    assert channels_last_hazards(models.get_model("resnet_mcdo_18", width=4), "cuda") == []
    assert safe_channels_last(models.get_model("resnet_mcdo_18", width=16), "cpu", True) == (True, "asked for")
    layout, why = safe_channels_last(models.get_model("resnet_mcdo_18", width=4), "cpu", True)
    assert not layout and "layer2.0.shortcut.0" in why and "oneDNN#6035" in why


@pytest.mark.parametrize(("width", "layout"), [(8, False), (16, True)])
def test_training_asked_for_channels_last_runs_and_records_the_safe_layout(tmp_path, width, layout):
    import json

    result = train(None, "resnet_mcdo_18", overrides(
        tmp_path, "train.epochs=1", "train.max_steps_per_epoch=1", f"model.block.width={width}",
        "env.channels_last=true", "env.uid=cl"))
    stored = json.loads((result["run_dir"] / "config.json").read_text())
    assert stored["env"]["channels_last"] is layout and result["config"]["env"]["channels_last"] is layout
    conv = result["model"].layer1[0].conv1.weight
    assert conv.is_contiguous(memory_format=torch.channels_last if layout else torch.contiguous_format)


def test_mixup_is_off_by_default_and_mixes_when_asked(tmp_path):
    from ops.train.configs import make_config

    mixup, criterion = trains.build_loss(make_config(), 10)
    assert mixup is None and criterion.label_smoothing == 0.0
    mixup, _ = trains.build_loss(make_config({"train": {"mixup": 0.2, "label_smoothing": 0.1}}), 10)
    torch.manual_seed(0)
    x, y = torch.randn(8, 3, 32, 32), torch.arange(8)
    mixed, target = mixup(x.clone(), y)
    assert not torch.allclose(mixed, x)  # images are blended with their batch-flipped partners
    assert target.shape == (8, 10) and (target.max(1).values < 0.999).all()  # soft, smoothed targets
    result = train(None, "resnet_dnn_18", overrides(tmp_path, "train.epochs=1", "train.max_steps_per_epoch=2",
                                                    "train.mixup=0.2", "train.cutmix=1.0",
                                                    "train.label_smoothing=0.1", "env.tensorboard=false"))
    assert torch.isfinite(torch.tensor(result["history"][0]["train_loss"]))


def test_warmup_epochs_come_before_the_schedule():
    sched = {"name": "MultiStepLR", "milestones": [2, 3], "gamma": 0.1, "eta_min": 0.0}
    # 10 steps per epoch, 1 warm-up epoch, then 4 scheduled epochs whose milestones count from the warm-up's end.
    f = [trains.lr_factor(s, 10, 4, 1, sched) for s in (0, 4, 9, 10, 25, 35, 45)]
    assert f == pytest.approx([0.1, 0.5, 1.0, 1.0, 1.0, 0.1, 0.01])
    cos = {"name": "CosineAnnealingLR", "milestones": [], "gamma": 1.0, "eta_min": 0.0}
    assert trains.lr_factor(20, 10, 4, 0, cos) == pytest.approx(0.5)
    assert trains.lr_factor(30, 10, 4, 1, cos) == pytest.approx(0.5)  # half-way through the scheduled epochs


def test_a_run_trains_warmup_plus_scheduled_epochs(tmp_path):
    result = train(None, "resnet_dnn_18", overrides(tmp_path, "train.warmup_epochs=1", "train.epochs=2",
                                                    "train.max_steps_per_epoch=2", "env.tensorboard=false"))
    assert [row["epoch"] for row in result["history"]] == [1, 2, 3]


def test_validation_runs_in_fp32_when_training_in_bf16(tmp_path):
    result = train(None, "resnet_dnn_18", overrides(tmp_path, "train.epochs=1", "train.max_steps_per_epoch=2",
                                                    "env.precision=bf16", "env.tensorboard=false"))
    fp32, bf16 = (evaluation.test(result["model"], 1, result["test_loader"], precision=p, fuse_bn=False,
                                  channels_last=False) for p in ("fp32", "bf16"))
    assert result["history"][-1]["test_nll"] == fp32["nll"] != bf16["nll"]
    assert result["config"]["env"]["precision"] == "bf16" and result["config"]["val"]["precision"] == "fp32"


DDP_ARGS = ["dataset.name=synthetic", "dataset.kwargs={\"n_train\": 256, \"n_test\": 64}", "train.batch_size=32",
            "train.epochs=1", "train.max_steps_per_epoch=4", "train.augment=false", "train.warmup_epochs=0",
            "optim.scheduler.name=constant", "optim.lr=0.02", "model.block={\"classifier\": \"gap\"}",
            "env.precision=fp32", "env.device=cpu", "env.progress=false", "env.tensorboard=false", "env.uid=ddp"]


def _run(cmd, cwd, env):
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_ddp_two_processes_agree_with_one(tmp_path):
    # AlexNet with a GAP head has neither BatchNorm nor dropout: with the same global batch, two processes
    # must reach the weights of one process, up to the order of floating-point sums.
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    base = [sys.executable, "-m", "ops.run", "train", "--model", "alexnet_dnn", *DDP_ARGS]
    _run(base + [f"env.out_dir={tmp_path}/one", f"env.checkpoint_root={tmp_path}/one_ckpt"], tmp_path, env)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                "-m", "ops.run", "train", "--model", "alexnet_dnn", *DDP_ARGS]
    _run(torchrun + [f"env.out_dir={tmp_path}/two", f"env.checkpoint_root={tmp_path}/two_ckpt"], tmp_path, env)

    path = "synthetic/alexnet_dnn/synthetic_alexnet_dnn_ddp.pth.tar"
    one = torch.load(tmp_path / "one_ckpt" / path, weights_only=True)["state_dict"]
    two = torch.load(tmp_path / "two_ckpt" / path, weights_only=True)["state_dict"]
    torch.manual_seed(0)  # the trainer's seed: the same initial weights
    start = models.get_model("alexnet_dnn", classifier="gap").state_dict()
    assert all(not torch.equal(one[k], start[k]) for k in one)  # training moved every tensor
    for k in one:
        torch.testing.assert_close(one[k], two[k], rtol=1e-4, atol=1e-6)
    rows = [(tmp_path / d / "synthetic/alexnet_dnn/ddp/metrics.csv").read_text().splitlines() for d in ("one", "two")]
    header = rows[0][0].split(",")
    one_row, two_row = (dict(zip(header, r[1].split(","), strict=True)) for r in rows)
    assert float(one_row["test_nll"]) == pytest.approx(float(two_row["test_nll"]), rel=1e-4)
    assert float(one_row["train_loss"]) == pytest.approx(float(two_row["train_loss"]), rel=1e-4)
    assert not (tmp_path / "two" / "synthetic/alexnet_dnn/ddp/metrics.csv.tmp").exists()


def test_cli_trains_then_tests_a_checkpoint(tmp_path, monkeypatch):
    from ops import run

    monkeypatch.chdir(tmp_path)
    args = ["--config", str(ROOT / "configs" / "fashion_mnist_general.json"), "--model", "resnet_mcdo_18",
            "dataset.name=synthetic", "dataset.mean=null", "dataset.std=null",
            "dataset.kwargs={\"n_train\": 128, \"n_test\": 32}", "train.epochs=1", "train.warmup_epochs=0",
            "model.block.width=4", "env.precision=fp32", "env.progress=false", "env.tensorboard=false", "env.uid=cli"]
    assert run.main(["train", *args]) == 0
    assert (tmp_path / "models_checkpoints/synthetic/resnet_mcdo_18/synthetic_resnet_mcdo_18_cli.pth.tar").exists()
    assert run.main(["test", "--uid", "cli", "--sizes", "1,3"]) == 0
    rows = (tmp_path / "leaderboard/logs/synthetic/resnet_mcdo_18/synthetic_resnet_mcdo_18_cli.csv").read_text()
    assert [r.split(",")[0] for r in rows.strip().splitlines()] == ["size", "1", "3"]


def test_demo_explains_how_to_get_fashion_mnist(tmp_path, monkeypatch):
    from ops.data import datasets
    from ops import demo

    monkeypatch.setattr(datasets, "DEBIAN_FASHION_MNIST", tmp_path / "debian")
    monkeypatch.setattr(demo.os, "geteuid", lambda: 1000)  # not root: no apt-get
    with pytest.raises(SystemExit, match="apt-get install dataset-fashion-mnist"):
        demo.ensure_fashion_mnist(tmp_path / "data")


def test_resume_accepts_a_checkpoint_with_the_originals_blur_filters(tmp_path):
    """A run checkpoint whose state_dict carries frozen `filter` tensors (as the original saves them) resumes."""
    common = overrides(tmp_path, "train.max_steps_per_epoch=2", "env.uid=blur", "env.tensorboard=false",
                       "model.block={\"width\": 4, \"sfilter\": [1, 2, 1], \"pad_mode\": \"replicate\"}")
    first = train(None, "resnet_mcdo_smoothing_18", common + ["train.epochs=1"])
    path = first["run_dir"] / "checkpoint.pth.tar"
    state = torch.load(path, weights_only=True)
    for name, module in first["model"].named_modules():
        if isinstance(module, models.smoothing.Blur):
            state["state_dict"][f"{name}.filter"] = module.filter.clone()
    assert any(k.endswith("blur.filter") for k in state["state_dict"])
    torch.save(state, path)
    resumed = train(None, "resnet_mcdo_smoothing_18", common + ["train.epochs=2"])
    assert [row["epoch"] for row in resumed["history"]] == [1, 2]
