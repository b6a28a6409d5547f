"""Datasets: CIFAR-10/100, ImageNet, Fashion-MNIST (the embedded default), a synthetic set for tests, any folder
of class folders, torchvision's classification sets by class name, and OOD sets for Fashion-MNIST.

    train, test = ops.data.datasets.get_dataset("fashion_mnist", root="./data")      # each has .classes
    train, test = get_dataset("imagefolder", root="path/to/set")     # path/to/set/{train,val or test}/<class>/*.png
    train, test = get_dataset("SVHN", root="./data", download=True)  # any of TORCHVISION, by its class name
    digits = get_ood_dataset("digits")                               # OOD for Fashion-MNIST (also "noise")

Small datasets (CIFAR, Fashion-MNIST, synthetic) are `ImageTensorDataset`s: every image in one uint8 tensor
(N, 3, H, W) that `ops.data.loaders.DeviceLoader` moves to the training device once and augments there in batches.
ImageNet is a torchvision ImageFolder (`{root}/imagenet/train`, `{root}/imagenet/val`) for the DataLoader path.

Fashion-MNIST feeds the CIFAR architectures unchanged: its 28x28 grey images are zero-padded by 2 pixels to
32x32 and repeated over 3 channels. It is looked for in `{root}/fashion_mnist/`, `{root}/FashionMNIST/raw/`,
then Debian's `/usr/share/datasets/fashion-mnist/` (apt-get install dataset-fashion-mnist), then downloaded
with torchvision if `download=True`.

CIFAR files are read from torchvision's on-disk format (`{root}/cifar-10-batches-py`, `{root}/cifar-100-python`);
torchvision only downloads (and md5-checks) them. They are Python pickles, and a pickle can run code, so they are
read with a restricted unpickler that admits only what those files contain (dicts, lists, bytes, numbers and
numpy arrays); torchvision's own reader uses plain pickle.load, so it is not used for reading.

Folder and torchvision sets are read once into an `ImageTensorDataset`: each image is converted to RGB (grey
repeated over 3 channels), its shorter side resized to `image_size` (default 32, as the CIFAR models expect;
bilinear, antialiased) and centre-cropped to a square; `image_size=None` keeps the native size, which must then be
the same for all images. Their normalisation constants, unless `mean`/`std` are given, are the per-channel mean and
standard deviation of the training images as loaded (so they depend on `image_size`). Training a folder set loads
it whole into memory: for ImageNet-sized folders use "imagenet" (a DataLoader path).

OOD sets for Fashion-MNIST (`get_ood_dataset`) go through Fashion-MNIST's pipeline (28x28 grey, zero-padded to
32x32, 3 channels, Fashion-MNIST's constants): "digits" are scikit-learn's `load_digits` (1,797 real handwritten
digits, 8x8 with 17 grey levels, white on black like Fashion-MNIST) upscaled bilinearly to 28x28; "noise" is
synthetic uniform pixel noise (named "synthetic_noise", one class "synthetic noise"), not real data.
"""
from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from models.naming import canonical_dataset

if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

# Normalisation constants (the original implementation's for CIFAR and ImageNet).
STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "cifar100": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "fashion_mnist": ((0.2860, 0.2860, 0.2860), (0.3530, 0.3530, 0.3530)),  # of the unpadded training images
    "synthetic": ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)),
}
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot"]
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
# torchvision's classification sets by class name: "train" means a train=True/False flag, a pair the values of
# `split` for (train, test). cifar10, cifar100 and FashionMNIST use our own readers above.
TORCHVISION = {
    "MNIST": "train", "KMNIST": "train", "QMNIST": "train", "EMNIST": "train", "USPS": "train",
    "SVHN": ("train", "test"), "STL10": ("train", "test"), "Flowers102": ("train", "test"),
    "Food101": ("train", "test"), "DTD": ("train", "test"), "GTSRB": ("train", "test"),
    "OxfordIIITPet": ("trainval", "test"), "FGVCAircraft": ("trainval", "test"), "StanfordCars": ("train", "test"),
    "Country211": ("train", "test"), "PCAM": ("train", "test"), "FER2013": ("train", "test"),
    "RenderedSST2": ("train", "test"), "Imagenette": ("train", "val"), "CLEVRClassification": ("train", "val"),
    "Places365": ("train-standard", "val"),
}
OOD_SETS = {"fashion_mnist": ("digits", "noise")}


