"""Robustness metrics: every metric per corruption and severity, CE / mCE, and stability on perturbation sequences.

    results = ops.analysis.robustness.evaluate_corrupted(model, cset, sizes=(1, 2, 5), mean=test.mean, std=test.std,
                                                clean=test)
    rows = ops.analysis.robustness.corruption_summary({"MC dropout": results_a, "+ smoothing": results_b})  # mCE table
    ops.analysis.robustness.write_corrupted(results, "runs/x", "fashion_mnist_resnet_mcdo_18_uid")  # CSV + JSON
    stab = ops.analysis.robustness.evaluate_perturbed(model, frames, noise=False, mean=..., std=..., sizes=(1, 2))

Corrupted data: each (corruption, severity) cell is one `ops.evaluate.sweep`, so every MC ensemble size comes from
one set of max(sizes) samples; `results` is data: {"sizes", "clean": {n: metrics}, "corrupted": {corruption:
{severity: {n: metrics}}}} with the metric dicts of ops.evaluate.metrics.

Corruption error (Hendrycks & Dietterich 2019), with E_{s,c} the error (1 - acc) at severity s of corruption c:
    unnormalised (CIFAR-style)   CE_c = mean_s E_{s,c}             relative CE_c = mean_s (E_{s,c} - E_clean)
    normalised by a reference    CE_c = sum_s E_{s,c} / sum_s R_{s,c}
                                 relative CE_c = sum_s (E_{s,c} - E_clean) / sum_s (R_{s,c} - R_clean)
    mCE = mean_c CE_c, relative mCE = mean_c relative CE_c. ImageNet-C uses AlexNet as the reference
    (`reference="alexnet"`: its published errors per corruption and severity, keyed by name, for the 15 standard
    corruptions); a model's own results can be the reference too. Values are fractions (x100 for %).

Perturbation sequences (N videos of T frames), with pred_t the argmax of the mean of n MC samples:
    flip_prob     Hendrycks' flip probability: noise types compare every frame with the clean frame 0,
                  P(pred_t != pred_0), t >= 1; other types compare consecutive frames, P(pred_t != pred_{t-1})
    consistency   the original implementation's: P(pred_t == pred_{t+1}) over consecutive frames
    cec           the original's cross-entropy consistency: mean over consecutive frames of
                  -(1/K) sum_k p_{t+1,k} log p_{t,k} (it averages over the K classes rather than summing)
"""
from __future__ import annotations

import contextlib
import csv
import json
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

import models
from models.atomic import atomic_file, exclusive, write_json
from ops.common.checks import is_int
from ops.common.runtime import progress_bar, resolve_device, seeded

from ops.data.corruptions import CORRUPTIONS, is_noise_perturbation
from ops.data.corrupted_sets import take
from ops.data.datasets import ImageTensorDataset
from ops.data.loaders import DeviceLoader
from ops.evaluate.metrics import cutoff_key
from ops.evaluate.reports import leaderboard_columns
from ops.evaluate.engine import (behaves_stochastically, check_sizes, eval_keeping_dropout, log_mean_exp, model_device,
                                  predict_log_probs, prepare_for_inference, sweep)

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Any
    import torch.nn as nn

