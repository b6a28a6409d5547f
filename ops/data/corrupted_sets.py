"""Corrupted and perturbed image sets: the official -C / -P sets, and -C / -P sets generated offline for any dataset.

    cset = ops.data.corrupted_sets.load_cifar_c("./data", "cifar100")        # {root}/CIFAR-100-C/{corruption}.npy
    cset = ops.data.corrupted_sets.generate_corrupted(test_set, "./data")    # {root}/FASHION-MNIST-C/, same layout
    test = cset.dataset("fog", severity=3, mean=..., std=..., classes=...)   # an ImageTensorDataset
    frames = ops.data.corrupted_sets.load_perturbed("./data/CIFAR-10-P", "translate")   # (N, T, H, W, C) uint8
    ops.data.corrupted_sets.generate_perturbed(test_set, "./data")           # {root}/FASHION-MNIST-P/{ptype}.npy

The corruptions themselves are ops.data.corruptions.

Official layouts (Hendrycks & Dietterich, ICLR 2019):
- CIFAR-10-C / CIFAR-100-C: `{root}/CIFAR-10-C/{corruption}.npy`, (50000, 32, 32, 3) uint8: severity s is rows
  10000(s-1) to 10000s; `labels.npy` (50000,) repeats the test labels for each severity. The archives
  (CIFAR-10-C.tar, CIFAR-100-C.tar) are md5-checked before they are unpacked.
- ImageNet-C: `{root}/{corruption}/{severity}/{wnid}/*.JPEG`, 224x224 images, read as an ImageFolder with a
  center crop only (as Hendrycks' own evaluation): the original implementation resized them to 256 first.
  `ImageNetCSet(root)` gives the whole set the interface of a -C folder.
- CIFAR-10-P: `{root}/{ptype}.npy`, (10000, T, 32, 32, 3) uint8, no labels; T differs by type (31 for most,
  16 for translate, 21 for motion_blur); for the noise types frame 0 is the clean image.

Generation. `generate_corrupted` writes the same -C layout for any `ImageTensorDataset`, plus `meta.json` with
the profile, the parameters of every corruption and severity, the seed and a fingerprint of the source images.

Generation is seeded per (seed, corruption, severity, chunk), so its result does not depend on the number of
workers; it runs in parallel over corruptions, and each finished corruption is a file (written atomically) that
a rerun with the same source, profile and seed keeps, so an interrupted run resumes where it stopped.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tarfile
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from ops.common.checks import is_int
from ops.common.runtime import progress_bar

from models.atomic import exclusive, read_json, save_array, write_json
from ops.data.corruptions import (ALL_CORRUPTIONS, CORRUPTIONS, IMAGENET_C_SOURCE, OFFICIAL_C, OFFICIAL_P,
                                  PERTURBATIONS, PROFILES, SEVERITIES, CorruptedDataNotFoundError, _hsv_value_shift,
                                  _lookup, _seed, _to_uint8, corrupt, default_chunk, default_profile, parameters)
from ops.data.datasets import ImageTensorDataset, with_classes

if TYPE_CHECKING:
    from collections.abc import Sequence
    from ops.data.datasets import ImageTensorDataset

# --- Reading the official sets -----------------------------------------------------------------------------------

def md5sum(path: Path | str, chunk: int = 1 << 20) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def check_md5(path: Path | str, md5: str) -> None:
    """Raise ValueError if the file's md5 is not `md5` (a corrupt or partial download)."""
    actual = md5sum(path)
    if actual != md5:
        raise ValueError(f"{path} has md5 {actual}, expected {md5}: the archive is corrupt or incomplete. Delete "
                         f"it and download it again.")
    return path


