"""The model zoo: every name builds, runs, matches the original layouts and behaves as its variant says."""
import gzip
import json
import math
import os
import stat
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import models
from models.ensemble import Ensemble

# The layouts of xxxnell/spatial-smoothing's models (a copy of shared/reference/original_state_dicts.json.gz).
REFERENCE = Path(__file__).parents[1] / "fixtures" / "original_state_dicts.json.gz"


def _reference():
    with gzip.open(REFERENCE) as f:
        return json.load(f)["models"]


REF = _reference()
STEM_NAMES = sorted({k.split("|")[0] for k in REF if k.endswith("stem=True")})


def test_registry_has_every_original_name():
    original = {k.split("|")[0] for k in REF}
    assert len(original) == 92
    assert set(models.list_models()) == original


@pytest.mark.parametrize("key", sorted(REF))
def test_layout_matches_original(key):
    name, num_classes, stem = key.split("|")
    with torch.device("meta"):  # shapes only: no memory, no init
        model = models.get_model(name, num_classes=int(num_classes.split("=")[1]), stem=stem == "stem=True")
    layout = [[k, list(v.shape)] for k, v in model.state_dict().items()]
    assert layout == REF[key]["state_dict"]
    assert models.count_parameters(model) == REF[key]["num_params"]


@pytest.mark.parametrize("name", models.list_models())
def test_forward_cifar_and_mc_behaviour(name):
    model = models.get_model(name, num_classes=10).eval()
    assert model.name == name
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        y1, y2 = model(x), model(x)
        with models.mc_dropout(model, enabled=False):
            z1, z2 = model(x), model(x)
        y3 = model(x)
    assert y1.shape == (2, 10) and torch.isfinite(y1).all()
    if "_mcdo" in name:
        assert models.is_stochastic(model)
        assert not torch.equal(y1, y2), "MC dropout must stay stochastic in eval()"
        assert not torch.equal(y3, y1), "the context manager must restore MC dropout"
    else:
        assert not models.is_stochastic(model)
        assert torch.equal(y1, y2)
    assert torch.equal(z1, z2), "with MC dropout off, eval() must be deterministic"


@pytest.mark.parametrize("name", STEM_NAMES)
def test_forward_imagenet_stem(name):
    model = models.get_model(name, num_classes=7, stem=True).eval()
    with torch.no_grad(), models.mc_dropout(model, enabled=False):
        y = model(torch.randn(1, 3, 224, 224))
    assert y.shape == (1, 7) and torch.isfinite(y).all()


def test_list_models_wildcards_and_natural_order():
    assert models.list_models("resnet_dnn_[0-9]*") == [
        "resnet_dnn_18", "resnet_dnn_34", "resnet_dnn_50", "resnet_dnn_101", "resnet_dnn_152"]
    assert models.list_models("alexnet*") == [
        "alexnet_dnn", "alexnet_dnn_smoothing", "alexnet_mcdo", "alexnet_mcdo_smoothing"]
    assert models.list_models("*smoothing*") and all("smoothing" in n for n in models.list_models("*smoothing*"))
    assert models.list_models("nothing*") == []


def test_unknown_name_lists_close_matches():
    with pytest.raises(ValueError, match="resnet_mcdo_smoothing_18"):
        models.get_model("resnet_mcdo_smothing_18")


def test_unknown_keyword_is_named():
    with pytest.raises(TypeError, match="widht"):
        models.get_model("resnet_dnn_18", widht=16)
    with pytest.raises(TypeError, match="width"):  # VGG has no base width
        models.get_model("vgg_dnn_11", width=16)


def test_variant_conflicts_raise():
    with pytest.raises(ValueError, match="resnet_mcdo_18"):
        models.get_model("resnet_dnn_18", rate=0.2)
    with pytest.raises(ValueError, match="resnet_mcdo_smoothing_18"):
        models.get_model("resnet_mcdo_18", temp=5.0)


def _dropout_rates(model):
    return {m.p for m in model.modules() if isinstance(m, models.MCDropout)}


def test_default_and_custom_rates():
    assert _dropout_rates(models.get_model("resnet_mcdo_18")) == {0.3}
    assert _dropout_rates(models.get_model("alexnet_mcdo")) == {0.1}
    assert _dropout_rates(models.get_model("vgg_mcdo_11", rate=0.05)) == {0.05}
    assert _dropout_rates(models.get_model("resnet_dnn_18")) == set()


