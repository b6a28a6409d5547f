"""Per-network results of `make paper`, kept across runs: what one stage computed for one network, keyed by
everything that determines it (the network's sha256, the stage and its settings, the data, the MC seed, the
machine kind, torch, the claims' version). A run with one more seed, or a new run over the same networks, computes
only the networks it has not seen; a cached entry is never used for anything but its own key.

    cache = NetworkCache(root, base={...what every entry shares...})
    result = cache.get(stage, sha256, settings, lambda: {"pred": tensor, "curve": {...}})

An entry is a folder <root>/<stage>/<key>/: one .npy file per array (loaded without pickles) and entry.json,
written last, with the key's content and the JSON-able values; a folder without entry.json is unfinished and is
computed again. The files are untrusted input: an entry whose entry.json does not describe its key, or whose arrays
are missing, damaged or links out of the cache, is refused with the path and the fix.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.atomic import exclusive, read_json, save_array, write_json
from ops.common.checks import inside, is_number


class CacheError(ValueError):
    """A cache entry cannot be trusted; the message names it and the fix."""


def _plain(o: Any) -> Any:
    if hasattr(o, "tolist"):  # numpy and torch scalars and arrays as JSON numbers and lists
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"a {type(o).__name__} is not a JSON value: a stage or cache entry must hold numbers, strings, "
                    f"lists, dicts, arrays or paths")


def _str_keys(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _str_keys(v) for k, v in obj.items()}
    return [_str_keys(v) for v in obj] if isinstance(obj, (list, tuple)) else obj


def canonical(obj: Any) -> Any:
    """`obj` as JSON gives it back: keys as strings, tuples as lists, numpy and torch values as numbers and lists,
    paths as strings. What a cache entry stores and compares, and what a stage's result is saved as."""
    return json.loads(json.dumps(_str_keys(obj), default=_plain))


def _int_keys(obj: Any) -> Any:
    """Keys that are an int written out ("5", never "05" or "²") back to ints (JSON keeps keys as strings; the
    stages key sizes and seeds by int)."""
    if isinstance(obj, dict):
        return {int(k) if k.isascii() and k.isdecimal() and str(int(k)) == k else k: _int_keys(v)
                for k, v in obj.items()}
    return [_int_keys(v) for v in obj] if isinstance(obj, list) else obj


def _array_name(name: object) -> bool:
    """An entry's array names are words of letters, digits, '-' and '_' (its file is <name>.npy in the entry)."""
    return isinstance(name, str) and name.replace("-", "").replace("_", "").isalnum()


def code_digest() -> str:
    """sha256 of the library's source (every .py file of models/ and ops/): an entry is only ever read by the code
    that computed it, so a fix anywhere in the computation is never hidden by an older result."""
    root = Path(__file__).resolve().parents[2]
    h = hashlib.sha256()
    for path in sorted([*root.glob("models/**/*.py"), *root.glob("ops/**/*.py")]):
        h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


