"""Any dataset, offline: folders of class folders, torchvision sets by class name (tiny stand-ins in their real
formats, written into tmp_path), and the embedded OOD sets for Fashion-MNIST."""
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from ops.data import datasets, loaders
from ops.data.datasets import DatasetNotFoundError, canonical_name, get_dataset, get_ood_dataset


def write_folder(root, split, sizes, classes=("cat", "dog"), mode="RGB"):
    for k, cls in enumerate(classes):
        folder = root / split / cls
        folder.mkdir(parents=True, exist_ok=True)
        for i, (w, h) in enumerate(sizes):
            value = 40 * k + 10 * i
            Image.new(mode, (w, h), value if mode == "L" else (value, 2 * value, 255 - value)).save(folder / f"{i}.png")
    (root / split / classes[0] / "notes.txt").write_text("not an image")


def test_imagefolder_reads_resizes_and_normalises(tmp_path):
    write_folder(tmp_path, "train", [(40, 50), (32, 32), (64, 16)])
    write_folder(tmp_path, "val", [(20, 20)], mode="L")  # grey: repeated over 3 channels
    train, val = get_dataset("ImageFolder", root=tmp_path)
    assert train.classes == ["cat", "dog"] and len(train) == 6 and len(val) == 2
    assert train.images.shape == (6, 3, 32, 32) and val.images.shape == (2, 3, 32, 32)
    assert train.labels.tolist() == [0, 0, 0, 1, 1, 1] and val.labels.tolist() == [0, 1]
    assert train.images[3, :, 5, 5].tolist() == [40, 80, 215]  # a constant image stays constant
    assert torch.equal(val.images[1, 0], val.images[1, 2]) and val.images[1, 0, 0, 0] == 40
    pixels = train.images.double() / 255
    assert train.mean == pytest.approx(pixels.mean((0, 2, 3)).tolist(), abs=1e-12)
    assert train.std == pytest.approx(pixels.std((0, 2, 3), unbiased=False).tolist(), abs=1e-9)
    assert val.mean == train.mean  # the test set is normalised with the training constants
    x, y = val[0]
    assert x.shape == (3, 32, 32) and y == 0
    assert get_dataset("imagefolder", root=tmp_path, mean=(0.5,) * 3, std=(0.2,) * 3)[0].mean == (0.5,) * 3
    xb, yb = next(iter(loaders.make_loader(train, batch_size=4, train=True, workers=0)))
    assert xb.shape == (4, 3, 32, 32)
    assert canonical_name("image-folder".replace("-", "")) == "imagefolder"


def test_imagefolder_sizes_test_folder_and_errors(tmp_path):
    write_folder(tmp_path, "train", [(12, 10), (12, 10)])
    write_folder(tmp_path, "test", [(12, 10)], classes=("dog",))  # test/ instead of val/; a class may be absent
    train, test = get_dataset("imagefolder", root=tmp_path, image_size=None)
    assert train.images.shape == (4, 3, 10, 12) and test.labels.tolist() == [1]
    assert get_dataset("imagefolder", root=tmp_path, image_size=8)[0].images.shape == (4, 3, 8, 8)
    write_folder(tmp_path, "train", [(5, 5)], classes=("bird",))
    with pytest.raises(ValueError, match="several sizes.*image_size"):
        get_dataset("imagefolder", root=tmp_path, image_size=None)
    write_folder(tmp_path, "test", [(12, 10)], classes=("fish",))
    with pytest.raises(ValueError, match="no training images.*fish"):
        get_dataset("imagefolder", root=tmp_path)
    with pytest.raises(DatasetNotFoundError, match="train/<class>"):
        get_dataset("imagefolder", root=tmp_path / "nowhere")
    (tmp_path / "empty" / "train" / "a").mkdir(parents=True)
    (tmp_path / "empty" / "val").mkdir()
    with pytest.raises(DatasetNotFoundError, match="no images"):
        get_dataset("imagefolder", root=tmp_path / "empty")


