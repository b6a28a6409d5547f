"""Run configuration: JSON files in configs/ with sections dataset / train / val / model / optim / env.

The original implementation's configs (cifar10_general.json, cifar100_general.json, imagenet_general.json)
load unchanged; every key not given takes the default below. Unknown or mistyped keys raise a ConfigError
naming the key, the closest allowed key and all allowed keys. Overrides are `section.key=value` strings
(`train.epochs=2`, `model.block.width=16`, `optim.scheduler.name=CosineAnnealingLR`), values parsed as JSON
when they parse (numbers, true/false, null, lists), else taken as strings.
"""
import copy
import difflib
import json
from pathlib import Path

DEFAULTS = {
    "dataset": {
        "name": "fashion_mnist",
        "root": "./data",
        "mean": None,          # None: the dataset's constants (ops.datasets.STATS)
        "std": None,
        "download": False,     # allow downloading CIFAR / Fashion-MNIST if missing
        "train_size": None,    # use only the first n images of a fixed permutation (quick runs)
        "test_size": None,
        "kwargs": {},          # extra arguments of the dataset (e.g. synthetic: num_classes, n_train)
    },
    "train": {
        "warmup_epochs": 1,    # linear warm-up over the first epochs, per iteration
        "epochs": 200,
        "batch_size": 128,     # global batch size (split across DDP processes)
        "augment": True,       # random crop (pad 4) + horizontal flip of the in-memory loader
        "label_smoothing": 0.0,  # opt-in: changes calibration, so it is visible here
        "mixup": 0.0,          # timm Mixup alpha (opt-in)
        "cutmix": 0.0,         # timm CutMix alpha (opt-in)
        "max_steps_per_epoch": None,  # cut epochs short (smoke tests, benchmarks)
    },
    "val": {
        "batch_size": 256,
        "n_ff": 1,             # MC samples for the per-epoch validation
        "every": 1,            # validate every n epochs (and always after the last)
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
        "weight_decay": 5e-4,
        "betas": [0.9, 0.999],  # AdamW
        "scheduler": {
            "name": "MultiStepLR",  # MultiStepLR | CosineAnnealingLR | constant
            "milestones": [60, 120, 160],  # epochs
            "gamma": 0.2,
            "eta_min": 0.0,    # CosineAnnealingLR: final lr
        },
    },
    "env": {
        "device": "auto",      # auto | cpu | cuda | cuda:N
        "precision": "fp32",   # fp32 | bf16 (autocast) | fp16 (autocast + grad scaler)
        "channels_last": False,
        "compile": False,      # torch.compile the model
        "workers": 4,          # DataLoader workers (ImageNet path only)
        "seed": 0,
        "out_dir": "runs",     # run folders: {out_dir}/{dataset}/{model}/{uid}
        "uid": None,           # None: a timestamp
        "resume": True,        # continue from the run folder's checkpoint if there is one
        "checkpoint_root": "models_checkpoints",  # final weights in the original layout
        "tensorboard": True,
        "progress": True,      # tqdm bars
    },
}

FREE_FORM = {("dataset", "kwargs"), ("model", "block")}  # dicts passed on as keyword arguments


class ConfigError(ValueError):
    pass


def _validate(cfg, schema, path=()):
    for key, value in cfg.items():
        where = ".".join(path + (key,))
        if key not in schema:
            close = difflib.get_close_matches(key, list(schema), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"Unknown config key {where!r}.{hint} Allowed keys in "
                              f"{'.'.join(path) or 'the top level'}: {sorted(schema)}")
        default = schema[key]
        if isinstance(default, dict) and path + (key,) not in FREE_FORM:
            if not isinstance(value, dict):
                raise ConfigError(f"Config key {where!r} must be a section (JSON object), got {value!r}")
            _validate(value, default, path + (key,))
        elif isinstance(default, dict) and not isinstance(value, dict):
            raise ConfigError(f"Config key {where!r} must be a JSON object, got {value!r}")
        elif isinstance(default, bool) and not isinstance(value, bool):
            raise ConfigError(f"Config key {where!r} must be true or false, got {value!r}")
        elif (isinstance(default, (int, float)) and not isinstance(default, bool)
              and (not isinstance(value, (int, float)) or isinstance(value, bool))):
            raise ConfigError(f"Config key {where!r} must be a number, got {value!r}")


def _merge(base, update):
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_override(text):
    """'train.epochs=2' -> (['train', 'epochs'], 2)."""
    if "=" not in text:
        raise ConfigError(f"Override {text!r} must look like section.key=value")
    key, raw = text.split("=", 1)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(cfg, overrides):
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


def make_config(cfg=None, overrides=()):
    """Validate a config dict (+ overrides) and fill in the defaults."""
    cfg = apply_overrides(cfg or {}, overrides)
    _validate(cfg, DEFAULTS)
    return _merge(DEFAULTS, cfg)


def load_config(path, overrides=()):
    path = Path(path)
    if not path.exists():
        available = sorted(p.name for p in path.parent.glob("*.json")) if path.parent.exists() else []
        raise FileNotFoundError(f"Config {path} not found. Available in {path.parent}: {available}")
    with open(path) as f:
        try:
            cfg = json.load(f)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path} is not valid JSON: {exc}") from None
    return make_config(cfg, overrides)
