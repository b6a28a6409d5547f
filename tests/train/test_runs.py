"""Runs cannot collide, lie or leak: run identity, locks, resume checks, validation, errors, interruptions."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import models
from ops import run as cli
from ops.train import trainer as trains
from ops.train.configs import ConfigError, load_config, make_config
from ops.train.runs import RunError, RunFolder

ROOT = Path(__file__).resolve().parents[2]


def small(tmp_path, *extra):
    return ["dataset.name=synthetic", "dataset.mean=null", "dataset.std=null",
            "dataset.kwargs={\"n_train\": 128, \"n_test\": 32}", "train.batch_size=32",
            "train.epochs=1", "train.warmup_epochs=0", "train.max_steps_per_epoch=2", "model.block.width=4",
            "optim.scheduler.name=constant", "env.precision=fp32", "env.device=cpu", "env.progress=false",
            "env.tensorboard=false", f"env.out_dir={tmp_path / 'runs'}", f"env.checkpoint_root={tmp_path / 'ckpt'}",
            f"env.leaderboard_root={tmp_path / 'lb'}", *extra]


def test_two_runs_started_together_get_separate_folders(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "ops.run", "train", "--model", "resnet_dnn_18", *small(tmp_path)]
    procs = [subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    runs = sorted((tmp_path / "runs" / "synthetic" / "resnet_dnn_18").iterdir())
    assert len(runs) == 2 and all((r / "checkpoint.pth.tar").exists() for r in runs)
    weights = sorted((tmp_path / "ckpt" / "synthetic" / "resnet_dnn_18").glob("*.pth.tar"))
    assert len(weights) == 2  # neither run replaced the other's final weights


def test_a_locked_run_is_refused_naming_its_holder(tmp_path):
    holder = RunFolder(tmp_path / "runs", "synthetic", "resnet_dnn_18", "busy").open()
    try:
        with pytest.raises(RunError, match=f"in use by pid {os.getpid()}"):
            trains.train(None, "resnet_dnn_18", small(tmp_path, "env.uid=busy"))
    finally:
        holder.close()
    trains.train(None, "resnet_dnn_18", small(tmp_path, "env.uid=busy"))  # free again: it runs


def test_resume_with_a_changed_config_is_refused_unless_forced(tmp_path):
    trains.train(None, "resnet_dnn_18", small(tmp_path, "env.uid=r"))
    with pytest.raises(RunError, match=r"optim\.lr: 0\.1 -> 0\.5"):
        trains.train(None, "resnet_dnn_18", small(tmp_path, "env.uid=r", "train.epochs=2", "optim.lr=0.5"))
    run_dir = tmp_path / "runs" / "synthetic" / "resnet_dnn_18" / "r"
    assert json.loads((run_dir / "config.json").read_text())["optim"]["lr"] == 0.1  # untouched by the refusal

    extended = trains.train(None, "resnet_dnn_18", small(tmp_path, "env.uid=r", "train.epochs=2"))  # safe change
    assert [row["epoch"] for row in extended["history"]] == [1, 2]
    forced = trains.train(None, "resnet_dnn_18", small(tmp_path, "env.uid=r", "train.epochs=3", "optim.lr=0.5",
                                                       "env.force_resume=true"))
    assert [row["epoch"] for row in forced["history"]] == [1, 2, 3]
    assert [row["lr"] for row in forced["history"]] == [0.1, 0.1, 0.5]  # trained with what config.json says
    stored = json.loads((run_dir / "config.json").read_text())
    assert stored["optim"]["lr"] == 0.5 and stored["train"]["epochs"] == 3  # the config in effect now
    resumes = json.loads((run_dir / "resumes.json").read_text())
    assert [(r["after_epoch"], r["forced"]) for r in resumes] == [(1, False), (2, True)]
    assert resumes[1]["changes"]["optim.lr"] == [0.1, 0.5]


@pytest.mark.parametrize("uid", ["../../escape", "a/b", "..", ".hidden", "x" * 101])
def test_uids_cannot_leave_their_folder(tmp_path, uid):
    with pytest.raises(ConfigError, match="env.uid"):
        make_config({}, [f"env.uid={uid}"])
    with pytest.raises(RunError, match="env.uid"):
        RunFolder(tmp_path, "d", "m", uid)


@pytest.mark.parametrize("override,match", [
    ("train.epochs=0", "train.epochs must be a positive integer"),
    ("train.epochs=-3", "train.epochs must be a positive integer"),
    ("train.epochs=1.5", "train.epochs must be a positive integer"),
    ("val.every=0", "val.every must be a positive integer"),
    ("model.block.width=0", "model.block.width must be a positive integer"),
    ("model.block.width=-3", "model.block.width must be a positive integer"),
    ("model.block.rate=1.5", "model.block.rate must be a number in \\[0, 1\\)"),
    ("train.batch_size=0", "train.batch_size must be a positive integer"),
    ("train.batch_size=3.5", "train.batch_size must be a positive integer"),
    ("train.batch_size=-8", "train.batch_size must be a positive integer"),
    ("env.seed=1.5", "env.seed must be an integer"),
    ("optim.scheduler.milestones=[\"a\"]", "milestones must be a list of increasing positive integers"),
    ("optim.betas=[0.9]", "optim.betas must be a list of two numbers"),
    ("dataset.std=[0, 1, 1]", "dataset.std must be null or a list of 1 or 3 positive numbers"),
    ("optim.lr=-1", "optim.lr must be a number > 0"),
    ("env.precision=bf32", "env.precision must be one of"),
])
def test_bad_values_are_refused_before_any_work(override, match):
    with pytest.raises(ConfigError, match=match):
        make_config({}, [override])


def test_every_problem_is_listed_at_once():
    with pytest.raises(ConfigError) as info:
        make_config({}, ["train.epochs=0", "val.every=0", "env.seed=x"])
    assert len(info.value.problems) == 3


def test_a_config_must_be_an_object(tmp_path):
    path = tmp_path / "list.json"
    path.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="JSON object"):
        load_config(path)


def test_cli_errors_are_one_line_per_problem(tmp_path, capsys):
    code = cli.main(["train", "--model", "resnet_dnn_18", *small(tmp_path, "train.epochs=0", "val.every=0")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "train.epochs must be a positive integer" in err and "val.every must be a positive integer" in err
    assert cli.main(["train", "--model", "resnet_dnn_18", "--debug", *small(tmp_path, "train.epochs=0")]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_unknown_model_fails_before_loading_data(tmp_path, capsys):
    assert cli.main(["train", "--model", "resnet_mcdo_smothing_18", *small(tmp_path, "dataset.name=cifar100")]) == 2
    assert "resnet_mcdo_smoothing_18" in capsys.readouterr().err  # close matches, not "CIFAR-100 not found"


def test_ctrl_c_says_how_to_resume(tmp_path, capsys, monkeypatch):
    real = trains.train_one_epoch

    def interrupted(run, epoch):
        if epoch == 1:
            raise KeyboardInterrupt
        return real(run, epoch)

    monkeypatch.setattr(trains, "train_one_epoch", interrupted)
    code = cli.main(["train", "--model", "resnet_dnn_18", *small(tmp_path, "train.epochs=3", "env.uid=stopped")])
    out = capsys.readouterr()
    assert code == 130 and "Traceback" not in out.err
    assert "holds epoch 1" in out.out and "env.uid=stopped" in out.out
    monkeypatch.setattr(trains, "train_one_epoch", real)
    resumed = trains.train(None, "resnet_dnn_18", small(tmp_path, "train.epochs=3", "env.uid=stopped"))
    assert [row["epoch"] for row in resumed["history"]] == [1, 2, 3]


def test_ctrl_c_in_the_first_epoch_names_no_checkpoint(tmp_path, capsys, monkeypatch):
    def interrupted(run, epoch):
        raise KeyboardInterrupt

    monkeypatch.setattr(trains, "train_one_epoch", interrupted)
    code = cli.main(["train", "--model", "resnet_dnn_18", *small(tmp_path, "env.uid=early")])
    out = capsys.readouterr().out
    assert code == 130 and "before any epoch was saved" in out and "holds epoch" not in out
    assert not (tmp_path / "runs" / "synthetic" / "resnet_dnn_18" / "early" / "checkpoint.pth.tar").exists()


def test_full_disk_is_named(tmp_path, monkeypatch, capsys):
    def full(obj, f, *args, **kwargs):  # what torch.save raises when the disk fills up mid-write
        f.write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 64 vs 0 / PytorchStreamWriter "
                           "failed writing file data/0: file write failed")

    monkeypatch.setattr(torch, "save", full)
    code = cli.main(["train", "--model", "resnet_dnn_18", *small(tmp_path, "env.uid=full")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and any("No space left on device" in line for line in err)
    run_dir = tmp_path / "runs" / "synthetic" / "resnet_dnn_18" / "full"
    assert not list(run_dir.glob("*.tmp"))


def test_test_command_rebuilds_the_run_from_its_stored_config(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    elsewhere = tmp_path / "elsewhere"  # not the default ./runs: `test` must look where env.out_dir says
    args = ["train", "--model", "resnet_mcdo_18", "--uid", "w8", *small(tmp_path, "model.block.width=8")]
    assert cli.main([*args, f"env.out_dir={elsewhere}"]) == 0
    assert not (tmp_path / "runs").exists()
    capsys.readouterr()
    assert cli.main(["test", "--uid", "w8", "--sizes", "1,2"]) == 2  # the default folder has no such run
    assert "w8" in capsys.readouterr().err
    # Only the uid (and where runs live): width 8, the dataset and its subset come from the run's config.json.
    assert cli.main(["test", "--uid", "w8", "--sizes", "1,2", f"env.out_dir={elsewhere}"]) == 0
    out = capsys.readouterr().out
    # where results go is this command line's (here: the default leaderboard/logs), never the run's stored config
    csv = Path("leaderboard") / "logs" / "synthetic" / "resnet_mcdo_18" / "synthetic_resnet_mcdo_18_w8.csv"
    assert csv.exists() and str(csv) in out and not (tmp_path / "lb").exists()
    assert [r.split(",")[0] for r in csv.read_text().strip().splitlines()] == ["size", "1", "2"]
    # Our own checkpoint by path needs no --config either (its card holds it); a second evaluation of the same
    # checkpoint gets a file of its own instead of replacing the first one's results.
    weights = next((tmp_path / "ckpt").rglob("*_w8.pth.tar"))
    assert cli.main(["test", "--checkpoint", str(weights), "--sizes", "1"]) == 0
    second = csv.with_name("synthetic_resnet_mcdo_18_w8-2.csv")
    assert str(second) in capsys.readouterr().out
    assert [r.split(",")[0] for r in second.read_text().strip().splitlines()] == ["size", "1"]
    assert [r.split(",")[0] for r in csv.read_text().strip().splitlines()] == ["size", "1", "2"]  # kept


def test_test_command_evaluates_an_original_checkpoint(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    model = models.get_model("resnet_mcdo_18", width=4)
    path = tmp_path / "cifar_100_resnet_mcdo_18_orig.pth.tar"
    torch.save({"name": "resnet_mcdo_18", "state_dict": model.state_dict(), "optimizer": None}, path)  # no arch
    args = ["test", "--checkpoint", str(path), "--sizes", "1,2", *small(tmp_path), "model.block.width=4"]
    assert cli.main(args) == 0
    assert (tmp_path / "lb" / "synthetic" / "resnet_mcdo_18" / "synthetic_resnet_mcdo_18_orig.csv").exists()


def test_new_folders_started_in_the_same_second_are_distinct(tmp_path, monkeypatch):
    """Run folders and notebook output folders: the same second (frozen here) and even the same random suffix
    (forced here) give separate folders, never a shared one."""
    from ops.train import runs

    monkeypatch.setattr(runs.time, "strftime", lambda fmt, *args: "20260101-000000")
    first, second = RunFolder(tmp_path / "runs", "d", "m").open(), RunFolder(tmp_path / "runs", "d", "m").open()
    try:
        assert first.path != second.path and first.path.is_dir() and second.path.is_dir()
    finally:
        first.close(), second.close()
    suffixes = iter(["aaaaaa", "aaaaaa", "bbbbbb"])
    monkeypatch.setattr(runs.secrets, "token_hex", lambda n: next(suffixes))
    (uid1, out1), (uid2, out2) = runs.output_folder(tmp_path / "nb"), runs.output_folder(tmp_path / "nb")
    assert (uid1, uid2) == ("20260101-000000-aaaaaa", "20260101-000000-bbbbbb") and out1 != out2
    assert runs.output_folder(tmp_path / "nb", uid1) == (uid1, out1)  # a given uid reuses its folder
    with pytest.raises(RunError, match="env.uid"):
        runs.output_folder(tmp_path / "nb", "../escape")
