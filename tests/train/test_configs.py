"""Config files: the original's load, mistakes are named, overrides apply."""
import json

import pytest

from ops.train.configs import ConfigError, load_config, make_config


@pytest.mark.parametrize("name", ["cifar10_general", "cifar100_general", "imagenet_general", "fashion_mnist_general"])
def test_shipped_configs_load(name):
    cfg = load_config(f"configs/{name}.json")
    assert set(cfg) == {"dataset", "train", "val", "model", "optim", "env"}
    assert cfg["optim"]["lr"] == 0.1 and cfg["env"]["precision"] == "auto" and cfg["val"]["precision"] == "fp32"


def test_original_recipes():
    cifar = load_config("configs/cifar100_general.json")
    assert (cifar["train"]["epochs"], cifar["train"]["batch_size"], cifar["optim"]["weight_decay"]) == (200, 128, 5e-4)
    assert cifar["optim"]["scheduler"] == {"name": "MultiStepLR", "milestones": [60, 120, 160], "gamma": 0.2,
                                           "eta_min": 0.0}
    imagenet = load_config("configs/imagenet_general.json")
    assert (imagenet["train"]["epochs"], imagenet["train"]["batch_size"]) == (90, 256)
    assert imagenet["optim"]["scheduler"]["milestones"] == [30, 60, 80] and imagenet["optim"]["weight_decay"] == 1e-4


def test_unknown_key_is_named_with_suggestion(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"train": {"epoch": 3}}))
    with pytest.raises(ConfigError, match=r"train\.epoch(.|\n)*'epochs'(.|\n)*warmup_epochs"):
        load_config(path)
    with pytest.raises(ConfigError, match="optim.scheduler.milestone"):
        make_config({"optim": {"scheduler": {"milestone": [1]}}})
    with pytest.raises(ConfigError, match="Unknown config key 'trian'"):
        make_config({"trian": {}})


def test_wrong_types_are_named():
    with pytest.raises(ConfigError, match="train.epochs must be a positive integer, got 'ten'"):
        make_config({"train": {"epochs": "ten"}})
    with pytest.raises(ConfigError, match="env.channels_last.*true or false"):
        make_config({"env": {"channels_last": 1}})


def test_overrides_parse_json_values():
    cfg = make_config({}, ["train.epochs=3", "model.block.width=16", "optim.scheduler.milestones=[1,2]",
                           "env.device=cpu", "dataset.download=true", "model.name=resnet_dnn_18"])
    assert cfg["train"]["epochs"] == 3 and cfg["model"]["block"] == {"width": 16}
    assert cfg["optim"]["scheduler"]["milestones"] == [1, 2] and cfg["env"]["device"] == "cpu"
    assert cfg["dataset"]["download"] is True and cfg["model"]["name"] == "resnet_dnn_18"
    with pytest.raises(ConfigError, match="train.epoch"):
        make_config({}, ["train.epoch=3"])
    with pytest.raises(ConfigError, match="section.key=value"):
        make_config({}, ["train.epochs"])


def test_missing_config_file_lists_available():
    with pytest.raises(FileNotFoundError, match="cifar100_general.json"):
        load_config("configs/cifar1000.json")
