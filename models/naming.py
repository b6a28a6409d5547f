"""Dataset names as checkpoint folders use them: aliases ('CIFAR-100', 'cifar_100') -> one canonical name.

Shared by models.checkpoints (the original's path layout) and ops.data.datasets (which dataset to load).
"""

DATASET_ALIASES = {"cifar": "cifar10", "cifar_10": "cifar10", "cifar_100": "cifar100", "fashionmnist": "fashion_mnist",
                   "fmnist": "fashion_mnist", "fashion_mnist": "fashion_mnist", "imagenet_1k": "imagenet",
                   "ilsvrc2012": "imagenet"}


def canonical_dataset(name):
    """'CIFAR-100', 'cifar_100', 'cifar100' -> 'cifar100'; names we do not know are kept (lower-cased)."""
    key = str(name).strip().lower().replace("-", "_").replace(" ", "_")
    return DATASET_ALIASES.get(key, key)


def dataset_aliases(canonical):
    """Folder names under which checkpoints of `canonical` may have been saved (canonical first)."""
    names = [canonical] + [a for a, c in DATASET_ALIASES.items() if c == canonical and a != canonical]
    return names + [n.replace("_", "-") for n in names if "_" in n]
