"""Stochastic evaluations are seeded: the same call gives the same numbers, another seed other masks; deep
ensembles of trained members are scored like models.ensemble.Ensemble."""
import json

import numpy as np
import torch

import models
from models.ensemble import Ensemble
from ops import run
from ops.analysis import featuremaps, robustness
from ops.data import datasets, loaders
from ops.evaluate import engine, sweep
from ops.train import pretrained


def _data(n=48):
    _, test_set = datasets.synthetic(n_train=8, n_test=n, seed=3)
    return test_set, loaders.make_loader(test_set, 16)


def _mcdo(seed=0):
    torch.manual_seed(seed)
    return models.get_model("resnet_mcdo_18", width=4, num_classes=10).eval()


def test_sweep_gives_the_same_numbers_twice_and_other_masks_with_another_seed():
    _, loader = _data()
    model = _mcdo()
    state = torch.random.get_rng_state()
    first, second = sweep(model, loader, sizes=(1, 2, 4)), sweep(model, loader, sizes=(1, 2, 4))
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's random stream is untouched
    for n in (1, 2, 4):
        assert first[n]["nll"] == second[n]["nll"] and first[n]["ece"] == second[n]["ece"]
        assert first[n]["seed"] == 0 and first[n]["stochastic"]
    other = sweep(model, loader, sizes=(1, 2, 4), seed=1)
    assert other[1]["nll"] != first[1]["nll"]


def test_deep_ensemble_sweep_scores_the_first_n_members_like_ensemble():
    _, loader = _data()
    members = [models.get_model("resnet_dnn_18", width=4, num_classes=10).eval() for _ in range(3)]
    results = sweep(members, loader, sizes=(1, 2, 3))
    for n in (1, 2, 3):
        reference = engine.test(Ensemble(members[:n]), 1, loader)  # an independent composition: mean probability
        assert abs(results[n]["nll"] - reference["nll"]) < 1e-5
        assert results[n]["acc"] == reference["acc"]
    assert results[3]["passes"] == 3 and not results[3]["stochastic"]


def test_deep_ensemble_sweep_refuses_more_sizes_than_members():
    _, loader = _data()
    members = [models.get_model("resnet_dnn_18", width=4, num_classes=10) for _ in range(2)]
    try:
        sweep(members, loader, sizes=(1, 3))
    except ValueError as exc:
        assert "2 members" in str(exc)
    else:
        raise AssertionError("no error for size 3 of a 2-member ensemble")


def test_feature_map_variance_and_fourier_profiles_repeat():
    test_set, _ = _data(16)
    model = _mcdo()
    x = (test_set.images.float() / 255)[:8]
    points = featuremaps.stage_points(model)
    a, b = featuremaps.mc_variance(model, x, points, samples=3), featuremaps.mc_variance(model, x, points, samples=3)
    assert a == b
    c = featuremaps.mc_variance(model, x, points, samples=3, seed=5)
    assert c != a
    p, q = featuremaps.fourier_profiles(model, x, points), featuremaps.fourier_profiles(model, x, points)
    assert all(torch.equal(p[k][1], q[k][1]) for k in p)


def test_perturbation_metrics_repeat():
    frames = np.random.default_rng(0).integers(0, 256, (6, 4, 32, 32, 3), dtype=np.uint8)
    model = _mcdo()
    kw = dict(mean=(0.5,) * 3, std=(0.25,) * 3, sizes=(1, 3), batch_size=3)
    a, b = robustness.evaluate_perturbed(model, frames, **kw), robustness.evaluate_perturbed(model, frames, **kw)
    assert a == b and a[3]["seed"] == 0


def test_cli_test_repeats_and_writes_where_the_command_line_says(tmp_path):
    # A checkpoint of ours, with a card whose stored config names other output folders.
    model = _mcdo()
    cfg = {"dataset": {"name": "synthetic", "kwargs": {"n_train": 8, "n_test": 40}}, "model": {
        "name": "resnet_mcdo_18", "block": {"width": 4}}, "env": {
        "leaderboard_root": str(tmp_path / "card_says_here"), "out_dir": str(tmp_path / "card_runs")}}
    from ops.train import configs

    cfg = configs.make_config(cfg)
    path = models.save(model, "synthetic", "t1", root=tmp_path / "ckpt")
    pretrained.write_card(path, cfg, 10)
    args = ["test", "--checkpoint", str(path), "--sizes", "1,3", f"env.leaderboard_root={tmp_path / 'lb'}"]
    assert run.main(args) == 0 and run.main(args) == 0
    files = sorted((tmp_path / "lb").rglob("*.json"))
    assert len(files) == 2 and not (tmp_path / "card_says_here").exists()
    first, second = (json.loads(f.read_text()) for f in files)
    assert first["3"]["nll"] == second["3"]["nll"] and first["1"]["ece"] == second["1"]["ece"]
    assert first["evaluation"]["seed"] == 0 and first["evaluation"]["overrides"] == args[-1:]
    # without an override the results go to the default folder under the working directory, not the card's
    assert "leaderboard/logs" in run.evaluation_config(cfg, [])["env"]["leaderboard_root"]
