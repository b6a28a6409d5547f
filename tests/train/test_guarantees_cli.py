"""Issue 29's guarantees, case by case: expected failures of the command lines end with one line naming the
problem and the fix and exit 2 (real subprocesses); values and names are checked where they enter; a uid has one
rule; results keep the label the user gave; exports stay out of the package and keep float16's range; non-finite
weights are refused; folder-per-class sets keep their labels; two train-set processes share one set."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import models
from models.checkpoints import CheckpointError
from ops import run
from ops.data import corrupted_sets
from ops.train import configs, pretrained, sets
from tests import helpers
from tests.train.test_sets import write_set

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


@pytest.fixture(autouse=True)
def _restore_threads():
    """env.threads sets torch's thread count for the whole process: give the other test modules theirs back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def tiny(tmp_path, *more):
    """A run that trains in a second: 8x8 synthetic images, width 4, one step; every output under tmp_path."""
    return ["dataset.name=synthetic", "dataset.mean=null", "dataset.std=null",
            'dataset.kwargs={"n_train": 32, "n_test": 16, "size": 8}', "train.batch_size=16", "train.epochs=1",
            "train.warmup_epochs=0", "train.max_steps_per_epoch=1", "train.augment=false", "model.block.width=4",
            "env.progress=false", "env.tensorboard=false", "env.device=cpu", "env.precision=fp32", "env.threads=1",
            f"env.out_dir={tmp_path / 'runs'}", f"env.checkpoint_root={tmp_path / 'ckpt'}",
            f"env.leaderboard_root={tmp_path / 'board'}", *more]


def cli(module, *args, cwd):
    """Run `python -m module args` in a real process; (exit status, stdout, stderr)."""
    done = subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=cwd, env=ENV, capture_output=True,
                          text=True, timeout=300)
    return done.returncode, done.stdout, done.stderr



def hold_lock(lock_path):
    return helpers.hold_lock(lock_path, env=ENV)


def assert_one_line_error(code, err, *words):
    assert code == 2 and "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert all(w in last for w in words), last


# --- 1. The command lines: one line, exit status 2 --------------------------------------------------------------

def test_a_locked_run_ends_ops_run_with_one_line_and_status_2(tmp_path):
    holder = hold_lock(tmp_path / "runs" / "synthetic" / "resnet_dnn_18" / "busy" / "lock")
    try:
        code, _, err = cli("ops.run", "train", "--model", "resnet_dnn_18", "--uid", "busy", *tiny(tmp_path),
                           cwd=tmp_path)
    finally:
        holder.kill()
        holder.wait()
    assert_one_line_error(code, err, f"in use by pid {holder.pid}", "another env.uid")


@pytest.mark.parametrize("args, words", [
    (["train", "--uid", "../escape"], ["env.uid must be a plain name"]),
    (["train", "--uid", "x" * 65], ["at most 64 characters"]),
    (["train", "env.seed=18446744073709551616"], ["env.seed must be an integer from 0 to 4294967295"]),
    (["train", "optim.lr=Infinity"], ["optim.lr must be a finite number"]),
    (["test", "--uid", "a", "--seed", str(2 ** 64)], ["--seed must be an integer from 0 to"]),
    (["test", "--uid", "a", "--sizes", "0,1"], ["--sizes must be comma-separated positive integers"]),
    (["train-set", "--executor", "slurm", "--time", "0"], ["--time must be whole minutes from 1"]),
    (["train-set", "--executor", "slurm", "--time", str(10 ** 12)], ["--time must be whole minutes from 1"]),
])
def test_bad_arguments_end_ops_run_with_one_line_and_status_2(tmp_path, args, words):
    if args[0] == "train-set":
        args = args + [str(write_set(tmp_path))]
    code, out, err = cli("ops.run", *args, *(tiny(tmp_path) if args[0] != "train-set" else []), cwd=tmp_path)
    assert_one_line_error(code, err, *words)
    assert not (tmp_path / "runs").exists() and "job" not in out  # refused before any work