def write_idx(path, array):
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_torchvision_mnist_by_class_name(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = {s: rng.integers(0, 256, (n, 28, 28)) for s, n in (("train", 5), ("t10k", 3))}
    for split, x in images.items():
        write_idx(raw / f"{split}-images-idx3-ubyte", x)
        write_idx(raw / f"{split}-labels-idx1-ubyte", np.arange(len(x)) % 10)
    train, test = get_dataset("MNIST", root=tmp_path, image_size=None)
    assert train.images.shape == (5, 3, 28, 28) and len(test) == 3 and train.name == "mnist"
    assert torch.equal(train.images[2, 1], torch.from_numpy(images["train"][2].astype(np.uint8)))
    assert train.classes[0] == "0 - zero" and len(train.classes) == 10 and test.labels.tolist() == [0, 1, 2]
    assert get_dataset("mnist", root=tmp_path)[0].images.shape == (5, 3, 32, 32)  # resized to the default 32
    assert canonical_name("MNIST") == "mnist"


def test_torchvision_svhn_split_and_labels(tmp_path, monkeypatch):
    import scipy.io
    import torchvision

    monkeypatch.setattr(torchvision.datasets.SVHN, "_check_integrity", lambda self: True)  # no md5 of real files
    rng = np.random.default_rng(1)
    written = {}
    for split, n in (("train", 4), ("test", 2)):
        x = rng.integers(0, 256, (32, 32, 3, n)).astype(np.uint8)  # SVHN's .mat layout: (H, W, C, N)
        y = np.array([[10], [3], [1], [10]][:n], dtype=np.uint8)  # '10' is digit 0
        scipy.io.savemat(tmp_path / f"{split}_32x32.mat", {"X": x, "y": y})
        written[split] = x
    train, test = get_dataset("svhn", root=tmp_path)
    assert train.images.shape == (4, 3, 32, 32) and train.labels.tolist() == [0, 3, 1, 0] and len(test) == 2
    assert torch.equal(train.images[1], torch.from_numpy(written["train"][..., 1]).permute(2, 0, 1))
    assert train.classes == [str(k) for k in range(4)]  # SVHN has no class names: the labels seen
    assert canonical_name("SVHN") == "svhn"


def test_missing_and_unknown_torchvision_sets(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=r"SVHN not found(.|\n)*download=True"):
        get_dataset("SVHN", root=tmp_path)
    with pytest.raises(ValueError, match=r"cifar10(.|\n)*imagefolder(.|\n)*STL10(.|\n)*SVHN"):
        get_dataset("NoSuchSet", root=tmp_path)
    assert canonical_name("STL-10") == "stl10" and canonical_name("Oxford-IIIT-Pet") == "oxfordiiitpet"
    assert canonical_name("FashionMNIST") == "fashion_mnist"  # our own reader still comes first


def test_digits_ood_set_looks_like_fashion_mnist():
    from sklearn.datasets import load_digits

    digits = get_ood_dataset("digits")
    assert len(digits) == 1797 and digits.images.shape == (1797, 3, 32, 32) and digits.name == "digits"
    assert (digits.mean, digits.std) == datasets.STATS["fashion_mnist"] and digits.classes[3] == "3"
    assert digits.images[:, :, :2].sum() == 0 and torch.equal(digits.images[:, 0], digits.images[:, 2])
    raw = load_digits()
    assert digits.labels.tolist() == raw.target.tolist()
    # Area-averaging the 28x28 image back to 8x8 gives the original digit (values 0..16) up to interpolation.
    back = torch.nn.functional.adaptive_avg_pool2d(digits.images[:, :1, 2:30, 2:30].float() / 255, 8)[:, 0] * 16
    assert (back - torch.from_numpy(raw.images).float()).abs().mean() < 1.5
    assert torch.corrcoef(torch.stack([back.flatten(), torch.from_numpy(raw.images).float().flatten()]))[0, 1] > 0.9
    few = get_ood_dataset("digits", n=100, seed=2)
    assert len(few) == 100 and torch.equal(few.images, get_ood_dataset("digits", n=100, seed=2).images)


def test_noise_ood_set_is_labelled_synthetic():
    noise = get_ood_dataset("noise", n=50, seed=1)
    assert "synthetic" in noise.name and noise.classes == ["synthetic noise"] and len(noise) == 50
    assert noise.images.shape == (50, 3, 32, 32) and noise.images[:, :, 2:30, 2:30].float().std() > 50
    assert torch.equal(noise.images, get_ood_dataset("noise", n=50, seed=1).images)
    assert len(get_ood_dataset("noise")) == 1000
    with pytest.raises(ValueError, match="digits"):
        get_ood_dataset("letters")
    with pytest.raises(ValueError, match="fashion_mnist"):
        get_ood_dataset("digits", like="cifar10")
