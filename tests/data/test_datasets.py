"""Datasets in their real on-disk formats (tiny stand-ins), the Fashion-MNIST lookup order, the device loader."""
import gzip
import pickle
import struct

import numpy as np
import pytest
import torch

from ops.data import datasets
from ops.data import loaders
from ops.data.datasets import DatasetNotFoundError, get_dataset
from tests.helpers import write_cifar


def test_cifar10_stand_in(tmp_path):
    written = write_cifar(tmp_path)
    train, test = get_dataset("cifar10", root=tmp_path)
    assert len(train) == 30 and len(test) == 6 and train.classes[:2] == ["c0", "c1"]
    data, labels = written["data_batch_2"]
    # Row layout of the pickles: 1024 red, 1024 green, 1024 blue values, row-major.
    assert torch.equal(train.images[6], torch.from_numpy(data[0]).view(3, 32, 32))
    assert train.labels[6].item() == labels[0]
    x, y = test[0]
    mean, std = datasets.STATS["cifar10"]
    expected = (written["test_batch"][0][0].reshape(3, 32, 32)[0, 0, 0] / 255 - mean[0]) / std[0]
    assert x.shape == (3, 32, 32) and x[0, 0, 0].item() == pytest.approx(expected, rel=1e-5)


def test_cifar100_stand_in_and_alias(tmp_path):
    write_cifar(tmp_path, hundred=True)
    train, test = get_dataset("cifar_100", root=tmp_path)
    assert len(train.classes) == 100 and len(train) == 6 and train.mean == datasets.STATS["cifar100"][0]


def test_missing_cifar_says_where_and_how(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=r"cifar-10-batches-py(.|\n)*download=True"):
        get_dataset("cifar10", root=tmp_path)


def write_idx(path, array):
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def write_fashion(folder, n=5, value=None, gz=True):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    ext = ".gz" if gz else ""
    for split, m in (("train", n), ("t10k", n - 1)):
        images = rng.integers(0, 256, (m, 28, 28)) if value is None else np.full((m, 28, 28), value)
        write_idx(folder / f"{split}-images-idx3-ubyte{ext}", images)
        write_idx(folder / f"{split}-labels-idx1-ubyte{ext}", rng.integers(0, 10, m))


def test_fashion_mnist_is_padded_to_cifar_size(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "DEBIAN_FASHION_MNIST", tmp_path / "nowhere")
    write_fashion(tmp_path / "fashion_mnist")
    train, test = get_dataset("fashion_mnist", root=tmp_path)
    assert train.images.shape == (5, 3, 32, 32) and len(test) == 4
    assert train.classes[0] == "T-shirt/top"
    raw = datasets.read_idx(tmp_path / "fashion_mnist" / "train-images-idx3-ubyte.gz")
    assert torch.equal(train.images[0, 1, 2:30, 2:30], torch.from_numpy(raw[0].copy()))
    assert train.images[:, :, :2].sum() == 0 and torch.equal(train.images[:, 0], train.images[:, 2])


def test_fashion_mnist_lookup_order(tmp_path, monkeypatch):
    debian = tmp_path / "debian"
    monkeypatch.setattr(datasets, "DEBIAN_FASHION_MNIST", debian)
    write_fashion(debian, value=7, gz=True)
    root = tmp_path / "data"
    assert get_dataset("fashion_mnist", root=root)[0].images.max() == 7  # only Debian's copy exists
    write_fashion(root / "FashionMNIST" / "raw", value=9, gz=False)  # torchvision's layout, uncompressed
    assert get_dataset("fashion_mnist", root=root)[0].images.max() == 9
    write_fashion(root / "fashion_mnist", value=11)
    assert get_dataset("fashion_mnist", root=root)[0].images.max() == 11  # the data root comes first


def test_missing_fashion_mnist_lists_places_and_fix(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "DEBIAN_FASHION_MNIST", tmp_path / "debian")
    with pytest.raises(DatasetNotFoundError) as info:
        get_dataset("fashion_mnist", root=tmp_path / "data")
    message = str(info.value)
    for place in ("data/fashion_mnist", "data/FashionMNIST/raw", "debian", "apt-get install dataset-fashion-mnist",
                  "download=True"):
        assert place in message


def test_truncated_idx_is_rejected(tmp_path):
    path = tmp_path / "x-idx3-ubyte"
    path.write_bytes(struct.pack(">HBBIII", 0, 8, 3, 2, 28, 28) + b"\0" * 100)
    with pytest.raises(ValueError, match="truncated"):
        datasets.read_idx(path)


