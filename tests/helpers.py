"""Helpers shared by several test modules (stand-ins for datasets nobody has offline)."""
import pickle

import numpy as np


def write_cifar(root, n_per_batch=6, hundred=False):
    rng = np.random.default_rng(0)
    if hundred:
        folder = root / "cifar-100-python"
        files, key, names_key, meta, k = ["train", "test"], b"fine_labels", b"fine_label_names", "meta", 100
    else:
        folder = root / "cifar-10-batches-py"
        files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
        key, names_key, meta, k = b"labels", b"label_names", "batches.meta", 10
    folder.mkdir(parents=True)
    written = {}
    for f in files:
        data = rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, k, n_per_batch).tolist()
        with open(folder / f, "wb") as fh:
            pickle.dump({b"data": data, key: labels}, fh)
        written[f] = (data, labels)
    with open(folder / meta, "wb") as fh:
        pickle.dump({names_key: [f"c{i}".encode() for i in range(k)]}, fh)
    return written
