"""Dataset names as checkpoint folders use them: aliases ('CIFAR-100', 'cifar_100') -> one canonical name.

Shared by models.checkpoints (the original's path layout) and ops.data.datasets (which dataset to load).
"""
from __future__ import annotations

import re

PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,79}")  # short enough for {dataset}_{model}_{uid}.csv


def plain_name(value: str, what: str = "name") -> str:
    """`value` if it is a plain file or folder name (letters, digits, '.', '_', '-', '+'; no path separators, no
    '..', not empty): names from arguments, configs and cards must stay inside their folder. Else ValueError."""
    if not isinstance(value, str) or not PLAIN_NAME.fullmatch(value) or ".." in value:
        raise ValueError(f"{what} must be a plain name (letters, digits, '.', '_', '-', '+'; no path separators or "
                         f"'..'): it names a file or folder inside its root, got {value!r}")
    return value


MAX_UID = 64  # a run's uid: a plain name with room for the labels made from it ({uid}-epoch{N}) within 80


def uid_problem(value: object) -> str | None:
    """Why `value` cannot be a run's uid (a phrase), or None. The one rule of configs (env.uid), run folders and
    the final save: a plain name (see plain_name) of at most MAX_UID characters."""
    if not isinstance(value, str) or not PLAIN_NAME.fullmatch(value) or ".." in value or len(value) > MAX_UID:
        return (f"must be a plain name of at most {MAX_UID} characters (letters, digits, '.', '_', '-', '+'; no "
                f"'..' and no path separators): it names a run folder and the files of its weights and results")
    return None


def plain_uid(value: str, what: str = "the uid") -> str:
    """`value` if it is a valid uid (uid_problem), else ValueError naming it."""
    problem = uid_problem(value)
    if problem:
        raise ValueError(f"{what} {problem}, got {value!r}")
    return value


DATASET_ALIASES = {"cifar": "cifar10", "cifar_10": "cifar10", "cifar_100": "cifar100", "fashionmnist": "fashion_mnist",
                   "fmnist": "fashion_mnist", "fashion_mnist": "fashion_mnist", "imagenet_1k": "imagenet",
                   "ilsvrc2012": "imagenet"}


def canonical_dataset(name: str) -> str:
    """'CIFAR-100', 'cifar_100', 'cifar100' -> 'cifar100'; names we do not know are kept (lower-cased)."""
    key = str(name).strip().lower().replace("-", "_").replace(" ", "_")
    return DATASET_ALIASES.get(key, key)


def dataset_aliases(canonical: str) -> list[str]:
    """Folder names under which checkpoints of `canonical` may have been saved (canonical first)."""
    names = [canonical] + [a for a, c in DATASET_ALIASES.items() if c == canonical and a != canonical]
    return names + [n.replace("_", "-") for n in names if "_" in n]
