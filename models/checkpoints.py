"""Checkpoints in the original layout, written atomically and read safely.

    {root}/{dataset}/{model.name}/{dataset}_{model.name}_{uid}.pth.tar  ->  {"name", "state_dict", "optimizer",
                                                                            "arch", ...extra}

- Dataset names are folded to one canonical folder (`cifar_100`, `cifar-100`, `CIFAR100` -> `cifar100`); loading
  also finds a checkpoint that the original implementation saved under one of the aliases.
- Writes go to a temporary file in the same folder (fsync, then rename over the target), so a crash mid-write
  leaves the previous checkpoint intact; leftovers of interrupted writes are removed by the next write; the
  file gets the permissions of any other output (umask), and a full disk is reported as such.
- Reads use `torch.load(weights_only=True)`: a checkpoint cannot run code. A corrupt, truncated or empty file
  gives one error naming the path and what to do.
- A checkpoint says what it is: the model name (the original's checkpoints carry only that) and, for ours, the
  arguments the model was built with (`arch`). Loading compares them with the model and names any difference
  (another variant, another width, another number of classes) before comparing tensors.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .atomic import atomic_file
from .naming import DATASET_ALIASES, canonical_dataset, dataset_aliases, plain_name, plain_uid  # noqa: F401 (API)

if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any
    import torch.nn as nn

# Dataset name -> canonical checkpoint folder. Keys are lower case with '-' and ' ' as '_'.
class CheckpointError(ValueError):
    """A checkpoint cannot be read, or does not fit the model; the message says which and what to do."""


def unwrap(model: nn.Module) -> nn.Module:
    """The bare module behind DataParallel / DistributedDataParallel / torch.compile wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):  # torch.compile
            model = model._orig_mod
        elif isinstance(model, (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel)):
            model = model.module
        else:
            return model


def checkpoint_path(dataset_name: str, model_name: str, uid: str, root: Path | str = "models_checkpoints") -> Path:
    """{root}/{dataset}/{model}/{dataset}_{model}_{uid}.pth.tar, each part checked to be a plain name (the uid by
    the rule of env.uid, models.naming.uid_problem, so that a uid a config accepts is one the final save takes)."""
    dataset_name = plain_name(canonical_dataset(dataset_name), "the dataset name")
    plain_name(model_name, "the model name")
    plain_uid(str(uid), "the uid")
    return Path(root) / dataset_name / model_name / f"{dataset_name}_{model_name}_{uid}.pth.tar"


def atomic_save(obj: Any, path: Path | str) -> Path:
    """torch.save to `path` atomically (models.atomic); leftovers of this file's interrupted writes are removed
    first (one writer per checkpoint: runs are locked)."""
    path = Path(path)
    for leftover in path.parent.glob(path.name + ".*.tmp"):  # interrupted writes of this file (killed mid-write)
        leftover.unlink(missing_ok=True)
    with atomic_file(path) as f:
        torch.save(obj, f)
    return path


def _arch(model):
    return getattr(unwrap(model), "arch", None)


def save_checkpoint(path: Path | str, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    **extra: Any) -> Path:
    """Write {"name", "state_dict", "optimizer", "arch", **extra} to `path` atomically; returns the path."""
    model = unwrap(model)
    state = {"name": getattr(model, "name", type(model).__name__), "state_dict": model.state_dict(),
             "optimizer": optimizer.state_dict() if optimizer is not None else None, **extra}
    if _arch(model) is not None:
        state["arch"] = _arch(model)
    return atomic_save(state, path)


def save(model: nn.Module, dataset_name: str, uid: str, optimizer: torch.optim.Optimizer | None = None,
         root: Path | str = "models_checkpoints", **extra: Any) -> Path:
    """Save `model` (and optionally `optimizer`) under the original path layout; returns the path."""
    name = getattr(unwrap(model), "name", type(unwrap(model)).__name__)
    return save_checkpoint(checkpoint_path(dataset_name, name, uid, root), model, optimizer, **extra)