def _unpack(archive, root, folder_name):
    """Extract into a private folder beside the target, then rename it into place: a killed extraction never
    leaves a half set under the official name."""
    staging = Path(tempfile.mkdtemp(prefix=f".unpack-{folder_name}-", dir=root))
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(staging, filter="data")
        if not (staging / folder_name).is_dir():
            raise CorruptedDataNotFoundError(f"{archive} does not hold a folder {folder_name}/")
        target = Path(root) / folder_name
        if target.exists() and any(target.iterdir()):
            raise CorruptedDataNotFoundError(f"{target} exists but is incomplete: move it away so that {archive.name} "
                                             f"can be unpacked there")
        if target.exists():
            target.rmdir()
        os.replace(staging / folder_name, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _check_complete(folder, needed):
    """An official folder must hold every file of its set: a partial one (an interrupted copy or unpacking of
    an earlier version) would silently average over the corruptions that happen to be there."""
    missing = [f for f in needed if not (folder / f).exists()]
    if missing:
        raise CorruptedDataNotFoundError(f"{folder} is incomplete: {missing[:4]}{' ...' if len(missing) > 4 else ''} "
                                         f"missing ({len(missing)} files). Delete the folder and unpack the archive "
                                         f"again.")
    return folder


def _official(spec, root, download, what, layout, needed=()):
    root = Path(root)
    folder, archive = root / spec["folder"], root / spec["archive"]
    if folder.is_dir() and any(folder.glob("*.npy")):
        return _check_complete(folder, needed)
    if folder.exists() and any(folder.iterdir()):
        raise CorruptedDataNotFoundError(f"{folder} exists but holds no .npy files of the set; move it away so that "
                                         f"{archive.name} can be unpacked there")
    if not archive.exists() and download:
        from torchvision.datasets.utils import download_url

        download_url(spec["url"], str(root), spec["archive"], spec["md5"])
    if archive.exists():
        check_md5(archive, spec["md5"])
        _unpack(archive, root, spec["folder"])
        return _check_complete(folder, needed)
    raise CorruptedDataNotFoundError(
        f"{what} not found: looked for {folder} (and the archive {archive}). Expected layout: {layout}. "
        f"Get {spec['archive']} (md5 {spec['md5']}) from {spec['url']} and unpack it under {root}, or pass "
        f"download=True. Without it, ops.data.corrupted_sets.generate_corrupted(test_set, root) makes a stand-in "
        f"with the same layout offline.")


def _read_labels(path):
    """A -C set's labels: a 1-D array of non-negative integers, or a ValueError naming the file."""
    try:
        labels = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise ValueError(f"{path} cannot be read as a .npy array ({exc}); regenerate or unpack the set again") \
            from None
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer) or (len(labels) and labels.min() < 0):
        raise ValueError(f"{path} holds {labels.dtype} {labels.shape}: labels must be a 1-D array of non-negative "
                         f"integers (class indices); regenerate or unpack the set again")
    return labels


