"""models.surgery: where add_smoothing / add_mc_dropout insert blocks, and that weights and checkpoints are untouched.

External models are built without weights (no downloads) and analysed at 64x64, which keeps every map larger
than 1x1 and the tests fast.
"""
import copy
import io

import pytest
import timm
import torch
import torch.nn as nn
import torchvision

import models
from models.smoothing import SmoothingBlock

X64 = (1, 3, 64, 64)
RESNET_STAGES = ["layer1", "layer2", "layer3", "layer4"]

# name -> (builder, expected hosts of the smoothing blocks, name of the first inserted block)
EXTERNAL = {
    "tv_resnet18": (torchvision.models.resnet18, RESNET_STAGES, "layer1.2"),
    "tv_resnet50": (torchvision.models.resnet50, RESNET_STAGES, "layer1.3"),
    "tv_resnext50_32x4d": (torchvision.models.resnext50_32x4d, RESNET_STAGES, "layer1.3"),
    "tv_wide_resnet50_2": (torchvision.models.wide_resnet50_2, RESNET_STAGES, "layer1.3"),
    # VGG-16: the ReLU before each of the five max-pools (the last one opens the head).
    "tv_vgg16": (torchvision.models.vgg16, ["features.3", "features.8", "features.15", "features.22", "features.29"],
                 "features.3.smoothing"),
    "timm_resnet18": (lambda: timm.create_model("resnet18", pretrained=False), RESNET_STAGES, "layer1.2"),
    # ConvNeXt: stage outputs before each downsample (LayerNorm + 2x2/2 conv), then the (identity) pre-head norm.
    "timm_convnext_atto": (lambda: timm.create_model("convnext_atto", pretrained=False),
                           ["stages.0", "stages.1", "stages.2", "norm_pre"], "stages.0.smoothing"),
}


def _snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same_state(model, snapshot):
    state = model.state_dict()
    return list(state) == list(snapshot) and all(torch.equal(state[k], snapshot[k]) for k in snapshot)


@pytest.mark.parametrize("name", list(EXTERNAL))
def test_external_models_get_one_block_before_each_subsampling(name):
    build, hosts, first_block = EXTERNAL[name]
    model = build().eval()
    x = torch.randn(X64)
    with torch.no_grad():
        before = model(x)
    snapshot = _snapshot(model)
    model, inserted = models.add_smoothing(model)
    assert [p.module for p in inserted] == hosts
    assert all(p.position == "after" for p in inserted)
    assert inserted[0].block == first_block
    assert isinstance(model.get_submodule(first_block), SmoothingBlock)
    assert type(model).__module__.startswith(("torchvision", "timm"))  # same class, methods kept
    assert _same_state(model, snapshot)
    with torch.no_grad():
        after = model(x)
    assert after.shape == before.shape
    assert not torch.allclose(after, before)  # the blocks are really applied


def test_resnet_checkpoint_loads_strictly_after_surgery(tmp_path):
    pretrained = torchvision.models.resnet18()
    path = tmp_path / "resnet18.pth"
    torch.save(pretrained.state_dict(), path)
    model, _ = models.add_smoothing(torchvision.models.resnet18())
    model.load_state_dict(torch.load(path, weights_only=True), strict=True)
    assert _same_state(model, pretrained.state_dict())


def test_channels_and_sizes_are_reported():
    _, inserted = models.add_smoothing(torchvision.models.resnet18())
    assert [(p.channels, p.size) for p in inserted] == [(64, (16, 16)), (128, (8, 8)), (256, (4, 4)), (512, (2, 2))]
    assert "layer2.0.downsample.0" in inserted[0].reason and "layer2.0.conv1" in inserted[0].reason
    assert str(inserted[0]).startswith("after layer1 (64 ch, 16x16)")


# Our zoo: add_smoothing on a plain model must compute what the `_smoothing` model computes with the same weights.
ZOO = [
    ("resnet_dnn_18", dict(width=8), {}),
    ("resnet_dnn_50", dict(width=8), {}),
    ("resnext_dnn_50", dict(width=16), {}),
    ("wideresnet_dnn_50", dict(width=8), {}),
    ("resnet_dnn_18", dict(width=8, stem=True), {}),             # ImageNet stem: no block before its max-pool
    ("preresnet_dnn_18", dict(width=8), dict(head=False)),      # no smooth4 before the BN-GAP head
    ("preresnet_dnn_50", dict(width=8), dict(head=False)),
    ("vgg_dnn_11", dict(classifier="gap"), {}),
    ("prevgg_dnn_11", dict(classifier="gap"), {}),
    ("alexnet_dnn", {}, dict(stem=True)),                       # AlexNet smooths its stem's output too
]