@pytest.mark.parametrize("args, words", [
    (["--uid", "../../x"], ["--uid must be a plain name"]),
    (["--out", "FILE"], ["is a file, not a folder"]),
    (["--seeds", str(2 ** 64)], ["--seeds must be integers from 0 to"]),
    (["--config", "missing.json"], ["missing.json not found"]),
])
def test_bad_arguments_end_ops_paper_with_one_line_and_status_2(tmp_path, args, words):
    (tmp_path / "FILE").write_text("")
    code, _, err = cli("ops.paper", *args, cwd=tmp_path)
    assert_one_line_error(code, err, *words)


def test_ops_paper_ends_a_locked_cache_with_one_line(monkeypatch, capsys):
    from models.atomic import LockedError
    from ops.paper import __main__ as paper_main
    from ops.train.runs import RunLockedError

    for error in (LockedError("the corrupted set data/X-C is in use by pid 1. Wait for it to finish."),
                  RunLockedError("run runs/x is in use by pid 1. Wait for it to finish.")):
        def locked(*args, error=error, **kwargs):
            raise error

        monkeypatch.setattr(paper_main.pipeline, "run", locked)
        assert paper_main.main([]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "in use by pid 1. Wait" in err and "Traceback" not in err


# --- 2. Values checked where they enter --------------------------------------------------------------------------

@pytest.mark.parametrize("override", ["optim.lr=Infinity", "optim.lr=-Infinity", "optim.lr=NaN",
                                      "optim.betas=[0.9, Infinity]", 'dataset.kwargs={"noise": NaN}',
                                      'model.block={"temp": Infinity}'])
def test_infinite_or_nan_numbers_are_refused_in_overrides(override):
    with pytest.raises(configs.ConfigError, match="must be a finite number"):
        configs.make_config({}, [override])


def test_infinite_numbers_are_refused_in_config_files(tmp_path):
    path = tmp_path / "c.json"
    path.write_text('{"optim": {"lr": Infinity, "weight_decay": NaN}}')
    with pytest.raises(configs.ConfigError) as caught:
        configs.load_config(path)
    assert len(caught.value.problems) == 2 and all("finite" in p for p in caught.value.problems)


@pytest.mark.parametrize("seed, ok", [(0, True), (2 ** 32 - 1, True), (2 ** 32, False), (-1, False),
                                      (2 ** 64, False), (1.0, False), (True, False)])
def test_seeds_are_bounded_before_anything_is_loaded(seed, ok):
    if ok:
        assert configs.make_config({"env": {"seed": seed}})["env"]["seed"] == seed
    else:
        with pytest.raises(configs.ConfigError, match="env.seed must be an integer from 0 to 4294967295"):
            configs.make_config({"env": {"seed": seed}})


def test_a_set_of_too_many_seeds_or_too_long_uids_is_refused(tmp_path):
    networks = {"dnn": {"model": "resnet_dnn_18"}}
    path = write_set(tmp_path, {"name": "tiny", "seeds": list(range(1001)), "networks": networks})
    with pytest.raises(configs.ConfigError, match="at most 1000 distinct integers .* got a list of 1001 seeds"):
        sets.load_set(path)
    long = {"name": "n" * 60, "seeds": [0], "networks": {"dnn_smoothing": {"model": "resnet_dnn_18", "seeds": [0]}}}
    with pytest.raises(configs.ConfigError, match="make the uid .* shorten them"):
        sets.load_set(write_set(tmp_path, long))
    spec, nets = sets.load_set(write_set(tmp_path, {"name": "tiny", "seeds": [0, 1], "networks": {
        "dnn": {"model": "resnet_dnn_18", "seeds": [1]}, "mcdo": {"model": "resnet_mcdo_18"}}}))
    assert [n.uid for n in nets] == ["tiny-mcdo-s0", "tiny-dnn-s1", "tiny-mcdo-s1"]  # per-variant seeds kept


# --- 3. Names that become paths or globs --------------------------------------------------------------------------

def _export(tmp_path, dataset, uid, model_name="resnet_mcdo_18", **block):
    """An export with its card under tmp_path/export, as a set exports its networks."""
    model = models.get_model(model_name, width=4, **block)
    cfg = configs.make_config({"dataset": {"name": dataset}, "model": {"name": model_name,
                                                                       "block": {"width": 4, **block}}})
    src = models.save(model, dataset, f"src-{uid}", root=tmp_path / "src")
    pretrained.write_card(src, cfg, 10)
    return pretrained.export(src, tmp_path / "export", uid), model


@pytest.mark.parametrize("kwargs", [{"set_name": "t*"}, {"set_name": "../x"}, {"variant": "*"},
                                    {"variant": "a-b"}, {"dataset": "*"}, {"dataset": "../fashion_mnist"}])
def test_reference_names_are_plain_names_not_patterns(tmp_path, kwargs):
    _export(tmp_path, "fashion_mnist", "tiny-mcdo-s0")
    args = {"variant": "mcdo", "set_name": "tiny", "dataset": "fashion_mnist", **kwargs}
    with pytest.raises(ValueError, match="plain name|variant must be|Unknown dataset"):
        pretrained.reference_path(args["variant"], 0, args["dataset"], args["set_name"], tmp_path / "export")


def test_reference_networks_load_under_dataset_aliases_and_ensembles_refuse_repeated_seeds(tmp_path):
    _export(tmp_path, "fashion_mnist", "tiny-mcdo-s0")
    _export(tmp_path, "fashion_mnist", "tiny-mcdo-s1")
    _export(tmp_path, "fashion_mnist", "x_tiny-mcdo-s0")  # another set whose uid ends like ours
    kw = dict(set_name="tiny", resources=tmp_path / "export")
    for alias in ("Fashion-MNIST", "fmnist", "fashion_mnist"):
        [net] = pretrained.load_reference("mcdo", [0], dataset=alias, **kw)
        assert net.checkpoint.name == "fashion_mnist_resnet_mcdo_18_tiny-mcdo-s0.pth.tar"
    assert len(pretrained.reference_ensemble("mcdo", (0, 1), dataset="fashion-mnist", **kw).models) == 2
    with pytest.raises(ValueError, match="repeat a seed"):
        pretrained.reference_ensemble("mcdo", (0, 0), dataset="fashion_mnist", **kw)
    with pytest.raises(ValueError, match="seed must be an integer"):
        pretrained.reference_path("mcdo", "0*", "fashion_mnist", "tiny", tmp_path / "export")


# --- 4. One uid rule ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("uid", ["a" * 64, "a" * 65, "a" * 90, "a+b", "a.b", ".a", "a..b", "a b", "a/b", "-a"])
def test_the_uid_rule_is_the_same_at_validation_and_at_the_save(uid):
    accepted = configs.uid(uid) is None
    try:
        models.checkpoint_path("synthetic", "resnet_dnn_18", uid)
        saved = True
    except ValueError:
        saved = False
    assert accepted == saved


def test_a_uid_the_save_would_refuse_is_refused_before_the_first_epoch(tmp_path):
    assert run.main(["train", "--model", "resnet_dnn_18", "--uid", "u" * 90, *tiny(tmp_path)]) == 2
    assert not (tmp_path / "runs").exists()


# --- 5. Results filed under the user's label ----------------------------------------------------------------------

def test_a_checkpoints_results_are_filed_under_its_uid_or_a_plain_label(tmp_path, monkeypatch, capsys):
    import shutil

    monkeypatch.chdir(tmp_path)
    assert run.main(["train", "--model", "resnet_dnn_18", "--uid", "a_run", *tiny(tmp_path)]) == 0
    final = tmp_path / "ckpt" / "synthetic" / "resnet_dnn_18" / "synthetic_resnet_dnn_18_a_run.pth.tar"
    board = tmp_path / "board" / "synthetic" / "resnet_dnn_18"
    assert run.main(["test", "--checkpoint", str(final), "--sizes", "1", *tiny(tmp_path)]) == 0
    assert sorted(p.name for p in board.iterdir()) == ["synthetic_resnet_dnn_18_a_run.csv",
                                                       "synthetic_resnet_dnn_18_a_run.json"]
    spaced = tmp_path / "my model.pth.tar"
    shutil.copy(final, spaced)
    shutil.copy(pretrained.card_path(final), pretrained.card_path(spaced))
    capsys.readouterr()
    assert run.main(["test", "--checkpoint", str(spaced), "--sizes", "1", *tiny(tmp_path)]) == 0
    assert "filed under 'my-model'" in capsys.readouterr().out
    assert (board / "synthetic_resnet_dnn_18_my-model.json").exists()
    assert run.checkpoint_label(Path("x/..pth.tar"), "m") == "checkpoint"
    assert run.checkpoint_label(Path("x/_é?.pth.tar"), "m")[0].isalnum()


def test_names_of_the_result_files_are_checked_before_the_work(tmp_path, monkeypatch):
    from ops.train import trainer

    assert run.main(["train", "--model", "resnet_dnn_18", "--uid", "b", *tiny(tmp_path)]) == 0
    monkeypatch.setattr(trainer, "load_data", lambda *a, **k: pytest.fail("data loaded before the names were checked"))
    final = tmp_path / "ckpt" / "synthetic" / "resnet_dnn_18" / "synthetic_resnet_dnn_18_b.pth.tar"
    assert run.main(["test", "--checkpoint", str(final), "--model", "../x", "--sizes", "1", *tiny(tmp_path)]) == 2


# --- 6, 7. Exports: out of the package, float16's range ------------------------------------------------------------

def test_a_set_without_an_export_folder_exports_under_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec, networks = sets.load_set(write_set(tmp_path, {"name": "tiny", "seeds": [0],
                                                        "networks": {"dnn": {"model": "resnet_dnn_18"}}}))
    path = sets.exported_path(networks[0], spec["export"]).resolve()
    assert path.is_relative_to(tmp_path) and not path.is_relative_to(ROOT)
    spec, _ = sets.load_set(ROOT / "configs" / "fashion_mnist_reference.json")
    assert spec["export"] == "resources/models_checkpoints"  # the reference set's explicit folder is kept


def test_a_float16_export_keeps_out_of_range_tensors_in_float32(tmp_path, capsys):
    model = models.get_model("resnet_dnn_18", width=4)
    bn = model.layer0[1]
    with torch.no_grad():
        bn.running_var.fill_(1e6)
        bn.running_mean.fill_(300.0)
    cfg = configs.make_config({"dataset": {"name": "synthetic"}, "model": {"name": "resnet_dnn_18",
                                                                           "block": {"width": 4}}})
    src = models.save(model, "synthetic", "big", root=tmp_path / "src")
    pretrained.write_card(src, cfg, 10)
    half = pretrained.export(src, tmp_path / "export", "half", dtype="float16")
    assert "kept in float32" in capsys.readouterr().out
    assert pretrained.read_card(half)["float32_tensors"] == ["layer0.1.running_var"]  # 300 fits float16
    state = torch.load(half, weights_only=True)["state_dict"]
    assert state["layer0.1.running_var"].dtype == torch.float32 and state["layer0.0.weight"].dtype == torch.float16
    loaded = pretrained.load_trained(half)
    assert torch.equal(loaded.layer0[1].running_var, bn.running_var)
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        expected, got = model.eval()(x), loaded(x)
    assert torch.isfinite(got).all() and torch.allclose(got, expected, rtol=1e-2, atol=1e-2)


# --- 8. Non-finite weights refused on load --------------------------------------------------------------------------

def test_weights_with_nan_or_inf_are_refused_naming_the_file(tmp_path):
    for value in (float("nan"), float("inf")):
        model = models.get_model("resnet_dnn_18", width=4)
        with torch.no_grad():
            model.layer0[0].weight[0, 0, 0, 0] = value
        cfg = configs.make_config({"dataset": {"name": "synthetic"}, "model": {"name": "resnet_dnn_18",
                                                                               "block": {"width": 4}}})
        path = models.save(model, "synthetic", "bad", root=tmp_path)
        pretrained.write_card(path, cfg, 10)
        with pytest.raises(CheckpointError, match=rf"{path.name} holds NaN or infinite values .*layer0.0.weight"):
            models.load(models.get_model("resnet_dnn_18", width=4), "synthetic", "bad", root=tmp_path)
        with pytest.raises(CheckpointError, match="NaN or infinite"):
            pretrained.load_trained(path)


# --- 9. Folder-per-class sets keep each image's class ---------------------------------------------------------------

def _image_tree(root, cells):
    """root/{corruption}/{severity}/{class}/0.png, a 8x8 image whose colour is its class index."""
    from PIL import Image

    for (corruption, severity), classes in cells.items():
        for name in classes:
            folder = root / corruption / str(severity) / name
            folder.mkdir(parents=True)
            Image.new("RGB", (8, 8), (10 * "abc".index(name),) * 3).save(folder / "0.png")


def test_a_missing_class_folder_at_one_severity_keeps_every_images_class(tmp_path):
    _image_tree(tmp_path, {("fog", 1): "abc", ("fog", 2): "ac"})
    ds = corrupted_sets.imagenet_c(tmp_path, "fog", 2, crop=8)
    assert ds.classes == ["a", "b", "c"] and ds.targets == [0, 2]  # c keeps index 2 (a plain ImageFolder: 1)
    assert corrupted_sets.imagenet_c(tmp_path, "fog", 2, crop=8, classes=["c", "b", "a"]).targets == [2, 0]
    with pytest.raises(ValueError, match="not among the classes"):
        corrupted_sets.imagenet_c(tmp_path, "fog", 1, crop=8, classes=["a", "b"])
    with pytest.raises(corrupted_sets.CorruptedDataNotFoundError, match="incomplete: \\['fog/2/b'\\]"):
        corrupted_sets.ImageNetCSet(tmp_path, crop=8)


def test_imagenet_c_sets_with_every_class_folder_load(tmp_path):
    _image_tree(tmp_path, {("fog", 1): "abc", ("fog", 2): "abc"})
    cset = corrupted_sets.ImageNetCSet(tmp_path, crop=8)
    assert cset.classes == ["a", "b", "c"] and cset.dataset("fog", 2, (0.5,) * 3, (0.5,) * 3).targets == [0, 1, 2]


# --- 10. Two train-set processes on one set ---------------------------------------------------------------------------

def test_train_set_skips_a_network_another_process_trains_and_finishes_the_rest(tmp_path):
    path = write_set(tmp_path)
    holder = hold_lock(tmp_path / "runs" / "synthetic" / "resnet_dnn_18" / "tiny-dnn-s0" / "lock")
    try:
        code, out, err = cli("ops.run", "train-set", path, cwd=tmp_path)
    finally:
        holder.kill()
        holder.wait()
    assert code == 0, err
    assert "[network 1 of 4] skipped: it is being trained elsewhere" in out and f"pid {holder.pid}" in out
    assert "Skipped 1 network(s) that another process is training" in out.strip().splitlines()[-1]
    spec, networks = sets.load_set(path)
    assert [sets.is_finished(n, spec["export"]) for n in networks] == [False, True, True, True]


def test_two_train_set_processes_on_one_set_finish_it_together(tmp_path):
    path = write_set(tmp_path, {"name": "tiny", "seeds": [0, 1, 2], "networks": {
        "dnn": {"model": "resnet_dnn_18"}, "mcdo": {"model": "resnet_mcdo_18"}}, "export": str(tmp_path / "e")})
    procs = [subprocess.Popen([sys.executable, "-m", "ops.run", "train-set", str(path)], cwd=tmp_path, env=ENV,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in outs]
    assert not any("Traceback" in err for _, err in outs)
    spec, networks = sets.load_set(path)
    assert all(sets.is_finished(n, spec["export"]) for n in networks)
    for (out, _), (other, _) in ((outs[0], outs[1]), (outs[1], outs[0])):
        for line in out.splitlines():  # what one skipped, the other trained
            if "skipped: it is being trained elsewhere" in line:
                assert line.split("]")[0] + "] done in" in other
