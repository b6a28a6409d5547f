"""Why the demo models collapse under a small uniform brightness shift: the background, not the pipeline."""
import pytest
import torch

from ops.analysis import robustness
from ops.data import datasets


def _fashion_subset(n):
    try:
        return datasets.get_dataset("fashion_mnist")[1].subset(n, seed=1)
    except datasets.DatasetNotFoundError:
        return None


def test_the_probe_finds_a_model_that_reads_the_exactly_black_background():
    """A synthetic stand-in for the mechanism: a 'model' that predicts from whether the background is exactly
    black breaks under a background shift and not under an object shift."""
    images = torch.zeros(40, 3, 8, 8, dtype=torch.uint8)
    images[:, :, 2:6, 2:6] = torch.randint(60, 255, (40, 1, 4, 4), dtype=torch.uint8)
    ds = datasets.ImageTensorDataset(images, torch.zeros(40, dtype=torch.long), ["a", "b"], (0.0,) * 3, (1.0,) * 3)

    class ReadsBackground(torch.nn.Module):
        def forward(self, x):  # class 0 while the corner pixel is exactly black
            return torch.stack([(x[:, 0, 0, 0] == 0).float(), (x[:, 0, 0, 0] != 0).float()], 1)

    probe = robustness.brightness_probe(ReadsBackground(), ds, shifts=(0.02,))
    assert probe["clean"] == 0 and probe["object"][0.02] == 0
    assert probe["background"][0.02] == 1 and probe["everywhere"][0.02] == 1


@pytest.mark.skipif(_fashion_subset(10) is None, reason="Fashion-MNIST is not installed (apt-get install "
                                                        "dataset-fashion-mnist)")
def test_demo_models_collapse_through_the_background_not_the_object():
    from ops.train import pretrained

    model = pretrained.load_models(["resnet_mcdo_18"], runs_dir="/nonexistent", verbose=False)["resnet_mcdo_18"]
    probe = robustness.brightness_probe(model, _fashion_subset(500), shifts=(0.02,))
    assert probe["background"][0.02] - probe["clean"] > 0.2   # +5 grey levels on the black background
    assert abs(probe["object"][0.02] - probe["clean"]) < 0.03  # the same shift on the garment: no effect