# AlexNet's ImageNet-C errors per severity 1..5 (Hendrycks' published table; their means are the usual
# ALEXNET_ERR list). Keyed by name: the original implementation ordered the blurs differently.
ALEXNET_ERRORS = {
    "gaussian_noise": (0.69528, 0.82542, 0.93554, 0.98138, 0.99452),
    "shot_noise": (0.71224, 0.85108, 0.93574, 0.98182, 0.99146),
    "impulse_noise": (0.78374, 0.89808, 0.9487, 0.9872, 0.99548),
    "defocus_blur": (0.65624, 0.73202, 0.85036, 0.91364, 0.94714),
    "glass_blur": (0.64308, 0.75054, 0.88806, 0.91622, 0.93344),
    "motion_blur": (0.5843, 0.70048, 0.82108, 0.8975, 0.92638),
    "zoom_blur": (0.70008, 0.76992, 0.80784, 0.84198, 0.87198),
    "snow": (0.71726, 0.88392, 0.86468, 0.9187, 0.94952),
    "frost": (0.6139, 0.79734, 0.8879, 0.89942, 0.9343),
    "fog": (0.67474, 0.7605, 0.84378, 0.8726, 0.945),
    "brightness": (0.4514, 0.48502, 0.54048, 0.62166, 0.7244),
    "contrast": (0.64548, 0.7615, 0.88874, 0.9776, 0.9927),
    "elastic_transform": (0.52596, 0.70116, 0.55686, 0.64076, 0.80554),
    "pixelate": (0.52218, 0.5462, 0.73728, 0.87092, 0.91262),
    "jpeg_compression": (0.51002, 0.54718, 0.57294, 0.65458, 0.74778),
}
ALEXNET_CLEAN_ERROR = 0.43478  # torchvision's AlexNet (top-1 56.522%), the 43.5% of Hendrycks' table


# --- Corrupted data ----------------------------------------------------------------------------------------------

@torch.no_grad()
def prepare(model: nn.Module, example: torch.Tensor, channels_last: bool = True,
            precision: str = "fp32") -> tuple[nn.Module, bool]:
    """(model ready for inference, stochastic?): decided once per model, not once per (corruption, severity).

    BatchNorm is folded into the convolutions (checked on `example`, a batch on the model's device) and whether
    the model is stochastic is decided by its behaviour (ops.evaluate.engine.behaves_stochastically), in eval()
    (a model handed over in train() would otherwise update its BatchNorm statistics here)."""
    model = eval_keeping_dropout(model)
    stochastic = behaves_stochastically(model, example, precision)
    return prepare_for_inference(model, channels_last=channels_last, fuse_bn=True, example=example), stochastic


def evaluate_corrupted(model: nn.Module, cset: Any, sizes: Sequence[int] = (1,), *, mean: Sequence[float],
                       std: Sequence[float], classes: Sequence[str] | None = None,
                       corruptions: Sequence[str] | None = None, severities: Sequence[int] | None = None,
                       n: int | None = None, clean: Any = None, batch_size: int = 256,
                       device: torch.device | str | None = None, channels_last: bool = True, progress: bool = True,
                       workers: int = 4, **sweep_kwargs: Any) -> dict:
    """Sweep `model` over every (corruption, severity) of `cset` (ops.data.corrupted_sets.CorruptedSet or ImageNetCSet).

    mean, std: the normalisation of the clean data (the model's). n: n images of each cell (corrupted_sets.take:
    the first n of a -C file, a fixed random n of an ImageFolder). clean: the clean test set, in the order the
    corrupted set was made from, scored on the same n images, for relative CE. workers: DataLoader processes
    for ImageFolders (in-memory sets need none). Other keyword arguments go to ops.evaluate.sweep (precision,
    max_batch, bins, cutoffs, seed: every cell's MC masks from the same seed, recorded in the results)."""
    corruptions, severities = _check_cells(cset, corruptions, severities, n, batch_size)
    device = resolve_device(device) if device is not None else model_device(model)
    with _restored(model):
        return _evaluate_cells(model.to(device), cset, corruptions, severities, sizes, mean, std, classes, n, clean,
                               batch_size, device, channels_last, progress, workers, sweep_kwargs)


@contextlib.contextmanager
def _restored(model):
    """The caller's model comes back in the mode and memory layout it had."""
    was_training = model.training
    was_contiguous = all(p.is_contiguous() for p in model.parameters())
    try:
        yield
    finally:
        model.train(was_training)
        if was_contiguous:
            model.to(memory_format=torch.contiguous_format)