def test_width_shrinks_resnets():
    small = models.get_model("resnet_mcdo_smoothing_18", width=16)
    assert models.count_parameters(small) < models.count_parameters(models.get_model("resnet_mcdo_smoothing_18")) / 10
    assert small(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert models.get_model("resnext_dnn_50", width=16)(torch.randn(1, 3, 32, 32)).shape == (1, 10)
    # a width too small for ResNeXt's groups is refused when built, not a 0-channel conv failing at run time
    with pytest.raises(ValueError, match=r"0.5 channels per group .* \(at least 16 for this model\)"):
        models.get_model("resnext_mcdo_smoothing_50", width=8)


@pytest.mark.parametrize("classifier", ["gap", "bngap", "gmp", "gmedp", "gapclip", "gapmlp", "mlp"])
def test_classifier_options(classifier):
    model = models.get_model("resnet_dnn_18", width=8, classifier=classifier).eval()
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    model = models.get_model("vgg_dnn_11", classifier=classifier).eval()
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_median_pool_head_takes_the_originals_median():
    head = models.classifiers.make_head("gmedp", 2, 2)[0]
    with torch.no_grad():
        head.dense.weight.copy_(torch.eye(2))
        head.dense.bias.zero_()
    x = torch.tensor([[[[1.0, 5.0], [3.0, 100.0]], [[-1.0, -2.0], [-3.0, -4.0]]]])  # (1, 2, 2, 2)
    # The (H*W // 2)-th largest: the upper median of {1,3,5,100} and {-4,-3,-2,-1}.
    assert torch.equal(head(x), torch.tensor([[5.0, -2.0]]))
    odd = torch.arange(9.0).view(1, 1, 3, 3).expand(1, 2, 3, 3)
    assert torch.equal(head(odd), torch.tensor([[5.0, 5.0]]))  # 4th largest of 0..8 (the original's k = 9 // 2)
    assert torch.equal(head(torch.full((1, 2, 1, 1), 7.0)), torch.tensor([[7.0, 7.0]]))  # 1x1 maps work too


# --- smoothing blocks ---------------------------------------------------------------------------------------

def _tanh_blur_reference(x, t):
    """t*tanh(x/t) -> ReLU -> 2x2 mean over a zero-padded map (padding counted), written with loops."""
    y = torch.relu(t * torch.tanh(x / t))
    B, C, H, W = y.shape
    padded = torch.zeros(B, C, H + 2, W + 2)
    padded[:, :, 1:-1, 1:-1] = y
    out = torch.empty(B, C, H + 1, W + 1)
    for i in range(H + 1):
        for j in range(W + 1):
            out[:, :, i, j] = padded[:, :, i:i + 2, j:j + 2].sum(dim=(2, 3)) / 4
    return out


@pytest.mark.parametrize("temp", [10.0, 1.0])
def test_tanh_blur_block_is_exact(temp):
    x = 20 * torch.randn(2, 3, 5, 6)
    block = models.TanhBlurBlock(3, temp=temp)
    y = block(x)
    assert y.shape == (2, 3, 6, 7)  # one pixel larger
    torch.testing.assert_close(y, _tanh_blur_reference(x, temp))
    # Border averages count the zero padding: a constant map of ones gives 1/4 in the corners, 1/2 on edges.
    ones = block(torch.full((1, 1, 4, 4), 50.0))[0, 0] / (temp * math.tanh(50.0 / temp))
    assert ones[0, 0].item() == pytest.approx(0.25) and ones[0, 2].item() == pytest.approx(0.5)
    assert ones[2, 2].item() == pytest.approx(1.0)


def test_separable_blur_filters():
    x = torch.randn(1, 2, 7, 7)
    blur = models.smoothing.Blur(2, sfilter=(1, 2, 1), pad_mode="replicate")
    assert "filter" not in blur.state_dict()  # non-persistent buffer
    k = torch.tensor([[1.0, 2, 1], [2, 4, 2], [1, 2, 1]]) / 16
    expected = torch.stack([F.conv2d(F.pad(x[:, c:c + 1], (1, 1, 1, 1), mode="replicate"), k[None, None])[:, 0]
                            for c in range(2)], dim=1)
    torch.testing.assert_close(blur(x), expected)
    assert models.smoothing.Blur(2, sfilter=(1, 3, 3, 1))(x).shape == x.shape  # even filters keep the size
    # The original stored the filter as a frozen parameter: the same filter loads, another one is refused.
    blur.load_state_dict({"filter": k.expand(2, 1, 3, 3).clone()})
    torch.testing.assert_close(blur(x), expected)
    with pytest.raises(RuntimeError, match="sfilter"):
        blur.load_state_dict({"filter": torch.full((2, 1, 3, 3), 1 / 9)})


@pytest.mark.parametrize("block", sorted(models.SMOOTHING_BLOCKS))
def test_smoothing_alternatives_build_and_run(block):
    model = models.get_model("resnet_mcdo_smoothing_18", width=8, smoothing=block).eval()
    assert torch.isfinite(model(torch.randn(2, 3, 32, 32))).all()


def test_smoothing_kwargs_reach_the_block():
    model = models.get_model("resnet_dnn_smoothing_18", temp=3.0, sfilter=(1, 2, 1), pad_mode="reflect")
    block = model.smooth1[0]
    assert block.temp == 3.0 and isinstance(block.blur, models.smoothing.Blur)
    with pytest.raises(ValueError, match="Unknown smoothing"):
        models.get_model("resnet_dnn_smoothing_18", smoothing="gaussian")


# --- checkpoints ----------------------------------------------------------------------------------------------

def _tiny():
    return models.get_model("resnet_mcdo_smoothing_18", width=4)


def test_save_load_round_trip_in_original_layout(tmp_path):
    model = _tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(4, 3, 32, 32)).sum().backward()
    opt.step()
    path = models.save(model, "cifar_100", "abc", optimizer=opt, root=tmp_path)
    assert path == tmp_path / "cifar100" / "resnet_mcdo_smoothing_18" / "cifar100_resnet_mcdo_smoothing_18_abc.pth.tar"
    raw = torch.load(path, weights_only=True)
    assert set(raw) == {"name", "state_dict", "optimizer", "arch"} and raw["name"] == model.name
    assert raw["arch"] == {"name": model.name, "num_classes": 10, "stem": False, "width": 4}

    other = _tiny()
    opt2 = torch.optim.SGD(other.parameters(), lr=0.1, momentum=0.9)
    models.load(other, "cifar100", "abc", root=tmp_path, optimizer=opt2)
    for (k, a), b in zip(model.state_dict().items(), other.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    assert opt2.state_dict()["state"].keys() == opt.state_dict()["state"].keys()


def test_save_unwraps_wrappers(tmp_path):
    model = _tiny()
    path = models.save(torch.nn.DataParallel(model), "d", 1, root=tmp_path)
    assert "module." not in "".join(torch.load(path, weights_only=True)["state_dict"])
    compiled = torch.compile(model)
    assert models.unwrap(compiled) is model
    assert models.save(compiled, "d", 2, root=tmp_path).exists()


def test_atomic_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    model = _tiny()
    path = models.save(model, "d", 0, root=tmp_path)
    before = path.read_bytes()

    def crash(obj, f, *a, **k):
        f.write(b"partial")
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        models.save(model, "d", 0, root=tmp_path)
    assert path.read_bytes() == before
    assert list(path.parent.iterdir()) == [path]  # no temporary file left behind


def test_loading_another_models_checkpoint_names_it(tmp_path):
    saved = _tiny()
    path = models.save(saved, "d", 0, root=tmp_path)
    other = models.get_model("resnet_mcdo_smoothing_34", width=4)
    other_path = models.checkpoint_path("d", other.name, 0, tmp_path)
    other_path.parent.mkdir(parents=True)
    other_path.write_bytes(path.read_bytes())
    with pytest.raises(ValueError, match=r"resnet_mcdo_smoothing_18(.|\n)*missing in checkpoint(.|\n)*layer1\.2"):
        models.load(other, "d", 0, root=tmp_path)


def _originals_checkpoint(model):
    """A state_dict as the original implementation saves it: every Blur filter is a (frozen) Parameter."""
    state = dict(model.state_dict())
    for name, module in model.named_modules():
        if isinstance(module, models.smoothing.Blur):
            state[f"{name}.filter"] = module.filter.clone()
    return state


def test_original_checkpoint_with_blur_filter_loads_through_models_load(tmp_path):
    kwargs = dict(width=4, sfilter=(1, 2, 1), pad_mode="replicate")
    trained = models.get_model("resnet_mcdo_smoothing_18", **kwargs)
    state = _originals_checkpoint(trained)
    assert "smooth1.0.blur.filter" in state
    path = models.checkpoint_path("cifar100", trained.name, "orig", tmp_path)
    path.parent.mkdir(parents=True)
    torch.save({"name": trained.name, "state_dict": state, "optimizer": None}, path)
    fresh = models.get_model("resnet_mcdo_smoothing_18", **kwargs)
    models.load(fresh, "cifar100", "orig", root=tmp_path)
    for key, value in trained.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    # Built with another filter, the same checkpoint is refused, naming the filter.
    other = models.get_model("resnet_mcdo_smoothing_18", width=4, sfilter=(1, 3, 3, 1))
    with pytest.raises(ValueError, match="filter"):
        models.load(other, "cifar100", "orig", root=tmp_path)


def test_missing_checkpoint_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="d_resnet_mcdo_smoothing_18_7.pth.tar"):
        models.load(_tiny(), "d", 7, root=tmp_path)


