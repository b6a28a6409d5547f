"""Every model, smoothing block and classifier head computes what the original implementation computes.

tests/fixtures/original_outputs.json.gz (a copy of shared/reference/) holds forward outputs of xxxnell/spatial-smoothing
for all 152 model builds, its smoothing blocks and its classifier heads, from weights that depend only on each
state_dict key. We set the same weights here and compare. MC dropout models are compared twice: with dropout on
under the same seed (`eval`: matches only if dropout sits in the same places and draws in the same order) and
built with rate 0 (`rate0`).
"""
import gzip
import json
import math
import zlib
from pathlib import Path

import pytest
import torch

import models
from models import classifiers, smoothing

FIXTURE = Path(__file__).parents[1] / "fixtures" / "original_outputs.json.gz"
REFERENCE = json.loads(gzip.decompress(FIXTURE.read_bytes()))


def set_reference_weights(module):
    """Overwrite every floating-point tensor of the state_dict from a generator seeded by its key (the recipe of
    shared/reference/README.md)."""
    new = {}
    for key, t in module.state_dict().items():
        last = key.split(".")[-1]
        if not t.is_floating_point() or last == "filter":
            new[key] = t
            continue
        g = torch.Generator().manual_seed(zlib.crc32(key.encode()))
        if last == "running_mean":
            new[key] = torch.rand(t.shape, generator=g) - 0.5
        elif last == "running_var":
            new[key] = torch.rand(t.shape, generator=g) * 1.5 + 0.5
        elif t.ndim >= 2:
            new[key] = torch.randn(t.shape, generator=g) * math.sqrt(2 / t[0].numel())
        elif last == "weight":
            new[key] = torch.rand(t.shape, generator=g) + 0.5
        else:
            new[key] = torch.randn(t.shape, generator=g) * 0.1
    module.load_state_dict(new)
    return module.eval()


def _inputs(n, c, s, seed, scale=1.0):
    return torch.randn(n, c, s, s, generator=torch.Generator().manual_seed(seed)) * scale


def _depth(name):
    return int(name.rsplit("_", 1)[1]) if name[-1].isdigit() else 0


def assert_matches(out, ref, rtol):
    """|out - ref| <= rtol * max|ref| elementwise: relative to the output's scale, so that a logit near zero
    among logits of size 30 is held to the same absolute accuracy as its neighbours."""
    ref = torch.tensor(ref, dtype=out.dtype)
    assert out.shape == ref.shape
    err = ((out - ref).abs().max() / ref.abs().max()).item()
    assert err <= rtol, f"max error {err:.3g} of the output scale (allowed {rtol:g})"


MODEL_CASES = [(key, mode) for key, entry in sorted(REFERENCE["models"].items()) for mode in entry]


@pytest.fixture
def stock_dropout(monkeypatch):
    """F.dropout's random stream, the original's (our faster CPU dropout draws the same distribution from
    another stream, so same-seed outputs would not match)."""
    monkeypatch.setattr(models.layers, "FAST_CPU_DROPOUT", False)


def _case_id(key, mode):
    return f"{key.split('|')[0]}-{'imagenet' if key.endswith('True') else 'cifar'}-{mode}"


@pytest.mark.parametrize("key,mode", MODEL_CASES, ids=[_case_id(k, m) for k, m in MODEL_CASES])
def test_model_matches_original(key, mode, stock_dropout):
    name, num_classes, stem = key.split("|")
    stem = stem == "stem=True"
    model = models.get_model(name, num_classes=int(num_classes.split("=")[1]), stem=stem,
                             **({"rate": 0.0} if mode == "rate0" else {}))
    set_reference_weights(model)
    x = _inputs(2, 3, 224 if stem else 32, seed=1)
    torch.manual_seed(2)
    with torch.no_grad():
        out = model(x)
    # 1e-4 of the output scale; the 101- and 152-layer nets accumulate float32 rounding past that on *both*
    # sides (computed in float64, ours and the reference sit on either side of it, up to 5e-4 apart for
    # preresnet_*_smoothing_152). A misplaced layer moves outputs by O(1), far above either tolerance.
    assert_matches(out, REFERENCE["models"][key][mode], rtol=1e-4 if _depth(name) < 101 else 1e-3)


# Our names for the original's smoothing classes.
BLOCK_NAMES = {"TanhBlurBlock": "tanh", "BNTanhBlurBlock": "bntanh", "SigmoidBlurBlock": "sigmoid",
               "SoftmaxBlurBlock": "softmax", "ReLuBlurBlock": "relu6", "ScalingBlurBlock": "scaling",
               "BlurBlock": "blur"}


@pytest.mark.parametrize("key", sorted(REFERENCE["blocks"]))
def test_smoothing_block_matches_original(key):
    cls, sfilter, pad_mode = key.split("|")
    sfilter = tuple(json.loads(sfilter.split("=")[1]))
    block = smoothing.make_smoothing(BLOCK_NAMES[cls], sfilter=sfilter, pad_mode=pad_mode.split("=")[1])(4)
    set_reference_weights(block)
    with torch.no_grad():
        out = block(_inputs(2, 4, 8, seed=3, scale=8))
    assert list(out.shape) == REFERENCE["blocks"][key]["shape"]
    assert_matches(out.flatten(1), REFERENCE["blocks"][key]["out"], rtol=1e-5)  # stored flattened per image


def test_every_original_block_is_covered():
    assert {k.split("|")[0] for k in REFERENCE["blocks"]} == set(BLOCK_NAMES)


HEAD_NAMES = {"GAPBlock": "gap", "BNGAPBlock": "bngap", "MLPBlock": "mlp", "GMaxPBlock": "gmp",
              "GMedPBlock": "gmedp", "GAPClipBlock": "gapclip", "GAPMLPBlock": "gapmlp"}


@pytest.mark.parametrize("cls", sorted(REFERENCE["classifiers"]))
def test_classifier_head_matches_original(cls):
    entry = REFERENCE["classifiers"][cls]
    name = HEAD_NAMES[cls]
    # The original's MLPBlock flattens its (2, 8, 4, 4) input: 128 features; our `mlp` head is that block
    # behind the network's pools, so it is built directly here.
    head = classifiers.MLPBlock(8 * 4 * 4, 5) if name == "mlp" else classifiers.make_head(name, 8, 5)[0]
    assert [[k, list(v.shape)] for k, v in head.state_dict().items()] == entry["state_dict"]
    set_reference_weights(head)
    with torch.no_grad():
        out = head(_inputs(2, 8, 4, seed=4, scale=2))
    assert_matches(out, entry["out"], rtol=1e-5)