class DatasetNotFoundError(FileNotFoundError):
    """A dataset is missing; the message says where it was looked for and how to get it."""


class ImageTensorDataset(torch.utils.data.Dataset):
    """All images in one uint8 tensor (N, C, H, W) plus int64 labels (N,). Indexing returns normalised floats,
    so it also works with a plain DataLoader."""

    def __init__(self, images, labels, classes, mean, std, name=""):
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        if labels.shape != images.shape[:1]:
            raise ValueError(f"{len(labels)} labels for {len(images)} images")
        self.images, self.labels = images, labels.long()
        self.classes, self.mean, self.std, self.name = list(classes), tuple(mean), tuple(std), name

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        x = self.images[i].float() / 255
        mean = torch.tensor(self.mean).view(-1, 1, 1)
        std = torch.tensor(self.std).view(-1, 1, 1)
        return (x - mean) / std, int(self.labels[i])

    def subset(self, n: int, seed: int = 0) -> ImageTensorDataset:
        """The first `n` images of a fixed random permutation (stratification is left to chance)."""
        if n is None or n >= len(self):
            return self
        idx = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:n]
        return ImageTensorDataset(self.images[idx], self.labels[idx], self.classes, self.mean, self.std, self.name)

    def __repr__(self):
        return (f"ImageTensorDataset({self.name!r}, images={tuple(self.images.shape)}, "
                f"classes={len(self.classes)})")


def _torchvision_name(key):
    """The TORCHVISION class name of a canonical key ('svhn', 'stl_10' -> 'SVHN', 'STL10'), or None."""
    return next((n for n in TORCHVISION if n.lower() == key.replace("_", "")), None)


def canonical_name(name: str) -> str:
    """'CIFAR-100', 'cifar_100', 'cifar100' -> 'cifar100' (the names of models.checkpoints' dataset folders);
    'imagefolder'; a torchvision set's class name lower-cased ('SVHN' -> 'svhn')."""
    key = canonical_dataset(name)
    if key in STATS or key == "imagefolder":
        return key
    tv = _torchvision_name(key)
    if tv is None:
        raise ValueError(f"Unknown dataset {name!r}; choose one of {sorted(STATS)}, 'imagefolder' (root=PATH holding "
                         f"PATH/train/<class>/* and PATH/val/<class>/* or PATH/test/<class>/*), or a torchvision "
                         f"classification set by its class name: {sorted(TORCHVISION)}")
    return tv.lower()


def get_dataset(name: str, root: Path | str = "./data", download: bool = False, mean: Sequence[float] | None = None,
                std: Sequence[float] | None = None,
                **kwargs: Any) -> tuple[torch.utils.data.Dataset, torch.utils.data.Dataset]:
    """(train, test) datasets, each with `.classes`. `mean`/`std` override the normalisation constants;
    other keyword arguments go to the dataset (synthetic: num_classes, n_train, n_test, size, seed;
    imagenet, imagefolder and torchvision sets: image_size; torchvision sets: their own arguments, e.g. EMNIST's
    split). For "imagefolder", `root` is the folder that holds train/ and val/ (or test/)."""
    key = canonical_name(name)
    if key == "imagefolder":
        return image_folder(root, mean=mean, std=std, **kwargs)
    if key not in STATS:
        return _torchvision(_torchvision_name(key), Path(root), download, mean, std, **kwargs)
    default_mean, default_std = STATS[key]
    mean, std = tuple(mean or default_mean), tuple(std or default_std)
    if key in ("cifar10", "cifar100"):
        return _cifar(key, Path(root), download, mean, std, **kwargs)
    if key == "fashion_mnist":
        return _fashion_mnist(Path(root), download, mean, std, **kwargs)
    if key == "imagenet":
        return _imagenet(Path(root), mean, std, **kwargs)
    return synthetic(mean=mean, std=std, **kwargs)


# --- CIFAR ---------------------------------------------------------------------------------------------------

_CIFAR = {
    "cifar10": dict(folder="cifar-10-batches-py", train=[f"data_batch_{i}" for i in range(1, 6)], test=["test_batch"],
                    meta="batches.meta", label_key=b"labels", names_key=b"label_names", tv="CIFAR10"),
    "cifar100": dict(folder="cifar-100-python", train=["train"], test=["test"], meta="meta",
                     label_key=b"fine_labels", names_key=b"fine_label_names", tv="CIFAR100"),
}


