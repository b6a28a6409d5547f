"""Landscape results and their files: the Landscape record table, the original's CSV layouts, resumable grids.

    land.grid("loss", mask=0); land.to_csv(path, mask=0); land.save(path); Landscape.load(path)
    read_csv(path)      # the original's 16/17 columns or the successor's 19

A resumable grid is a folder: meta.json (the settings and a fingerprint of model, directions, grid and data),
then points.rank{r}.jsonl, one finished point per line, appended as they finish. A rerun of the same
landscape skips the finished points; a folder holding another landscape's points is refused.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.distributed as dist

from models.atomic import read_json, write_json, write_text

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Any, IO
    import torch.nn as nn

# The original implementation's landscape CSV (no header): 16 columns, or 17 with ECSE; the successor
# (how-do-vits-work) adds l1 and l2 after x and y (19 columns).
ORIGINAL_COLUMNS = ["x", "y", "NLL", "Cutoff1", "Cutoff2", "Acc", "Acc-90", "Unc", "Unc-90", "IoU", "IoU-90",
                    "Freq", "Freq-90", "Top-5", "Brier", "ECE", "ECSE"]
SUCCESSOR_COLUMNS = ["x", "y", "l1", "l2"] + ORIGINAL_COLUMNS[2:]
CSV_KEYS = {"NLL": "nll", "Acc": "acc", "Acc-90": "acc_90", "Unc": "unc_0", "Unc-90": "unc_90", "IoU": "iou_0",
            "IoU-90": "iou_90", "Freq": "freq_0", "Freq-90": "freq_90", "Top-5": "top5", "Brier": "brier",
            "ECE": "ece", "ECSE": "ece_signed", "l1": "l1", "l2": "l2"}


@dataclass
class Landscape:
    """Metrics over a 1-D or 2-D grid: one record per (point, mask). ys is None for a 1-D landscape."""
    xs: list
    ys: list = None
    records: list = field(default_factory=list)
    meta: dict = field(default_factory=dict)

    @property
    def masks(self) -> int:
        return sorted({r["mask"] for r in self.records})

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.xs),) if self.ys is None else (len(self.ys), len(self.xs))

    def grid(self, key: str = "loss", mask: int = 0) -> np.ndarray:
        """(ny, nx) array of `key` for `mask` (row i is y = ys[i]); (nx,) for a 1-D landscape."""
        values = np.full(self.shape, np.nan)
        found = False
        for r in self.records:
            if r["mask"] != mask:
                continue
            if key not in r:
                raise KeyError(f"{key!r} is not in the records; available: {sorted(k for k in r if k != 'mask')}")
            values[r["index"] if self.ys is None else divmod(r["index"], len(self.xs))] = r[key]
            found = True
        if not found:
            raise KeyError(f"no records for mask {mask}; masks here: {self.masks}")
        return values

    def table(self) -> Any:
        """The records as a pandas DataFrame."""
        import pandas as pd

        return pd.DataFrame(self.records)

    def to_csv(self, path: Path | str, mask: int = 0, layout: str = "original") -> Path:
        """Write the original's landscape CSV of one mask: 17 columns (x, y, NLL, Cutoff1, Cutoff2, Acc, ...,
        ECE, ECSE), no header, x varying fastest; layout="successor" adds l1, l2 after x, y (19 columns)."""
        columns = {"original": ORIGINAL_COLUMNS, "successor": SUCCESSOR_COLUMNS}.get(layout)
        if columns is None:
            raise ValueError(f"layout must be 'original' or 'successor', got {layout!r}")
        cut = self.meta.get("cutoffs", [0.0, 0.9])
        if [float(c) for c in cut] != [0.0, 0.9]:
            raise ValueError(f"the CSV layout has the cutoffs 0 and 0.9; this landscape has {cut}")
        rows = sorted((r for r in self.records if r["mask"] == mask), key=lambda r: r["index"])
        if not rows:
            raise KeyError(f"no records for mask {mask}; masks here: {self.masks}")
        lines = []
        for r in rows:
            values = {"x": r["x"], "y": r.get("y") or 0.0, "Cutoff1": 0.0, "Cutoff2": 0.9}
            values.update({c: r[CSV_KEYS[c]] for c in columns if c in CSV_KEYS})
            lines.append(",".join(repr(float(values[c])) for c in columns))
        return write_text(path, "\n".join(lines) + "\n")

    def save(self, path: Path | str) -> Path:
        """JSON with everything (grid, meta, all records)."""
        return write_text(path, json.dumps({"xs": self.xs, "ys": self.ys, "meta": self.meta,
                                            "records": self.records}, default=json_default))

    @classmethod
    def load(cls, path: Path | str) -> Landscape:
        raw = read_json(path, what="landscape")
        missing = [k for k in ("xs", "ys", "records") if k not in raw]
        if missing:
            raise ValueError(f"{path} is not a saved landscape (no {', '.join(missing)}); save one with "
                             f"Landscape.save")
        return cls(raw["xs"], raw["ys"], raw["records"], raw.get("meta", {}))


def json_default(obj: Any) -> Any:
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if torch.is_tensor(obj):
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def _check_grid(path, rows, xs, ys):
    """The rows of a landscape CSV must be a full grid: each (x, y) once, every x with every y."""
    seen = {}
    for number, r in enumerate(rows, 1):
        if (r[0], r[1]) in seen:
            raise ValueError(f"{path}: the point (x={r[0]}, y={r[1]}) appears twice (data rows {seen[r[0], r[1]]} "
                             f"and {number}); a landscape CSV lists every grid point once")
        seen[r[0], r[1]] = number
    if len(rows) != len(xs) * len(ys):
        raise ValueError(f"{path}: {len(rows)} rows do not make a grid of its {len(xs)} x values and {len(ys)} y "
                         f"values ({len(xs) * len(ys)} points): a value off the grid, or rows missing")


def read_csv(path: Path | str, mask: int = 0) -> Landscape:
    """A Landscape from a landscape CSV: the original's 16 or 17 columns, or the successor's 19 (with l1, l2).

    The grid is rebuilt from the distinct x and y values; `loss` is NLL (add a weight-decay term yourself: the
    successor's l2 is a sum of per-tensor norms, ours is the norm of all weights)."""
    raw = Path(path).read_bytes()
    try:
        text = raw.decode("utf-8-sig")  # a byte-order mark (spreadsheet exports) is not part of the first value
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not a text CSV (not UTF-8)") from None
    text = [line.strip() for line in text.splitlines() if line.strip()]  # splitlines: LF, CRLF and CR alike
    if not text:
        raise ValueError(f"{path} is empty")
    try:
        float(text[0].split(",")[0])
    except ValueError:  # a header row: ours never writes one, pandas users sometimes do
        text = text[1:]
    if not text:
        raise ValueError(f"{path} has a header but no rows")
    rows = []
    for number, line in enumerate(text, 1):
        try:
            rows.append([float(v) for v in line.split(",")])
        except ValueError:
            raise ValueError(f"{path}, data row {number}: not a row of numbers: {line[:80]!r}") from None
    widths = {len(r) for r in rows}
    if len(widths) != 1:
        raise ValueError(f"{path}: rows have different numbers of columns {sorted(widths)}")
    width = widths.pop()
    layouts = {16: ("original", ORIGINAL_COLUMNS[:16]), 17: ("original", ORIGINAL_COLUMNS),
               19: ("successor", SUCCESSOR_COLUMNS)}
    if width not in layouts:
        raise ValueError(f"{path} has {width} columns; a landscape CSV has 16 or 17 (the original: x, y, NLL, "
                         f"Cutoff1, ...) or 19 (the successor, with l1 and l2)")
    source, columns = layouts[width]
    xs, ys = sorted({r[0] for r in rows}), sorted({r[1] for r in rows})
    _check_grid(path, rows, xs, ys)
    records = []
    for r in rows:
        values = dict(zip(columns, r))
        rec = {"mask": mask, "index": ys.index(values["y"]) * len(xs) + xs.index(values["x"]),
               "x": values["x"], "y": values["y"]}
        rec.update({CSV_KEYS[c]: v for c, v in values.items() if c in CSV_KEYS})
        rec["iou"] = rec["iou_0"]
        rec["loss"] = rec["nll"]
        records.append(rec)
    return Landscape(xs, ys, records, {"source": source, "columns": len(columns), "path": str(path)})


def weights_fingerprint(model: nn.Module) -> str:
    """sha1 of what the model computes with: every parameter and buffer, persistent or not (BatchNorm statistics,
    blur filters), and every module's numeric and text settings (a dropout rate, a smoothing temperature), by name."""
    h = hashlib.sha1()
    tensors = dict(model.named_parameters())
    tensors.update(dict(model.named_buffers()))
    for key, t in sorted(tensors.items()):
        h.update(key.encode())
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    for name, module in model.named_modules():
        settings = {k: v for k, v in vars(module).items() if not k.startswith("_") and k != "training"
                    and isinstance(v, (bool, int, float, str, tuple))}
        h.update(json.dumps([name, type(module).__qualname__, settings], sort_keys=True, default=str).encode())
    return h.hexdigest()


def fingerprint(engine: Mapping, coords: Sequence, meta: Mapping) -> str:
    """sha1 of everything a landscape's numbers depend on: `meta` (the model's name, build arguments and weights
    fingerprint, and every setting), the grid, the directions and the evaluation data."""
    h = hashlib.sha1()
    h.update(json.dumps({"coords": coords, **meta}, sort_keys=True, default=json_default).encode())
    for t in engine.origin + [d for ds in engine.dirs for d in ds]:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    for x, y in engine.batches:
        h.update(x.detach().cpu().contiguous().numpy().tobytes())
        h.update(y.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def read_done(folder: Path | str, fingerprint: str | None = None, coords: Sequence | None = None,
              masks: int | None = None) -> dict:
    """{index: records} of the finished points of `folder`. A line counts only if it is whole JSON, carries this
    landscape's fingerprint, an integer index of the grid and records of that index at that point's coordinates;
    anything else (a line cut by a kill, a line pasted from another landscape) is recomputed."""
    done = {}
    for f in sorted(Path(folder).glob("points.rank*.jsonl")):
        for line in f.read_bytes().decode("utf-8", errors="replace").splitlines():
            try:
                item = json.loads(line)
            except json.JSONDecodeError:  # a line cut by an interruption: that point is recomputed
                continue
            if _valid_point(item, fingerprint, coords, masks):
                done[item["index"]] = item["records"]
    return done


def _valid_point(item, fingerprint, coords, masks=None):
    if not isinstance(item, dict) or (fingerprint is not None and item.get("fingerprint") != fingerprint):
        return False
    i, records = item.get("index"), item.get("records")
    if type(i) is not int or not isinstance(records, list) or not records:
        return False
    if coords is not None and not 0 <= i < len(coords):
        return False
    x = coords[i] if coords is not None else None
    if not all(isinstance(r, dict) and type(r.get("mask")) is int for r in records):
        return False
    if masks is not None and sorted(r["mask"] for r in records) != sorted(masks):
        return False  # every mask (and the ensemble) exactly once: a partial or padded line is recomputed
    return all(isinstance(r, dict) and r.get("index") == i and
               (x is None or (r.get("x") == x[0] and r.get("y") == (x[1] if len(x) > 1 else None))) for r in records)


def append_point(log: IO, index: int, records: Sequence[Mapping], fingerprint: str) -> None:
    """One finished point as one line of a points file (a crash leaves at most that line cut)."""
    log.write(json.dumps({"index": index, "fingerprint": fingerprint, "records": records}, default=json_default)
              + "\n")
    log.flush()


def open_points(path: Path | str, rank: int) -> IO:
    """The rank's points file for appending; a last line cut by a kill is ended first, so that it stays one bad
    line instead of swallowing the next point."""
    file = Path(path) / f"points.rank{rank}.jsonl"
    log = open(file, "ab+")
    log.seek(0, 2)
    if log.tell():
        log.seek(-1, 2)
        if log.read(1) != b"\n":
            log.write(b"\n")
    log.close()
    return open(file, "a")


def resume(path: Path | str, fingerprint: str, meta: Mapping, rank: int, world: int,
           coords: Sequence | None = None) -> dict:
    """{point index: records} already finished in the folder `path` (rank 0 reads, then tells the others)."""
    n = meta.get("n_masks", 1)
    masks = list(range(n)) + ([-1] if n > 1 else [])
    return _resume(path, fingerprint, meta, rank, world, coords, masks)


def _resume(path, fingerprint, meta, rank, world, coords, masks):
    folder, done, error = Path(path), {}, None
    if rank == 0:
        folder.mkdir(parents=True, exist_ok=True)
        meta_file = folder / "meta.json"
        stored = _read_meta(meta_file)
        has_points = any(f.stat().st_size for f in folder.glob("points.rank*.jsonl")) or \
            (folder / "landscape.json").exists()  # a finished landscape's results count even without its points
        if stored is not None and stored.get("fingerprint") != fingerprint and not has_points:
            stored = None  # settings of a run that finished no point (it failed or was stopped at once): start over
            meta_file.unlink()
        if stored is None and has_points:
            error = (f"{folder} holds landscape points but no meta.json saying what they are of, so they cannot be "
                     "trusted; use a new path or delete that folder")
        elif stored is not None and stored.get("fingerprint") != fingerprint:
            differ = sorted(k for k in set(stored) | set(meta) if k != "fingerprint" and stored.get(k) != meta.get(k))
            what = ", ".join(f"{k}: {stored.get(k)!r} -> {meta.get(k)!r}" for k in differ) if differ else \
                "the weights (parameters or buffers), the directions or the evaluation data"
            error = (f"{folder} holds points of another landscape ({what} differ); use a new path or delete that "
                     "folder")
        else:
            if not meta_file.exists():
                write_json(meta_file, {**meta, "fingerprint": fingerprint}, indent=1)
            done = read_done(folder, fingerprint, coords, masks)
    if world > 1:  # every rank must agree on what is left (and on an error)
        box = [(done, error)]
        dist.broadcast_object_list(box, src=0)
        done, error = box[0]
    if error:
        raise ValueError(error)
    return {int(k): v for k, v in done.items()}


def _read_meta(meta_file):
    if not meta_file.exists():
        return None
    try:
        stored = json.loads(meta_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{meta_file} is not valid JSON ({exc}): the folder's identity is unknown; use a new path "
                         f"or delete that folder") from None
    if not isinstance(stored, dict):
        raise ValueError(f"{meta_file} does not hold a landscape's settings; use a new path or delete that folder")
    return stored
