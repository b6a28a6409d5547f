"""Dataset names as checkpoint folders use them: aliases ('CIFAR-100', 'cifar_100') -> one canonical name.

Shared by models.checkpoints (the original's path layout) and ops.data.datasets (which dataset to load).
"""

import re

PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,79}")  # short enough for {dataset}_{model}_{uid}.csv


def plain_name(value, what="name"):
    """`value` if it is a plain file or folder name (letters, digits, '.', '_', '-', '+'; no path separators, no
    '..', not empty): names from arguments, configs and cards must stay inside their folder. Else ValueError."""
    if not isinstance(value, str) or not PLAIN_NAME.fullmatch(value) or ".." in value:
        raise ValueError(f"{what} must be a plain name (letters, digits, '.', '_', '-', '+'; no path separators or "
                         f"'..'): it names a file or folder inside its root, got {value!r}")
    return value


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
