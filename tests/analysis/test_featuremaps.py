"""ops.analysis.featuremaps: the Fourier profile against a direct numpy computation, the MC variance against
torch.var over explicitly drawn samples, streaming over batches, hooks and errors."""
import math

import matplotlib
import numpy as np
import pytest
import torch
import torch.nn as nn
import torchvision

import models
from ops.analysis import featuremaps as fm
from ops.common.runtime import seeded
from ops.plots import featuremaps as fmplots


def _numpy_profile(maps):
    """The successor's definition, written out with numpy, one map at a time."""
    b, c, h, w = maps.shape
    total = np.zeros((h, w))
    for i in range(b):
        for j in range(c):
            total += np.fft.fftshift(np.log(np.abs(np.fft.fft2(maps[i, j].double().numpy())) + 1e-6))
    mean = total / (b * c)
    diag = np.array([mean[h // 2 + k, w // 2 + k] for k in range(h - h // 2)])
    return diag - diag[0]


@pytest.mark.parametrize("size", [8, 9, 32, 33])
def test_fourier_profile_matches_numpy(size):
    maps = torch.randn(3, 4, size, size)
    np.testing.assert_allclose(fm.fourier_profile(maps).numpy(), _numpy_profile(maps), rtol=0, atol=1e-4)
    freqs = fm.frequencies(size)
    assert len(freqs) == len(fm.fourier_profile(maps)) == size - size // 2
    assert freqs[0] == 0 and freqs[-1] < math.pi and math.isclose(freqs[1], 2 * math.pi / size, rel_tol=1e-6)


def test_fourier_profile_of_a_constant_and_of_a_blur():
    maps = torch.full((1, 1, 8, 8), 2.0)  # all energy at frequency 0: |F(0)| = 2 * 64, elsewhere 0
    profile = fm.fourier_profile(maps)
    assert profile[0] == 0
    torch.testing.assert_close(profile[1:], torch.full((3,), math.log(1e-6) - math.log(128 + 1e-6)))
    noise = torch.randn(8, 16, 32, 32)
    blurred = nn.AvgPool2d(2, stride=1, padding=1)(noise)  # the smoothing block's blur: a low-pass filter
    assert fm.fourier_profile(blurred)[-1] < fm.fourier_profile(noise)[-1] - 1.0
    with pytest.raises(ValueError, match="square maps of at least 3x3.*8x9"):
        fm.fourier_profile(torch.randn(1, 1, 8, 9))
    with pytest.raises(ValueError, match="got 2x2"):
        fm.fourier_profile(torch.randn(1, 1, 2, 2))


def _mcdo_net():
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), models.MCDropout(0.3),
                         nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(), models.MCDropout(0.3),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 2))


def test_mc_variance_equals_torch_var_over_the_same_samples():
    model, images = _mcdo_net(), torch.randn(10, 3, 8, 8)
    result = fm.mc_variance(model, images, ["2", "6"], samples=4, batch_size=4, seed=5)
    with seeded(5):  # the same passes in the same order: per batch of 4 images, 4 samples
        samples = [fm.mc_samples(model, batch, ["2", "6"], 4, seed=None) for batch in images.split(4)]
    for p in ("2", "6"):
        maps = torch.cat([s[p] for s in samples], dim=1).double()  # (S, N, C, H, W)
        expected = maps.var(dim=0, unbiased=True).mean()
        assert math.isclose(result[p]["variance"], float(expected), rel_tol=1e-9)
        assert math.isclose(result[p]["power"], float((maps ** 2).mean()), rel_tol=1e-9)
        assert math.isclose(result[p]["relative"], result[p]["variance"] / result[p]["power"], rel_tol=1e-12)
    # Layer "2" is before any dropout: identical in every pass.
    assert result["2"]["variance"] == 0 and result["6"]["variance"] > 0


def test_mc_variance_rejects_deterministic_models_and_single_samples():
    model = models.get_model("resnet_dnn_18", width=4)
    with pytest.raises(ValueError, match="no active MC dropout.*add_mc_dropout"):
        fm.mc_variance(model, torch.randn(2, 3, 32, 32), ["smooth1"], samples=2)
    with pytest.raises(ValueError, match="samples >= 2"):
        fm.mc_variance(_mcdo_net(), torch.randn(2, 3, 8, 8), ["2"], samples=1)