class CorruptedSet:
    """A -C folder: `{corruption}.npy` (S N, H, W, C) uint8, severity blocks of N rows in `severities` order, and
    `labels.npy` (S N,). Official sets have severities 1..5; a generated set lists its own in meta.json."""

    def __init__(self, folder):
        self.folder = Path(folder)
        labels_path = self.folder / "labels.npy"
        if not labels_path.exists():
            raise CorruptedDataNotFoundError(
                f"{labels_path} not found: a -C folder holds {{corruption}}.npy (S*N, H, W, C) uint8 and "
                f"labels.npy (S*N,). Get the official CIFAR-10-C / CIFAR-100-C from {OFFICIAL_C['cifar10']['url']}"
                f" / {OFFICIAL_C['cifar100']['url']}, or make one with ops.data.corrupted_sets.generate_corrupted.")
        meta_path = self.folder / "meta.json"
        self.meta = read_json(meta_path, what="-C set's meta.json") if meta_path.exists() else {}
        self.severities = check_severities(self.meta.get("severities", SEVERITIES))
        labels = _read_labels(labels_path)
        if len(labels) % len(self.severities):
            raise ValueError(f"{labels_path} has {len(labels)} labels, not a multiple of {len(self.severities)} "
                             f"severities {self.severities}")
        self.n = len(labels) // len(self.severities)
        source_n = (self.meta.get("source") or {}).get("n")
        if source_n is not None and source_n != self.n:  # meta.json and labels.npy disagree about the blocks
            raise ValueError(f"{self.folder}: meta.json says {source_n} images per severity, labels.npy and the "
                             f"severities {self.severities} give {self.n}; regenerate the set")
        self._labels = labels.astype(np.int64)
        done = self.meta.get("done")
        files = {p.stem for p in self.folder.glob("*.npy")} - {"labels"}
        self.corruptions = [c for c in ALL_CORRUPTIONS if c in files and (done is None or c in done)]
        self.corruptions += sorted(c for c in files - set(ALL_CORRUPTIONS) if done is None or c in done)

    def __repr__(self):
        return (f"CorruptedSet({str(self.folder)!r}, {len(self.corruptions)} corruptions, severities "
                f"{self.severities}, {self.n} images each, profile {self.meta.get('profile', 'official')})")

    def _block(self, severity):
        if severity not in self.severities:
            raise ValueError(f"severity {severity!r} is not in {self.folder} (it has {self.severities})")
        i = self.severities.index(severity)
        return slice(i * self.n, (i + 1) * self.n)

    def labels(self, severity: int | None = None) -> np.ndarray:
        """(N,) int64 labels of one severity block (all blocks hold the same images)."""
        return torch.from_numpy(self._labels[self._block(severity or self.severities[0])].copy())

    def images(self, corruption: str, severity: int) -> torch.Tensor:
        """uint8 (N, C, H, W): rows N(i) .. N(i + 1) of {corruption}.npy, i the severity's block."""
        if corruption not in self.corruptions:
            raise ValueError(f"{corruption!r} is not in {self.folder}; it has {self.corruptions}")
        path = self.folder / f"{corruption}.npy"
        try:
            data = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as exc:  # truncated or not a .npy file
            raise ValueError(f"{path} cannot be read as a .npy array ({exc}); regenerate it or unpack the set "
                             f"again") from None
        if data.ndim != 4 or len(data) != self.n * len(self.severities) or data.dtype != np.uint8 \
                or data.shape[-1] not in (1, 3):
            raise ValueError(f"{path} holds {data.dtype} {data.shape}; expected uint8 "
                             f"({self.n * len(self.severities)}, H, W, C) with C = 1 or 3 (channels last)")
        block = np.array(data[self._block(severity)])  # (N, H, W, C), a copy
        return torch.from_numpy(block).permute(0, 3, 1, 2).contiguous()

    def dataset(self, corruption: str, severity: int, mean: Sequence[float] | None, std: Sequence[float] | None,
                classes: Sequence[str] | None = None, n: int | None = None,
                name: str | None = None) -> ImageTensorDataset:
        """An ImageTensorDataset of one corruption and severity (the first `n` images if given)."""
        images, labels = self.images(corruption, severity), self.labels(severity)
        classes = classes or [str(k) for k in range(int(labels.max()) + 1)]
        ds = ImageTensorDataset(images, labels, classes, mean, std, name or f"{corruption}-{severity}")
        return take(ds, n)


def load_cifar_c(root: Path | str = "./data", name: str = "cifar10", download: bool = False) -> CorruptedSet:
    """The official CIFAR-10-C (`name="cifar10"`) or CIFAR-100-C: `{root}/CIFAR-10-C/`. An archive found under
    root is md5-checked and unpacked; download=True fetches it first."""
    key = {"cifar": "cifar10", "cifar_10": "cifar10", "cifar-10": "cifar10", "cifar_100": "cifar100",
           "cifar-100": "cifar100"}.get(name.lower(), name.lower())
    if key not in OFFICIAL_C:
        raise ValueError(f"Unknown -C set {name!r}; official ones: {sorted(OFFICIAL_C)} (ImageNet-C: imagenet_c)")
    spec = OFFICIAL_C[key]
    layout = (f"{root}/{spec['folder']}/{{corruption}}.npy, (50000, 32, 32, 3) uint8, severity s in rows "
              f"10000(s-1)..10000s, and labels.npy")
    needed = [f"{c}.npy" for c in CORRUPTIONS] + ["labels.npy"]  # the 15 of the benchmark at least
    return CorruptedSet(_official(spec, root, download, spec["folder"], layout, needed))


def load_corrupted(folder: Path | str) -> CorruptedSet:
    """Any folder in the -C layout (official or generated)."""
    return CorruptedSet(folder)


