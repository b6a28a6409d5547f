"""ops.train.pretrained: the demo checkpoints shipped in resources/, cards, export, and which checkpoint is found."""
import json
import os

import pytest
import torch

import models
from ops.train import configs
from ops.data import datasets
from ops.data import loaders
from ops.train import pretrained
from ops.evaluate import engine as tests
from ops.train.trainer import train


def test_shipped_checkpoints_are_the_demo_recipe_in_fp32_without_optimizer():
    demo = configs.load_config("configs/fashion_mnist_demo.json")
    for name in pretrained.DEMO_MODELS:
        path = models.checkpoint_path("fashion_mnist", name, pretrained.DEMO_UID, pretrained.RESOURCES)
        assert path.stat().st_size < 4e6, f"{path} should hold the weights only"
        state = models.read_checkpoint(path)
        assert state["name"] == name and state["optimizer"] is None
        assert all(t.dtype in (torch.float32, torch.int64) for t in state["state_dict"].values())
        card = pretrained.read_card(path)
        # the card describes what was run: the demo recipe, trained to its last epoch
        assert card["config"]["train"]["epochs"] == demo["train"]["epochs"]
        assert card["config"]["model"]["block"] == demo["model"]["block"] == card["block"]
        # (cards written before optim.fused existed lack the key; its default, False, is what ran)
        assert configs.make_config(card["config"])["optim"] == demo["optim"]
        assert card["config"]["dataset"]["name"] == "fashion_mnist"
        assert len(card["history"]) == demo["train"]["warmup_epochs"] + demo["train"]["epochs"]
        # and models.load reads it into a model built by hand
        model = models.get_model(name, num_classes=10, width=16)
        models.load(model, "fashion_mnist", pretrained.DEMO_UID, root=pretrained.RESOURCES)
        assert all(torch.equal(value, state["state_dict"][key]) for key, value in model.state_dict().items())


def _fashion_test_set():
    try:
        return datasets.get_dataset("fashion_mnist")[1]
    except datasets.DatasetNotFoundError:
        return None


@pytest.mark.skipif(_fashion_test_set() is None, reason="Fashion-MNIST is not installed (apt-get install "
                    "dataset-fashion-mnist); the shipped models' accuracy cannot be checked without it")
def test_shipped_checkpoints_are_trained():
    """On 1,000 real test images both models are far above chance (10%), as the demo's table says (~86%)."""
    trained = pretrained.load_models(runs_dir="no-such-folder", verbose=False)
    loader = loaders.make_loader(_fashion_test_set().subset(1000), batch_size=500)
    for name, model in trained.items():
        torch.manual_seed(0)
        result = tests.sweep(model, loader, sizes=(2,))[2]
        assert result["acc"] > 0.8, (name, result["acc"])