def test_imagenet_stand_in(tmp_path):
    from PIL import Image

    for split in ("train", "val"):
        for cls in ("n01", "n02"):
            folder = tmp_path / "imagenet" / split / cls
            folder.mkdir(parents=True)
            for i in range(2):
                Image.fromarray(np.full((40, 50, 3), 60 * i, np.uint8)).save(folder / f"{i}.JPEG")
    train, val = get_dataset("imagenet", root=tmp_path, image_size=32)
    assert train.classes == ["n01", "n02"] and len(val) == 4
    x, y = val[0]
    assert x.shape == (3, 32, 32)
    loader = loaders.make_loader(train, batch_size=2, train=True, workers=0)
    xb, yb = next(iter(loader))
    assert xb.shape == (2, 3, 32, 32) and isinstance(loader, torch.utils.data.DataLoader)


def test_missing_imagenet(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=r"imagenet/train"):
        get_dataset("imagenet", root=tmp_path)


def test_unknown_dataset():
    with pytest.raises(ValueError, match="cifar10"):
        get_dataset("cifar1000")


def test_synthetic_is_reproducible():
    a, _ = get_dataset("synthetic", n_train=20, n_test=5, seed=3)
    b, _ = get_dataset("synthetic", n_train=20, n_test=5, seed=3)
    assert torch.equal(a.images, b.images) and len(a.classes) == 10


# --- DeviceLoader -----------------------------------------------------------------------------------------------

def small_set(n=50):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 8, 8), generator=g, dtype=torch.uint8)
    return datasets.ImageTensorDataset(images, torch.arange(n) % 10, [str(i) for i in range(10)], (0.5,) * 3,
                                       (0.25,) * 3)


def test_eval_loader_serves_everything_in_order_normalised():
    ds = small_set()
    batches = list(loaders.DeviceLoader(ds, 16))
    assert [len(y) for _, y in batches] == [16, 16, 16, 2]
    x = torch.cat([b[0] for b in batches])
    torch.testing.assert_close(x, (ds.images.float() / 255 - 0.5) / 0.25)


def test_train_loader_shuffles_per_epoch_reproducibly():
    ds = small_set()
    loader = loaders.DeviceLoader(ds, 10, train=True, augment=False)
    epoch0 = torch.cat([y for _, y in loader])
    again = torch.cat([y for _, y in loaders.DeviceLoader(ds, 10, train=True, augment=False)])
    loader.set_epoch(1)
    epoch1 = torch.cat([y for _, y in loader])
    assert torch.equal(epoch0, again) and not torch.equal(epoch0, epoch1)
    assert sorted(epoch0.tolist()) == sorted(ds.labels.tolist())


def test_augmentation_is_a_padded_crop_or_its_mirror():
    ds = small_set(64)
    loader = loaders.DeviceLoader(ds, 64, train=True)
    x, y = next(iter(loader))
    order = loaders.DeviceLoader(ds, 64, train=True, augment=False)._indices()
    raw = (x * 0.25 + 0.5) * 255  # undo the normalisation
    flips = 0
    for i in range(64):
        padded = torch.nn.functional.pad(ds.images[order[i]].float(), (4, 4, 4, 4))
        windows = [padded[:, dy:dy + 8, dx:dx + 8] for dy in range(9) for dx in range(9)]
        plain = any(torch.allclose(raw[i], w, atol=1e-3) for w in windows)
        mirrored = any(torch.allclose(raw[i], w.flip(2), atol=1e-3) for w in windows)
        assert plain or mirrored
        flips += mirrored and not plain
    assert 10 < flips < 54


def test_ranks_shard_the_same_permutation():
    ds = small_set(50)
    shards = [loaders.DeviceLoader(ds, 5, train=True, augment=False, rank=r, world_size=2) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 5
    assert sorted(torch.cat([s._indices() for s in shards]).tolist()) == list(range(50))
    whole = loaders.DeviceLoader(ds, 10, train=True, augment=False)._indices()
    assert torch.equal(shards[1]._indices(), whole[1::2])  # the same permutation on every rank
    evals = [loaders.DeviceLoader(ds, 8, rank=r, world_size=3) for r in range(3)]
    assert sorted(torch.cat([e._indices() for e in evals]).tolist()) == list(range(50))  # disjoint, complete


def test_a_crafted_cifar_pickle_is_refused(tmp_path):
    """A data folder is untrusted input: a pickle that would run code must be refused, not executed."""
    import os

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    write_cifar(tmp_path)
    with open(tmp_path / "cifar-10-batches-py" / "batches.meta", "wb") as fh:
        pickle.dump({b"label_names": Payload()}, fh)
    with pytest.raises(datasets.DatasetNotFoundError, match="refused to load posix.system"):
        datasets.get_dataset("cifar10", root=tmp_path)
    assert not (tmp_path / "pwned").exists()


def test_an_offline_download_names_the_folder_the_url_and_the_command(tmp_path, monkeypatch):
    import urllib.error

    import torchvision

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.datasets.CIFAR10, "__init__", offline)
    with pytest.raises(DatasetNotFoundError) as info:
        get_dataset("cifar10", root=tmp_path, download=True)
    message = str(info.value)
    assert str(tmp_path / "cifar-10-batches-py") in message and "URLError" in message
    assert torchvision.datasets.CIFAR10.url in message and "download=True" in message