def _check_cells(cset, corruptions, severities, n, batch_size):
    if not hasattr(cset, "corruptions") or not hasattr(cset, "dataset"):
        raise ValueError(f"cset must be a corrupted set (corrupted_sets.load_cifar_c, load_corrupted, "
                         f"generate_corrupted or ImageNetCSet), got {type(cset).__name__}")
    if isinstance(corruptions, str):
        raise ValueError(f"corruptions must be a list of names, e.g. [{corruptions!r}]")
    corruptions = list(corruptions or cset.corruptions)
    severities = tuple(severities or cset.severities)
    missing = [c for c in corruptions if c not in cset.corruptions]
    if missing:
        raise ValueError(f"{missing} are not in {cset.folder} (it has {cset.corruptions})")
    bad = [s for s in severities if s not in cset.severities]
    if bad:
        raise ValueError(f"severities {bad} are not in {cset.folder} (it has {cset.severities})")
    for name, value in (("n", n), ("batch_size", batch_size)):
        if value is not None and not is_int(value, 1):
            raise ValueError(f"{name} must be a positive integer{' or None (all images)' if name == 'n' else ''}, "
                             f"got {value!r}")
    return corruptions, severities


def _evaluate_cells(model, cset, corruptions, severities, sizes, mean, std, classes, n, clean, batch_size, device,
                    channels_last, progress, workers, sweep_kwargs):
    """evaluate_corrupted's work, its arguments checked."""
    def loader(ds):
        if isinstance(ds, ImageTensorDataset):
            return DeviceLoader(ds, batch_size, device=device)
        return torch.utils.data.DataLoader(ds, batch_size=batch_size, num_workers=workers,
                                           pin_memory=device.type == "cuda")

    cells = [(c, s) for c in corruptions for s in severities]
    example = next(iter(loader(cset.dataset(*cells[0], mean, std, classes=classes, n=n))))[0]
    model, stochastic = prepare(model, example, channels_last, sweep_kwargs.get("precision", "fp32"))
    kw = dict(sizes=sizes, device=device, channels_last=channels_last, fuse_bn=False, mc=stochastic, **sweep_kwargs)

    results = {"sizes": sorted(set(int(s) for s in sizes)), "clean": None, "corrupted": {},
               "seed": int(sweep_kwargs.get("seed", 0)), "set": _set_identity(cset)}
    bar = progress_bar(total=len(cells) + (clean is not None), desc=getattr(model, "name", None) or "corrupted",
               disable=not progress)
    if clean is not None:  # the same n images as in every corrupted cell
        _check_source(cset, clean)
        results["clean"] = sweep(model, loader(take(clean, n)), **kw)
        bar.update(1)
    for c, s in cells:
        ds = cset.dataset(c, s, mean, std, classes=classes, n=n)
        results["corrupted"].setdefault(c, {})[s] = sweep(model, loader(ds), **kw)
        bar.update(1)
    bar.close()
    return results


def _set_identity(cset):
    """What a -C set is: its folder's name, and for a generated one its profile, seed and source images."""
    meta = getattr(cset, "meta", {}) or {}
    return {"name": Path(cset.folder).name, "profile": meta.get("profile", "official"), "seed": meta.get("seed"),
            "source": (meta.get("source") or {}).get("sha1")}


def _check_source(cset, clean):
    """A generated -C set records the images it was made from: relative CE against another clean set would
    compare different images, so it is refused (official sets record nothing to check)."""
    source = getattr(cset, "meta", {}).get("source") or {}
    if "sha1" in source and hasattr(clean, "images"):
        from ops.data.corrupted_sets import fingerprint

        mine = fingerprint(clean.images, clean.labels)
        if mine != source["sha1"]:
            raise ValueError(f"{cset.folder} was made from other images than `clean` ({source.get('n')} images of "
                             f"{source.get('name')!r}, sha1 {source['sha1'][:12]}, against {len(clean)} images, sha1 "
                             f"{mine[:12]}): pass the clean set it was generated from (or clean=None)")