def test_load_refuses_pickled_code(tmp_path):
    model = _tiny()
    path = models.checkpoint_path("d", model.name, 0, tmp_path)
    path.parent.mkdir(parents=True)
    torch.save({"name": model.name, "state_dict": model.state_dict(), "optimizer": None, "x": Path(".")}, path)
    with pytest.raises(models.CheckpointError, match="weights_only=False only if you trust"):
        models.load(model, "d", 0, root=tmp_path)


# --- ensemble and helpers -------------------------------------------------------------------------------------

def test_ensemble_returns_log_mean_probabilities():
    members = [models.get_model("resnet_dnn_18", width=4).eval() for _ in range(3)]
    x = torch.randn(5, 3, 32, 32)
    out = Ensemble(members).eval()(x)
    assert out.shape == (5, 10)
    torch.testing.assert_close(out.exp().sum(-1), torch.ones(5))
    mean_prob = sum(F.softmax(m(x), dim=-1) for m in members) / 3
    torch.testing.assert_close(out, mean_prob.log())


def test_ensemble_of_mc_members_is_stochastic():
    ens = Ensemble([models.get_model("resnet_mcdo_18", width=4) for _ in range(2)]).eval()
    x = torch.randn(2, 3, 32, 32)
    assert not torch.equal(ens(x), ens(x))
    torch.testing.assert_close(ens(x).exp().sum(-1), torch.ones(2))