def imagenet_c(root: Path | str, corruption: str, severity: int, mean: Sequence[float] = (0.485, 0.456, 0.406),
               std: Sequence[float] = (0.229, 0.224, 0.225), crop: int = 224,
               classes: Sequence[str] | None = None) -> torch.utils.data.Dataset:
    """ImageNet-C as an ImageFolder: `{root}/{corruption}/{severity}/{wnid}/*.JPEG`, center crop only (the images
    are already 224x224; the original implementation resized to 256 first, which rescales the corruption).

    Class indices come from `classes` (the clean set's class names, e.g. its ImageFolder's wnids), else from the
    class folders of every severity of this corruption: a class folder missing at one severity never shifts the
    labels of the others (a plain ImageFolder would number the classes it finds). A folder that is not one of
    `classes` is refused."""
    import torchvision.transforms as T
    from torchvision.datasets import ImageFolder

    _lookup(corruption)
    if not is_int(severity, 1, 5):
        raise ValueError(f"severity must be an integer from 1 to 5, got {severity!r}")
    path = Path(root) / corruption / str(severity)
    if not path.is_dir():
        raise CorruptedDataNotFoundError(
            f"ImageNet-C not found: looked for {path}. Expected layout: {root}/{{corruption}}/{{severity}}/"
            f"{{wnid}}/*.JPEG (1000 class folders per severity). Get it from {IMAGENET_C_SOURCE} and unpack the "
            f"archives under {root}.")
    if classes is None:
        classes = sorted(set().union(*(_class_folders(path.parent / str(s)) for s in SEVERITIES)))
    ds = with_classes(ImageFolder(str(path), T.Compose([T.CenterCrop(crop), T.ToTensor(), T.Normalize(mean, std)])),
                      classes, path)
    ds.mean, ds.std = tuple(mean), tuple(std)
    return ds


def _class_folders(path) -> list:
    path = Path(path)
    return sorted(d.name for d in path.iterdir() if d.is_dir()) if path.is_dir() else []


class ImageNetCSet:
    """ImageNet-C (`{root}/{corruption}/{severity}/{wnid}/*.JPEG`) with the interface of CorruptedSet, so that
    ops.analysis.robustness.evaluate_corrupted takes either. Its datasets are ImageFolders (see imagenet_c); every
    corruption and severity must hold the same class folders (else the set is refused as incomplete), and the
    class indices are those of the set's classes (or the `classes` given to dataset())."""

    def __init__(self, root, crop=224):
        self.folder, self.crop, self.meta = Path(root), crop, {}
        self.corruptions = [c for c in ALL_CORRUPTIONS if (self.folder / c).is_dir()]
        if not self.corruptions:
            raise CorruptedDataNotFoundError(
                f"ImageNet-C not found: no corruption folder under {self.folder}. Expected layout: "
                f"{self.folder}/{{corruption}}/{{severity}}/{{wnid}}/*.JPEG. Get it from {IMAGENET_C_SOURCE}.")
        have = {c: {s for s in SEVERITIES if (self.folder / c / str(s)).is_dir()} for c in self.corruptions}
        every = set.union(*have.values())
        missing = [f"{c}/{s}" for c in self.corruptions for s in sorted(every - have[c])]
        folders = {(c, s): set(_class_folders(self.folder / c / str(s))) for c in self.corruptions for s in have[c]}
        self.classes = sorted(set().union(*folders.values()))
        missing += [f"{c}/{s}/{k}" for (c, s), got in folders.items() for k in self.classes if k not in got]
        if missing:  # a severity or class missing for one cell would otherwise be dropped, or shift the labels
            raise CorruptedDataNotFoundError(f"ImageNet-C under {self.folder} is incomplete: {missing[:4]}"
                                             f"{' ...' if len(missing) > 4 else ''} missing. Unpack it again from "
                                             f"{IMAGENET_C_SOURCE}.")
        self.severities = tuple(sorted(every))

    def __repr__(self):
        return f"ImageNetCSet({str(self.folder)!r}, {len(self.corruptions)} corruptions, severities {self.severities})"

    def dataset(self, corruption: str, severity: int, mean: Sequence[float] | None, std: Sequence[float] | None,
                classes: Sequence[str] | None = None, n: int | None = None,
                name: str | None = None) -> torch.utils.data.Dataset:
        """An ImageFolder of one corruption and severity (a fixed random n images if n is given, see take)."""
        return take(imagenet_c(self.folder, corruption, severity, mean, std, self.crop, classes or self.classes), n)


def take(dataset: torch.utils.data.Dataset, n: int, seed: int = 0) -> torch.utils.data.Dataset:
    """n images of a dataset, the same ones in a clean set and its corrupted copies. An ImageTensorDataset gives
    its first n (a -C file's rows are the clean set in order); any other dataset (ImageFolders are sorted by
    class, so their first n would be one class) a fixed random n, in order, the same for equal lengths."""
    if n is None or n >= len(dataset):
        return dataset
    if isinstance(dataset, ImageTensorDataset):
        return ImageTensorDataset(dataset.images[:n], dataset.labels[:n], dataset.classes, dataset.mean,
                                  dataset.std, dataset.name)
    idx = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    subset = torch.utils.data.Subset(dataset, idx.tolist())
    subset.mean, subset.std = getattr(dataset, "mean", None), getattr(dataset, "std", None)
    return subset


