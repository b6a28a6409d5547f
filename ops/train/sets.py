"""Training sets: several networks (variants x seeds) trained with one recipe, each a normal resumable run.

    python -m ops.run train-set configs/fashion_mnist_reference.json               # here, one after the other
    python -m ops.run train-set configs/cifar100_reference.json --executor slurm \\
        --partition gpu --gpus 1 --time 720                                        # a SLURM job array (submitit)

A set config is a run config (ops.train.configs) with one more section, `set`:

    "set": {"name": "reference", "seeds": [0, 1, 2],
            "networks": {"mcdo": {"model": "resnet_mcdo_18"},
                         "mcdo_mlp": {"model": "resnet_mcdo_18", "block": {"classifier": "mlp"}}},
            "export": "resources/models_checkpoints"}

A network entry may say `"export_dtype": "float16"`: its export stores the weights in half precision (they load
as float32), for heads too large to ship otherwise (the MLP head's 42.5M weights: 173 MB in float32); and
`"seeds": [0, 1, 2]`, a subset of set.seeds, to train that variant for fewer seeds than the others.

Network (variant, seed) is the run with uid `{name}-{variant}-s{seed}` of the config's recipe, with
`model.name` and `model.block` from its entry and `env.seed` = seed: a fixed uid, so that an interrupted
network resumes from its run folder (ops.train.runs refuses a resumption whose recipe changed) and a finished one
is found again (the uid is checked with the rule of env.uid when the set is loaded). A finished network is
exported, weights and card without optimizer state, to `export` (`{export}/{dataset}/{model}/{dataset}_{model}_
{uid}.pth.tar`; without `export`: `exports/` under the working directory, never inside the installed package);
a network whose export exists, with a card whose recipe is the set's, is skipped; one with another recipe is
refused (never replaced silently).

Executors: `local` trains here, one network after the other, printing "network i of n" and the time left; a
network that another process is training (two `train-set` commands on one set) is skipped, said so, and listed
at the end (the other process finishes it); `slurm` submits one SLURM array task per network that is not
finished through submitit (each task is the same resumable run, requeued from its checkpoint on preemption or
timeout); `submitit-local` is submitit's local executor (processes on this machine, as under SLURM; the tests
use it).
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ops.train import configs, pretrained

if TYPE_CHECKING:
    from collections.abc import Sequence

EXECUTORS = ("local", "slurm", "submitit-local")
MAX_SEEDS = 1000  # seeds of a set: 1000 networks per variant is more than any study here trains
DEFAULT_EXPORT = "exports"  # a set without `export`: under the working directory, never inside the package


class SetError(ValueError):
    """A set config or its exported networks cannot be used as asked; the message names the problem and fix."""


EXPORT_DTYPES = ("float32", "float16")


@dataclass
class Network:
    variant: str
    seed: int
    cfg: dict  # the complete run config of this network (validated)
    export_dtype: str = "float32"  # how the exported weights are stored (they load as float32 either way)

    @property
    def uid(self) -> str:
        return self.cfg["env"]["uid"]

    @property
    def model(self) -> str:
        return self.cfg["model"]["name"]

    def label(self) -> str:
        return f"{self.variant} seed {self.seed} ({self.model}, uid {self.uid})"


def _check_set_section(spec, path) -> list:
    problems = []
    if not isinstance(spec, dict):
        return [f"{path}: `set` must be an object with name, seeds and networks"]
    unknown = set(spec) - {"name", "seeds", "networks", "export"}
    problems += [f"{path}: set.{k} is not a set key (name, seeds, networks, export)" for k in sorted(unknown)]
    if spec.get("name") is None or configs.uid(spec.get("name")) or "." in spec.get("name"):
        problems.append(f"{path}: set.name must be a plain name (letters, digits, '_', '-'), got {spec.get('name')!r}")
    seeds = spec.get("seeds")
    if not (isinstance(seeds, list) and 0 < len(seeds) <= MAX_SEEDS
            and all(type(s) is int and 0 <= s < 2 ** 31 for s in seeds) and len(set(seeds)) == len(seeds)):
        shown = repr(seeds) if not isinstance(seeds, list) or len(seeds) <= 10 else f"a list of {len(seeds)} seeds"
        problems.append(f"{path}: set.seeds must be a non-empty list of at most {MAX_SEEDS} distinct integers "
                        f"0 <= seed < 2**31, got {shown}")
    nets = spec.get("networks")
    if not (isinstance(nets, dict) and nets):
        return problems + [f"{path}: set.networks must map variant names to {{'model': NAME, 'block': {{...}}}}"]
    for variant, entry in nets.items():
        if configs.uid(variant) or "-" in variant or "." in variant:
            problems.append(f"{path}: set.networks: variant {variant!r} must be letters, digits or '_'")
        if not isinstance(entry, dict) or not isinstance(entry.get("model"), str) \
                or set(entry) - {"model", "block", "export_dtype", "seeds"} \
                or not isinstance(entry.get("block", {}), dict):
            problems.append(f"{path}: set.networks.{variant} must be {{'model': NAME}} with an optional "
                            f"'block': {{...}} of model keyword arguments, an optional 'export_dtype' and an "
                            f"optional 'seeds' (a subset of set.seeds), got {entry!r}")
            continue
        if entry.get("export_dtype", "float32") not in EXPORT_DTYPES:
            problems.append(f"{path}: set.networks.{variant}.export_dtype must be one of {EXPORT_DTYPES}, got "
                            f"{entry['export_dtype']!r}")
        own = entry.get("seeds", seeds)
        if "seeds" in entry and not (isinstance(own, list) and own and isinstance(seeds, list)
                                     and all(type(s) is int and s in seeds for s in own)
                                     and len(set(own)) == len(own)):
            problems.append(f"{path}: set.networks.{variant}.seeds must be a non-empty list of distinct seeds "
                            f"of set.seeds, got {own!r}")
        problems += _uid_problems(spec, variant, own, path)
    if "export" in spec and not isinstance(spec["export"], str):
        problems.append(f"{path}: set.export must be a folder path, got {spec['export']!r}")
    return problems


def _uid_problems(spec, variant, seeds, path) -> list:
    """The uids `{name}-{variant}-s{seed}` must be uids (models.naming.uid_problem): checked here, not at the save."""
    if not isinstance(spec.get("name"), str) or configs.uid(spec["name"]) or not isinstance(seeds, list) \
            or not seeds:
        return []
    longest = f"{spec['name']}-{variant}-s{max((s for s in seeds if type(s) is int), default=0)}"
    problem = configs.uid(longest)
    return [f"{path}: set.name and variant {variant!r} make the uid {longest!r}, which {problem}; shorten them"] \
        if problem else []


def load_set(path: Path | str, overrides: Sequence[str] = ()) -> tuple:
    """(set section, [Network]) of a set config file; `overrides` are `section.key=value` for the recipe and
    `set.export=FOLDER`. Networks come seed by seed (every variant of seed 0 first), so that a set stopped
    half-way has each variant at least once. Every problem of the file is reported together."""
    raw = configs.read_config_file(path)
    raw.pop("paper", None)  # how `make paper` analyses the set (ops.paper.settings): not part of the recipe
    spec = raw.pop("set", None)
    if spec is None:
        raise SetError(f"{path} has no `set` section (name, seeds, networks): it is a run config; train it with "
                       f"`python -m ops.run train --config {path}`")
    spec = dict(spec) if isinstance(spec, dict) else spec
    recipe_overrides = []
    for item in overrides:
        if item.startswith("set.export="):
            spec["export"] = item.split("=", 1)[1]
        elif item.startswith("set."):
            raise SetError(f"override {item!r}: only set.export can be overridden; edit {path} for the rest")
        else:
            recipe_overrides.append(item)
    problems = _check_set_section(spec, path)
    if problems:
        raise configs.ConfigError(problems)
    spec.setdefault("export", DEFAULT_EXPORT)
    networks = [Network(variant, seed, _network_config(raw, spec, variant, seed, recipe_overrides),
                        entry.get("export_dtype", "float32"))
                for seed in spec["seeds"] for variant, entry in spec["networks"].items()
                if seed in entry.get("seeds", spec["seeds"])]
    return spec, networks


def _network_config(raw, spec, variant, seed, overrides) -> dict:
    import models

    entry = spec["networks"][variant]
    cfg = copy.deepcopy(raw)
    cfg.setdefault("model", {})
    cfg["model"]["name"] = entry["model"]
    cfg["model"]["block"] = {**cfg["model"].get("block", {}), **entry.get("block", {})}
    cfg.setdefault("env", {})
    cfg["env"].update(seed=seed, uid=f"{spec['name']}-{variant}-s{seed}")
    if entry["model"] not in models.list_models():
        models.get_model(entry["model"])  # raises with close matches
    return configs.make_config(cfg, overrides)


def _recipe_differences(card_cfg, cfg) -> dict:
    """{key: (exported, wanted)} of the keys that change what is trained (precision compared as resolved; "auto"
    accepts the bf16 or fp32 the card records), and
    train.epochs: a run may be extended on resumption, but a set's networks are trained for the set's epochs (an
    export of fewer epochs is not the set's network)."""
    from ops.common.runtime import resolve_device, resolve_precision

    wanted = copy.deepcopy(cfg)
    exported = card_cfg.get("env", {}).get("precision") if isinstance(card_cfg.get("env"), dict) else None
    if cfg["env"]["precision"] == "auto" and exported in ("bf16", "fp32"):
        # "auto" is the machine's choice (bf16 where it is native, else fp32) and the card records what it chose:
        # a network trained on another kind of machine is still the set's (the card names its precision)
        wanted["env"]["precision"] = exported
    else:
        wanted["env"]["precision"] = resolve_precision(cfg["env"]["precision"],
                                                       resolve_device(cfg["env"]["device"]))[0]
    return {k: v for k, v in configs.diff(card_cfg, wanted).items()
            if configs.affects_result(k) or k == "train.epochs"}


def exported_path(network: Network, export: Path | str) -> Path:
    import models

    from ops.data.datasets import canonical_name

    dataset = canonical_name(network.cfg["dataset"]["name"])
    return models.checkpoint_path(dataset, network.model, network.uid, export)


def is_finished(network: Network, export: Path | str) -> bool:
    """True if `export` holds this network trained with this recipe; SetError if it holds another recipe's."""
    path = exported_path(network, export)
    if not path.exists() or not pretrained.card_path(path).exists():  # no card: a kill cut the export short
        return False
    card = pretrained.read_card(path)
    differences = _recipe_differences(card.get("config", {}), network.cfg)
    if differences:
        lines = "\n".join(f"  {k}: {old!r} (exported) vs {new!r} (set)" for k, (old, new) in differences.items())
        raise SetError(f"{path} was trained with another recipe than the set's:\n{lines}\nMove it away to retrain "
                       f"it, or give the set another name (set.name) or export folder (set.export=...).")
    return True


def train_network(cfg: dict, export: Path | str, export_dtype: str = "float32") -> dict:
    """Train (or resume) one network of a set and export it; returns {uid, checkpoint, wall_time_s}."""
    from ops.train import trainer

    result = trainer.train(copy.deepcopy(cfg))
    exported = pretrained.export(result["checkpoint"], root=export, uid=cfg["env"]["uid"], dtype=export_dtype)
    card = pretrained.read_card(exported)
    return {"uid": cfg["env"]["uid"], "checkpoint": str(exported), "wall_time_s": card.get("wall_time_s")}


def _format_duration(seconds) -> str:
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


def _time_left(todo, known) -> str:
    """Estimate from the wall times seen so far: per variant where known, else the mean of all."""
    if not known:
        return "unknown until the first network finishes"
    mean = sum(t for times in known.values() for t in times) / sum(len(times) for times in known.values())
    left = sum(sum(known[n.variant]) / len(known[n.variant]) if n.variant in known else mean for n in todo)
    return f"about {_format_duration(left)}"


def _record_time(known, network, export):
    """The network's time for the estimate: the median epoch times the epochs (a run that was paused or shared
    the machine for a while does not inflate it), else the card's wall time."""
    card = pretrained.read_card(exported_path(network, export))
    epochs = sorted(row["epoch_time_s"] for row in card.get("history", []) if row.get("epoch_time_s"))
    seconds = epochs[len(epochs) // 2] * len(card["history"]) if epochs else card.get("wall_time_s")
    if seconds:
        known.setdefault(network.variant, []).append(seconds)


def run_local(networks: Sequence[Network], export: Path | str) -> list:
    """Train the unfinished networks here, one after the other; returns the exported checkpoint paths.

    A network that another process is training (a second `train-set` on the same set: its run or its export is
    locked) is skipped, said so, and the rest are trained; the skipped ones are listed at the end (the other
    process finishes them; the same command run again afterwards finds them finished)."""
    finished = [n for n in networks if is_finished(n, export)]
    known = {}
    for n in finished:
        _record_time(known, n, export)
    todo = [n for n in networks if n not in finished]
    print(f"Set of {len(networks)} networks: {len(finished)} finished in {export}, {len(todo)} to train "
          f"({_time_left(todo, known)})", flush=True)
    skipped = []
    for i, network in enumerate(networks, 1):
        if network in finished:
            continue
        where = f"[network {i} of {len(networks)}]"
        print(f"{where} {network.label()}; time left: {_time_left(todo, known)}", flush=True)
        started = time.time()
        if not _train_here(network, export, where):
            skipped.append(network)
            continue
        todo.remove(network)
        _record_time(known, network, export)
        print(f"{where} done in {_format_duration(time.time() - started)}", flush=True)
    if skipped:
        print(f"Skipped {len(skipped)} network(s) that another process is training (it finishes them): "
              f"{', '.join(n.label() for n in skipped)}. Run the same command once it is done to check the set.",
              flush=True)
    return [exported_path(n, export) for n in networks]


def _train_here(network, export, where) -> bool:
    """Train and export one network; False if another process holds its run or export (skipped), True once it is
    exported (by this process, or by the other one in the meantime)."""
    from models.atomic import LockedError

    if is_finished(network, export):  # another process finished it since the list was made
        print(f"{where} finished meanwhile by another process", flush=True)
        return True
    try:
        train_network(network.cfg, export, network.export_dtype)
    except LockedError as exc:
        print(f"{where} skipped: it is being trained elsewhere ({exc})", flush=True)
        return False
    except FileExistsError:  # the other process exported it between our check and our export
        if not is_finished(network, export):
            raise
        print(f"{where} exported meanwhile by another process", flush=True)
    return True


def card_table(networks: list[Network], export: str | Path) -> list[str]:
    """Markdown rows `| variant (model) | seed | epochs | Acc (%) | NLL | ECE (%) | precision | machine |` of the
    networks of `networks` exported in `export`, from each card's last epoch (the docs' reference-models table)."""
    rows = []
    for n in networks:
        path = exported_path(n, export)
        if not path.exists():
            continue
        card = pretrained.read_card(path)
        last, machine = card["history"][-1], card.get("machine", {})
        block = {k: v for k, v in n.cfg["model"]["block"].items() if k != "width"}
        extra = "".join(f", `{k}={v!r}`" for k, v in block.items()).replace("'", '"')
        where = f"{machine.get('cpu', '?')} ({machine.get('cpu_capability', '?')})" + \
            (f", {machine['gpu']}" if machine.get("gpu") else "")
        rows.append(f"| {n.variant} (`{n.model}`{extra}) | {n.seed} | {len(card['history'])} | "
                    f"{100 * last['test_acc']:.2f} | {last['test_nll']:.4f} | {100 * last['test_ece']:.2f} | "
                    f"{card['config']['env']['precision']} | {where} |")
    return rows
