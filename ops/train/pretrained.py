"""Trained checkpoints to start from: the classification notebook's latest run, else the ones in resources/.

    trained = ops.train.pretrained.load_models(device="cpu")   # {"resnet_mcdo_18": model, ...}
    model = ops.train.pretrained.load_trained("models_checkpoints/fashion_mnist/resnet_mcdo_18/..._<uid>.pth.tar")
    ops.train.pretrained.export(checkpoint, root="shared_models", uid="v1")   # weights + card, no optimizer state

(`models.load_checkpoint` loads weights into a model you built; `load_trained` builds the model from the card.)

Every checkpoint that the trainer writes in the original layout gets a *card* beside it, `<same name>.json`
({"name", "dataset", "num_classes", "stem", "block", "config", "history"}), so the model can be rebuilt from the
file alone: no need to repeat `model.block.width=16` or the number of classes. `resources/models_checkpoints/`
holds the demo recipe's two trained models (see README) in that layout; `models.load(model, "fashion_mnist",
"demo", root="resources/models_checkpoints")` reads them too.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import models

from models.atomic import exclusive, write_json
from models.naming import plain_name
from ops.common.checks import is_int
from ops.train import configs

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Any
    import torch
    import torch.nn as nn
    import models.ensemble

ROOT = Path(__file__).resolve().parents[2]
RESOURCES = ROOT / "resources" / "models_checkpoints"
DEMO_MODELS = ("resnet_mcdo_18", "resnet_mcdo_smoothing_18")
DEMO_UID = "demo"


def card_path(checkpoint: Path | str) -> Path:
    """`x/{dataset}_{name}_{uid}.pth.tar` -> `x/{dataset}_{name}_{uid}.json`."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.name.removesuffix(".pth.tar") + ".json")


def write_card(checkpoint: Path | str, cfg: Mapping, num_classes: int, history: Sequence[Mapping] | None = None,
               **extra: Any) -> Path:
    """Write the card of `checkpoint` (see the module docstring; `extra`: e.g. machine, wall_time_s); returns
    its path."""
    card = {"name": cfg["model"]["name"], "dataset": cfg["dataset"]["name"], "num_classes": int(num_classes),
            "stem": cfg["model"]["stem"], "block": cfg["model"]["block"], "seed": cfg["env"]["seed"], "config": cfg,
            "history": history or [], **extra}
    return write_json(card_path(checkpoint), card)


def read_card(checkpoint: Path | str) -> dict:
    path = card_path(checkpoint)
    if not path.exists():
        raise FileNotFoundError(f"{checkpoint} has no card {path.name} beside it, so its model cannot be rebuilt "
                                f"from the file alone; build it with models.get_model(...) and use models.load")
    try:
        card = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not a checkpoint card: not JSON ({exc}); replace it with the card written "
                         f"beside the checkpoint") from None
    if not isinstance(card, dict) or not {"name", "num_classes", "stem", "block"} <= set(card):
        raise ValueError(f"{path} is not a checkpoint card (needs name, num_classes, stem and block)")
    problems = card_problems(card)
    if problems:
        raise ValueError(f"{path} is not a usable checkpoint card: " + "; ".join(problems))
    return card


MAX_CLASSES = 100_000  # ImageNet-21k has 21,841


def card_problems(card: Mapping) -> list:
    """What is wrong with a card's fields (their types and ranges), before anything is built from them."""
    problems = []
    if not isinstance(card.get("dataset"), str) or not models.naming.PLAIN_NAME.fullmatch(card["dataset"]) \
            or ".." in card["dataset"]:
        problems.append(f"dataset must be a plain dataset name such as 'fashion_mnist', got {card.get('dataset')!r}")
    if not isinstance(card["name"], str) or card["name"] not in models.list_models():
        problems.append(f"name {card['name']!r} is not a model of this library (models.list_models())")
    n = card["num_classes"]
    if not is_int(n, 1, MAX_CLASSES):
        problems.append(f"num_classes must be an integer from 1 to {MAX_CLASSES}, got {n!r}")
    if not isinstance(card["stem"], bool):
        problems.append(f"stem must be true or false, got {card['stem']!r}")
    block = card["block"]
    if not isinstance(block, dict):
        problems.append(f"block must be an object of model keyword arguments, got {block!r}")
    else:
        for key, rule in configs.BLOCK_RULES.items():
            message = rule(block[key]) if key in block else None
            if message:
                problems.append(f"block.{key} {message}, got {block[key]!r}")
    return problems


