"""Helpers shared by several test modules (stand-ins for datasets nobody has offline, the shipped reference
networks, a second process holding a lock)."""
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FASHION_SET = ROOT / "configs" / "fashion_mnist_reference.json"
SHIPPED = ROOT / "resources" / "models_checkpoints"


def shipped_reference_networks() -> list:
    """(network, exported checkpoint) for each network of the Fashion-MNIST set committed so far."""
    from ops.train import pretrained, sets

    found = []
    for n in sets.load_set(FASHION_SET)[1]:
        try:
            found.append((n, pretrained.reference_path(n.variant, n.seed, resources=SHIPPED)))
        except FileNotFoundError:
            pass
    return found


def hold_lock(lock_path, seconds=300, env=None):
    """A real second process holding the lock of `lock_path` (models.atomic.exclusive) until killed; returned once
    it holds it."""
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from models.atomic import exclusive
        with exclusive({str(lock_path)!r}):
            print("locked", flush=True)
            time.sleep({seconds})
    """)], cwd=ROOT, env=env or {**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


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