def load_perturbed(root: Path | str, ptype: str) -> np.ndarray:
    """One -P sequence file: `{root}/{ptype}.npy`, (N, T, H, W, C) uint8, memory-mapped. `root` is the folder
    (`{data}/CIFAR-10-P` for the official set, or a generated one)."""
    path = Path(root) / f"{ptype}.npy"
    if not path.exists():
        archive = Path(root).parent / OFFICIAL_P["archive"]
        if archive.exists():
            check_md5(archive, OFFICIAL_P["md5"])
            _unpack(archive, Path(root).parent, Path(root).name)
    if not path.exists():
        raise CorruptedDataNotFoundError(
            f"{path} not found. Expected layout: {root}/{{ptype}}.npy, (N, T, 32, 32, 3) uint8, no labels (types: "
            f"{', '.join(PERTURBATIONS)}). Get {OFFICIAL_P['archive']} (md5 {OFFICIAL_P['md5']}) from "
            f"{OFFICIAL_P['url']} and unpack it beside {root}, or make sequences offline with "
            f"ops.data.corrupted_sets.generate_perturbed.")
    try:
        data = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise ValueError(f"{path} cannot be read as a .npy array ({exc}); regenerate or unpack it again") from None
    if data.ndim != 5 or data.dtype != np.uint8 or data.shape[-1] not in (1, 3):
        raise ValueError(f"{path} holds {data.dtype} {data.shape}; expected uint8 (N, T, H, W, C) with C = 1 or 3")
    return data


# --- Generating a -C set ------------------------------------------------------------------------------------------

def fingerprint(images: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray) -> str:
    """sha1 of the images and labels: which source a generated set was made from."""
    h = hashlib.sha1(images.contiguous().numpy().tobytes())
    h.update(labels.numpy().astype(np.int64).tobytes())
    return h.hexdigest()


def _set_name(name):
    """'fashion_mnist' -> 'FASHION-MNIST' (then -C / -P), 'cifar-10' -> 'CIFAR-10', as the official names. The
    name becomes a folder inside `root`: a plain name only (no path separators, no '..', not absolute)."""
    text = str(name or "dataset")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}", text) or ".." in text:
        raise ValueError(f"name must be a plain dataset name such as 'fashion_mnist' (letters, digits, '_', '-', "
                         f"'.'; no path separators or '..'): it names a folder inside root, got {name!r}")
    return text.upper().replace("_", "-")


def _generate_one(images, corruption, severities, profile, seed, device, out, threads):
    """Worker: every severity of one corruption -> {out} (S N, H, W, C). Returns (corruption, seconds)."""
    if threads:
        torch.set_num_threads(threads)
    start = time.time()
    blocks = [corrupt(images, corruption, s, profile, seed, device) for s in severities]
    save_array(Path(out), torch.cat(blocks).permute(0, 2, 3, 1).numpy())
    return corruption, time.time() - start


def generate_corrupted(dataset: ImageTensorDataset, root: Path | str = "./data", name: str | None = None,
                       corruptions: Sequence[str] = CORRUPTIONS, severities: Sequence[int] = SEVERITIES,
                       profile: str | None = None, seed: int = 0, device: torch.device | str = "cpu",
                       workers: int | None = None, progress: bool = True, overwrite: bool = False) -> CorruptedSet:
    """Make a -C set of `dataset` (an ImageTensorDataset) in `{root}/{NAME}-C/`; returns its CorruptedSet.

    Cached and resumable: corruptions already made from the same images with the same profile, severities and
    seed are kept. A folder made with other settings raises unless overwrite=True. workers: processes, one
    corruption each (None: one per CPU core on the CPU, 1 on a GPU); they are spawned, so a script calling this
    needs the usual `if __name__ == "__main__":` guard (notebooks do not)."""
    corruptions, severities, profile = _check_generation(dataset, corruptions, severities, profile)
    _check_seed(seed)
    folder = Path(root) / f"{_set_name(name or dataset.name)}-C"
    folder.mkdir(parents=True, exist_ok=True)
    with exclusive(folder / "lock", f"the corrupted set {folder}"):  # one writer: a second is refused, naming it
        return _generate_locked(dataset, folder, corruptions, severities, profile, seed, device, workers, progress,
                                overwrite)