class _CifarUnpickler(pickle.Unpickler):
    """Admits only the globals that CIFAR's pickles need to rebuild numpy arrays; anything else is refused."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("copyreg", "_reconstructor"), ("builtins", "object"),
               ("numpy._core.numeric", "_frombuffer"), ("numpy.core.numeric", "_frombuffer"),  # protocol 5
               ("_codecs", "encode")}  # how protocol-2 pickles store bytes

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refused to load {module}.{name}: a CIFAR batch file holds only arrays, "
                                         "lists and dicts")
        return super().find_class(module, name)


def _unpickle(path):
    with open(path, "rb") as f:
        try:
            return _CifarUnpickler(f, encoding="bytes").load()
        except pickle.UnpicklingError as exc:
            raise DatasetNotFoundError(f"{path} is not a CIFAR batch file ({exc}). Replace the folder with "
                                       f"torchvision's download (dataset.download=true after deleting it).") from None


def _cifar(key, root, download, mean, std):
    spec = _CIFAR[key]
    folder = root / spec["folder"]
    needed = [folder / f for f in spec["train"] + spec["test"] + [spec["meta"]]]
    if not all(p.exists() for p in needed):
        if download:
            import torchvision

            try:
                for train in (True, False):  # downloads and verifies the archive
                    getattr(torchvision.datasets, spec["tv"])(root=str(root), train=train, download=True)
            except OSError as exc:  # URLError and socket errors: no network here
                url = getattr(torchvision.datasets, spec["tv"]).url
                raise DatasetNotFoundError(
                    f"{key} is not in {folder} and could not be downloaded ({type(exc).__name__}: {exc}). On a "
                    f"machine with internet: `python -c \"import torchvision; torchvision.datasets."
                    f"{spec['tv']}(root='data', download=True)\"` (or fetch {url}), then copy its {spec['folder']} "
                    f"folder to {folder}.") from None
        else:
            missing = [str(p) for p in needed if not p.exists()]
            raise DatasetNotFoundError(
                f"{key} not found: looked for {folder} (missing {missing[:2]}{'...' if len(missing) > 2 else ''}). "
                f"Pass download=True (get_dataset('{key}', root='{root}', download=True); in a config: "
                f"dataset.download=true), or put torchvision's {spec['folder']} folder under {root}.")
    classes = [c.decode() for c in _unpickle(folder / spec["meta"])[spec["names_key"]]]

    def read(files):
        parts = [_unpickle(folder / f) for f in files]
        images = np.concatenate([p[b"data"] for p in parts]).reshape(-1, 3, 32, 32)  # stored as (N, 3072) RGB
        labels = np.concatenate([p[spec["label_key"]] for p in parts])
        return ImageTensorDataset(torch.from_numpy(images.copy()), torch.from_numpy(labels), classes, mean, std, key)

    return read(spec["train"]), read(spec["test"])


# --- Fashion-MNIST ---------------------------------------------------------------------------------------------

_FMNIST_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                 "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def read_idx(path: Path | str) -> np.ndarray:
    """Read an IDX file (optionally .gz): the MNIST family's format (big-endian header, then uint8 data)."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file")
    shape = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if array.size != int(np.prod(shape)):
        raise ValueError(f"{path} is truncated: header says {shape}, found {array.size} values")
    return array.reshape(shape)


def _find_idx(folder, stem):
    for candidate in (folder / stem, folder / (stem + ".gz")):
        if candidate.exists():
            return candidate
    return None


def fashion_mnist_locations(root: Path | str) -> list[Path]:
    """Folders searched for Fashion-MNIST, in order."""
    root = Path(root)
    return [root / "fashion_mnist", root / "FashionMNIST" / "raw", DEBIAN_FASHION_MNIST]


