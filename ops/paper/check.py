"""`python -m ops.paper --check`: validate a set config for the report and say what a run would still need
(networks, data, the official -C set), running nothing. This is what can be done here for CIFAR-100."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ops.data import datasets
from ops.data.corruptions import OFFICIAL_C
from ops.paper import settings as settings_mod
from ops.paper.pipeline import PaperError, network_paths
from ops.train import configs, sets

if TYPE_CHECKING:
    from collections.abc import Sequence


def check(config: str | Path, quick: bool = False, seeds: Sequence[int] | None = None,
          resources: str | Path | None = None, verbose: bool = True) -> dict:
    """{"config": [problems with the config and settings], "missing": [what a run would lack]}; prints both."""
    problems, missing = [], []
    try:
        settings_mod.resolve(configs.read_config_file(config).get("paper"), quick=quick)
        spec, networks = sets.load_set(config)
    except (ValueError, FileNotFoundError) as exc:
        problems.append(str(exc))
    if not problems:
        d = networks[0].cfg["dataset"]
        name = datasets.canonical_name(d["name"])
        try:
            network_paths(spec, seeds or spec["seeds"], name, Path(resources or spec["export"]))
        except PaperError as exc:
            missing.append(str(exc))
        try:
            datasets.get_dataset(name, root=d.get("root", "./data"))
        except (FileNotFoundError, ValueError) as exc:
            missing.append(f"the {name} data: {exc}")
        if name in OFFICIAL_C and not (Path(d.get("root", "./data")) / OFFICIAL_C[name]["folder"]).is_dir():
            missing.append(f"the official {OFFICIAL_C[name]['folder']} under {d.get('root', './data')} "
                           f"({OFFICIAL_C[name]['url']})")
    if verbose:
        print(f"{config}: " + ("valid for the report" if not problems else "not valid:\n  " + "\n  ".join(problems)))
        for m in missing:
            print(f"  missing for a run: {m}")
    return {"config": problems, "missing": missing}