def errors(results: Mapping, size: int, corruptions: Sequence[str] | None = None) -> dict[str, dict[int, float]]:
    """{corruption: {severity: error}} at one ensemble size (error = 1 - accuracy)."""
    corrupted = results["corrupted"]
    return {c: {s: 1 - cell[size]["acc"] for s, cell in sorted(corrupted[c].items())}
            for c in (corruptions or corrupted)}


def _reference_errors(reference, corruption, severities):
    if isinstance(reference, str):
        if reference != "alexnet":
            raise ValueError(f"reference must be None, 'alexnet' or {{corruption: errors}}, got {reference!r}")
        if corruption not in ALEXNET_ERRORS:
            raise ValueError(f"AlexNet errors are published for the 15 standard corruptions only, not "
                             f"{corruption!r}; pass corruptions=ops.data.corruptions.CORRUPTIONS")
        return [ALEXNET_ERRORS[corruption][s - 1] for s in severities]
    ref = reference[corruption]
    return [ref[s] for s in severities] if isinstance(ref, dict) else [ref] * len(severities)


def mce(errs: Mapping[str, Mapping[int, float]], clean_error: float | None = None,
        reference: Mapping | str | None = None, reference_clean: float | None = None) -> dict:
    """CE per corruption, mCE, and (with clean_error) relative CE and mCE; see the module docstring.

    errs: {corruption: {severity: error}} (`errors(...)`). reference: None (unnormalised), "alexnet", or
    another model's {corruption: {severity: error}} (with reference_clean its clean error)."""
    if not errs:
        raise ValueError("no corruption errors given")
    if reference == "alexnet" and reference_clean is None:
        reference_clean = ALEXNET_CLEAN_ERROR
    ce, rel = {}, {}
    for c, by_severity in errs.items():
        sev = sorted(by_severity)
        e = np.array([by_severity[s] for s in sev], dtype=np.float64)
        if reference is None:
            ce[c] = float(e.mean())
            rel[c] = float((e - clean_error).mean()) if clean_error is not None else math.nan
        else:
            r = np.array(_reference_errors(reference, c, sev), dtype=np.float64)
            ce[c] = float(e.sum() / r.sum())
            if clean_error is not None and reference_clean is not None:
                rel[c] = float((e - clean_error).sum() / (r - reference_clean).sum())
            else:
                rel[c] = math.nan
    return {"ce": ce, "mce": float(np.mean(list(ce.values()))), "relative_ce": rel,
            "relative_mce": float(np.mean(list(rel.values())))}


def mean_over_cells(results: Mapping, size: int, key: str, corruptions: Sequence[str] | None = None) -> float:
    """Mean of a metric (nll, ece, acc, ...) over every (corruption, severity) cell: the corrupted average."""
    corrupted = results["corrupted"]
    values = [cell[size][key] for c in (corruptions or corrupted) for cell in corrupted[c].values()]
    return float(np.mean(values))


NEAR_CHANCE = 0.9  # a cell is "at or near chance" when its error is at least 0.9 x the error of guessing


def chance_error(num_classes: int) -> float:
    """The error of guessing uniformly among num_classes classes."""
    return 1 - 1 / num_classes


def near_chance_cells(results_by_model: Mapping[str, Mapping], num_classes: int, sizes: Sequence[int] | None = None,
                      corruptions: Sequence[str] | None = None, near: float = NEAR_CHANCE) -> set:
    """{(corruption, severity)} where some model at some size errs at >= near * chance_error: cells where the
    models have stopped telling the classes apart, whose differences say nothing about robustness."""
    limit = near * chance_error(num_classes)
    cells = set()
    for results in results_by_model.values():
        for n in sizes or results["sizes"]:
            for c, by in errors(results, n, corruptions).items():
                cells |= {(c, sev) for sev, e in by.items() if e >= limit}
    return cells


def _without(errs, cells):
    out = {c: {s: e for s, e in by.items() if (c, s) not in cells} for c, by in errs.items()}
    return {c: by for c, by in out.items() if by}