def load_trained(checkpoint: Path | str, device: torch.device | str = "cpu") -> "torch.nn.Module":  # noqa: F821 (annotation only)
    """Rebuild the model of `checkpoint` from its card and load the weights (weights_only); returns it in eval().

    The model gets `.card` (the card's dict) and `.checkpoint` (the path)."""
    checkpoint = Path(checkpoint)
    card = read_card(checkpoint)
    model = models.get_model(card["name"], num_classes=card["num_classes"], stem=card["stem"], **card["block"])
    models.load_checkpoint(checkpoint, model)
    model.card, model.checkpoint = card, checkpoint
    return model.to(device).eval()


def export(checkpoint: Path | str, root: Path | str, uid: str, overwrite: bool = False, dtype: str = "float32") -> Path:
    """Copy a trained checkpoint and its card to `root` under `uid`, keeping what inference needs (name, arch,
    state_dict) and dropping the optimizer state (as large again as the weights, and useless to a reader).
    Written atomically, one writer at a time; an existing export under that uid is refused unless overwrite
    (an export without its card, left by a kill between the two files, counts as unfinished and is redone).
    Returns the new checkpoint's path. resources/ got its demo checkpoints with root=RESOURCES, uid=DEMO_UID (no
    defaults: a call with one argument must not replace them). dtype="float16" stores the weights in half
    precision (half the file; they load as float32, rounded to 11 significant bits), said in the card; tensors with
    values beyond float16's range stay float32 (listed in the card's float32_tensors, and printed)."""
    if dtype not in ("float32", "float16"):
        raise ValueError(f"dtype must be 'float32' or 'float16', got {dtype!r}")
    model = load_trained(checkpoint)  # checks that weights, card and arch agree before anything is written
    card = dict(model.card, exported_from=str(checkpoint))
    if dtype == "float16":
        card["stored_dtype"], card["float32_tensors"] = "float16", to_float16(model)
        if card["float32_tensors"]:
            print(f"{checkpoint}: {len(card['float32_tensors'])} tensor(s) kept in float32, their values beyond "
                  f"float16's range (said in the card): {card['float32_tensors'][:5]}", flush=True)
    path = models.checkpoint_path(card["dataset"], card["name"], uid, root)
    # The lock lives beside the export (a hidden file, ignored by git): a lock in a temporary folder would not be
    # seen by a process with another TMPDIR (cluster jobs often have their own).
    with exclusive(path.parent / f".{path.name}.lock", f"the export {path}"):
        if path.exists() and card_path(path).exists() and not overwrite:
            raise FileExistsError(f"{path} exists: an earlier export under uid {uid!r}. Pass overwrite=True to "
                                  f"replace it, or choose another uid")
        card_path(path).unlink(missing_ok=True)  # first: new weights beside an old card must never look finished
        path = models.save(model, card["dataset"], uid, root=root)
        write_json(card_path(path), card)  # the card last: weights without a card are an unfinished export
    return path


def to_float16(model: nn.Module) -> list:
    """Store `model`'s floating parameters and buffers in float16, in place, except those with a value beyond
    float16's range (+-65504: a BatchNorm running_var of 1e6 would become inf), which stay float32; returns the
    names of those. Loaded into a float32 model, the weights are the originals rounded to 11 significant bits."""
    kept = []
    for prefix, module in model.named_modules():
        for store in (module._parameters, module._buffers):
            for key, tensor in store.items():
                if tensor is None or not tensor.is_floating_point():
                    continue
                half = tensor.data.half()
                if bool(half.isfinite().all()) or not bool(tensor.data.isfinite().all()):
                    tensor.data = half
                else:
                    kept.append(f"{prefix}.{key}" if prefix else key)
    return kept


def find_trained(name: str, dataset: str = "fashion_mnist", runs_dir: Path | str = "runs/classification",
                 resources: Path | str = RESOURCES) -> Path:
    """The newest checkpoint of `name` with a card under `runs_dir` (the classification notebook's outputs),
    else the one in `resources`; None if there is neither."""
    plain_name(dataset, "dataset")
    plain_name(name, "name")
    pattern = f"**/{dataset}/{name}/{dataset}_{name}_*.pth.tar"
    found = [p for p in Path(runs_dir).glob(pattern) if card_path(p).exists()] if Path(runs_dir).is_dir() else []
    if found:
        return max(found, key=lambda p: p.stat().st_mtime)
    shipped = models.checkpoint_path(dataset, name, DEMO_UID, resources)
    return shipped if shipped.exists() and card_path(shipped).exists() else None


