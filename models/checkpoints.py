"""Checkpoints in the original layout, written atomically and read safely.

    {root}/{dataset}/{model.name}/{dataset}_{model.name}_{uid}.pth.tar  ->  {"name", "state_dict", "optimizer"}

Writes go to a temporary file in the same folder and are renamed over the target, so a crash mid-write
leaves the previous checkpoint intact. Reads use `torch.load(weights_only=True)`: a checkpoint cannot run code.
"""
import os
import tempfile
from pathlib import Path

import torch


def unwrap(model):
    """The bare module behind DataParallel / DistributedDataParallel / torch.compile wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):  # torch.compile
            model = model._orig_mod
        elif isinstance(model, (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel)):
            model = model.module
        else:
            return model


def checkpoint_path(dataset_name, model_name, uid, root="models_checkpoints"):
    return Path(root) / dataset_name / model_name / f"{dataset_name}_{model_name}_{uid}.pth.tar"


def atomic_save(obj, path):
    """torch.save to `path` via a temporary file + os.replace (atomic on POSIX and Windows)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def save(model, dataset_name, uid, optimizer=None, root="models_checkpoints"):
    """Save `model` (and optionally `optimizer`) under the original path layout; returns the path."""
    model = unwrap(model)
    name = getattr(model, "name", type(model).__name__)
    state = {"name": name, "state_dict": model.state_dict(),
             "optimizer": optimizer.state_dict() if optimizer is not None else None}
    return atomic_save(state, checkpoint_path(dataset_name, name, uid, root))


def check_state_dict(model, state_dict, source="checkpoint", checkpoint_name=None, limit=5):
    """Raise a ValueError naming the first differing keys/shapes if `state_dict` does not fit `model`."""
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
        lines.append("  Build the model with the same name, num_classes and stem as the checkpoint.")
        raise ValueError("\n".join(lines))


def load(model, dataset_name, uid, root="models_checkpoints", optimizer=None, weights_only=True,
         map_location="cpu"):
    """Load the checkpoint of `model.name` into `model` (and `optimizer`, if given); returns `model`."""
    bare = unwrap(model)
    name = getattr(bare, "name", type(bare).__name__)
    path = checkpoint_path(dataset_name, name, uid, root)
    if not path.exists():
        others = sorted(p.name for p in path.parent.glob("*.pth.tar")) if path.parent.exists() else []
        hint = f" Checkpoints in that folder: {others}." if others else ""
        raise FileNotFoundError(f"No checkpoint for model {name!r}, dataset {dataset_name!r}, uid {uid!r}: "
                                f"looked for {path}.{hint}")
    state = torch.load(path, map_location=map_location, weights_only=weights_only)
    state_dict = state.get("state_dict", state) if isinstance(state, dict) else state
    check_state_dict(bare, state_dict, source=str(path), checkpoint_name=state.get("name"))
    bare.load_state_dict(state_dict, strict=True)
    if optimizer is not None:
        if state.get("optimizer") is None:
            raise ValueError(f"{path} holds no optimizer state")
        optimizer.load_state_dict(state["optimizer"])
    return model
