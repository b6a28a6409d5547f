"""Atomic file writes, the one helper every writer of this library uses (checkpoints, cards, results, grids).

    with atomic_file(path) as f:   # a temporary file beside `path`, unique to this writer
        f.write(data)              # on success: flushed, fsynced, given the usual permissions, renamed over `path`
    write_json(path, obj); write_text(path, text); save_array(path, array)

Readers never see half a file, and an interrupted or failed write leaves the previous file intact (the
temporary file is removed). Temporary names carry the pid and a random part, so two writers never share one.
"""
from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import socket
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import IO, Any
    import numpy as np

__all__ = ["atomic_file", "write_bytes", "write_text", "write_json", "save_array", "umask", "exclusive", "LockedError",
           "read_json"]


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_file(path: Path | str, mode: str = "wb") -> Iterator[IO]:
    """A file object to write `path` through; see the module docstring. `mode`: "wb" or "w"."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~umask())  # mkstemp makes 0600; give it the permissions of every other output
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.remove(tmp)
        if getattr(exc, "errno", None) == errno.ENOSPC or "file write failed" in str(exc):
            free = shutil.disk_usage(path.parent).free
            raise OSError(errno.ENOSPC, f"No space left on device while writing {path} ({free / 2**20:.0f} MiB "
                                        f"free); free some space and run again (the previous file is intact)") from exc
        raise


def write_bytes(path: Path | str, data: bytes) -> Path:
    with atomic_file(path, "wb") as f:
        f.write(data)
    return Path(path)


def write_text(path: Path | str, text: str) -> Path:
    return write_bytes(path, text.encode())


def write_json(path: Path | str, obj: Any, indent: int = 2, allow_nan: bool = True) -> Path:
    return write_text(path, json.dumps(obj, indent=indent, allow_nan=allow_nan))


def save_array(path: Path | str, array: np.ndarray) -> Path:
    """np.save, atomically (the file gets exactly `path`, no .npy appended)."""
    import numpy as np

    with atomic_file(path, "wb") as f:
        np.save(f, array)
    return Path(path)


class LockedError(RuntimeError):
    """Another process writes the artifact; the message names it (pid, host, since when) and what to do."""


@contextlib.contextmanager
def exclusive(lock_path: Path | str, what: str = "this folder",
              advice: str = "Wait for it to finish, stop it, or write elsewhere.",
              wait: bool = False) -> Iterator[None]:
    """One writer at a time: an exclusive flock on `lock_path` (released by the kernel even if the holder is
    killed), holding this process's pid, host and start; a second writer gets LockedError naming the holder, or
    (wait=True) says whom it waits for and waits."""
    lock_path = Path(lock_path)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(lock_path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        if not wait:
            handle.close()
            raise LockedError(f"{what} is in use by {holder}. {advice}") from None
        print(f"{what} is in use by {holder}: waiting for it", flush=True)
        fcntl.flock(handle, fcntl.LOCK_EX)
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}, since "
                     f"{datetime.datetime.now().isoformat(timespec='seconds')}\n")
        handle.flush()
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def read_json(path: Path | str, expect: type | tuple[type, ...] | None = dict, what: str = "file") -> Any:
    """The JSON object (or `expect` type) in `path`, or a ValueError naming the file, the problem and the fix."""
    path = Path(path)
    try:
        obj = json.loads(path.read_bytes().decode("utf-8-sig"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}): the {what} is damaged (a write cut short?); delete "
                         f"or regenerate it") from None
    if expect is not None and not isinstance(obj, expect):
        raise ValueError(f"{path} holds a JSON {type(obj).__name__}, not the {what} (a JSON "
                         f"{expect.__name__}); delete or regenerate it")
    return obj