def test_summary_line():
    line = models.summary(models.get_model("resnet_dnn_18", width=4), input_size=(2, 3, 32, 32))
    assert line.startswith("resnet_dnn_18: ") and "-> output (2, 10)" in line
    assert f"{models.count_parameters(models.get_model('resnet_dnn_18', width=4)):,}" in line


def test_checkpoint_of_another_variant_with_the_same_keys_is_refused(tmp_path):
    # resnet_dnn_smoothing_18 and resnet_mcdo_18 have identical state_dict keys: only the stored name tells.
    saved = models.get_model("resnet_dnn_smoothing_18", width=4)
    path = models.checkpoint_path("d", "resnet_mcdo_18", 0, tmp_path)
    models.save_checkpoint(path, saved)
    with pytest.raises(models.CheckpointError, match="saved from 'resnet_dnn_smoothing_18'.*'resnet_mcdo_18'"):
        models.load(models.get_model("resnet_mcdo_18", width=4), "d", 0, root=tmp_path)


def test_width_mismatch_is_named(tmp_path):
    models.save(models.get_model("resnet_mcdo_18", width=8), "d", 0, root=tmp_path)
    with pytest.raises(models.CheckpointError, match="width=8, this model with width=4"):
        models.load(models.get_model("resnet_mcdo_18", width=4), "d", 0, root=tmp_path)
    with pytest.raises(models.CheckpointError, match="num_classes=10, this model with num_classes=100"):
        models.load(models.get_model("resnet_mcdo_18", width=8, num_classes=100), "d", 0, root=tmp_path)


def test_originals_checkpoint_with_only_a_name_still_loads(tmp_path):
    model = _tiny()
    path = models.checkpoint_path("cifar_100", model.name, "orig", tmp_path)  # the original's own folder name
    path.parent.mkdir(parents=True)
    torch.save({"name": model.name, "state_dict": model.state_dict(), "optimizer": None}, path)
    fresh = _tiny()
    models.load(fresh, "cifar100", "orig", root=tmp_path)  # canonical name; found under the alias folder
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values()))


