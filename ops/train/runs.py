"""Run folders: unique ids, one process per folder, and resumption that cannot silently change a run.

    {out_dir}/{dataset}/{model}/{uid}/   config.json  model.txt  metrics.csv  checkpoint.pth.tar  resumes.json
                                         events.out.tfevents.*  lock

- A new run gets a uid that cannot collide: time to the second plus a random suffix (20260101-120000-3fa9c1),
  and its folder is created with mkdir that fails if it exists, so two runs started in the same second never
  share a folder. A uid given by the user must be a plain name (no path separators, no '..'): every output
  stays inside the configured folders.
- While a process trains in a folder it holds an exclusive lock on `lock` (flock: released by the kernel even if
  the process is killed); a second process on the same uid is refused with the holder's pid, host and start.
- Resuming compares the new config with the stored one (ops.train.configs.RESULT_KEYS). A change that would change the
  result is refused, listing the keys, unless env.force_resume=true; other changes (more epochs, logging,
  workers) are allowed. Either way the change is appended to `resumes.json` and `config.json` is rewritten to
  the config in effect, so the folder always says what was trained.
"""
from __future__ import annotations

import contextlib
import datetime
import json
import secrets
import time
from pathlib import Path
from typing import TYPE_CHECKING

from models.atomic import LockedError, exclusive, read_json, write_json
from models.naming import plain_name
from ops.train import configs

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    import torch
    import torch.nn as nn


class RunError(RuntimeError):
    """A run folder cannot be used as asked; the message says why and what to do."""


class RunLockedError(RunError, LockedError):
    """Another process trains this run (its lock is held); the message names it (pid, host, since when)."""


def new_uid() -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


def check_uid(uid: str) -> str:
    message = configs.uid(uid)
    if uid is None or message:
        raise RunError(f"env.uid {message or 'is missing'}, got {uid!r}")
    return uid