def _cells(results, chosen):
    """{(corruption, severity): images} of one model's results."""
    out = {}
    for c in chosen:
        for s, cell in results["corrupted"].get(c, {}).items():
            out[c, s] = next(iter(cell.values())).get("n")
    return out


def _check_comparable(results_by_model, chosen):
    """Models are compared only on the same cells of the same number of images."""
    sets = {label: r.get("set") for label, r in results_by_model.items()}
    if len({json.dumps(s, sort_keys=True) for s in sets.values()}) > 1:
        raise ValueError(f"the models were evaluated on different corrupted sets: {sets}")
    cells = {label: _cells(r, chosen) for label, r in results_by_model.items()}
    first_label, first = next(iter(cells.items()))
    for label, mine in cells.items():
        if mine != first:
            differ = sorted(set(mine.items()) ^ set(first.items()))[:4]
            raise ValueError(f"{label!r} and {first_label!r} were evaluated on different cells or numbers of images "
                             f"((corruption, severity), images: {differ} ...); evaluate every model on the same "
                             f"corruptions, severities and n")


def corruption_summary(results_by_model: Mapping[str, Mapping], sizes: Sequence[int] | None = None,
                       reference: Mapping | str | None = None, corruptions: Sequence[str] | None = None,
                       num_classes: int | None = None) -> list[dict]:
    """One row per (model, ensemble size): clean error, mCE, relative mCE, corrupted NLL / ECE / accuracy.

    corruptions: None takes the 15 standard ones present (mCE is defined over those); the extra ones count
    when named explicitly. num_classes: if given, the rows also hold `mce_above_chance` (mCE over the cells
    that no model has at or near chance, near_chance_cells, the same cells for every model) and
    `near_chance`, the number of cells left out."""
    rows = []
    first = next(iter(results_by_model.values()))
    chosen = corruptions or [c for c in CORRUPTIONS if c in first["corrupted"]] or list(first["corrupted"])
    _check_comparable(results_by_model, chosen)
    dropped = near_chance_cells(results_by_model, num_classes, sizes, chosen) if num_classes else set()
    for label, results in results_by_model.items():
        for n in sizes or results["sizes"]:
            clean = 1 - results["clean"][n]["acc"] if results.get("clean") else None
            errs = errors(results, n, chosen)
            m = mce(errs, clean, reference)
            row = {"model": label, "size": n, "clean_error": clean if clean is not None else math.nan,
                   "mce": m["mce"], "relative_mce": m["relative_mce"],
                   "nll_c": mean_over_cells(results, n, "nll", chosen),
                   "ece_c": mean_over_cells(results, n, "ece", chosen),
                   "acc_c": mean_over_cells(results, n, "acc", chosen), "ce": m["ce"]}
            if num_classes:
                kept = _without(errs, dropped)
                row.update(near_chance=len(dropped), mce_above_chance=mce(kept, clean, reference)["mce"] if kept
                           else math.nan)
            rows.append(row)
    return rows