@pytest.mark.parametrize("alias", ["cifar_100", "cifar-100", "CIFAR100", "cifar100"])
def test_dataset_aliases_name_one_folder(tmp_path, alias):
    path = models.save(_tiny(), alias, "u", root=tmp_path)
    assert path.parent.parent.name == "cifar100"
    models.load(_tiny(), "cifar_100", "u", root=tmp_path)


@pytest.mark.parametrize("content,match", [
    (b"", "is empty"),
    (b"not a checkpoint at all", "corrupt, truncated or not a PyTorch checkpoint"),
    ("truncated", "corrupt, truncated"),
])
def test_corrupt_checkpoints_name_the_path_and_the_fix(tmp_path, content, match):
    model = _tiny()
    path = models.save(model, "d", 0, root=tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if content == "truncated" else content)
    with pytest.raises(models.CheckpointError, match=match) as info:
        models.load(_tiny(), "d", 0, root=tmp_path)
    assert str(path) in str(info.value) and "env.resume=false" in str(info.value)
    assert "weights_only" not in str(info.value)  # torch's advice to unpickle an unknown file is not passed on


def test_leftover_temporary_files_are_removed_and_permissions_follow_umask(tmp_path):
    model = _tiny()
    path = models.checkpoint_path("d", model.name, 0, tmp_path)
    path.parent.mkdir(parents=True)
    leftover = path.parent / (path.name + ".abc123.tmp")  # an interrupted write
    leftover.write_bytes(b"partial")
    old = os.umask(0o022)
    try:
        models.save(model, "d", 0, root=tmp_path)
    finally:
        os.umask(old)
    assert not leftover.exists()
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


@pytest.mark.parametrize("training", [True, False])
def test_fast_cpu_dropout_draws_the_right_distribution(training):
    d = models.MCDropout(0.3).train(training)
    x = torch.ones(400, 1000)
    y = d(x)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.7) < 0.005  # 400,000 draws: 4.4 standard deviations
    assert torch.allclose(y[kept], torch.tensor(1 / 0.7))  # survivors scaled by 1 / (1 - p)
    assert not torch.equal(kept, d(x) != 0)  # a new mask every pass
    # Columns are independent: the keep rates of two halves agree.
    assert abs(kept[:, :500].float().mean() - kept[:, 500:].float().mean()) < 0.01
    x.requires_grad_(True)
    out = d(x)
    out.sum().backward()
    assert torch.equal(x.grad != 0, out != 0)  # the gradient flows through kept entries only
    assert torch.allclose(x.grad[out != 0], torch.tensor(1 / 0.7))  # with the forward's scale
    # and under torch.func transforms: a batch of independent masks, and a functional gradient
    y = torch.func.vmap(d, randomness="different")(torch.ones(4, 100, 100))
    assert not torch.equal(y[0] != 0, y[1] != 0) and abs((y != 0).float().mean().item() - 0.7) < 0.01
    grad = torch.func.grad(lambda v: d(v).sum())(torch.ones(100, 100))
    assert torch.allclose(grad[grad != 0], torch.tensor(1 / 0.7)) and 0.6 < (grad != 0).float().mean() < 0.8


def test_stock_dropout_restores_the_fast_path():
    """Inside models.layers.stock_dropout() MCDropout draws F.dropout's masks (the benchmarks' baseline)."""
    d, x = models.MCDropout(0.3), torch.ones(1000)
    torch.manual_seed(0)
    reference = torch.nn.functional.dropout(x, 0.3, training=True)
    with models.layers.stock_dropout():
        torch.manual_seed(0)
        assert torch.equal(d(x), reference)
    torch.manual_seed(0)
    assert not torch.equal(d(x), reference) and models.layers.FAST_CPU_DROPOUT


@pytest.mark.parametrize("temp", [0, -1.0, float("nan"), float("inf"), "10", True])
def test_a_smoothing_temperature_must_be_positive_and_finite(temp):
    with pytest.raises(ValueError, match="temp must be a positive finite number"):
        models.get_model("resnet_mcdo_smoothing_18", width=4, temp=temp)
    with pytest.raises(ValueError, match="temp must be a positive finite number"):
        models.add_smoothing(models.get_model("resnet_dnn_18", width=4), temp=temp)