def output_folder(out_dir: Path | str, uid: str | None = None) -> tuple[str, Path]:
    """(uid, folder) for a run's or a notebook's outputs: `{out_dir}/{uid}`. uid=None creates a new folder
    atomically under a fresh uid, so that two runs started together never share one; a given uid is checked and
    its folder reused (to resume or redo that run on purpose)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if uid is not None:
        (out_dir / check_uid(uid)).mkdir(exist_ok=True)
        return uid, out_dir / uid
    for _ in range(100):  # a collision needs the same second and the same 24 random bits
        uid = new_uid()
        try:
            (out_dir / uid).mkdir()
            return uid, out_dir / uid
        except FileExistsError:
            continue
    raise RunError(f"could not create a new folder under {out_dir}")


class RunFolder:
    """The folder of one run; `open()` creates or finds it and takes its lock, `close()` releases the lock."""

    CONFIG, RESUMES, LOCK = "config.json", "resumes.json", "lock"

    def __init__(self, out_dir, dataset, model_name, uid=None):
        self.base = Path(out_dir) / dataset / model_name
        self.uid = check_uid(uid) if uid is not None else None
        self.path, self._lock = None, None

    def open(self) -> RunFolder:
        """Create the folder of a new run, or find the existing one of `uid`; lock it. Returns self."""
        self.uid, self.path = output_folder(self.base, self.uid)
        self._take_lock()
        return self

    def _take_lock(self):
        stack = contextlib.ExitStack()
        try:
            stack.enter_context(exclusive(self.path / self.LOCK, f"run {self.path}", advice=(
                "Wait for it to finish, stop it, or start a separate run with another env.uid.")))
        except LockedError as exc:
            raise RunLockedError(str(exc)) from None
        self._lock = stack

    def close(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def __enter__(self):
        return self.open()

    def __exit__(self, *exc):
        self.close()
        return False

    def stored_config(self) -> dict | None:
        path = self.path / self.CONFIG
        return read_json(path, what="run's config") if path.exists() else None

    def reconcile(self, cfg: Mapping, epoch: int, restart: bool = False) -> dict:
        """Check a resumption's config against the stored one; record and return the changes {key: (old, new)}.

        After `epoch` > 0 trained epochs, changes of RESULT_KEYS raise RunError unless cfg.env.force_resume;
        `restart` (env.resume=false: the user starts this uid over) allows them. Changes are recorded."""
        stored = self.stored_config()
        if stored is None:
            return {}
        changes = {k: v for k, v in configs.diff(stored, cfg).items()
                   if k not in ("env.uid", "env.force_resume", "env.resume")}
        breaking = {k: v for k, v in changes.items() if configs.affects_result(k)}
        if breaking and epoch > 0 and not restart and not cfg["env"]["force_resume"]:
            lines = "\n".join(f"  {k}: {old!r} -> {new!r}" for k, (old, new) in breaking.items())
            raise RunError(f"run {self.path} was trained with another config; resuming it would change what is "
                           f"trained:\n{lines}\nStart a new run (leave env.uid unset), or set env.force_resume=true "
                           f"to continue anyway (the change is recorded in {self.RESUMES}).")
        if changes or restart:
            resumes = json.loads((self.path / self.RESUMES).read_text()) if (self.path / self.RESUMES).exists() else []
            resumes.append({"after_epoch": 0 if restart else epoch, "restarted": restart,
                            "time": datetime.datetime.now().isoformat(timespec="seconds"),
                            "forced": bool(breaking) and epoch > 0 and not restart,
                            "changes": {k: list(v) for k, v in changes.items()}})
            write_json(self.path / self.RESUMES, resumes)
        return changes

    def write_config(self, cfg: Mapping) -> Path:
        return write_json(self.path / self.CONFIG, cfg)


def find_run(uid: str, out_dir: Path | str = "runs", model: str | None = None) -> Path:
    """The run folder {out_dir}/{dataset}/{model}/{uid} holding a config.json; refuses ambiguity. `uid` must be a
    plain name (a run folder of an older, longer uid rule is still found)."""
    try:
        plain_name(uid, "the uid")
    except ValueError as exc:
        raise RunError(f"env.uid: {exc}") from None
    found = sorted(p.parent for p in Path(out_dir).glob(f"*/*/{uid}/config.json")
                   if model is None or p.parent.parent.name == model)
    if not found:
        raise FileNotFoundError(f"No run {uid!r} under {out_dir}/<dataset>/{model or '<model>'}/ (looked for its "
                                f"config.json). If the run was written elsewhere, pass env.out_dir=... on the command "
                                f"line (out_dir=... in Python).")
    if len(found) > 1:
        raise ValueError(f"uid {uid!r} names several runs: {[str(p) for p in found]}; name the model too "
                         f"(--model NAME, model=...)")
    return found[0]


def load_run(uid: str, out_dir: Path | str = "runs", model: str | None = None, device: torch.device | str = "cpu",
             overrides: Sequence[str] = ()) -> tuple[nn.Module, dict, Path]:
    """Rebuild a run's model from its stored config and load its weights: (model in eval(), config, weights path).

    The weights are the run's final ones ({env.checkpoint_root}/..., the original layout) or, for a run that
    was interrupted, its last epoch (checkpoint.pth.tar); they are checked against the stored config (name and
    build arguments). `overrides` may change where things are (dataset.root, env.checkpoint_root, ...)."""
    import models

    run_dir = find_run(uid, out_dir, model)
    cfg = configs.make_config(read_json(run_dir / RunFolder.CONFIG, what="run's config"), list(overrides))
    name, dataset = cfg["model"]["name"], run_dir.parent.parent.name
    try:
        weights = models.find_checkpoint(dataset, name, uid, cfg["env"]["checkpoint_root"])
    except FileNotFoundError:
        weights = run_dir / "checkpoint.pth.tar"
        if not weights.exists():
            raise FileNotFoundError(f"run {run_dir} has no weights yet: neither final weights under "
                                    f"{cfg['env']['checkpoint_root']} nor {weights}") from None
    state = models.read_checkpoint(weights)
    num_classes = (state.get("arch") or {}).get("num_classes")
    if num_classes is None:
        # checkpoints from before `arch` was stored: the classifier (the last weight) has num_classes rows
        last_weight = next(k for k in reversed(state["state_dict"]) if k.endswith("weight"))
        num_classes = state["state_dict"][last_weight].shape[0]
    net = models.get_model(name, num_classes=num_classes, stem=cfg["model"]["stem"], **cfg["model"]["block"])
    models.load_checkpoint(weights, net)
    return net.to(device).eval(), cfg, weights
