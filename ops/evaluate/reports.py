"""Writing results: the original's leaderboard CSV, JSON, and a plain-text table.

Leaderboard CSV (one row per ensemble size, the original column order, with a header row):
    size, nll, cutoff_0, cutoff_90, acc_0, acc_90, unc_0, unc_90, iou_0, iou_90, freq_0, freq_90,
    top5, brier, ece, ece_signed
at `leaderboard/logs/{dataset}/{model}/{dataset}_{model}_{uid}.csv`; the full metric dicts go beside it as JSON.
"""
from __future__ import annotations

import csv
import itertools
import math
from pathlib import Path
from typing import TYPE_CHECKING

from models.atomic import atomic_file, write_json
from models.naming import plain_name
from ops.evaluate.metrics import cutoff_key

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence


def leaderboard_path(dataset_name: str, model_name: str, uid: str, root: Path | str = "leaderboard/logs") -> Path:
    """{root}/{dataset}/{model}/{dataset}_{model}_{uid}.csv, each part checked to be a plain name."""
    for value, what in ((dataset_name, "the dataset name"), (model_name, "the model name"), (str(uid), "the uid")):
        plain_name(value, what)
    return Path(root) / dataset_name / model_name / f"{dataset_name}_{model_name}_{uid}.csv"


def leaderboard_columns(cutoffs: Sequence[float] = (0.0, 0.9)) -> list[str]:
    keys = [cutoff_key(c) for c in cutoffs]
    return (["size", "nll"] + [f"cutoff_{k}" for k in keys]
            + [f"{m}_{k}" for m in ("acc", "unc", "iou", "freq") for k in keys]
            + ["top5", "brier", "ece", "ece_signed"])


def new_leaderboard_path(dataset_name: str, model_name: str, uid: str, root: Path | str = "leaderboard/logs") -> Path:
    """A leaderboard CSV path no evaluation has used: `..._{uid}.csv`, else `..._{uid}-2.csv`, `-3`, ...
    The name is claimed by creating the file exclusively, so two evaluations running at once get two names."""
    for k in itertools.count(1):
        path = leaderboard_path(dataset_name, model_name, uid if k == 1 else f"{uid}-{k}", root)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.with_suffix(".json").exists():
            continue
        try:
            with open(path, "x"):
                return path
        except FileExistsError:
            continue


def write_leaderboard(results: Mapping[int, Mapping], path: Path | str, cutoffs: Sequence[float] = (0.0, 0.9),
                      about: Mapping | None = None, overwrite: bool = False) -> Path:
    """results: {ensemble size: metrics dict}. Writes `path` (CSV) and `path` with .json (the metrics per size,
    and `about`: what was evaluated and how, under the key "evaluation"), atomically; returns the CSV path."""
    path = Path(path)
    if not overwrite and ((path.exists() and path.stat().st_size) or path.with_suffix(".json").exists()):
        raise FileExistsError(f"{path} already holds results: pass overwrite=True, or a new name "
                              f"(new_leaderboard_path)")
    columns = leaderboard_columns(cutoffs)
    with atomic_file(path, "w") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for n, metrics in sorted(results.items()):
            row = {"size": n, **{f"cutoff_{cutoff_key(c)}": c for c in cutoffs}, **metrics}
            writer.writerow([row[c] for c in columns])
    obj = {str(n): m for n, m in sorted(results.items())}
    if about is not None:
        obj["evaluation"] = about
    write_json(path.with_suffix(".json"), _finite(obj), indent=1, allow_nan=False)  # strict: undefined -> null
    return path


def _finite(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def read_leaderboard(path: Path | str) -> dict[int, dict[str, float]]:
    """{size: {column: float}} from a leaderboard CSV written by `write_leaderboard`; a file without rows, with
    another header, or with a size twice is refused, naming the path."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.DictReader(f))
    if not rows or "size" not in rows[0]:
        raise ValueError(f"{path} is not a leaderboard CSV (no rows under a header starting with 'size'); an "
                         f"evaluation that was stopped leaves an empty file: run it again")
    out = {}
    for number, r in enumerate(rows, 2):
        try:
            size = float(r["size"])
            values = {k: float(v) for k, v in r.items() if k != "size"}
        except (TypeError, ValueError):
            raise ValueError(f"{path}, line {number}: not a row of numbers") from None
        if not (math.isfinite(size) and size == int(size) and size >= 1):
            raise ValueError(f"{path}, line {number}: the ensemble size must be a positive integer, got {r['size']!r}")
        size = int(size)
        if size in out:
            raise ValueError(f"{path}, line {number}: size {size} appears twice")
        out[size] = values
    return out


HEADERS = {"nll": "NLL", "acc": "Acc", "ece": "ECE", "brier": "Brier", "top5": "Top-5", "iou": "IoU",
           "acc_90": "Acc-90", "unc_90": "Unc-90", "iou_90": "IoU-90", "freq_90": "Freq-90", "auroc": "AUROC",
           "aurc": "AURC", "mutual_info": "MI"}


def format_table(sweeps: Mapping[str, Mapping[int, Mapping]], keys: Sequence[str] = ("nll", "acc", "ece"),
                 sizes: Sequence[int] | None = None) -> str:
    """Markdown table: one row per (model, size), one column per metric. sweeps: {label: {n: metrics}}."""
    header = "| model | size | " + " | ".join(HEADERS.get(k, k) for k in keys) + " |"
    lines = [header, "|" + " --- |" * (len(keys) + 2)]
    for label, results in sweeps.items():
        for n in sorted(results):
            if sizes is not None and n not in sizes:
                continue
            values = [results[n][k] for k in keys]
            cells = [f"{v:.4f}" if not (isinstance(v, float) and math.isnan(v)) else "nan" for v in values]
            lines.append(f"| {label} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_interval_table(intervals: Mapping[int, Mapping], keys: Sequence[str] = ("nll", "acc", "ece")) -> str:
    """Markdown table of bootstrap estimates with 95% intervals (ops.evaluate.bootstrap), one row per (model or
    difference, size); accuracy and ECE in percent. intervals: {size: {label: {key: (estimate, low, high)}}}."""
    percent = {"acc", "ece"}
    header = "| model | size | " + " | ".join(HEADERS.get(k, k) + (" (%)" if k in percent else "") for k in keys)
    lines = [header + " |", "|" + " --- |" * (len(keys) + 2)]
    labels = list(dict.fromkeys(label for per_size in intervals.values() for label in per_size))
    for label in labels:
        for n in sorted(intervals):
            if label not in intervals[n]:
                continue
            cells = []
            for key in keys:
                scale, digits = (100, 2) if key in percent else (1, 4)
                est, lo, hi = (scale * v for v in intervals[n][label][key])
                signed = "+" if " - " in label else ""
                cells.append(f"{est:{signed}.{digits}f} [{lo:{signed}.{digits}f}, {hi:{signed}.{digits}f}]")
            lines.append(f"| {label} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
