"""MC prediction, ensemble-size sweeps, leaderboard files and figures."""
import csv
import json
import math

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import models
from ops import plots
from ops.evaluate import reports
from ops.evaluate.metrics import summarize
from ops.evaluate.engine import log_mean_exp, predict, predict_log_probs
from ops.evaluate import engine as evaluation
from ops.evaluate.engine import prepare_for_inference, sweep


@pytest.fixture
def loader():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(24, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (24,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=8)


def tiny(name="resnet_mcdo_smoothing_18"):
    return models.get_model(name, width=4).eval()


class RowCounter:
    def __init__(self, model):
        self.rows, self.calls = 0, 0
        model.register_forward_pre_hook(self)

    def __call__(self, module, args):
        self.rows += args[0].shape[0]
        self.calls += 1


def test_predict_log_probs_batches_samples():
    model = tiny()
    counter = RowCounter(model)
    x = torch.randn(4, 3, 32, 32)
    lp = predict_log_probs(model, x, n_samples=10, max_batch=12)  # 3 samples per chunk -> 4 calls
    assert lp.shape == (10, 4, 10) and lp.dtype == torch.float32
    torch.testing.assert_close(lp.exp().sum(-1), torch.ones(10, 4))
    assert counter.rows == 40 and counter.calls == 4
    assert not torch.equal(lp[0], lp[1]) and not torch.equal(lp[0], lp[2])  # independent masks within a chunk


def test_deterministic_model_needs_one_pass():
    model = tiny("resnet_dnn_smoothing_18")
    counter = RowCounter(model)
    lp = predict_log_probs(model, torch.randn(3, 3, 32, 32), n_samples=7, stochastic=False)
    assert counter.calls == 1 and lp.shape == (7, 3, 10)
    assert torch.equal(lp[0], lp[6])
    predict_log_probs(model, torch.randn(3, 3, 32, 32), n_samples=7)  # decided by behaviour: 2 checks + 1 pass
    assert counter.calls == 4
    mc = tiny()
    with models.mc_dropout(mc, enabled=False):
        lp = predict_log_probs(mc, torch.randn(3, 3, 32, 32), n_samples=4)
    assert torch.equal(lp[0], lp[3])


def test_log_mean_exp_is_log_of_mean_probability():
    lp = torch.log_softmax(torch.randn(5, 3, 4), -1)
    torch.testing.assert_close(log_mean_exp(lp, 3), lp[:3].exp().mean(0).log())
    torch.testing.assert_close(predict(tiny("resnet_dnn_18"), torch.randn(2, 3, 32, 32)).sum(-1), torch.ones(2))


def test_bf16_autocast_returns_float32_log_probs():
    lp = predict_log_probs(tiny(), torch.randn(2, 3, 32, 32), 3, precision="bf16", channels_last=True)
    assert lp.dtype == torch.float32
    torch.testing.assert_close(lp.exp().sum(-1), torch.ones(3, 2))


@pytest.mark.parametrize("fast", [False, True])
def test_sweep_scores_prefixes_of_one_sample_set(loader, fast):
    model = tiny()
    with torch.no_grad():  # spread the logits of this untrained net so that MC samples disagree visibly
        model.classifier[0].dense.weight.mul_(100)
    counter = RowCounter(model)
    results = sweep(model, loader, sizes=(5, 1, 3), channels_last=fast, fuse_bn=fast, seed=1)
    assert list(results) == [1, 3, 5]
    # max(sizes) passes, not 1 + 3 + 5; fast: on a folded copy, after one eager pass of the first batch (8 images)
    # that checks the copy
    assert counter.rows == (8 if fast else 5 * 24)

    example = next(iter(loader))[0]  # (iterating a DataLoader draws from the global generator: before seeding)
    torch.manual_seed(1)  # redraw the same samples and score each prefix independently
    prepared = prepare_for_inference(model, channels_last=fast, fuse_bn=fast, example=example)
    draws = [(predict_log_probs(prepared, x, 5, channels_last=fast), y) for x, y in loader]
    for n in (1, 3, 5):
        log_probs = torch.cat([log_mean_exp(lp, n) for lp, _ in draws])
        samples = torch.cat([lp[:n].exp() for lp, _ in draws], dim=1)
        expected = summarize(log_probs.exp(), torch.cat([y for _, y in draws]), samples=samples, log_probs=log_probs)
        for key in ("nll", "acc", "ece", "brier", "iou_90", "entropy", "mutual_info"):
            assert results[n][key] == pytest.approx(expected[key], abs=1e-6), (n, key)
    assert results[1]["mutual_info"] == pytest.approx(0.0, abs=1e-6)
    assert results[5]["mutual_info"] > 0


def test_deterministic_model_same_figures_at_every_size(loader):
    results = sweep(tiny("resnet_dnn_smoothing_18"), loader, sizes=(1, 2, 10))
    for key in ("nll", "acc", "ece", "brier", "acc_90", "unc_90", "iou"):
        assert results[1][key] == results[2][key] == results[10][key], key


def test_test_is_one_size_of_sweep(loader):
    model = tiny()
    torch.manual_seed(3)
    one = evaluation.test(model, 4, loader)
    torch.manual_seed(3)
    assert sweep(model, loader, sizes=(4,))[4]["nll"] == one["nll"]


def _randomise_batchnorm(model, seed=0):
    """Running statistics and affine parameters far from their defaults, so that folding has work to do."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) * 3 + 0.1)
                m.weight.copy_(torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(torch.randn(m.bias.shape, generator=g))
    return model


def test_batchnorm_folding_is_exact_and_keeps_mc():
    model = _randomise_batchnorm(tiny())
    x = torch.randn(4, 3, 32, 32)
    with models.mc_dropout(model, enabled=False):
        reference = model(x)
        fused = prepare_for_inference(model, fuse_bn=True, example=x)
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
        assert (reference - fused(x)).abs().max() <= 1e-5 * reference.abs().max()
    fused = prepare_for_inference(model, fuse_bn=True, example=x)
    assert models.is_stochastic(fused) and not torch.equal(fused(x), fused(x))
    with models.mc_dropout(fused, enabled=False):  # the switch still works on the folded copy
        torch.testing.assert_close(fused(x), fused(x))
    # Without an example there is nothing to check the folded copy against: no folding.
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in prepare_for_inference(model, fuse_bn=True).modules())


class OriginalStyleMC(torch.nn.Module):
    """Like the original implementation's MC blocks: F.dropout with its default training=True, no MCDropout."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3)
        self.bn = torch.nn.BatchNorm2d(8)
        self.dense = torch.nn.Linear(8, 10)

    def forward(self, x):
        x = torch.nn.functional.dropout(torch.relu(self.bn(self.conv(x))), p=0.3)
        return self.dense(x.mean((2, 3))) * 20


class DropoutLeftInTrainMode(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.features = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Dropout(0.3))
        self.dense = torch.nn.Linear(8, 10)

    def forward(self, x):
        return self.dense(self.features(x).mean((2, 3))) * 20


def _dropout_in_train_mode():
    model = DropoutLeftInTrainMode().eval()
    model.features[2].train()  # the usual recipe for MC dropout with nn.Dropout
    return model


@pytest.mark.parametrize("make", [OriginalStyleMC, _dropout_in_train_mode], ids=["F.dropout", "nn.Dropout"])
def test_stochastic_user_models_get_real_mc_samples(loader, make):
    model = make()
    results = sweep(model, loader, sizes=(1, 5))
    assert results[5]["stochastic"] and results[5]["passes"] == 5
    assert results[5]["mutual_info"] > 0 and results[5]["nll"] != results[1]["nll"]
    forced = sweep(model, loader, sizes=(1, 5), mc=False)  # the explicit override
    assert not forced[5]["stochastic"] and forced[5]["passes"] == 1
    assert forced[5]["nll"] == pytest.approx(forced[1]["nll"], rel=1e-8)
    assert forced[5]["mutual_info"] == pytest.approx(0, abs=1e-6)


def test_deterministic_model_is_reported_as_such(loader):
    results = sweep(tiny("resnet_dnn_18"), loader, sizes=(1, 3))
    assert not results[3]["stochastic"] and results[3]["passes"] == 1


class SideEffects(torch.nn.Module):
    """A forward with Python side effects: it counts its calls and scales by the count's parity. A traced copy
    would bake in the branch taken while tracing, so it must not replace the model."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3)
        self.bn = torch.nn.BatchNorm2d(8)
        self.dense = torch.nn.Linear(8, 10)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        x = self.dense(self.bn(self.conv(x)).mean((2, 3)))
        return x * (2.0 if self.calls % 2 else 1.0)


def test_model_with_side_effects_is_evaluated_eagerly(loader):
    model = _randomise_batchnorm(SideEffects().eval())
    with pytest.warns(UserWarning, match="Python state"):
        results = sweep(model, loader, sizes=(1,), fuse_bn=True)
    calls_before, eager = model.calls, SideEffects()
    eager.load_state_dict(model.state_dict())
    eager.calls = calls_before - len(loader)  # replay the same call parities by hand
    probs, ys = [], []
    with torch.no_grad():
        for x, y in loader:
            probs.append(torch.softmax(eager.eval()(x), -1))
            ys.append(y)
    assert results[1]["nll"] == pytest.approx(summarize(torch.cat(probs), torch.cat(ys))["nll"], rel=1e-6)


def test_nll_is_not_floored(loader):
    class Overconfident(torch.nn.Module):  # logit 500 on the wrong class for every image
        def forward(self, x):
            y = torch.zeros(x.shape[0], 10)
            y[:, 0] = 500.0
            return y

    x, y = torch.randn(4, 3, 8, 8), torch.full((4,), 3)
    results = sweep(Overconfident(), [(x, y)], sizes=(1,))  # a model without parameters works too
    assert results[1]["nll"] == pytest.approx(500.0, rel=1e-6)  # float32's floor would give 87.3


@pytest.mark.parametrize("sizes", ["12", [1.7], [True], [0, 1], [], 5])
def test_bad_sizes_are_refused(loader, sizes):
    with pytest.raises(ValueError, match="positive integers"):
        sweep(tiny(), loader, sizes=sizes)


def test_empty_batches_are_skipped(loader):
    batches = [(torch.zeros(0, 3, 32, 32), torch.zeros(0, dtype=torch.long))] + list(loader)
    model = tiny("resnet_dnn_18")
    assert sweep(model, batches, sizes=(1,))[1]["n"] == 24
    with pytest.raises(ValueError, match="no \\(non-empty\\) batches"):
        sweep(model, batches[:1], sizes=(1,))


def test_leaderboard_csv_in_original_column_order(tmp_path, loader):
    results = sweep(tiny(), loader, sizes=(1, 2))
    path = reports.leaderboard_path("fashion_mnist", "resnet_mcdo_smoothing_18", "u1", root=tmp_path)
    reports.write_leaderboard(results, path)
    name = "resnet_mcdo_smoothing_18"
    assert path == tmp_path / "fashion_mnist" / name / f"fashion_mnist_{name}_u1.csv"
    rows = list(csv.reader(open(path)))
    assert rows[0] == ["size", "nll", "cutoff_0", "cutoff_90", "acc_0", "acc_90", "unc_0", "unc_90", "iou_0",
                       "iou_90", "freq_0", "freq_90", "top5", "brier", "ece", "ece_signed"]
    assert [r[0] for r in rows[1:]] == ["1", "2"]
    back = reports.read_leaderboard(path)
    assert back[2]["nll"] == pytest.approx(results[2]["nll"]) and back[2]["cutoff_90"] == 0.9
    assert json.load(open(path.with_suffix(".json")))["1"]["acc"] == results[1]["acc"]
    results[1]["acc_90"] = float("nan")  # no prediction above the cutoff: undefined, written as null
    with pytest.raises(FileExistsError, match="already holds results"):
        reports.write_leaderboard(results, path)  # never over finished results without asking
    reports.write_leaderboard(results, path, overwrite=True)
    strict = json.loads(path.with_suffix(".json").read_text(), parse_constant=lambda c: pytest.fail(f"bare {c}"))
    assert strict["1"]["acc_90"] is None
    table = reports.format_table({"m": results})
    assert table.splitlines()[0] == "| model | size | NLL | Acc | ECE |" and len(table.splitlines()) == 4


def test_reliability_diagram_draws_empty_bins_empty(tmp_path):
    p = torch.tensor([[0.95, 0.05], [0.55, 0.45], [0.97, 0.03]])
    metrics = summarize(p, torch.tensor([0, 1, 0]))
    fig = plots.reliability_diagram(metrics, title="t")
    accuracy_bars = [b for b in fig.axes[1].patches]
    assert len(accuracy_bars) == 2  # bins 5 and 9 only
    assert sorted(round(b.get_height()) for b in accuracy_bars) == [0, 100]
    assert plots.save_figure(fig, tmp_path / "r.png").stat().st_size > 0


def test_ensemble_size_figure_has_a_line_per_model():
    fake = {n: {"nll": 1 / n, "acc": 0.5, "ece": 0.1} for n in (1, 2, 5)}
    fig = plots.ensemble_size_figure({"a": fake, "b": fake})
    assert len(fig.axes) == 3 and all(len(ax.lines) == 2 for ax in fig.axes)
    assert fig.axes[1].lines[0].get_ydata().tolist() == [50.0, 50.0, 50.0]
    assert not math.isnan(fig.axes[0].lines[0].get_ydata()[0])


def test_bootstrap_intervals_and_paired_differences(loader):
    from ops.evaluate import intervals as stats

    preds_a, preds_b = {}, {}
    res_a = sweep(tiny("resnet_dnn_18"), loader, sizes=(1,), keep_predictions=preds_a)
    res_b = sweep(tiny("resnet_dnn_smoothing_18"), loader, sizes=(1,), keep_predictions=preds_b)
    assert torch.equal(preds_a["targets"], preds_b["targets"]) and preds_a[1].shape == (24, 10)
    ci = stats.bootstrap({"a": preds_a[1], "b": preds_b[1]}, preds_a["targets"], n_boot=300)
    for label, res in (("a", res_a), ("b", res_b)):  # the estimate is the metric on all images, as ops.evaluate.metrics
        for key in ("nll", "acc", "ece"):
            est, lo, hi = ci[label][key]
            assert est == pytest.approx(res[1][key], abs=1e-9) and lo <= est <= hi, (label, key)
    est, lo, hi = ci["b - a"]["nll"]
    assert est == pytest.approx(res_b[1]["nll"] - res_a[1]["nll"], abs=1e-9) and lo < hi
    # Paired: identical predictions differ by exactly 0 in every resample.
    same = stats.bootstrap({"a": preds_a[1], "a2": preds_a[1]}, preds_a["targets"], n_boot=50)
    assert same["a2 - a"]["nll"] == (0.0, 0.0, 0.0)


def test_bootstrap_interval_covers_like_a_binomial():
    from ops.evaluate import intervals as stats

    # 400 images, 70% correct: the interval of the accuracy is about +-1.96 * sqrt(.7 * .3 / 400) = +-4.5 points.
    y = torch.zeros(400, dtype=torch.long)
    logits = torch.zeros(400, 2)
    logits[:280, 0], logits[280:, 1] = 2.0, 2.0
    est, lo, hi = stats.bootstrap({"m": torch.log_softmax(logits, 1)}, y, n_boot=2000)["m"]["acc"]
    assert est == 0.7 and (hi - lo) / 2 == pytest.approx(1.96 * (0.7 * 0.3 / 400) ** 0.5, rel=0.15)


def test_models_without_parameters_work_or_are_refused_by_name():
    """A fixed (parameter-free) classifier is evaluated like any model; a landscape or a Hessian, which are taken
    with respect to the weights, refuse it by name instead of a bare StopIteration."""
    from ops.analysis import hessians
    from ops.analysis import landscapes

    class Fixed(torch.nn.Module):
        def forward(self, x):
            return x.flatten(1)[:, :10]

    assert "0 parameters" in models.summary(Fixed())
    data = [(torch.randn(4, 3, 8, 8), torch.zeros(4, dtype=torch.long))]
    with pytest.raises(ValueError, match="Fixed has no parameters, and a loss landscape"):
        landscapes.landscape(Fixed(), data, n=3)
    with pytest.raises(ValueError, match="Fixed has no parameters, and a Hessian"):
        hessians.max_eigenvalue_spectrum(Fixed(), data, n_batches=1, batch_size=4)
