"""Training sets (ops.train.sets, ops.train.cluster): the reference set configs, refused set sections, local
training that skips finished networks and refuses a changed recipe, resumption, and the submitit launcher."""
import copy
import json
import os
from pathlib import Path

import pytest
import torch

import models
from ops import run
from ops.train import configs, pretrained
from ops.train import cluster, sets
from tests.helpers import shipped_reference_networks, write_cifar

ROOT = Path(__file__).resolve().parents[2]
FASHION = ROOT / "configs" / "fashion_mnist_reference.json"
CIFAR100 = ROOT / "configs" / "cifar100_reference.json"
VARIANTS = ["mcdo", "mcdo_smoothing", "dnn", "dnn_smoothing", "mcdo_mlp"]
ALL_VARIANTS = VARIANTS + ["mcdo_preact", "mcdo_relu6"]  # the Fashion-MNIST set's special cases (pre-act, ReLU6)
NETWORK_KEYS = {"model.name", "model.block", "env.seed", "env.uid"}  # what a set changes in its recipe

# A recipe that trains in well under a second: 8x8 synthetic images, width 4, two steps of 16 images, one thread
# (faster than two for networks this small, on a machine whose cores are shared).
TINY = {
    "dataset": {"name": "synthetic", "kwargs": {"n_train": 64, "n_test": 32, "size": 8}},
    "train": {"epochs": 1, "warmup_epochs": 0, "max_steps_per_epoch": 2, "batch_size": 16, "augment": False},
    "model": {"block": {"width": 4}},
    "optim": {"scheduler": {"name": "constant"}},
    "env": {"device": "cpu", "precision": "fp32", "threads": 1, "progress": False, "tensorboard": False},
}
TWO_VARIANTS = {"dnn": {"model": "resnet_dnn_18"}, "mcdo": {"model": "resnet_mcdo_18"}}