def _generate_locked(dataset, folder, corruptions, severities, profile, seed, device, workers, progress, overwrite):
    """generate_corrupted's work once the folder is locked."""
    H, W = dataset.images.shape[-2:]
    settings = {"source": {"name": dataset.name, "n": len(dataset), "shape": list(dataset.images.shape[1:]),
                           "sha1": fingerprint(dataset.images, dataset.labels)},
                "profile": profile, "severities": list(severities), "seed": int(seed),
                "chunk_size": default_chunk(H, W), "device": torch.device(device).type}  # CPU and CUDA draw apart
    meta_path = folder / "meta.json"
    remove_leftovers(folder)
    meta = _generation_meta(folder, settings, overwrite)
    labels = dataset.labels.numpy()
    labels = np.tile(labels.astype(np.uint8 if labels.max() < 256 else np.int64), len(severities))
    save_array(folder / "labels.npy", labels)  # always from the source: a stale or edited file is replaced
    _check_parameters(folder, meta, corruptions, severities, profile, overwrite)
    todo = [c for c in corruptions if not (c in meta["done"] and (folder / f"{c}.npy").exists())]
    write_json(meta_path, meta)
    bar = progress_bar(total=len(corruptions), initial=len(corruptions) - len(todo),
                       desc=f"{folder.name} ({profile})", disable=not progress)

    def finished(corruption, seconds):
        meta["done"][corruption] = True
        meta["seconds"][corruption] = round(seconds, 2)
        write_json(meta_path, meta)  # after the file: a crash in between only costs regenerating it
        bar.update(1)

    jobs = [(dataset.images, c, severities, profile, seed, str(torch.device(device)), str(folder / f"{c}.npy"))
            for c in todo]
    _run_jobs(jobs, torch.device(device), workers, finished)
    bar.close()
    return CorruptedSet(folder)


def _check_seed(seed):
    if not is_int(seed, 0, 2 ** 31 - 1, numpy=True):
        raise ValueError(f"seed must be an integer from 0 to 2**31 - 1, got {seed!r}")


def check_severities(severities: Sequence[int]) -> tuple:
    """Severities as a sorted tuple: distinct integers from 1 to 5."""
    values = list(severities) if not isinstance(severities, (str, bytes)) and hasattr(severities, "__iter__") else None
    if not values or any(not is_int(s, numpy=True) or s not in SEVERITIES for s in values) \
            or len(set(values)) != len(values):
        raise ValueError(f"severities must be distinct integers from 1 to 5 (a non-empty list such as [1, 3, 5]), "
                         f"got {severities!r}")
    return tuple(sorted(int(s) for s in values))


def _check_generation(dataset, corruptions, severities, profile):
    """(corruptions, severities, profile) checked, the profile defaulted from the image size."""
    if not isinstance(dataset, ImageTensorDataset):
        raise ValueError(f"generate_corrupted needs an ImageTensorDataset (in-memory uint8 images), got "
                         f"{type(dataset).__name__}; for ImageNet use the official ImageNet-C (imagenet_c)")
    if isinstance(corruptions, str):
        raise ValueError(f"corruptions must be a list of names, e.g. [{corruptions!r}], got the string "
                         f"{corruptions!r}")
    corruptions = list(corruptions)
    for c in corruptions:
        _lookup(c)
    severities = check_severities(severities)
    profile = profile or default_profile(*dataset.images.shape[-2:])
    if profile not in PROFILES:
        raise ValueError(f"Unknown profile {profile!r}; choose one of {PROFILES}")
    return corruptions, severities, profile


def remove_leftovers(folder: Path | str) -> None:
    """Temporary files of writers that were killed (the caller holds the folder's lock, so none is live)."""
    for leftover in Path(folder).glob("*.tmp"):
        leftover.unlink(missing_ok=True)


def _check_parameters(folder, meta, corruptions, severities, profile, overwrite):
    """Record each corruption's parameters; a finished corruption made with other parameters (a library update)
    is refused unless overwrite, which regenerates it."""
    for c in corruptions:
        now = {str(s): parameters(c, s, profile) for s in severities}
        before = meta["params"].get(c)
        if c in meta["done"] and before is not None and json.loads(json.dumps(before)) != json.loads(json.dumps(now)):
            if not overwrite:
                raise ValueError(f"{folder}/{c}.npy was made with other parameters ({before} now {now}): pass "
                                 f"overwrite=True to regenerate it, or use another root")
            meta["done"].pop(c, None)
        meta["params"][c] = now