def read_checkpoint(path: Path | str, map_location: str | torch.device = "cpu", weights_only: bool = True) -> dict:
    """The dict stored at `path`, or a CheckpointError that names the path, the problem and the fix."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"No checkpoint at {path}: check the path (a run's final weights are under "
                                f"env.checkpoint_root, its last epoch in its run folder)")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes): a write was interrupted before it started. Delete it, "
                              f"or start without it (env.resume=false in a config).")
    try:
        state = torch.load(path, map_location=map_location, weights_only=weights_only)
    except Exception as exc:
        text = str(exc)
        if "Unsupported global" in text:  # a pickled object other than tensors: it could run code
            raise CheckpointError(
                f"{path} holds Python objects besides tensors, and loading it could run code, so it was refused. "
                f"Load it with weights_only=False only if you trust where it came from.") from exc
        # torch's own message for a file its safe loader cannot parse advises weights_only=False, which would
        # unpickle an unknown file: not advice to pass on. Its first line says what failed otherwise.
        first = text.splitlines()[0] if text else ""
        first = first if len(first) <= 120 else first[:117] + "..."
        detail = "" if "weights_only" in text else f" ({type(exc).__name__}: {first})"
        raise CheckpointError(f"{path} is corrupt, truncated or not a PyTorch checkpoint{detail}. Replace it or delete "
                              f"it (a training run's checkpoint: env.resume=false starts the run over).") from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not a checkpoint dict or state_dict")
    return state


def _describe(arch, key):
    return f"{key}={arch[key]!r}" if key in arch else f"the default {key}"


def identity_problems(model: nn.Module, state: Mapping[str, Any]) -> list[str]:
    """Why `state` (a checkpoint dict) was saved from another model than `model`: a list of phrases."""
    bare = unwrap(model)
    name, stored = getattr(bare, "name", None), state.get("name")
    lines = []
    if name is not None and isinstance(stored, str) and stored != name:
        lines.append(f"it was saved from {stored!r}, this model is {name!r}")
    mine, theirs = getattr(bare, "arch", None), state.get("arch")
    if isinstance(mine, dict) and isinstance(theirs, dict):
        for key in sorted((set(mine) | set(theirs)) - {"name"}):
            if mine.get(key) != theirs.get(key):
                lines.append(f"it was built with {_describe(theirs, key)}, this model with {_describe(mine, key)}")
    return lines


def check_identity(model: nn.Module, state: Mapping[str, Any], source: str = "checkpoint") -> None:
    """Raise a CheckpointError if `state` (a checkpoint dict) was saved from another model than `model`."""
    lines = identity_problems(model, state)
    if lines:
        raise CheckpointError(_identity_message(model, lines, source))


def _identity_message(model, lines, source):
    return (f"{source} does not fit model {getattr(unwrap(model), 'name', None)!r}: " + "; ".join(lines)
            + ". Build the model the checkpoint was trained as (ops.train.pretrained.load_trained rebuilds it from "
              "the card beside it).")


def check_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str = "checkpoint",
                     checkpoint_name: str | None = None, limit: int = 5) -> None:
    """Raise a CheckpointError naming the first differing keys/shapes if `state_dict` does not fit `model`."""
    from .smoothing import Blur

    expected = model.state_dict()
    # The original stored blur filters as frozen Parameters: accepted when they equal this model's filter.
    filters = {f"{n}.filter" if n else "filter": m.filter for n, m in model.named_modules() if isinstance(m, Blur)}
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected and k not in filters]
    shapes = [f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
              for k, v in expected.items() if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)]
    shapes += [f"{k}: the checkpoint's blur filter differs from this model's sfilter" for k, v in filters.items()
               if k in state_dict and (state_dict[k].shape != v.shape
                                       or not torch.allclose(state_dict[k].float().cpu(), v.float().cpu()))]
    if missing or unexpected or shapes:
        model_name = getattr(model, "name", type(model).__name__)
        lines = [f"{source} does not fit model {model_name!r}"
                 + (f": it was saved from {checkpoint_name!r}" if checkpoint_name else "") + "."]
        if missing:
            lines.append(f"  missing in checkpoint ({len(missing)}): {missing[:limit]}")
        if unexpected:
            lines.append(f"  unexpected in checkpoint ({len(unexpected)}): {unexpected[:limit]}")
        if shapes:
            lines.append(f"  shape mismatches ({len(shapes)}): {shapes[:limit]}")
        lines.append("  Build the model with the same name, num_classes, stem and keyword arguments (width, ...) "
                     "as the checkpoint.")
        raise CheckpointError("\n".join(lines))


def check_finite(state_dict: Mapping[str, torch.Tensor], source: str = "checkpoint", limit: int = 5) -> None:
    """Raise a CheckpointError naming `source` and the tensors if any weight or buffer is NaN or infinite."""
    bad = [k for k, v in state_dict.items()
           if torch.is_tensor(v) and v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(f"{source} holds NaN or infinite values in {len(bad)} tensor(s) {bad[:limit]}: the "
                              f"weights of a run that diverged, or a damaged file. Use an earlier checkpoint or train "
                              f"again (a lower optim.lr, env.precision=fp32).")


def load_checkpoint(path: Path | str, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    map_location: str | torch.device = "cpu", weights_only: bool = True) -> dict:
    """Load the checkpoint at `path` into `model` (and `optimizer`) after checking that it fits; returns the
    whole stored dict (for the extras a trainer keeps beside the weights)."""
    state = read_checkpoint(path, map_location, weights_only)
    state_dict = state.get("state_dict", state)
    bare = unwrap(model)
    identity = identity_problems(bare, state)
    try:
        check_state_dict(bare, state_dict, source=str(path), checkpoint_name=state.get("name"))
    except CheckpointError as exc:  # both stories: what the checkpoint is, and which tensors differ
        raise CheckpointError((_identity_message(bare, identity, str(path)) + "\n" if identity else "")
                              + str(exc)) from None
    if identity:
        raise CheckpointError(_identity_message(bare, identity, str(path)))
    check_finite(state_dict, path)
    bare.load_state_dict(state_dict, strict=True)
    if optimizer is not None:
        if state.get("optimizer") is None:
            raise CheckpointError(f"{path} holds no optimizer state")
        optimizer.load_state_dict(state["optimizer"])
    return state


def find_checkpoint(dataset_name: str, model_name: str, uid: str, root: Path | str = "models_checkpoints") -> Path:
    """The checkpoint path under the canonical dataset folder, else under an alias (the original's names)."""
    canonical = plain_name(canonical_dataset(dataset_name), "the dataset name")
    plain_name(model_name, "the model name")
    plain_name(str(uid), "the uid")
    candidates = [Path(root) / d / model_name / f"{d}_{model_name}_{uid}.pth.tar" for d in dataset_aliases(canonical)]
    found = next((p for p in candidates if p.exists()), None)
    if found is None:
        folder = candidates[0].parent
        others = sorted(p.name for p in folder.glob("*.pth.tar")) if folder.exists() else []
        aliases = [p.parent.parent.name for p in candidates[1:]]
        raise FileNotFoundError(
            f"No checkpoint for model {model_name!r}, dataset {canonical!r}, uid {uid!r}: looked for {candidates[0]}"
            + (f" (and under the dataset aliases {aliases})" if aliases else "") + "."
            + (f" Checkpoints in that folder: {others}." if others else ""))
    return found


def load(model: nn.Module, dataset_name: str, uid: str, root: Path | str = "models_checkpoints",
         optimizer: torch.optim.Optimizer | None = None, weights_only: bool = True,
         map_location: str | torch.device = "cpu") -> nn.Module:
    """Load the checkpoint of `model.name` into `model` (and `optimizer`, if given); returns `model`."""
    bare = unwrap(model)
    name = getattr(bare, "name", type(bare).__name__)
    load_checkpoint(find_checkpoint(dataset_name, name, uid, root), model, optimizer, map_location, weights_only)
    return model