def load_models(names: Sequence[str] = DEMO_MODELS, dataset: str = "fashion_mnist", device: torch.device | str = "cpu",
                runs_dir: Path | str = "runs/classification", resources: Path | str = RESOURCES,
                verbose: bool = True) -> dict[str, nn.Module]:
    """{name: trained model in eval()} from `find_trained` for each name; raises naming what is missing."""
    out = {}
    for name in names:
        path = find_trained(name, dataset, runs_dir, resources)
        if path is None:
            raise FileNotFoundError(
                f"No trained {name} for {dataset}: looked under {runs_dir} (the classification notebook's runs) "
                f"and {resources}. Run `make demo` (or classification.ipynb) to train it.")
        out[name] = load_trained(path, device)
        if verbose:
            print(f"{name}: {path}")
    return out


REFERENCE_VARIANTS = ("dnn", "dnn_smoothing", "mcdo", "mcdo_smoothing", "mcdo_mlp")


def _reference_uid(variant, seed, set_name) -> str:
    """`{set_name}-{variant}-s{seed}` (ops.train.sets), each part checked: they become a file name."""
    plain_name(set_name, "set_name")
    plain_name(variant, "variant")
    if not is_int(seed, 0):
        raise ValueError(f"seed must be an integer >= 0 (a seed of the set), got {seed!r}")
    if "-" in variant:
        raise ValueError(f"variant must be a set's variant name (letters, digits or '_'), got {variant!r}")
    return f"{set_name}-{variant}-s{seed}"


def reference_path(variant: str, seed: int, dataset: str = "fashion_mnist", set_name: str = "reference",
                   resources: Path | str = RESOURCES) -> Path:
    """The exported checkpoint of network (variant, seed) of a training set (ops.train.sets); raises naming
    what is there if it is missing. `dataset` may be an alias ('fashion-mnist'), as in models.load."""
    from ops.data.datasets import canonical_name

    uid = _reference_uid(variant, seed, set_name)
    dataset = canonical_name(plain_name(dataset, "dataset"))
    folders = [Path(resources) / d for d in models.naming.dataset_aliases(dataset)]
    found = [p for folder in folders if folder.is_dir() for model in sorted(folder.iterdir()) if model.is_dir()
             for p in [model / f"{folder.name}_{model.name}_{uid}.pth.tar"] if p.is_file()]
    if len(found) != 1:
        have = sorted(p.name.removesuffix(".pth.tar").rsplit("_", 1)[-1] for folder in folders if folder.is_dir()
                      for p in folder.glob(f"*/*_{set_name}-*.pth.tar"))
        what = "Several" if found else "No"
        raise FileNotFoundError(f"{what} {set_name} network {variant!r} with seed {seed} for {dataset} in {resources} "
                                f"({[str(p) for p in found] if found else f'found: {have or None}'}). Train the set:"
                                f" python -m ops.run train-set configs/{dataset}_reference.json")
    return found[0]


def _check_seeds(seeds, distinct) -> list:
    if isinstance(seeds, (str, bytes)) or not hasattr(seeds, "__iter__"):
        raise ValueError(f"seeds must be a list of integers (the set's seeds), got {seeds!r}")
    seeds = list(seeds)
    if not seeds or not all(is_int(s, 0) for s in seeds):
        raise ValueError(f"seeds must be a non-empty list of integers >= 0, got {seeds!r}")
    if distinct and len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds {seeds} repeat a seed: an ensemble of one network twice is not an ensemble of "
                         f"two; give distinct seeds")
    return seeds


def load_reference(variant: str, seeds: Sequence[int] = (0, 1, 2), dataset: str = "fashion_mnist",
                   set_name: str = "reference", resources: Path | str = RESOURCES,
                   device: torch.device | str = "cpu") -> list:
    """The trained networks of one variant of a training set, one per seed, in eval() (see load_trained)."""
    seeds = _check_seeds(seeds, distinct=False)
    paths = [reference_path(variant, seed, dataset, set_name, resources) for seed in seeds]  # all found first
    return [load_trained(path, device) for path in paths]


def reference_ensemble(variant: str, seeds: Sequence[int] = (0, 1, 2), **kwargs: Any) -> "models.ensemble.Ensemble":
    """A deep ensemble (models.ensemble.Ensemble) of the variant's networks over `seeds` (distinct)."""
    return models.ensemble.Ensemble(load_reference(variant, _check_seeds(seeds, distinct=True), **kwargs))