def test_fourier_profiles_average_exactly_over_batches_and_keep_the_model_state():
    model = models.get_model("resnet_dnn_18", width=4).train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    images = torch.randn(7, 3, 32, 32)
    points = ["layer0", "smooth1", "smooth2"]
    streamed = fm.fourier_profiles(model, images, points, batch_size=3)
    maps = fm.capture(model, images, points)
    for p in points:
        freqs, profile = streamed[p]
        torch.testing.assert_close(profile, fm.fourier_profile(maps[p]), rtol=0, atol=1e-5)
        assert len(freqs) == len(profile)
    assert model.training and all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    depths, values = fm.high_frequency(streamed)
    at = fm.common_frequency(streamed)  # the highest frequency every map reaches: the smallest map's last point
    assert at == min(float(f[-1]) for f, _ in streamed.values())
    assert depths.tolist() == [0.0, 0.5, 1.0]
    assert values[0] == pytest.approx(fm.profile_at(*streamed["layer0"], at), rel=1e-6)
    smallest = min(streamed, key=lambda p: len(streamed[p][0]))
    assert values[points.index(smallest)] == pytest.approx(float(streamed[smallest][1][-1]), rel=1e-6)


def test_capture_errors_name_the_problem():
    model = torchvision.models.resnet18()
    with pytest.raises(ValueError, match="no module 'layer9'.*layer1"):
        fm.capture(model, torch.randn(1, 3, 64, 64), ["layer9"])
    with pytest.raises(ValueError, match="fc returns Tensor \\(1, 1000\\), not a \\(B, C, H, W\\)"):
        fm.capture(model, torch.randn(1, 3, 64, 64), ["fc"])
    with pytest.raises(ValueError, match="more than once"):
        fm.capture(model, torch.randn(1, 3, 64, 64), ["layer1.0.relu"])


def test_stage_points_follow_the_smoothing_plan():
    assert fm.stage_points(models.get_model("resnet_mcdo_18", width=4)) == ["smooth1", "smooth2", "smooth3", "smooth4"]
    smoothed, _ = models.add_smoothing(torchvision.models.resnet18())
    assert fm.stage_points(smoothed) == ["layer1", "layer2", "layer3", "layer4"]
    maps = fm.capture(smoothed, torch.randn(1, 3, 64, 64), ["layer1"])
    assert maps["layer1"].shape == (1, 64, 17, 17)  # captured after the inserted block (16x16 grows by one)


def test_figures_draw_every_model_and_point():
    matplotlib.use("Agg")
    maps = {"a": {"p1": torch.randn(5, 6, 6), "p2": torch.randn(5, 3, 3)}, "b": {"p1": torch.randn(5, 7, 7),
                                                                              "p2": torch.randn(5, 4, 4)}}
    fig = fmplots.feature_map_figure(maps, shown=2)
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == 2 * 3 * 2
    # the std panels of one point share one colour scale across models, with a colourbar each
    std_limits = {ax.get_ylabel().split("\n")[0]: ax.images[0].get_clim() for ax in panels if "std" in ax.get_ylabel()}
    assert len(std_limits) == 2 and len(set(std_limits.values())) == 1
    assert len(fig.axes) > len(panels)  # colourbars
    assert fm.strongest_channel(torch.stack([torch.zeros(4, 4), torch.ones(4, 4)])[None]) == 1
    variances = {"a": {"p1": dict(variance=0.1, relative=0.01), "p2": dict(variance=0.2, relative=0.02)}}
    assert len(fmplots.variance_figure(variances).axes) == 2
    profile = (fm.frequencies(8), torch.linspace(0, -1, 4))
    fig = fmplots.fourier_figure({"a": {"p1": profile, "p2": profile}, "b": {"p1": profile, "p2": profile}},
                            marks={"b": ["p2"]})
    assert [ax.get_title() for ax in fig.axes[:2]] == ["a", "b"]
    assert fig.axes[2].get_xlabel() == "Normalised depth"