def _fashion_mnist(root, download, mean, std):
    stems = [s for pair in _FMNIST_FILES.values() for s in pair]
    folder = next((f for f in fashion_mnist_locations(root) if all(_find_idx(f, s) for s in stems)), None)
    if folder is None and download:
        import torchvision

        torchvision.datasets.FashionMNIST(root=str(root), train=True, download=True)
        torchvision.datasets.FashionMNIST(root=str(root), train=False, download=True)
        folder = root / "FashionMNIST" / "raw"
    if folder is None:
        looked = ", ".join(str(f) for f in fashion_mnist_locations(root))
        raise DatasetNotFoundError(
            f"Fashion-MNIST not found: looked in {looked}. Install Debian's copy with "
            f"`sudo apt-get install dataset-fashion-mnist` (it goes to {DEBIAN_FASHION_MNIST}), or pass "
            f"download=True (in a config: dataset.download=true) to download it into {root}.")

    def read(split):
        images = torch.from_numpy(read_idx(_find_idx(folder, _FMNIST_FILES[split][0])).copy())  # (N, 28, 28)
        labels = torch.from_numpy(read_idx(_find_idx(folder, _FMNIST_FILES[split][1])).astype(np.int64))
        # (N, 28, 28) -> zero-pad to 32x32 -> repeat to 3 channels: (N, 3, 32, 32), as the CIFAR models expect.
        images = torch.nn.functional.pad(images, (2, 2, 2, 2))[:, None].expand(-1, 3, -1, -1).contiguous()
        return ImageTensorDataset(images, labels, FASHION_MNIST_CLASSES, mean, std, "fashion_mnist")

    return read("train"), read("test")


# --- ImageNet --------------------------------------------------------------------------------------------------

def _imagenet(root, mean, std, image_size=224):
    import torchvision.transforms as T
    from torchvision.datasets import ImageFolder

    base = root / "imagenet"
    for split in ("train", "val"):
        if not (base / split).is_dir():
            raise DatasetNotFoundError(
                f"ImageNet not found: looked for {base / split}. ImageNet cannot be downloaded automatically; "
                f"put the ILSVRC-2012 images in class folders under {base}/train and {base}/val "
                f"(torchvision ImageFolder layout) and pass root='{root}'.")
    normalize = T.Normalize(mean, std)
    train = ImageFolder(str(base / "train"), T.Compose([
        T.RandomResizedCrop(image_size), T.RandomHorizontalFlip(), T.ToTensor(), normalize]))
    test = with_classes(ImageFolder(str(base / "val"), T.Compose([
        T.Resize(int(image_size * 256 / 224)), T.CenterCrop(image_size), T.ToTensor(), normalize])), train.classes,
        base / "val")  # a class folder missing in val/ must not shift the labels of the others
    train.mean = test.mean = mean
    train.std = test.std = std
    return train, test


def with_classes(folder: Path | str, classes: Sequence[str], where: str) -> torch.utils.data.Dataset:
    """An ImageFolder relabelled with the indices of `classes` (a plain ImageFolder numbers the class folders it
    finds, so one missing folder shifts every later label); a folder not among `classes` is refused."""
    index = {str(c): i for i, c in enumerate(classes)}
    unknown = sorted(set(folder.classes) - set(index))
    if unknown:
        raise ValueError(f"{where} has class folders that are not among the classes (the training or clean "
                         f"set's): {unknown[:5]}; remove them, or give the classes they belong to")
    folder.samples = folder.imgs = [(p, index[folder.classes[y]]) for p, y in folder.samples]
    folder.targets = [y for _, y in folder.samples]
    folder.classes, folder.class_to_idx = list(index), index
    return folder


# --- Synthetic -------------------------------------------------------------------------------------------------

def synthetic(num_classes: int = 10, n_train: int = 2000, n_test: int = 500, size: int = 32, seed: int = 0,
              noise: float = 0.35, mean: Sequence[float] | None = None,
              std: Sequence[float] | None = None) -> tuple[ImageTensorDataset, ImageTensorDataset]:
    """Procedural images: class k is an oriented sinusoidal grating with its own angle, frequency and colour,
    randomly shifted, plus pixel noise. Learnable in a few hundred steps by a small CNN, but not trivially."""
    g = torch.Generator().manual_seed(seed)
    angles = torch.arange(num_classes) * torch.pi / num_classes
    freqs = 0.25 + 0.35 * torch.rand(num_classes, generator=g)
    colours = 0.3 + 0.7 * torch.rand(num_classes, 3, generator=g)
    coords = torch.arange(size, dtype=torch.float32)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")

    def make(n):
        labels = torch.randint(0, num_classes, (n,), generator=g)
        phase = 2 * torch.pi * torch.rand(n, generator=g)
        a, f = angles[labels], freqs[labels]
        proj = xx[None] * torch.cos(a)[:, None, None] + yy[None] * torch.sin(a)[:, None, None]  # (n, H, W)
        wave = 0.5 + 0.5 * torch.sin(f[:, None, None] * proj + phase[:, None, None])
        img = wave[:, None] * colours[labels][:, :, None, None]  # (n, 3, H, W)
        img = img + noise * torch.randn(img.shape, generator=g)
        return (img.clamp(0, 1) * 255).round().to(torch.uint8), labels

    m, s = STATS["synthetic"]
    classes = [f"class_{k}" for k in range(num_classes)]
    return tuple(ImageTensorDataset(*make(n), classes, mean or m, std or s, "synthetic") for n in (n_train, n_test))