def format_summary(rows: Sequence[Mapping],
                   percent: Sequence[str] = ("clean_error", "mce", "relative_mce", "ece_c", "acc_c")) -> str:
    """Markdown table of `summary` rows (errors, mCE, ECE and accuracy in %)."""
    cols = [("clean_error", "Clean err"), ("mce", "mCE"), ("relative_mce", "rel. mCE"), ("nll_c", "NLL-C"),
            ("ece_c", "ECE-C"), ("acc_c", "Acc-C")]
    if rows and "mce_above_chance" in rows[0]:
        cols.insert(2, ("mce_above_chance", f"mCE w/o {rows[0]['near_chance']} near-chance cells"))
        percent = tuple(percent) + ("mce_above_chance",)
    lines = ["| model | size | " + " | ".join(h for _, h in cols) + " |", "|" + " --- |" * (len(cols) + 2)]
    for r in rows:
        cells = []
        for k, _ in cols:
            v = r[k]
            cells.append("nan" if math.isnan(v) else f"{100 * v:.2f}" if k in percent else f"{v:.4f}")
        lines.append(f"| {r['model']} | {r['size']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_corrupted(results: Mapping, folder: Path | str, stem: str, cutoffs: Sequence[float] = (0.0, 0.9),
                    overwrite: bool = False) -> list[Path]:
    """The original's corrupted CSV, one per ensemble size: `{folder}/{stem}_corrupted_n{size}.csv`, columns
    intensity, ctype, then the leaderboard's metric columns (header row first); and every metric dict in
    `{stem}_corrupted.json`. Returns the paths. Files of an earlier call with the same stem are refused unless
    overwrite=True (which removes all of them first, so no size of the earlier call is left beside the new ones)."""
    if not isinstance(stem, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,150}", stem) or ".." in stem:
        raise ValueError(f"stem must be a plain file name stem (letters, digits, '_', '-', '.', '+'; no path "
                         f"separators or '..'): the files go inside {folder}, got {stem!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with exclusive(folder / f".{stem}.lock", f"the results {folder / stem}"):
        return _write_corrupted(results, folder, stem, cutoffs, overwrite)


def _write_corrupted(results, folder, stem, cutoffs, overwrite):
    """write_corrupted's work under its lock."""
    mine = re.compile(re.escape(stem) + r"_corrupted(_n\d+\.csv|\.json)")  # this stem's files, no other stem's
    earlier = sorted(p for p in folder.iterdir() if mine.fullmatch(p.name))
    if earlier and not overwrite:
        raise ValueError(f"{folder} already holds results under {stem!r} ({earlier[0].name}, ...): pass "
                         f"overwrite=True to replace them, or another stem")
    for path in earlier:
        path.unlink()
    columns = ["intensity", "ctype"] + leaderboard_columns(cutoffs)[1:]
    paths = []
    for n in results["sizes"]:
        path = folder / f"{stem}_corrupted_n{n}.csv"
        with atomic_file(path, "w") as f:
            writer = csv.writer(f)
            writer.writerow(columns)
            for c, by_severity in results["corrupted"].items():
                for s, cell in sorted(by_severity.items()):
                    row = {"intensity": s, "ctype": c, **{f"cutoff_{cutoff_key(x)}": x for x in cutoffs}, **cell[n]}
                    writer.writerow([row[k] for k in columns])
        paths.append(path)
    path = write_json(folder / f"{stem}_corrupted.json", to_json(results), indent=1)
    return paths + [path]


def to_json(results: Mapping) -> dict:
    """results with string keys (JSON objects cannot have integer keys)."""
    def sizes(d):
        return {str(n): m for n, m in d.items()}

    out = {"sizes": results["sizes"], "clean": sizes(results["clean"]) if results.get("clean") else None,
           "corrupted": {c: {str(s): sizes(cell) for s, cell in by.items()} for c, by in results["corrupted"].items()}}
    return out | {k: results[k] for k in ("seed", "set") if k in results}


def from_json(obj: Mapping) -> dict:
    """Inverse of to_json."""
    def sizes(d):
        return {int(n): m for n, m in d.items()}

    return {"sizes": obj["sizes"], "clean": sizes(obj["clean"]) if obj.get("clean") else None,
            "corrupted": {c: {int(s): sizes(cell) for s, cell in by.items()} for c, by in obj["corrupted"].items()},
            **{k: obj[k] for k in ("seed", "set") if k in obj}}


# --- Perturbation sequences --------------------------------------------------------------------------------------

def flips(preds: torch.Tensor, noise: bool) -> torch.Tensor:
    """(N, T) predicted classes -> (N, T - 1) bool: changed against frame 0 (noise) or the previous frame."""
    if preds.ndim != 2 or preds.shape[1] < 2:
        raise ValueError(f"preds must be (N, T) with T >= 2 frames, got {tuple(preds.shape)}")
    ref = preds[:, :1] if noise else preds[:, :-1]
    return preds[:, 1:] != ref


def flip_probability(preds: torch.Tensor, noise: bool) -> float:
    """Hendrycks' flip probability of (N, T) predictions (all videos have T frames, so the mean over videos of
    per-video means is the overall mean)."""
    return flips(preds, noise).double().mean().item()


def consistency(preds: torch.Tensor) -> float:
    """The original's consistency: share of consecutive frames with the same prediction."""
    return 1 - flips(preds, noise=False).double().mean().item()


def cross_entropy_consistency(log_probs: torch.Tensor) -> float:
    """The original's CEC of (N, T, K) log-probabilities: mean of -(1/K) sum_k p_{t+1,k} log p_{t,k}."""
    if log_probs.ndim != 3 or log_probs.shape[1] < 2:
        raise ValueError(f"log_probs must be (N, T, K) with T >= 2, got {tuple(log_probs.shape)}")
    terms = -(log_probs[:, 1:].exp() * log_probs[:, :-1]).mean(-1)  # (N, T - 1)
    return terms.double().mean().item()


@torch.no_grad()
def evaluate_perturbed(model: nn.Module, frames: torch.Tensor | np.ndarray, *, mean: Sequence[float],
                       std: Sequence[float], sizes: Sequence[int] = (1,), noise: bool = False, n: int | None = None,
                       batch_size: int = 32, device: torch.device | str | None = None, channels_last: bool = True,
                       progress: bool = False, precision: str = "fp32", max_batch: int | None = None,
                       stochastic: bool | None = None, seed: int = 0) -> dict:
    """flip_prob, consistency and cec at every ensemble size (prefixes of one set of max(sizes) MC samples).

    frames: (N, T, H, W, C) uint8 (the -P layout, numpy or tensor); noise: compare with frame 0 (pass
    ops.data.corruptions.is_noise_perturbation(ptype)); batch_size: videos per step; n: the first n videos;
    max_batch: images per forward pass when MC copies are stacked (ops.evaluate.engine.predict_log_probs);
    stochastic: None prepares the model here (see `prepare`); True/False says the model is already prepared.
    seed: of the MC-dropout masks (the same call gives the same numbers)."""
    sizes = list(check_sizes(sizes))
    device = resolve_device(device) if device is not None else model_device(model)
    model = model.to(device)
    if getattr(frames, "dtype", None) not in (np.uint8, torch.uint8) or getattr(frames, "ndim", 0) != 5 \
            or frames.shape[-1] not in (1, 3):
        raise ValueError(f"frames must be uint8 (N, T, H, W, C) with C = 1 or 3 (the -P layout), got "
                         f"{getattr(frames, 'dtype', type(frames).__name__)} {tuple(getattr(frames, 'shape', ()))}")
    if n is not None and not is_int(n, 1):
        raise ValueError(f"n must be a positive integer or None (all sequences), got {n!r}")
    N = min(len(frames), n or len(frames))
    if N == 0:
        raise ValueError("frames holds no sequences")
    m = torch.tensor(mean, device=device).view(1, -1, 1, 1) * 255
    s = torch.tensor(std, device=device).view(1, -1, 1, 1) * 255

    def batch(start):  # (B, T, H, W, C) uint8 -> (B T, C, H, W) normalised floats
        chunk = frames[start:min(N, start + batch_size)]  # a tensor, or a numpy array or memmap read into memory
        video = chunk if torch.is_tensor(chunk) else torch.as_tensor(np.array(chunk))
        return (video.to(device).permute(0, 1, 4, 2, 3).flatten(0, 1).float() - m) / s, video.shape[:2]

    if stochastic is None:
        model, stochastic = prepare(model, batch(0)[0], channels_last, precision)
    sums = {k: torch.zeros(4, dtype=torch.float64, device=device) for k in sizes}  # flips, same, cec, pairs
    for start in progress_bar(range(0, N, batch_size), desc="perturbed", disable=not progress, leave=False):
        x, (B, T) = batch(start)
        with seeded(seed * 1_000_003 + start, device):
            lp = predict_log_probs(model, x, sizes[-1], max_batch=max_batch, precision=precision,
                                   channels_last=channels_last, stochastic=stochastic)  # (S, B T, K)
        for k in sizes:
            lpk = log_mean_exp(lp, k).view(B, T, -1)  # (B, T, K)
            preds = lpk.argmax(-1)
            terms = -(lpk[:, 1:].exp() * lpk[:, :-1]).mean(-1)
            sums[k] += torch.stack([flips(preds, noise).sum(), flips(preds, False).logical_not().sum(),
                                    terms.sum(), torch.tensor(B * (T - 1), device=device)]).double()
    out = {}
    for k, (f, same, c, pairs) in ((k, v.tolist()) for k, v in sums.items()):
        out[k] = {"flip_prob": f / pairs, "consistency": same / pairs, "cec": c / pairs, "n": N, "seed": seed}
    return out


def evaluate_perturbations(model: nn.Module, folder: Path | str, ptypes: Sequence[str], *, mean: Sequence[float],
                           std: Sequence[float], sizes: Sequence[int] = (1,), **kwargs: Any) -> dict:
    """{ptype: {size: stability metrics}} for -P files `{folder}/{ptype}.npy` (official or generated)."""
    from ops.data.corrupted_sets import load_perturbed

    ptypes = list(ptypes)
    if not ptypes:
        raise ValueError("no perturbation types given")
    device = resolve_device(kwargs.pop("device", None) or model_device(model))
    first_frames = torch.as_tensor(np.array(load_perturbed(folder, ptypes[0])[:2]))  # (2, T, H, W, C)
    m, s = torch.tensor(mean).view(1, -1, 1, 1) * 255, torch.tensor(std).view(1, -1, 1, 1) * 255
    example = ((first_frames.permute(0, 1, 4, 2, 3).flatten(0, 1).float() - m) / s).to(device)
    model, stochastic = prepare(model.to(device), example, kwargs.get("channels_last", True),
                                kwargs.get("precision", "fp32"))  # once for all types
    return {p: evaluate_perturbed(model, load_perturbed(folder, p), mean=mean, std=std, sizes=sizes,
                                  noise=is_noise_perturbation(p), device=device, stochastic=stochastic, **kwargs)
            for p in ptypes}


@torch.no_grad()
def brightness_probe(model: nn.Module, dataset: torch.utils.data.Dataset, shifts: Sequence[float] = (0.02, 0.05),
                     batch_size: int = 250) -> dict:
    """Where a uniform brightness shift hurts: {region: {shift: error}} for a shift added everywhere, to the
    object only (pixels that are not exactly 0) and to the background only (pixels exactly 0: the zero padding
    and, in Fashion-MNIST, the scanned background), one deterministic pass (MC dropout off).

    On Fashion-MNIST every training image has an exactly black background (62% of the pixels), so a network can
    come to rely on it: on the demo models +0.02 on the background alone took the error from 13.7% to 53%, the same
    shift on the object alone left it at 13.5%. A collapse under `background` but not `object` is a property of
    the training data and the model, not of the normalisation or the padding (brightening the 2-px pad alone moved
    the error by 0.5 points)."""
    x = dataset.images.float() / 255  # (N, C, H, W) in [0, 1]
    mean = torch.tensor(dataset.mean).view(1, -1, 1, 1)
    std = torch.tensor(dataset.std).view(1, -1, 1, 1)
    background = (x == 0).float()
    regions = {"everywhere": torch.ones_like(x), "object": 1 - background, "background": background}
    device = model_device(model)

    def error(images):
        with models.mc_dropout(model, enabled=False), models.evaluating(model):
            pred = torch.cat([model(((b - mean) / std).to(device)).argmax(1).cpu() for b in images.split(batch_size)])
        return float((pred != dataset.labels).float().mean())

    out = {"clean": error(x)}
    for region, where in regions.items():
        out[region] = {v: error((x + v * where).clamp(0, 1)) for v in shifts}
    return out