@pytest.mark.parametrize("name,kwargs,options", ZOO, ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(ZOO)])
def test_zoo_placement_is_reproduced(name, kwargs, options):
    plain = models.get_model(name, **kwargs)
    reference = models.get_model(name.replace("_dnn", "_dnn_smoothing"), **kwargs)
    reference.load_state_dict(plain.state_dict(), strict=True)  # smoothing adds no keys
    snapshot = _snapshot(plain)
    size = 224 if kwargs.get("stem") else 32
    x = torch.randn(2, 3, size, size)
    smoothed, inserted = models.add_smoothing(plain, example_input=x[:1], **options)
    expected = [n for n, m in reference.named_children() if n.startswith("smooth") and not isinstance(m, nn.Identity)]
    assert [p.module for p in inserted] == expected
    assert _same_state(smoothed, snapshot)
    smoothed.eval()
    reference.eval()
    with torch.no_grad():
        torch.testing.assert_close(smoothed(x), reference(x), rtol=0, atol=1e-6)


def test_zoo_options_change_the_placement():
    names = lambda model, **kw: [p.module for p in models.plan_smoothing(model, **kw)]  # noqa: E731
    assert names(models.get_model("preresnet_dnn_18", width=8)) == ["smooth1", "smooth2", "smooth3", "smooth4"]
    assert names(models.get_model("alexnet_dnn")) == ["smooth1", "smooth2"]     # stem=False: not before layer1
    assert names(models.get_model("resnet_dnn_18", width=8), head=False) == ["smooth1", "smooth2", "smooth3"]
    # A model that already smooths: the points are its smoothing blocks (what ops.analysis.featuremaps captures).
    assert names(models.get_model("resnet_dnn_smoothing_18", width=8)) == ["smooth1", "smooth2", "smooth3", "smooth4"]


def test_explicit_module_names():
    model, inserted = models.add_smoothing(torchvision.models.resnet18(), "blur", where=["layer1", "layer3"])
    assert [(p.module, p.block) for p in inserted] == [("layer1", "layer1.2"), ("layer3", "layer3.2")]
    assert model.layer1[2].activation == "blur"
    with pytest.raises(ValueError, match="no module 'layer5'.*layer1"):
        models.add_smoothing(torchvision.models.resnet18(), where=["layer5"])
    with pytest.raises(ValueError, match="called 2 times"):  # BasicBlock uses one ReLU twice
        models.add_smoothing(torchvision.models.resnet18(), where=["layer1.0.relu"])
    with pytest.raises(ValueError, match="returns Tensor \\(1, 1000\\)"):
        models.add_smoothing(torchvision.models.resnet18(), where=["fc"], example_input=torch.randn(X64))


def test_bad_arguments_and_double_insertion_raise():
    model = torchvision.models.resnet18()
    with pytest.raises(ValueError, match="where='layer1'.*list of module names"):
        models.add_smoothing(model, where="layer1")
    with pytest.raises(ValueError, match="Unknown smoothing block"):
        models.add_smoothing(model, block="gauss")
    models.add_smoothing(model)
    with pytest.raises(ValueError, match="already smooths \\(layer1.2\\)"):
        models.add_smoothing(model)
    with pytest.raises(ValueError, match="layer2 already ends with smoothing"):
        models.add_smoothing(model, where=["layer2"])
    models.add_smoothing(model, where=["layer1.0"])  # a new point is fine
    with pytest.raises(ValueError, match="MC dropout rate"):
        models.add_mc_dropout(model, 1.5)
    with pytest.raises(ValueError, match="already smooths \\(smooth1.0\\)"):
        models.add_smoothing(models.get_model("resnet_dnn_smoothing_18", width=4))
    with pytest.raises(ValueError, match="already has MC dropout \\(layer1.0.dropout\\)"):
        models.add_mc_dropout(models.get_model("resnet_mcdo_18", width=4), 0.1)


def test_surgery_leaves_training_state_and_random_stream_alone():
    model = models.get_model("resnet_mcdo_18", width=8).train()
    snapshot = _snapshot(model)  # includes BatchNorm running statistics
    torch.manual_seed(3)
    expected = torch.rand(3)
    torch.manual_seed(3)
    models.add_smoothing(model)
    assert torch.equal(torch.rand(3), expected)
    assert model.training and all(m.training for m in model.modules())
    assert _same_state(model, snapshot)