def test_load_models_names_where_it_looked(tmp_path):
    with pytest.raises(FileNotFoundError, match="make demo"):
        pretrained.load_models(runs_dir=tmp_path / "runs", resources=tmp_path / "resources")


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A tiny real training run: its final checkpoint and card in the original layout."""
    root = tmp_path_factory.mktemp("run")
    cfg = configs.load_config("configs/fashion_mnist_demo.json", [
        "dataset.name=synthetic", 'dataset.kwargs={"n_train": 64, "n_test": 32}', "dataset.mean=null",
        "dataset.std=null", "dataset.test_size=null", "train.epochs=1", "train.batch_size=32", "model.block.width=4",
        f"env.out_dir={root / 'runs'}", f"env.checkpoint_root={root / 'models_checkpoints'}",
        f"env.leaderboard_root={root / 'leaderboard'}", "env.precision=fp32", "env.progress=false", "env.device=cpu",
        "model.name=resnet_mcdo_smoothing_18"])
    train(cfg)
    found = list((root / "models_checkpoints").rglob("*.pth.tar"))
    assert len(found) == 1
    return found[0]


def test_export_keeps_weights_and_card_drops_optimizer(trained_run, tmp_path):
    exported = pretrained.export(trained_run, root=tmp_path, uid="shared")
    assert exported == models.checkpoint_path("synthetic", "resnet_mcdo_smoothing_18", "shared", tmp_path)
    assert models.read_checkpoint(trained_run)["optimizer"] is not None
    assert models.read_checkpoint(exported)["optimizer"] is None
    assert exported.stat().st_size < 0.7 * trained_run.stat().st_size
    original, copy = pretrained.load_trained(trained_run), pretrained.load_trained(exported)
    for key, value in original.state_dict().items():
        assert torch.equal(value, copy.state_dict()[key]), key
    assert copy.card["config"] == original.card["config"] and copy.card["exported_from"] == str(trained_run)
    assert not list(tmp_path.rglob("*.tmp"))


def test_a_float16_export_is_half_the_file_and_loads_as_the_rounded_float32_weights(trained_run, tmp_path):
    full = pretrained.export(trained_run, root=tmp_path / "a", uid="full")
    half = pretrained.export(trained_run, root=tmp_path / "b", uid="half", dtype="float16")
    assert half.stat().st_size < 0.6 * full.stat().st_size
    original, loaded = pretrained.load_trained(trained_run), pretrained.load_trained(half)
    assert loaded.card["stored_dtype"] == "float16" and "stored_dtype" not in pretrained.read_card(full)
    for key, value in original.state_dict().items():
        got = loaded.state_dict()[key]
        assert got.dtype == value.dtype, key  # float32 again in memory
        if value.is_floating_point():
            assert torch.equal(got, value.half().float()), key  # exactly the float16 rounding, nothing else
    with pytest.raises(ValueError, match="dtype must be"):
        pretrained.export(trained_run, root=tmp_path / "c", uid="x", dtype="bfloat16")


def test_find_checkpoint_prefers_the_newest_run_with_a_card(trained_run, tmp_path):
    runs = tmp_path / "runs"
    old = pretrained.export(trained_run, root=runs / "a", uid="old")
    new = pretrained.export(trained_run, root=runs / "b", uid="new")
    os.utime(old, (1, 1))
    args = ("resnet_mcdo_smoothing_18", "synthetic", runs, tmp_path / "none")
    assert pretrained.find_trained(*args) == new
    pretrained.card_path(new).unlink()  # a checkpoint without its card cannot be rebuilt: skipped
    assert pretrained.find_trained(*args) == old


def test_read_card_errors_name_the_problem(tmp_path):
    checkpoint = tmp_path / "x_resnet_dnn_18_u.pth.tar"
    with pytest.raises(FileNotFoundError, match="has no card"):
        pretrained.read_card(checkpoint)
    pretrained.card_path(checkpoint).write_text(json.dumps({"name": "resnet_dnn_18"}))
    with pytest.raises(ValueError, match="not a checkpoint card"):
        pretrained.read_card(checkpoint)


@pytest.mark.parametrize("field, value, message", [
    ("num_classes", 1e9, "num_classes must be an integer"), ("num_classes", 0, "num_classes must be an integer"),
    ("stem", "no", "stem must be true or false"), ("block", {"width": 200000}, "block.width must be at most"),
    ("block", {"width": "16"}, "block.width"), ("block", [16], "block must be an object"),
    ("name", "resnet_mcdo_1800", "is not a model of this library")])
def test_card_fields_are_checked_before_anything_is_built(tmp_path, field, value, message):
    card = {"name": "resnet_mcdo_18", "dataset": "fashion_mnist", "num_classes": 10, "stem": False,
            "block": {"width": 4}, field: value}
    checkpoint = tmp_path / "fashion_mnist_resnet_mcdo_18_x.pth.tar"
    pretrained.card_path(checkpoint).write_text(json.dumps(card))
    with pytest.raises(ValueError, match=message) as info:
        pretrained.read_card(checkpoint)
    assert str(pretrained.card_path(checkpoint)) in str(info.value)


def test_a_card_that_is_not_json_is_refused_by_name(tmp_path):
    checkpoint = tmp_path / "fashion_mnist_resnet_mcdo_18_x.pth.tar"
    pretrained.card_path(checkpoint).write_bytes(b"\x00\xff not json")
    with pytest.raises(ValueError, match="not JSON"):
        pretrained.read_card(checkpoint)