def _generation_meta(folder, settings, overwrite):
    """The folder's meta.json if it was made with `settings`, else a new one (old files removed only if
    overwrite: otherwise a folder made with other settings raises)."""
    meta_path = folder / "meta.json"
    meta = read_json(meta_path, what="-C set's meta.json") if meta_path.exists() else None
    made = [p for p in folder.glob("*.npy") if p.name != "labels.npy"]  # labels.npy is rewritten from the source
    if meta is None and made and not overwrite:
        raise ValueError(f"{folder} holds .npy files but no meta.json saying what they were made from, so they "
                         f"cannot be trusted; delete them, or pass overwrite=True to replace them")
    if meta is not None and any(meta.get(k) != v for k, v in settings.items()) and not meta.get("done") \
            and not made:
        meta = None  # the settings of a run that made nothing (it failed or was stopped at once): start over
    if meta is not None and any(meta.get(k) != v for k, v in settings.items()):
        if not overwrite:
            diff = [k for k, v in settings.items() if meta.get(k) != v]
            raise ValueError(f"{folder} was generated with other settings ({', '.join(diff)} differ). Pass "
                             f"overwrite=True to replace it, or another root/name.")
        meta = None
    if meta is None:
        for stale in folder.glob("*.npy"):
            stale.unlink()
        meta = {**settings, "done": {}, "params": {}, "seconds": {},
                "about": "generated by ops.data.corrupted_sets.generate_corrupted; severity block i is rows N i .. "
                         "N (i+1)"}
    return meta