class NetworkCache:
    """Results per (stage, network, settings) under `root`, shared by every paper run that names the same root."""

    def __init__(self, root: Path | str, base: dict):
        self.root, self.base = Path(root), canonical(base)
        # what the entries this process read (not computed) took to compute, as each recorded it: with the stage
        # times, what a run from scratch takes (ops.paper.report's header)
        self.reused = 0.0
        self._counted = set()  # entries computed or counted by this process: each entry's time counts once

    def take_reused(self) -> float:
        """The computing seconds of the entries read from the cache since the last call (and reset)."""
        reused, self.reused = self.reused, 0.0
        return reused

    def key(self, stage: str, network: str, settings: Any) -> tuple[str, dict]:
        """(hex key, what it stands for) of one entry."""
        what = canonical({**self.base, "stage": stage, "network": network, "settings": settings})
        return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:32], what

    def folder(self, stage: str, network: str, settings: Any) -> Path:
        """The entry's folder."""
        return self.root / stage / self.key(stage, network, settings)[0]

    @contextlib.contextmanager
    def workspace(self, stage: str, network: str, settings: Any) -> Iterator[Path]:
        """The entry's folder for a computation that keeps its own resumable, fingerprinted files there (a landscape
        grid): held by this process while in use (another process waits), refused if it or a file in it is a link."""
        key, _ = self.key(stage, network, settings)
        folder = self.root / stage / key
        with exclusive(self.root / stage / f"{key}.lock", f"the paper cache entry {folder}", wait=True):
            found = [folder, *(folder.iterdir() if folder.is_dir() and not folder.is_symlink() else [])]
            links = [p for p in found if not inside(p, self.root)]
            if links:
                raise CacheError(f"{links[0]} is a link, not a file this cache wrote; delete {folder} (a cache "
                                 f"entry: it is computed again)")
            yield folder

    def timed(self, folder: Path, seconds: float, finished_before: bool) -> None:
        """A workspace's computing time: recorded (seconds.json) when it finished now; its recorded time added to
        `reused` when it had finished before (a grid cut short and resumed records the last part only)."""
        path = folder / "seconds.json"
        if not finished_before:
            write_json(path, {"seconds": seconds})
        elif path.is_file() and folder not in self._counted:
            self.reused += _seconds(read_json(path, what="paper cache timing").get("seconds"), path)
        self._counted.add(folder)

    def get(self, stage: str, network: str, settings: Any, compute: Callable[[], dict]) -> dict:
        """The entry's {name: value} (arrays as torch tensors), from the cache or from `compute()` (then stored).
        compute returns {name: tensor | ndarray | JSON-able value}; the values come back as JSON gives them (lists,
        numbers, dicts whose digit keys are ints), the same whether computed now or read. One process computes an
        entry at a time."""
        key, what = self.key(stage, network, settings)
        folder = self.root / stage / key
        if (folder / "entry.json").exists():
            return self._read(folder, what)
        with exclusive(self.root / stage / f"{key}.lock", f"the paper cache entry {folder}", wait=True):
            if (folder / "entry.json").exists():  # computed by another process meanwhile
                return self._read(folder, what)
            start = time.perf_counter()
            result = compute()
            self._counted.add(folder)
            return self._write(folder, what, result, time.perf_counter() - start)

    def _write(self, folder: Path, what: dict, result: dict, seconds: float) -> dict:
        if folder.exists():  # an unfinished entry (cut short before entry.json): its files are not trusted
            shutil.rmtree(folder)
        arrays, values = {}, {}
        for name, v in result.items():
            if not _array_name(name):
                raise ValueError(f"cache entry names are plain words, got {name!r}")
            if isinstance(v, (torch.Tensor, np.ndarray)):
                arrays[name] = torch.as_tensor(v).cpu()
                save_array(folder / f"{name}.npy", arrays[name].numpy())
            else:
                values[name] = v
        values = canonical(values)
        write_json(folder / "entry.json", {"what": what, "arrays": sorted(arrays), "values": values,
                                           "seconds": seconds})
        return _int_keys(values) | arrays

    def _read(self, folder: Path, what: dict) -> dict:
        fix = f"delete {folder} (a cache entry: it is computed again)"
        entry = folder / "entry.json"
        if not inside(entry, self.root) or not inside(folder, self.root):
            raise CacheError(f"{entry} is a link out of the cache {self.root}, not an entry this cache wrote; {fix}")
        try:
            stored = read_json(entry, what="paper cache entry")
        except ValueError as exc:
            raise CacheError(f"{exc}; {fix}") from None
        if stored.get("what") != what or not isinstance(stored.get("arrays"), list) \
                or not isinstance(stored.get("values"), dict):
            raise CacheError(f"{entry} does not describe the computation its key stands for (edited or "
                             f"foreign); {fix}")
        seconds = _seconds(stored.get("seconds"), entry, fix)
        out = _int_keys(stored["values"])
        for name in stored["arrays"]:
            if not _array_name(name):
                raise CacheError(f"{entry} names an array {name!r} this cache never writes; {fix}")
            out[name] = load_array(folder / f"{name}.npy", folder, "the cache entry", CacheError, fix)
        if folder not in self._counted:  # read again later in this run (claim 8 reads claim 1's): counted once
            self.reused += seconds
            self._counted.add(folder)
        return out


def _seconds(value: Any, path: Path, fix: str | None = None) -> float:
    """A recorded computing time: a finite number of seconds, at least 0, else the file is refused."""
    if not is_number(value, 0):
        raise CacheError(f"{path} records {value!r} as its computing time, not a number of seconds; "
                         f"{fix or f'delete {path.parent} (a cache entry: it is computed again)'}")
    return float(value)


def load_array(path: Path, folder: Path, where: str, error: type[Exception], fix: str) -> torch.Tensor:
    """The array at `path`, a file of `folder` (`where`, in words), loaded without pickles; a link out of it, a
    missing or a damaged file raises `error` naming the file and `fix`."""
    if not inside(path, folder):
        raise error(f"{path} is a link out of {where}, not an array written there: {fix}")
    try:
        return torch.from_numpy(np.load(path, allow_pickle=False))
    except (OSError, ValueError, EOFError) as exc:
        raise error(f"{path} is missing or damaged ({type(exc).__name__}: {exc}): {fix}") from None
