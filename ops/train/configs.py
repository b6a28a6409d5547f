"""Run configuration: JSON files in configs/ with sections dataset / train / val / model / optim / env.

The original implementation's configs (cifar10_general.json, cifar100_general.json, imagenet_general.json)
load unchanged; every key not given takes the default below. Overrides are `section.key=value` strings
(`train.epochs=2`, `model.block.width=16`, `optim.scheduler.name=CosineAnnealingLR`), values parsed as JSON
when they parse (numbers, true/false, null, lists), else taken as strings.

Everything is checked before any work starts: unknown or mistyped keys (named, with the closest allowed key),
types and ranges of every value (RULES). All problems are reported together in one ConfigError, one line each.
"""
from __future__ import annotations

import copy
import difflib
import json
import numbers
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING

from models.naming import uid_problem
from ops.common.checks import MAX_SEED, is_seed

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from typing import Any

DEFAULTS = {
    "dataset": {
        "name": "fashion_mnist",
        "root": "./data",
        "mean": None,          # None: the dataset's constants (ops.data.datasets.STATS)
        "std": None,
        "download": False,     # allow downloading CIFAR / Fashion-MNIST if missing
        "train_size": None,    # use only the first n images of a fixed permutation (quick runs)
        "test_size": None,
        "kwargs": {},          # extra arguments of the dataset (e.g. synthetic: num_classes, n_train)
    },
    "train": {
        "warmup_epochs": 1,    # linear warm-up epochs, per iteration, *before* the scheduled epochs (as the original)
        "epochs": 200,         # scheduled epochs after the warm-up (MultiStepLR milestones count these)
        "batch_size": 128,     # global batch size (split across DDP processes)
        "augment": True,       # random crop (zero padding crop_padding) + horizontal flip of the in-memory loader
        "crop_padding": 4,     # pixels of zero padding of the random crops (the CIFAR recipe's 4; 0: flips only)
        "label_smoothing": 0.0,  # opt-in: changes calibration, so it is visible here
        "mixup": 0.0,          # timm Mixup alpha (opt-in)
        "cutmix": 0.0,         # timm CutMix alpha (opt-in)
        "max_steps_per_epoch": None,  # cut epochs short (smoke tests, benchmarks)
        "sync_bn": False,      # under torchrun: BatchNorm statistics over the global batch (ops.train.distributed)
    },
    "val": {
        "batch_size": 256,
        "n_ff": 1,             # MC samples (forward passes) for the per-epoch validation: the original's key
        "every": 1,            # validate every n epochs (and always after the last)
        "precision": "fp32",   # validation and `ops.run test`: fp32 unless asked (bf16 moves ECE, see README)
    },
    "model": {
        "name": None,          # e.g. "resnet_mcdo_smoothing_18"; may also be given to train()
        "stem": False,         # True: ImageNet stem (224x224 inputs)
        "block": {},           # keyword arguments of models.get_model (rate, width, temp, classifier, ...)
    },
    "optim": {
        "name": "SGD",         # SGD | AdamW
        "lr": 0.1,
        "momentum": 0.9,
        "nesterov": False,
        "fused": False,        # the fused optimizer kernel (same update, one pass over the weights; faster on a CPU
                               # for large layers: the MLP head's 43M weights trained 1.25x faster here)
        "weight_decay": 5e-4,
        "betas": [0.9, 0.999],  # AdamW
        "scheduler": {
            "name": "MultiStepLR",  # MultiStepLR | CosineAnnealingLR | constant
            "milestones": [60, 120, 160],  # scheduled epochs (after the warm-up)
            "gamma": 0.2,
            "eta_min": 0.0,    # CosineAnnealingLR: final lr
        },
    },
    "env": {
        "device": "auto",      # auto | cpu | cuda | cuda:N
        # training precision: auto (bf16 where the hardware computes it natively, else fp32) | fp32 | bf16 | fp16
        "precision": "auto",
        "channels_last": False,
        "compile": False,      # torch.compile the model
        "workers": 4,          # DataLoader workers (ImageNet path only)
        "threads": None,       # CPU threads for torch (None: PyTorch's default)
        "seed": 0,
        "out_dir": "runs",     # run folders: {out_dir}/{dataset}/{model}/{uid}
        "uid": None,           # None: a new unique id (time + random suffix)
        "resume": True,        # continue from the run folder's checkpoint if there is one
        "force_resume": False,  # resume even if keys that change the result differ (recorded in the run)
        "checkpoint_root": "models_checkpoints",  # final weights in the original layout
        "leaderboard_root": "leaderboard/logs",   # ops.run test: leaderboard CSV/JSON in the original layout
        "tensorboard": True,
        "progress": True,      # progress bars
    },
}