def _run_jobs(jobs, device, workers, finished):
    """Run `_generate_one` on every job, here or in spawned worker processes; `finished` after each."""
    workers = workers or (1 if device.type != "cpu" else min(len(jobs), os.cpu_count() or 1))
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            finished(*_generate_one(*job, threads=0))
        return
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:  # spawn: a forked OpenMP pool hangs
        futures = [pool.submit(_generate_one, *job, threads=max(1, (os.cpu_count() or 1) // workers)) for job in jobs]
        for future in as_completed(futures):
            finished(*future.result())


# --- Generating -P sequences ----------------------------------------------------------------------------------------

# Frame parameters after make_cifar_p.py: (frames, per-frame value). translate: horizontal pixels; rotate: degrees;
# scale: zoom factor; brightness: HSV value shift; noise: sigma of every frame after the clean frame 0.
P_FRAMES = {
    "translate": [i - 7 for i in range(16)],
    "rotate": [i - 15 for i in range(31)],
    "scale": [(i * 2 + 70) / 100 for i in range(31)],
    "brightness": [(i - 15) * 1.5 / 100 for i in range(31)],
    "gaussian_noise": [0.0] + [0.02] * 30,
    "gaussian_noise_2": [0.0] + [0.04] * 30,
    "gaussian_noise_3": [0.0] + [0.06] * 30,
    "shot_noise": [0.0] + [700.0] * 30,
    "shot_noise_2": [0.0] + [400.0] * 30,
    "shot_noise_3": [0.0] + [200.0] * 30,
}
GENERATED_PERTURBATIONS = tuple(P_FRAMES)


@torch.no_grad()
def perturb(images: torch.Tensor, ptype: str, seed: int = 0, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 (N, C, H, W) -> uint8 sequences (N, T, C, H, W) of one perturbation type (see P_FRAMES); geometry
    with torchvision's affine (bilinear, zero fill), brightness in HSV, noise frames independent draws."""
    import torchvision.transforms.v2.functional as TF

    if ptype not in P_FRAMES:
        raise ValueError(f"Unknown perturbation {ptype!r}; generated types: {GENERATED_PERTURBATIONS}")
    g = torch.Generator(device=device).manual_seed(_seed(seed, ptype, 0))
    x8 = images.to(device)
    x = x8.float() / 255
    frames = []
    for v in P_FRAMES[ptype]:
        if ptype == "translate":
            f = TF.affine(x8, angle=0.0, translate=[int(v), 0], scale=1.0, shear=[0.0, 0.0])
        elif ptype == "rotate":
            f = TF.affine(x8, angle=float(v), translate=[0, 0], scale=1.0, shear=[0.0, 0.0],
                          interpolation=TF.InterpolationMode.BILINEAR)
        elif ptype == "scale":
            f = TF.affine(x8, angle=0.0, translate=[0, 0], scale=float(v), shear=[0.0, 0.0],
                          interpolation=TF.InterpolationMode.BILINEAR)
        elif ptype == "brightness":
            f = _to_uint8(_hsv_value_shift(x, v) if x.shape[1] == 3 else x + v)
        elif v == 0:
            f = x8  # frame 0 of a noise sequence: the clean image
        elif ptype.startswith("gaussian_noise"):
            f = _to_uint8(x + v * torch.randn(x.shape, generator=g, device=x.device))
        else:
            f = _to_uint8(torch.poisson(x * v, generator=g) / v)
        frames.append(f.cpu())
    return torch.stack(frames, 1)  # (N, T, C, H, W)


def generate_perturbed(dataset: ImageTensorDataset, root: Path | str = "./data", name: str | None = None,
                       ptypes: Sequence[str] = ("translate", "rotate", "scale", "brightness",
                       "gaussian_noise"),
                       seed: int = 0, device: torch.device | str = "cpu", progress: bool = True,
                       overwrite: bool = False) -> Path:
    """Write `{root}/{NAME}-P/{ptype}.npy`, (N, T, H, W, C) uint8 as CIFAR-10-P, and labels.npy (N,); cached:
    existing files made from the same images and seed are kept; a folder made from other images or another seed
    raises unless overwrite=True (which replaces it). One writer at a time. Returns the folder."""
    if not isinstance(dataset, ImageTensorDataset):
        raise ValueError(f"generate_perturbed needs an ImageTensorDataset, got {type(dataset).__name__}")
    _check_seed(seed)
    if isinstance(ptypes, str):
        raise ValueError(f"ptypes must be a list of names, e.g. [{ptypes!r}], got the string {ptypes!r}")
    unknown = [p for p in ptypes if p not in P_FRAMES]
    if unknown:
        raise ValueError(f"unknown perturbation types {unknown}; choose from {sorted(P_FRAMES)}")
    folder = Path(root) / f"{_set_name(name or dataset.name)}-P"
    folder.mkdir(parents=True, exist_ok=True)
    with exclusive(folder / "lock", f"the perturbed set {folder}"):
        return _perturb_locked(dataset, folder, ptypes, seed, device, progress, overwrite)


def _perturb_locked(dataset, folder, ptypes, seed, device, progress, overwrite):
    """generate_perturbed's work once the folder is locked."""
    remove_leftovers(folder)
    settings = {"sha1": fingerprint(dataset.images, dataset.labels), "seed": int(seed),
                "device": torch.device(device).type}
    meta_path = folder / "meta.json"
    meta = read_json(meta_path, what="-P set's meta.json") if meta_path.exists() else {}
    if not meta and any(folder.glob("*.npy")) and not overwrite:  # before anything is deleted
        raise ValueError(f"{folder} holds .npy files but no meta.json saying what they are (an official -P set?); "
                         f"use another root or name, delete them, or pass overwrite=True")
    if meta and {k: meta.get(k) for k in settings} != settings and not overwrite:
        differ = [k for k in settings if meta.get(k) != settings[k]]
        raise ValueError(f"{folder} holds sequences made with other settings ({', '.join(differ)} differ: "
                         f"{ {k: meta.get(k) for k in differ} }). Pass overwrite=True to replace them, or another "
                         f"root/name.")
    if {k: meta.get(k) for k in settings} != settings:
        for stale in folder.glob("*.npy"):
            stale.unlink()
        meta = {**settings, "frames": {}}
    save_array(folder / "labels.npy", dataset.labels.numpy())
    for ptype in progress_bar(list(ptypes), desc=folder.name, disable=not progress):
        if ptype in meta["frames"] and (folder / f"{ptype}.npy").exists():
            if json.loads(json.dumps(meta["frames"][ptype])) == json.loads(json.dumps(P_FRAMES[ptype])):
                continue
            if not overwrite:
                raise ValueError(f"{folder}/{ptype}.npy was made with other frames ({meta['frames'][ptype]} now "
                                 f"{P_FRAMES[ptype]}): pass overwrite=True to regenerate it")
        seq = perturb(dataset.images, ptype, seed, device)  # (N, T, C, H, W)
        save_array(folder / f"{ptype}.npy", seq.permute(0, 1, 3, 4, 2).numpy())
        meta["frames"][ptype] = P_FRAMES[ptype]
        write_json(meta_path, meta)
    return folder
