"""Datasets: CIFAR-10/100, ImageNet, Fashion-MNIST (the embedded default) and a synthetic set for tests.

    train, test = ops.data.datasets.get_dataset("fashion_mnist", root="./data")      # each has .classes

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
"""
import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import torch

from models.naming import canonical_dataset

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

    def subset(self, n, seed=0):
        """The first `n` images of a fixed random permutation (stratification is left to chance)."""
        if n is None or n >= len(self):
            return self
        idx = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:n]
        return ImageTensorDataset(self.images[idx], self.labels[idx], self.classes, self.mean, self.std, self.name)

    def __repr__(self):
        return (f"ImageTensorDataset({self.name!r}, images={tuple(self.images.shape)}, "
                f"classes={len(self.classes)})")


def canonical_name(name):
    """'CIFAR-100', 'cifar_100', 'cifar100' -> 'cifar100' (the names of models.checkpoints' dataset folders)."""
    key = canonical_dataset(name)
    if key not in STATS:
        raise ValueError(f"Unknown dataset {name!r}; choose one of {sorted(STATS)}")
    return key


def get_dataset(name, root="./data", download=False, mean=None, std=None, **kwargs):
    """(train, test) datasets, each with `.classes`. `mean`/`std` override the normalisation constants;
    other keyword arguments go to the dataset (synthetic: num_classes, n_train, n_test, size, seed;
    imagenet: image_size)."""
    key = canonical_name(name)
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


def read_idx(path):
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


def fashion_mnist_locations(root):
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
    test = ImageFolder(str(base / "val"), T.Compose([
        T.Resize(int(image_size * 256 / 224)), T.CenterCrop(image_size), T.ToTensor(), normalize]))
    train.mean = test.mean = mean
    train.std = test.std = std
    return train, test


# --- Synthetic -------------------------------------------------------------------------------------------------

def synthetic(num_classes=10, n_train=2000, n_test=500, size=32, seed=0, noise=0.35, mean=None, std=None):
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