def test_smoothed_model_deepcopies_and_pickles():
    model, _ = models.add_smoothing(torchvision.models.resnet18().eval())
    x = torch.randn(X64)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    with torch.no_grad():
        out = model(x)
        assert torch.equal(copy.deepcopy(model)(x), out)
        assert torch.equal(torch.load(buffer, weights_only=False)(x), out)


class _Gate(nn.Module):
    """Python control flow on a tensor value: torch.fx cannot trace this forward."""

    def forward(self, x):
        return x if x.sum() > float("-inf") else -x


class _GatedNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stage1 = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), _Gate())
        self.pool = nn.MaxPool2d(2)
        self.stage2 = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        x = self.stage2(self.pool(self.stage1(x)))
        return self.head(x.mean(dim=(2, 3)))


class _UntraceableNet(_GatedNet):
    def forward(self, x):
        if x.mean() > 10:  # control flow in the top-level forward itself
            x = -x
        return super().forward(x)


def test_untraceable_module_is_a_black_box_and_untraceable_forward_raises():
    _, inserted = models.add_smoothing(_GatedNet())
    assert [(p.module, p.block) for p in inserted] == [("stage1", "stage1.3"), ("stage2", "stage2.2")]
    with pytest.raises(ValueError, match="cannot trace _UntraceableNet.forward.*where="):
        models.add_smoothing(_UntraceableNet())
    _, inserted = models.add_smoothing(_UntraceableNet(), where=["stage1"])  # names need no tracing
    assert [p.block for p in inserted] == ["stage1.3"]


# MC dropout: the zoo's mcdo placement from the dnn model, and where it goes in external models.
@pytest.mark.parametrize("name,kwargs", [("resnet_dnn_18", dict(width=8)), ("resnet_dnn_50", dict(width=8)),
                                         ("vgg_dnn_11", dict(classifier="gap")), ("alexnet_dnn", {})])
def test_zoo_mc_dropout_placement_is_reproduced(name, kwargs):
    plain = models.get_model(name, **kwargs)
    reference = models.get_model(name.replace("_dnn", "_mcdo"), **kwargs)
    reference.load_state_dict(plain.state_dict(), strict=True)
    rate = reference.get_submodule(next(n for n, m in reference.named_modules() if isinstance(m, models.MCDropout))).p
    snapshot = _snapshot(plain)
    model, inserted = models.add_mc_dropout(plain, rate)
    assert len(inserted) == sum(isinstance(m, models.MCDropout) for m in reference.modules())
    assert _same_state(model, snapshot)
    model.eval()
    reference.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.manual_seed(1)
        ours = model(x)
        torch.manual_seed(1)
        theirs = reference(x)  # same masks in the same order
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
        assert not torch.allclose(model(x), ours)  # stays stochastic in eval()


def test_external_mc_dropout_locations():
    model, inserted = models.add_mc_dropout(torchvision.models.resnet18(), 0.2)
    assert [p.module for p in inserted] == [f"layer{i}.{j}.conv2" for i in range(1, 5) for j in range(2)]
    assert all(p.position == "before" for p in inserted)
    model, inserted = models.add_mc_dropout(timm.create_model("convnext_atto", pretrained=False), 0.1)
    assert [p.module for p in inserted] == [f"stages.{i}.blocks.{j}.mlp.fc2" for i, n in enumerate((2, 2, 6, 2))
                                            for j in range(n)]
    features = torchvision.models.vgg11().features  # a plain network: after each convolution's ReLU
    model, inserted = models.add_mc_dropout(features, 0.1)
    assert [p.module for p in inserted] == ["1", "4", "7", "9", "12", "14", "17", "19"]


def test_existing_dropout_becomes_mc_dropout():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Dropout(0.5), nn.Linear(4 * 30 * 30, 2))
    snapshot = _snapshot(model)
    model, inserted = models.add_mc_dropout(model, 0.25, where="dropout")
    assert [p.module for p in inserted] == ["2"] and model[2].p == 0.25
    assert _same_state(model, snapshot)
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    assert not torch.equal(model(x), model(x))
    with pytest.raises(ValueError, match="no nn.Dropout"):
        models.add_mc_dropout(torchvision.models.resnet18(), 0.1, where="dropout")