@pytest.fixture(autouse=True)
def _restore_threads():
    """env.threads sets torch's thread count for the whole process: give the other test modules theirs back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def write_set(tmp_path, section=None, epochs=1, **keys):
    """A set config in tmp_path (outputs in tmp_path too): `section` as given, else 2 variants x 2 seeds."""
    cfg = copy.deepcopy(TINY)
    cfg["train"]["epochs"] = epochs
    cfg["env"].update(out_dir=str(tmp_path / "runs"), checkpoint_root=str(tmp_path / "ckpt"))
    if section is None:
        section = {"name": "tiny", "seeds": [0, 1], "networks": TWO_VARIANTS, "export": str(tmp_path / "export")}
    if section is not False:
        cfg["set"] = {**section, **keys}
    path = tmp_path / "set.json"
    path.write_text(json.dumps(cfg))
    return path


def snapshot(folder):
    """{file: (bytes, mtime_ns)} of everything under `folder`."""
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(Path(folder).rglob("*")) if p.is_file()}


# --- the reference configs ---------------------------------------------------------------------------------------

def test_fashion_mnist_reference_set_is_33_networks_seed_major_on_all_images():
    spec, networks = sets.load_set(FASHION)
    assert len(networks) == 33  # 5 seeds of the six GAP-head variants, 3 of the MLP head (86 MB each)
    assert [(n.seed, n.variant) for n in networks] == [(s, v) for s in range(5) for v in ALL_VARIANTS
                                                        if v != "mcdo_mlp" or s < 3]
    recipe = configs.load_config(FASHION)  # the run config of the same file: the set section is left out
    assert "set" not in recipe and recipe["model"]["name"] is None and recipe["train"]["epochs"] == 11
    for n in networks:
        assert n.uid == f"reference-{n.variant}-s{n.seed}" == n.cfg["env"]["uid"]
        assert n.cfg["env"]["seed"] == n.seed
        data = n.cfg["dataset"]
        assert data["name"] == "fashion_mnist" and data["kwargs"] == {}
        assert data["train_size"] is None and data["test_size"] is None  # all 60,000 / 10,000 images
        assert n.cfg["train"]["max_steps_per_epoch"] is None  # whole epochs
        assert set(configs.diff(recipe, n.cfg)) <= NETWORK_KEYS  # the file's recipe, nothing else changed
    models = {n.variant: n.model for n in networks}
    assert models == {"mcdo": "resnet_mcdo_18", "mcdo_smoothing": "resnet_mcdo_smoothing_18", "dnn": "resnet_dnn_18",
                      "dnn_smoothing": "resnet_dnn_smoothing_18", "mcdo_mlp": "resnet_mcdo_18",
                      "mcdo_preact": "preresnet_mcdo_18", "mcdo_relu6": "resnet_mcdo_18"}
    extra = {"mcdo_mlp": {"classifier": "mlp"}, "mcdo_relu6": {"act": "relu6"}}
    for n in networks:
        assert n.cfg["model"]["block"] == {"width": 16, **extra.get(n.variant, {})}
    assert spec["export"] == "resources/models_checkpoints"


def test_cifar100_reference_set_validates_and_one_step_trains(tmp_path):
    spec, networks = sets.load_set(CIFAR100)
    assert len(networks) == 15 and [n.uid for n in networks[:5]] == [f"reference-{v}-s0" for v in VARIANTS]
    for n in networks:
        cfg = n.cfg
        assert cfg["dataset"]["name"] == "cifar100" and cfg["model"]["block"]["width"] == 64
        assert cfg["dataset"]["train_size"] is None and cfg["dataset"]["test_size"] is None
        assert cfg["train"]["epochs"] == 200 and cfg["train"]["warmup_epochs"] == 1
        assert cfg["optim"]["scheduler"]["name"] == "MultiStepLR"
        assert cfg["optim"]["scheduler"]["milestones"] == [60, 120, 160]
    assert spec["export"] == "reference_models"

    write_cifar(tmp_path / "data", hundred=True)  # 6 training and 6 test images of 100 classes
    export = tmp_path / "export"
    spec, networks = sets.load_set(CIFAR100, [
        f"dataset.root={tmp_path / 'data'}", "dataset.download=false", "env.device=cpu", "train.batch_size=2",
        "val.batch_size=6", "train.epochs=1", "train.warmup_epochs=0", "train.max_steps_per_epoch=1",
        "env.threads=1", "env.progress=false", "env.tensorboard=false", f"env.out_dir={tmp_path / 'runs'}",
        f"env.checkpoint_root={tmp_path / 'ckpt'}", f"set.export={export}"])
    assert spec["export"] == str(export)
    network = networks[0]
    [path] = sets.run_local([network], spec["export"])
    assert path == export / "cifar100" / "resnet_mcdo_18" / "cifar100_resnet_mcdo_18_reference-mcdo-s0.pth.tar"
    card = pretrained.read_card(path)
    assert card["num_classes"] == 100 and card["block"] == {"width": 64} and card["seed"] == 0
    assert len(card["history"]) == 1 and card["config"]["train"]["max_steps_per_epoch"] == 1
    assert sets.is_finished(network, export)  # precision "auto" compares as resolved: the card's is the set's


# --- refused set sections ----------------------------------------------------------------------------------------

GOOD = {"name": "tiny", "seeds": [0, 1], "networks": {"dnn": {"model": "resnet_dnn_18"}}}


def test_a_good_section_loads(tmp_path):
    spec, networks = sets.load_set(write_set(tmp_path, GOOD), [f"set.export={tmp_path / 'elsewhere'}"])
    assert [n.uid for n in networks] == ["tiny-dnn-s0", "tiny-dnn-s1"]
    assert spec["export"] == str(tmp_path / "elsewhere")


def test_a_run_config_without_set_section_is_refused_naming_the_train_command(tmp_path):
    path = write_set(tmp_path, False)
    with pytest.raises(sets.SetError, match=r"no `set` section(.|\n)*ops\.run train --config"):
        sets.load_set(path)
    assert configs.load_config(path)["dataset"]["name"] == "synthetic"  # it is a good run config


@pytest.mark.parametrize("change, error, message", [
    ({"networks": {}}, configs.ConfigError, r"set\.networks must map variant names"),
    ({"seeds": []}, configs.ConfigError, r"set\.seeds must be a non-empty list"),
    ({"seeds": [0, 1, 0]}, configs.ConfigError, r"set\.seeds must be .*distinct.*got \[0, 1, 0\]"),
    ({"seeds": [-1]}, configs.ConfigError, r"set\.seeds .*0 <= seed.*got \[-1\]"),
    ({"seeds": [1.5]}, configs.ConfigError, r"set\.seeds .*integers.*got \[1\.5\]"),
    ({"seeds": ["1"]}, configs.ConfigError, r"set\.seeds .*integers.*got \['1'\]"),
    ({"networks": {"dnn-a": {"model": "resnet_dnn_18"}}}, configs.ConfigError, r"variant 'dnn-a' must be"),
    ({"networks": {"dnn/a": {"model": "resnet_dnn_18"}}}, configs.ConfigError, r"variant 'dnn/a' must be"),
    ({"networks": {"dnn": {"model": "resnet_dnn_19"}}}, ValueError,
     r"Unknown model name 'resnet_dnn_19'\. Did you mean: resnet_dnn_18"),
    ({"networks": {"dnn": {"model": "resnet_dnn_18", "width": 4}}}, configs.ConfigError,
     r"set\.networks\.dnn must be \{'model': NAME\}"),
    ({"networks": {"dnn": {"model": "resnet_dnn_18", "export_dtype": "int8"}}}, configs.ConfigError,
     r"set\.networks\.dnn\.export_dtype must be one of \('float32', 'float16'\)"),
    ({"sedes": [0]}, configs.ConfigError, r"set\.sedes is not a set key"),
    ({"name": "a/b"}, configs.ConfigError, r"set\.name must be a plain name"),
])
def test_bad_set_sections_are_refused_naming_the_problem(tmp_path, change, error, message):
    path = write_set(tmp_path, {**GOOD, **change})
    with pytest.raises(error, match=message):
        sets.load_set(path)


def test_every_problem_of_a_set_section_is_reported_together(tmp_path):
    path = write_set(tmp_path, {"name": "tiny", "seeds": [-1], "networks": {"a-b": {"model": "resnet_dnn_18"}},
                                "sedes": 1})
    with pytest.raises(configs.ConfigError) as info:
        sets.load_set(path)
    problems = info.value.problems
    assert len(problems) == 3 and all(p.startswith(f"{path}: set.") for p in problems)
    assert "set.sedes is not a set key" in problems[0] and "set.seeds" in problems[1] and "'a-b'" in problems[2]


def test_only_set_export_can_be_overridden(tmp_path, capsys):
    path = write_set(tmp_path, GOOD)
    with pytest.raises(sets.SetError, match=r"'set\.name=other': only set\.export can be overridden"):
        sets.load_set(path, ["set.name=other"])
    assert run.main(["train-set", str(path), "set.name=other"]) == 2
    assert "only set.export can be overridden" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_train_set_without_a_config_says_how_to_give_one(capsys):
    assert run.main(["train-set"]) == 2
    assert "train-set needs a set config: python -m ops.run train-set configs/" in capsys.readouterr().err


# --- training here -----------------------------------------------------------------------------------------------

def test_run_local_trains_exports_skips_and_refuses_another_recipe(tmp_path, capsys, monkeypatch):
    path = write_set(tmp_path)
    spec, networks = sets.load_set(path)
    export = Path(spec["export"])
    assert [n.uid for n in networks] == ["tiny-dnn-s0", "tiny-mcdo-s0", "tiny-dnn-s1", "tiny-mcdo-s1"]
    paths = sets.run_local(networks, spec["export"])
    out = capsys.readouterr().out
    assert "Set of 4 networks: 0 finished" in out and "4 to train" in out
    assert all(f"[network {i} of 4]" in out for i in range(1, 5))
    for network, exported in zip(networks, paths, strict=True):
        assert exported == export / "synthetic" / network.model / f"synthetic_{network.model}_{network.uid}.pth.tar"
        state = torch.load(exported, map_location="cpu", weights_only=True)
        assert state["optimizer"] is None and "scheduler" not in state  # weights only
        run_state = torch.load(tmp_path / "runs" / "synthetic" / network.model / network.uid / "checkpoint.pth.tar",
                               map_location="cpu", weights_only=True)
        assert run_state["optimizer"] is not None  # the run folder keeps what resuming needs
        card = pretrained.read_card(exported)
        assert card["seed"] == network.seed == card["config"]["env"]["seed"]
        assert card["config"]["env"]["uid"] == network.uid and card["name"] == network.model
        assert [row["epoch"] for row in card["history"]] == [1]
        assert card["wall_time_s"] > 0 and card["machine"]
        model = pretrained.load_trained(exported)
        for a, b in zip(model.state_dict().values(), state["state_dict"].values(), strict=True):
            assert torch.equal(a, b)
    # Seeds differ, so the networks differ.
    first = [torch.load(p, weights_only=True)["state_dict"] for p in (paths[0], paths[2])]
    assert any(not torch.equal(a, b) for a, b in zip(first[0].values(), first[1].values(), strict=True))
    before = snapshot(export)

    def must_not_train(cfg, export):
        raise AssertionError(f"{cfg['env']['uid']} was trained again")

    monkeypatch.setattr(sets, "train_network", must_not_train)
    assert sets.run_local(networks, spec["export"]) == paths
    out = capsys.readouterr().out
    assert "Set of 4 networks: 4 finished" in out and "0 to train" in out and "[network" not in out

    # Another recipe under the same names is refused, before anything is trained or written.
    for override, key in [("optim.lr=0.05", "optim.lr"), ("model.block.width=8", "model.block"),
                          ("train.epochs=2", "train.epochs")]:
        _, changed = sets.load_set(path, [override])
        with pytest.raises(sets.SetError, match=rf"(?s)was trained with another recipe.*{key}.*Move it away"):
            sets.run_local(changed, spec["export"])
    assert snapshot(export) == before


def test_an_interrupted_network_resumes_from_its_run_folder(tmp_path, capsys):
    path = write_set(tmp_path, {"name": "tiny", "seeds": [0], "networks": {"dnn": {"model": "resnet_dnn_18"}},
                                "export": str(tmp_path / "export")}, epochs=2)
    # The first network was stopped after its first epoch of 2: its run folder holds that epoch.
    assert run.main(["train", "--config", str(path), "--model", "resnet_dnn_18", "--uid", "tiny-dnn-s0",
                     "train.epochs=1"]) == 0
    cut = pretrained.read_card(tmp_path / "ckpt" / "synthetic" / "resnet_dnn_18" /
                               "synthetic_resnet_dnn_18_tiny-dnn-s0.pth.tar")
    assert [row["epoch"] for row in cut["history"]] == [1]
    capsys.readouterr()

    spec, networks = sets.load_set(path)
    assert not sets.is_finished(networks[0], spec["export"])
    [exported] = sets.run_local(networks, spec["export"])
    out = capsys.readouterr().out
    assert "Resuming" in out and "after epoch 1" in out
    card = pretrained.read_card(exported)
    assert [row["epoch"] for row in card["history"]] == [1, 2]
    assert card["history"][0] == cut["history"][0]
    assert card["config"]["train"]["epochs"] == 2 and sets.is_finished(networks[0], spec["export"])


# --- submitit ----------------------------------------------------------------------------------------------------

def test_submitit_local_trains_in_other_processes_and_skips_finished(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    path = write_set(tmp_path, {"name": "tiny", "seeds": [0, 1], "networks": {"dnn": {"model": "resnet_dnn_18"}},
                                "export": str(tmp_path / "export")})
    spec, networks = sets.load_set(path)
    logs = tmp_path / "logs"
    with pytest.raises(sets.SetError, match="executor must be slurm or submitit-local"):
        cluster.submit(networks, spec["export"], executor="local")

    [result] = cluster.submit(networks[:1], spec["export"], executor="submitit-local", folder=logs, gpus=0,
                              time_min=5, wait=True)
    assert result["uid"] == "tiny-dnn-s0"
    assert Path(result["checkpoint"]) == sets.exported_path(networks[0], spec["export"])
    assert sets.is_finished(networks[0], spec["export"]) and not sets.is_finished(networks[1], spec["export"])
    jobs = [p.parent.name for p in logs.glob("*/*_result.pkl")]
    assert len(jobs) == 1 and jobs[0] != str(os.getpid())  # a process of its own (the local job id is its pid)
    out = capsys.readouterr().out
    assert "0 finished" in out and "1 to submit" in out and "tiny-dnn-s0" in out

    # The command line submits the one network left, and waits for it.
    assert run.main(["train-set", str(path), "--executor", "submitit-local", "--logs", str(logs), "--wait",
                     "--time", "5"]) == 0
    out = capsys.readouterr().out
    assert "1 finished" in out and "1 to submit" in out and "tiny-dnn-s1" in out
    assert all(sets.is_finished(n, spec["export"]) for n in networks)
    assert len(list(logs.glob("*/*_result.pkl"))) == 2
    card = pretrained.read_card(sets.exported_path(networks[1], spec["export"]))
    assert card["seed"] == 1 and len(card["history"]) == 1

    assert cluster.submit(networks, spec["export"], executor="submitit-local", folder=logs, gpus=0, time_min=5,
                          wait=True) == []
    assert "2 finished" in capsys.readouterr().out and len(list(logs.glob("*/*_result.pkl"))) == 2


def test_a_network_entry_chooses_how_its_export_is_stored():
    _, networks = sets.load_set(ROOT / "configs" / "fashion_mnist_reference.json")
    dtypes = {n.variant: n.export_dtype for n in networks}
    assert dtypes["mcdo_mlp"] == "float16" and dtypes["mcdo"] == "float32"  # the 173 MB head ships at half


# --- the shipped reference networks ------------------------------------------------------------------------------

SHIPPED = ROOT / "resources" / "models_checkpoints"
RUN_KEYS = {"env.precision"}  # resolved when the run starts (auto -> bf16 on this CPU); nothing else differs


_shipped = shipped_reference_networks


def test_shipped_reference_networks_are_the_set_config_trained_to_convergence():
    shipped = _shipped()
    # the first 15 are all there; the 18 of the second round (seeds 3-4, pre-activation, ReLU6) as they are trained
    assert {(n.variant, n.seed) for n, _ in shipped} >= {(v, s) for v in VARIANTS for s in (0, 1, 2)}
    for n, path in shipped:
        card = pretrained.read_card(path)
        assert card["seed"] == n.seed and card["name"] == n.model and card["block"] == n.cfg["model"]["block"]
        assert set(configs.diff(n.cfg, card["config"])) <= RUN_KEYS, (path.name, configs.diff(n.cfg, card["config"]))
        accs = [e["test_acc"] for e in card["history"]]
        assert len(accs) == 12 and all("epoch_time_s" in e for e in card["history"])
        # one MC sample, all 10,000 test images: the bar (92%) for the GAP-head networks; the MLP head's
        # seed 2 diverged for a few steps in warm-up (loss 0.66 -> 6.1) and ends lower; its earlier run on another
        # machine fell behind in warm-up too (docs/reference-models.md)
        # The plain MC dropout networks must reach 92% (the recipe's bar); the others are shipped as trained (a seed
        # is never replaced because its result is unwelcome): trained (far above chance) and converged.
        bar = 0.92 if n.variant == "mcdo" else 0.915 if n.variant == "mcdo_mlp" else 0.85
        assert accs[-1] >= bar, (path.name, accs[-1])
        assert max(accs[-3:]) - min(accs[-3:]) < 0.01, (path.name, accs[-3:])  # the curve has flattened
        assert card["machine"]["cpu_capability"] and card["wall_time_s"] > 0
        assert card["config"]["env"]["precision"] in ("bf16", "fp32")  # resolved: what the network trained in
        assert n.variant == "mcdo_mlp" or path.stat().st_size < 5e6  # the repository grows by small files only


def test_shipped_reference_networks_load_as_their_model_with_weights_only():
    shipped = _shipped()
    assert len(shipped) >= 15
    for n, path in shipped:
        state = models.read_checkpoint(path)
        assert state["optimizer"] is None and state["name"] == n.model
        dtypes = {t.dtype for t in state["state_dict"].values()}
        assert dtypes <= ({torch.float16, torch.int64} if n.variant == "mcdo_mlp" else {torch.float32, torch.int64})
        net = pretrained.load_trained(path)
        assert type(net) is type(models.get_model(n.model, num_classes=10, **n.cfg["model"]["block"]))
        assert all(p.dtype == torch.float32 for p in net.parameters())


def test_the_docs_reference_table_lists_every_shipped_network_with_its_machine_and_precision():
    """docs/reference-models.md's table is the shipped cards' (accuracy, NLL, ECE, precision, machine), row for row:
    a network committed without its row, or a row without its network, fails."""
    spec, networks = sets.load_set(FASHION)
    text = (ROOT / "docs" / "reference-models.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ") and " | 12 | " in line]
    assert rows == sets.card_table(networks, SHIPPED)
    assert len(rows) == len(_shipped()) >= 15
