"""ops.evaluate.test: the number of MC forward passes is `mc_samples`; `n_ff`, the original implementation's name
(its `test(model, n_ff, dataset)`), is still accepted as a keyword, and positional calls are unchanged."""
import pytest
import torch

import models
from ops.data import datasets, loaders
from ops.evaluate import engine


def _setup():
    _, test_set = datasets.synthetic(n_train=8, n_test=32, seed=3)
    torch.manual_seed(0)
    return models.get_model("resnet_mcdo_18", width=4, num_classes=10).eval(), loaders.make_loader(test_set, 16)


def test_mc_samples_positional_and_the_original_n_ff_give_the_same_metrics():
    model, loader = _setup()
    new = engine.test(model, mc_samples=3, dataset=loader)
    positional = engine.test(model, 3, loader)
    original = engine.test(model, n_ff=3, dataset=loader)
    assert new["passes"] == 3 and new["stochastic"]
    for other in (positional, original):
        assert other["nll"] == new["nll"] and other["acc"] == new["acc"] and other["ece"] == new["ece"]


@pytest.mark.parametrize("kwargs", [dict(), dict(mc_samples=2, n_ff=2)])
def test_the_number_of_passes_is_given_exactly_once(kwargs):
    model, loader = _setup()
    with pytest.raises(TypeError, match="n_ff"):
        engine.test(model, dataset=loader, **kwargs)


def test_a_dataset_is_required():
    model, _ = _setup()
    with pytest.raises(TypeError, match="dataset"):
        engine.test(model, 2)