# --- Any folder of class folders, torchvision's classification sets ---------------------------------------------

def _to_uint8(img, image_size):
    """A PIL image -> (3, S, S) uint8: RGB, shorter side resized to S = image_size, centre-cropped (None: as is)."""
    from PIL import Image

    img = img.convert("RGB")
    if image_size is not None:
        w, h = img.size
        scale = image_size / min(w, h)
        nw, nh = max(image_size, round(w * scale)), max(image_size, round(h * scale))
        if (nw, nh) != (w, h):
            img = img.resize((nw, nh), Image.BILINEAR)
        left, top = (nw - image_size) // 2, (nh - image_size) // 2
        img = img.crop((left, top, left + image_size, top + image_size))
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)


def _stack(images, what):
    sizes = sorted({tuple(x.shape) for x in images})
    if len(sizes) > 1:
        raise ValueError(f"{what} has images of several sizes {sizes[:3]}...; pass image_size=S to resize them all "
                         f"to S x S")
    return torch.stack(images)


def channel_stats(images: torch.Tensor) -> tuple:
    """(mean, std) per channel, in [0, 1] units, of uint8 images (N, C, H, W); float64, in chunks of images."""
    n, c = images.shape[:2]
    total, square = torch.zeros(c, dtype=torch.float64), torch.zeros(c, dtype=torch.float64)
    for chunk in images.split(4096):
        x = chunk.double().div_(255).transpose(0, 1).reshape(c, -1)
        total += x.sum(1)
        square += (x * x).sum(1)
    count = images.numel() / c
    mean = total / count
    std = (square / count - mean ** 2).clamp_min(0).sqrt().clamp_min(1e-3)  # a constant set would divide by 0
    return tuple(mean.tolist()), tuple(std.tolist())


def _pair(train, test, classes, mean, std, name):
    """(train, test) ImageTensorDatasets; missing constants come from the training images."""
    if mean is None or std is None:
        m, s = channel_stats(train[0])
        mean, std = mean or m, std or s
    return tuple(ImageTensorDataset(x, y, classes, mean, std, name) for x, y in (train, test))