FREE_FORM = {("dataset", "kwargs"), ("model", "block")}  # dicts passed on as keyword arguments


class ConfigError(ValueError):
    """One or more problems in a config; `problems` lists them, the message has one line each."""

    def __init__(self, problems):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


# --- value rules -----------------------------------------------------------------------------------------------

def _int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _num(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def positive_int(v: Any) -> str | None:
    return None if _int(v) and v >= 1 else "must be a positive integer"


def non_negative_int(v: Any) -> str | None:
    return None if _int(v) and v >= 0 else "must be an integer >= 0"


def optional_positive_int(v: Any) -> str | None:
    return None if v is None else positive_int(v)


def integer(v: Any) -> str | None:
    return None if _int(v) else "must be an integer"


def positive_number(v: Any) -> str | None:
    return None if _num(v) and v > 0 else "must be a number > 0"


def non_negative_number(v: Any) -> str | None:
    return None if _num(v) and v >= 0 else "must be a number >= 0"


def fraction(v: Any) -> str | None:  # [0, 1)
    return None if _num(v) and 0 <= v < 1 else "must be a number in [0, 1)"


def crop_padding(v: Any) -> str | None:
    return None if type(v) is int and 0 <= v <= 16 else "must be an integer from 0 to 16 (pixels of zero padding)"


def boolean(v: Any) -> str | None:
    return None if isinstance(v, bool) else "must be true or false"


def text(v: Any) -> str | None:
    return None if isinstance(v, str) and v else "must be a non-empty string"


def optional_text(v: Any) -> str | None:
    return None if v is None else text(v)


def one_of(*choices: Any) -> Callable[[Any], str | None]:
    return lambda v: None if v in choices else f"must be one of {list(choices)}"


def channel_triple(positive: bool) -> Callable[[Any], str | None]:
    def rule(v):
        if v is None:
            return None
        ok = isinstance(v, list) and len(v) in (1, 3) and all(_num(x) and (x > 0 or not positive) for x in v)
        return None if ok else f"must be null or a list of 1 or 3 {'positive ' if positive else ''}numbers"
    return rule


def milestones(v: Any) -> str | None:
    ok = isinstance(v, list) and all(_int(m) and m >= 1 for m in v) and v == sorted(set(v))
    return None if ok else "must be a list of increasing positive integers (scheduled epochs)"


def betas(v: Any) -> str | None:
    ok = isinstance(v, list) and len(v) == 2 and all(_num(b) and 0 <= b < 1 for b in v)
    return None if ok else "must be a list of two numbers in [0, 1)"


def uid(v: Any) -> str | None:
    """The uid rule of models.naming (the same at the final save): None or a plain name of at most 64 chars."""
    return None if v is None else uid_problem(v)


def seed(v: Any) -> str | None:
    return None if is_seed(v) else f"must be an integer from 0 to {MAX_SEED}"


def device(v: Any) -> str | None:
    return None if isinstance(v, str) and re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", v) else \
        "must be auto, cpu, cuda, cuda:N or mps"


RULES = {
    "dataset.name": text, "dataset.root": text, "dataset.mean": channel_triple(False),
    "dataset.std": channel_triple(True), "dataset.download": boolean, "dataset.train_size": optional_positive_int,
    "dataset.test_size": optional_positive_int,
    "train.warmup_epochs": non_negative_int, "train.epochs": positive_int, "train.batch_size": positive_int,
    "train.augment": boolean, "train.crop_padding": crop_padding, "train.label_smoothing": fraction,
    "train.mixup": non_negative_number,
    "train.cutmix": non_negative_number, "train.max_steps_per_epoch": optional_positive_int, "train.sync_bn": boolean,
    "val.batch_size": positive_int, "val.n_ff": positive_int, "val.every": positive_int,
    "val.precision": one_of("fp32", "bf16", "fp16"),
    "model.name": optional_text, "model.stem": boolean,
    "optim.name": one_of("SGD", "AdamW"), "optim.lr": positive_number, "optim.momentum": fraction,
    "optim.nesterov": boolean, "optim.fused": boolean, "optim.weight_decay": non_negative_number, "optim.betas": betas,
    "optim.scheduler.name": one_of("MultiStepLR", "CosineAnnealingLR", "constant"),
    "optim.scheduler.milestones": milestones, "optim.scheduler.gamma": positive_number,
    "optim.scheduler.eta_min": non_negative_number,
    "env.device": device, "env.precision": one_of("auto", "fp32", "bf16", "fp16"), "env.channels_last": boolean,
    "env.compile": boolean, "env.workers": non_negative_int, "env.threads": optional_positive_int, "env.seed": seed,
    "env.out_dir": text, "env.uid": uid, "env.resume": boolean, "env.force_resume": boolean,
    "env.checkpoint_root": text, "env.leaderboard_root": text, "env.tensorboard": boolean, "env.progress": boolean,
}


# model.block is passed on to models.get_model, which names unknown keywords; the common numeric ones are checked
# here too, so that a width of 0 is refused before any work and not by a 0-channel convolution.
MAX_WIDTH = 1024  # 16x the paper's 64: a ResNet-18 of that width has 2.9 billion parameters


def model_width(v: Any) -> str | None:
    message = positive_int(v)
    return message or (None if v <= MAX_WIDTH else f"must be at most {MAX_WIDTH} (the paper's is 64)")


BLOCK_RULES = {"width": model_width, "rate": fraction, "temp": positive_number, "act": one_of("relu", "relu6")}


def _check_keys(cfg, schema, path, problems):
    """Unknown keys and misplaced sections (a value where a section belongs, or the reverse)."""
    for key, value in cfg.items():
        where = ".".join(path + (key,))
        if key not in schema:
            close = difflib.get_close_matches(key, list(schema), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            problems.append(f"Unknown config key {where!r}.{hint} Allowed keys in "
                            f"{'.'.join(path) or 'the top level'}: {sorted(schema)}")
            continue
        default = schema[key]
        if isinstance(default, dict):
            if not isinstance(value, dict):
                problems.append(f"Config key {where!r} must be a JSON object (a section), got {value!r}")
            elif path + (key,) not in FREE_FORM:
                _check_keys(value, default, path + (key,), problems)


def non_finite(node: Any, path: str = "") -> list:
    """The dotted keys of every infinite or NaN number in `node` (JSON parsing accepts Infinity and NaN)."""
    if isinstance(node, dict):
        return [k for key, value in node.items() for k in non_finite(value, f"{path}.{key}" if path else str(key))]
    if isinstance(node, (list, tuple)):
        return [k for i, value in enumerate(node) for k in non_finite(value, f"{path}[{i}]")]
    return [path] if isinstance(node, float) and not math.isfinite(node) else []


def validate(cfg: dict) -> list[str]:
    """Every problem of a full config (after merging defaults), as a list of one-line messages."""
    bad = non_finite(cfg)
    problems = [f"{key} must be a finite number, got {_lookup(cfg, key)!r} (Infinity and NaN are refused)"
                for key in bad]
    reported = {key.split("[")[0] for key in bad}
    for dotted, rule in RULES.items():
        node = _lookup(cfg, dotted)
        message = rule(node) if dotted not in reported else None
        if message:
            problems.append(f"{dotted} {message}, got {node!r}")
    block = cfg["model"]["block"]
    for key, rule in BLOCK_RULES.items():
        message = rule(block[key]) if isinstance(block, dict) and key in block else None
        if message and f"model.block.{key}" not in reported:
            problems.append(f"model.block.{key} {message}, got {block[key]!r}")
    return problems


def _lookup(cfg, dotted):
    node = cfg
    for part in re.split(r"\.|\[", dotted):
        node = node[int(part[:-1])] if part.endswith("]") else node[part]
    return node


def merge(base: Mapping, update: Mapping) -> dict:
    """A copy of `base` with `update`'s keys replaced, section by section (nested dicts merge)."""
    out = copy.deepcopy(base)
    for key, value in (update or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """'train.epochs=2' -> (['train', 'epochs'], 2)."""
    if not isinstance(text, str) or "=" not in text:
        raise ConfigError(f"Override {text!r} must look like section.key=value")
    key, raw = text.split("=", 1)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(cfg: dict, overrides: Sequence[str]) -> dict:
    cfg = copy.deepcopy(cfg)
    for text in overrides or ():
        keys, value = parse_override(text) if isinstance(text, str) else text
        node = cfg
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"Override {text!r}: {k!r} is not a section")
        node[keys[-1]] = value
    return cfg


def make_config(cfg: Mapping | None = None, overrides: Sequence[str] = ()) -> dict:
    """Validate a config dict (+ overrides) and fill in the defaults; raises ConfigError listing every problem."""
    if cfg is not None and not isinstance(cfg, dict):
        raise ConfigError(f"A config must be a JSON object with sections {sorted(DEFAULTS)}, got a "
                          f"{type(cfg).__name__}")
    cfg = apply_overrides(cfg or {}, overrides)
    problems = []
    _check_keys(cfg, DEFAULTS, (), problems)
    if problems:
        raise ConfigError(problems)
    merged = merge(DEFAULTS, cfg)
    problems = validate(merged)
    if problems:
        raise ConfigError(problems)
    return merged


def load_config(path: Path | str, overrides: Sequence[str] = ()) -> dict:
    """The config of a JSON file (+ overrides), checked and completed. A `set` section (the networks of a
    training set, ops.train.sets) is left out: the file's recipe is what one run of it trains."""
    cfg = read_config_file(path)
    cfg.pop("set", None)
    return make_config(cfg, overrides)


def read_config_file(path: Path | str) -> dict:
    """The JSON object of a config file, unchecked; a clear error for a missing file or bad JSON."""
    path = Path(path)
    if not path.exists():
        available = sorted(p.name for p in path.parent.glob("*.json")) if path.parent.exists() else []
        raise FileNotFoundError(f"Config {path} not found. Available in {path.parent}: {available}")
    with open(path) as f:
        try:
            cfg = json.load(f)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path} must hold a JSON object with sections {sorted(DEFAULTS)}, got a "
                          f"{type(cfg).__name__}")
    return cfg


# Keys whose change between the start of a run and its resumption would change what is trained. All others
# (epochs to extend a run, validation, logging, workers, devices, output folders) may change on resume.
RESULT_KEYS = ("dataset.name", "dataset.mean", "dataset.std", "dataset.train_size", "dataset.test_size",
               "dataset.kwargs", "train.warmup_epochs", "train.batch_size", "train.augment", "train.crop_padding",
               "train.label_smoothing", "train.mixup", "train.cutmix", "train.max_steps_per_epoch", "train.sync_bn",
               "model", "optim", "env.seed", "env.precision")


def flatten(cfg: Mapping, prefix: str = "") -> dict:
    """{'a': {'b': 1}} -> {'a.b': 1} (free-form sections stay whole)."""
    out = {}
    for key, value in cfg.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and tuple(dotted.split(".")) not in FREE_FORM and value:
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def diff(old: Mapping, new: Mapping) -> dict:
    """{dotted key: (old, new)} for every key whose value differs."""
    a, b = flatten(old), flatten(new)
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def affects_result(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in RESULT_KEYS)
