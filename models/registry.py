"""Model registry: names such as `resnet_mcdo_smoothing_18` -> builder functions.

A name is `{family}_{dnn|mcdo}[_smoothing][_{depth}]`. The variant parts of a name are not separate classes:
`register_variants` turns one network constructor into the dnn / mcdo / +smoothing builders by fixing the
dropout rate and the smoothing block. Users can still tune what a variant leaves open (the MC dropout `rate`,
the smoothing block and its `temp`, the classifier, ...), but may not contradict the name: asking a `dnn`
model for dropout, or a plain model for smoothing, raises instead of silently building something else.
"""
from __future__ import annotations

import difflib
import fnmatch
import functools
import re
from typing import TYPE_CHECKING

from .smoothing import make_smoothing

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from typing import Any
    import torch

_MODELS = {}

# Keyword arguments that any variant understands; a family may add its own (e.g. `width` for ResNets).
COMMON_KWARGS = {"rate", "smoothing", "temp", "sfilter", "pad_mode", "thr", "classifier"}
SMOOTHING_KWARGS = ("temp", "sfilter", "pad_mode", "thr")


def register(name: str, builder: Callable[..., torch.nn.Module] | None = None) -> Callable:
    """Register `builder(num_classes=..., stem=..., **kwargs) -> nn.Module` under `name`.

    Usable as `register(name, fn)` or as a decorator `@register(name)`.
    """
    def add(fn):
        if name in _MODELS:
            raise ValueError(f"model name {name!r} is already registered")
        _MODELS[name] = fn
        return fn
    return add(builder) if builder is not None else add


def _natural_key(name):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def smoothing_variant(name: str) -> str:
    """The +smoothing name of a model name: resnet_mcdo_18 -> resnet_mcdo_smoothing_18 (itself if it has one)."""
    return name if "_smoothing" in name else re.sub(r"_(dnn|mcdo)", r"_\1_smoothing", name, count=1)


def list_models(pattern: str = "*") -> list[str]:
    """Registered names matching the shell wildcard `pattern`, sorted naturally (resnet_dnn_18 < resnet_dnn_101)."""
    return sorted(fnmatch.filter(_MODELS, pattern), key=_natural_key)


def get_model(name: str, num_classes: int = 10, stem: bool = False, **kwargs: Any) -> torch.nn.Module:
    """Build the model `name` for `num_classes` classes.

    stem=False is the CIFAR stem (32x32 inputs), stem=True the ImageNet stem (224x224) where the family has
    one. `kwargs` set what the variant leaves open: `rate` (MC dropout, mcdo models), `smoothing`
    (a name from models.smoothing.SMOOTHING_BLOCKS, a class or a partial; +smoothing models), `temp`,
    `sfilter`, `pad_mode`, `thr` (passed to the smoothing block), `classifier` (gap, bngap, mlp, gmp, gmedp,
    gapclip, gapmlp), `width` (ResNet families: base width, default 64) and `act` (ResNet families: "relu", the
    default, or "relu6" for every activation of the network).
    """
    if name not in _MODELS:
        close = difflib.get_close_matches(name, list(_MODELS), n=5, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ValueError(f"Unknown model name {name!r}.{hint} See models.list_models() for all "
                         f"{len(_MODELS)} names.")
    return _MODELS[name](num_classes=num_classes, stem=stem, **kwargs)


def _build_variant(network, *, name, mcdo, smooth, default_rate, extra_kwargs, fixed,
                   num_classes=10, stem=False, **kwargs):
    allowed = COMMON_KWARGS | set(extra_kwargs)
    given = dict(kwargs)
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise TypeError(f"{name}: unknown keyword argument(s) {unknown}; allowed: {sorted(allowed)}")

    rate = kwargs.pop("rate", default_rate if mcdo else 0.0)
    if not mcdo and rate != 0:
        raise ValueError(f"{name} is deterministic, so its dropout rate is fixed to 0 (got rate={rate}); "
                         f"use {name.replace('_dnn', '_mcdo', 1)} for MC dropout")

    block = kwargs.pop("smoothing", "tanh" if smooth else None)
    block_kwargs = {k: kwargs.pop(k) for k in SMOOTHING_KWARGS if k in kwargs}
    if not smooth and (block is not None or block_kwargs):
        given = ["smoothing"] * (block is not None) + sorted(block_kwargs)
        raise ValueError(f"{name} has no smoothing layers, so {given} cannot be set; use {smoothing_variant(name)}")
    smoothing = make_smoothing(block, **block_kwargs) if block is not None else None

    model = network(num_classes=num_classes, stem=stem, rate=rate, smoothing=smoothing, **fixed, **kwargs)
    model.name = name
    # What the model was built with, saved in checkpoints so that loading can name a mismatch (models.checkpoints).
    model.arch = {"name": name, "num_classes": num_classes, "stem": bool(stem),
                  **{k: _plain(v) for k, v in given.items()}}
    return model


def _plain(value):
    """A JSON-friendly form of a keyword argument (tuples as lists; classes and callables by name)."""
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return getattr(value, "__name__", repr(value))


def register_variants(family: str, network: Callable[..., torch.nn.Module], depths: Mapping[int, Mapping] | None = None,
                      default_rate: float = 0.3, extra_kwargs: Sequence[str] = (),
                      fixed_by: Callable[..., dict] | None = None) -> None:
    """Register the four variants (dnn, mcdo, dnn_smoothing, mcdo_smoothing) of `network` for each depth.

    `depths` maps depth -> constructor kwargs (e.g. {18: dict(block=BasicBlock, depths=(2, 2, 2, 2))});
    None registers names without a depth (AlexNet). `fixed_by(mcdo, **depth_kwargs)` may add layout flags that
    depend on the variant (the pre-act MC bottleneck has a shortcut BatchNorm).
    """
    for depth, depth_kwargs in (depths or {None: {}}).items():
        for mcdo in (False, True):
            for smooth in (False, True):
                name = "_".join([family, "mcdo" if mcdo else "dnn"] + ["smoothing"] * smooth
                                + ([str(depth)] if depth is not None else []))
                fixed = dict(depth_kwargs, **(fixed_by(mcdo, **depth_kwargs) if fixed_by else {}))
                register(name, functools.partial(
                    _build_variant, network, name=name, mcdo=mcdo, smooth=smooth, default_rate=default_rate,
                    extra_kwargs=extra_kwargs, fixed=fixed))