def _scan(folder):
    """{class name: [image paths]} of folder/<class>/* (sorted), image files only."""
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir())
    return {c: sorted(p for p in (folder / c).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
            for c in classes}


def image_folder(root: Path | str, mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 image_size: int = 32) -> tuple:
    """(train, test) of root/train/<class>/* and root/val/<class>/* (or root/test/): classes are the sorted
    folder names of train/; a test class must also be a training class. See the module docstring for sizes."""
    from PIL import Image

    root = Path(root)
    test_dir = next((root / d for d in ("val", "test") if (root / d).is_dir()), None)
    if not (root / "train").is_dir() or test_dir is None:
        raise DatasetNotFoundError(f"imagefolder needs {root}/train/<class>/ and {root}/val/<class>/ (or "
                                   f"{root}/test/<class>/) folders of images; found train/: {(root / 'train').is_dir()}"
                                   f", val/ or test/: {test_dir is not None}")
    train_files, test_files = _scan(root / "train"), _scan(test_dir)
    classes = [c for c, files in train_files.items() if files] if train_files else []
    if not classes:
        raise DatasetNotFoundError(f"no images in {root}/train/<class>/ (looked for {', '.join(IMAGE_EXTENSIONS)})")
    unknown = sorted(c for c, files in test_files.items() if files and c not in classes)
    if unknown:
        raise ValueError(f"{test_dir} has classes with no training images: {unknown[:5]}; every test class needs a "
                         f"folder of images under {root}/train/")

    def read(files, what):
        pairs = [(p, classes.index(c)) for c, paths in files.items() if c in classes for p in paths]
        if not pairs:
            raise DatasetNotFoundError(f"no images in {what}/<class>/")
        images = []
        for path, _ in pairs:
            with Image.open(path) as img:
                images.append(_to_uint8(img, image_size))
        return _stack(images, str(what)), torch.tensor([y for _, y in pairs])

    return _pair(read(train_files, root / "train"), read(test_files, test_dir), classes, mean, std, "imagefolder")


def _open_torchvision(cls_name, root, download, train, kwargs):
    import inspect

    import torchvision

    cls, how = getattr(torchvision.datasets, cls_name), TORCHVISION[cls_name]
    arg = {"train": train} if how == "train" else {"split": how[0] if train else how[1]}
    if "download" in inspect.signature(cls.__init__).parameters:
        arg["download"] = download
    elif download:
        raise ValueError(f"torchvision cannot download {cls_name}; put its files under {root} and pass "
                         f"download=False")
    try:
        return cls(root=str(root), **arg, **kwargs)
    except (RuntimeError, OSError) as exc:  # "Dataset not found or corrupted", or no network
        raise DatasetNotFoundError(
            f"{cls_name} not found under {root} ({type(exc).__name__}: {exc}). Pass download=True "
            f"(get_dataset('{cls_name}', root='{root}', download=True); in a config: dataset.download=true), or "
            f"put torchvision's files for {cls_name} under {root}.") from None


def _torchvision(cls_name, root, download, mean, std, image_size=32, **kwargs):
    """(train, test) of a TORCHVISION set, read once through torchvision into uint8 tensors."""
    parts, classes = [], None
    for train in (True, False):
        ds = _open_torchvision(cls_name, root, download, train, kwargs)
        images, labels = [], []
        for i in range(len(ds)):
            img, label = ds[i]
            images.append(_to_uint8(img, image_size))
            labels.append(int(label))
        if not images:
            raise DatasetNotFoundError(f"{cls_name} ({'train' if train else 'test'}) under {root} has no images")
        if min(labels) < 0:
            raise ValueError(f"{cls_name} gave negative labels (unlabelled images): pick a labelled split")
        parts.append((_stack(images, cls_name), torch.tensor(labels)))
        if train:
            classes = getattr(ds, "classes", None)
    n_classes = int(max(y.max() for _, y in parts)) + 1
    if not classes or len(classes) < n_classes:
        classes = [str(k) for k in range(n_classes)]
    return _pair(parts[0], parts[1], [str(c) for c in classes], mean, std, cls_name.lower())


# --- OOD sets for Fashion-MNIST ------------------------------------------------------------------------------

def _like_fashion_mnist(images28, labels, classes, name):
    """uint8 (N, 28, 28) -> Fashion-MNIST's pipeline: padded to 32x32, 3 channels, Fashion-MNIST's constants."""
    images = torch.nn.functional.pad(images28, (2, 2, 2, 2))[:, None].expand(-1, 3, -1, -1).contiguous()
    mean, std = STATS["fashion_mnist"]
    return ImageTensorDataset(images, labels, classes, mean, std, name)


def get_ood_dataset(name: str, like: str = "fashion_mnist", n: int = None, seed: int = 0) -> ImageTensorDataset:
    """An out-of-distribution test set for `like` (Fashion-MNIST): "digits" (scikit-learn's load_digits, 1,797
    images upscaled to 28x28) or "noise" (synthetic uniform noise, n images, default 1,000). `n` keeps the first n
    of a seeded permutation for digits. See the module docstring."""
    key = canonical_name(like)
    if key not in OOD_SETS or name not in OOD_SETS[key]:
        raise ValueError(f"Unknown OOD set {name!r} for {like!r}; choose one of "
                         f"{ {k: list(v) for k, v in OOD_SETS.items()} }")
    if name == "noise":
        g = torch.Generator().manual_seed(int(seed))
        images = torch.randint(0, 256, (1000 if n is None else n, 28, 28), generator=g, dtype=torch.uint8)
        return _like_fashion_mnist(images, torch.zeros(len(images), dtype=torch.long), ["synthetic noise"],
                                   "synthetic_noise")
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ImportError("the 'digits' OOD set needs scikit-learn: pip install scikit-learn (or the "
                          "requirements.txt pin)") from None
    digits = load_digits()
    x = torch.from_numpy(digits.images).float()[:, None] / 16  # (1797, 1, 8, 8) in [0, 1]
    x = torch.nn.functional.interpolate(x, size=(28, 28), mode="bilinear", align_corners=False)
    images = (x[:, 0].clamp(0, 1) * 255).round().to(torch.uint8)  # (1797, 28, 28)
    dataset = _like_fashion_mnist(images, torch.from_numpy(digits.target).long(), [str(d) for d in range(10)],
                                  "digits")
    return dataset.subset(n, seed=seed)
