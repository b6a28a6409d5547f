"""One paper run: load the reference set, run the seven stages (resumable, each cached with the run's
fingerprint), print progress, write the report.

    run(config="configs/fashion_mnist_reference.json")        # runs/paper/<new uid>/report.md, .html, results.json
    run(config=..., quick=True)                                # fewer images and masks (the header says so)
    run(config=..., uid="20261202-101500-a1b2c3")              # resume that run: finished stages are kept

A run folder holds run.json (settings, networks with their sha256, data, machine: the run's fingerprint),
stages/<stage>.json (each finished stage's results under that fingerprint), figures/ and the report. Resuming a
folder whose fingerprint differs (other settings, networks or data) is refused; one writer per folder (a lock).
"""
from __future__ import annotations

import copy
import hashlib
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from models.atomic import exclusive, read_json, save_array, write_json
from models.naming import plain_name
from ops.common.checks import inside, is_number
from ops.common.runtime import machine_info, resolve_device
from ops.data import corrupted_sets, datasets
from ops.data.loaders import DeviceLoader
from ops.evaluate.intervals import hierarchical_bootstrap, hierarchical_mean
from ops.paper import settings as settings_mod
from ops.paper.cache import NetworkCache, canonical, code_digest, load_array
from ops.paper.claims import CLAIMS
from ops.train import pretrained, runs, sets

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any

    import torch.nn as nn

# Forward cost of each variant relative to resnet_mcdo_18 (for the time-left estimate only).
COST = {"mcdo": 1.0, "mcdo_smoothing": 1.25, "dnn": 0.8, "dnn_smoothing": 1.05, "mcdo_mlp": 2.5, "mcdo_preact": 1.0,
        "mcdo_relu6": 1.0}
PRIOR_RATE = 1500.0  # image-passes per second of resnet_mcdo_18 before anything is measured (2 cores, fp32)


# What the stages compute: raised whenever a stage's rows or protocol change, so that a run folder started under
# other claims is not resumed into a report that mixes them (2: the claims as the paper states them, issue 31).
CLAIMS_VERSION = 5


class PaperError(ValueError):
    """The paper run cannot start as asked; the message names the problem and the fix."""


def planned_units(s: dict, n_seeds: int) -> dict:
    """{stage: image-passes weighted by COST}: what each stage costs, for 'time left'."""
    sw, r, f, ls, hs, sp = (s[k] for k in ("sweep", "robustness", "featuremaps", "landscapes", "hessians", "special"))
    cells = len(r["corruptions"]) * len(r["severities"]) + 1
    return {k: n_seeds * v for k, v in {
        "sweep": sw["images"] * sw["max_size"] * (COST["mcdo"] + COST["mcdo_smoothing"]),
        "deterministic": sw["images"] * (COST["dnn"] + COST["dnn_smoothing"]),
        "ensembles": 0.1 * sw["images"],
        "robustness": cells * r["images_per_cell"] * (max(r["sizes"]) * (COST["mcdo"] + COST["mcdo_smoothing"])
                                                      + COST["dnn"] + COST["dnn_smoothing"])
        + cells * s["corruption_curve"]["images_per_cell"] * max(s["corruption_curve"]["sizes"])
        * (COST["mcdo"] + COST["mcdo_smoothing"]),
        "featuremaps": f["images"] * (f["samples"] + 1) * (COST["mcdo"] + COST["mcdo_smoothing"]),
        "landscapes": sum(g["n"] ** 2 * g["masks"] * g["images"] for g in (ls, s["landscapes_filter"]))
        * (COST["mcdo_mlp"] + COST["mcdo"] + COST["mcdo_smoothing"]),
        "hessians": hs["batches"] * hs["batch_size"] * hs["max_iter"] * 6 * (COST["mcdo_mlp"] + COST["mcdo"]
                                                                             + COST["mcdo_smoothing"]),
        "special": sp["images"] * max(sp["sizes"]) * (COST["mcdo_preact"] + COST["mcdo_relu6"] + COST["mcdo_mlp"]
                                                      + COST["mcdo"] * (not settings_mod.special_reuses_sweep(s)))
        + sp["train_images"] * 2 * COST["mcdo_mlp"],
    }.items()}


def sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


class Context:
    """What every stage reads (settings, data, networks) and writes through (figures, bootstraps)."""

    def __init__(self, s, folder, test, train, dataset_name, paths, device, data_root, official_c):
        self.s, self.folder, self.test, self.train = s, Path(folder), test, train
        self.dataset_name, self.paths, self.device = dataset_name, paths, device
        self.data_root, self.official_c = data_root, official_c
        self.memory, self.results, self.figures, self.stage = {}, {}, {}, None
        self.reused = {}  # {stage: computing seconds of the per-network results it read from the cache}
        self._nets = {}

    def nets(self, variant: str) -> list[tuple[int, nn.Module]]:
        """[(seed, model in eval())] of the variant: loaded from disk once, and a fresh copy of the loaded network
        on every call, so that nothing a stage does to its networks (channels_last, BatchNorm folding, switched
        MC dropout) reaches a later stage: a resumed run computes what an uninterrupted one computes."""
        return [(seed, load()) for seed, load in self._each_net(variant)]

    def each(self, variant: str, stage: str, settings: Any, compute: Callable[[nn.Module], dict]
             ) -> list[tuple[int, dict]]:
        """[(seed, compute(network))] over the variant's networks, each from the per-network cache where this stage
        with these `settings` has already seen that network (ops.paper.cache): only new networks are computed.
        `compute` must depend on nothing but the network, the settings and what the cache's base holds."""
        out = []
        for seed, net in self._each_net(variant):
            sha = self.shas[variant][seed]
            out.append((seed, self.cache.get(stage, sha, settings, lambda net=net: compute(net()))))
        return out

    def _each_net(self, variant):
        """[(seed, loader of a fresh copy of that network)]: nothing is loaded for a network the cache answers."""
        def load(seed, path):
            if (variant, seed) not in self._nets:
                self._nets[variant, seed] = pretrained.load_trained(path, self.device)
            return copy.deepcopy(self._nets[variant, seed])
        return [(seed, lambda seed=seed, path=path: load(seed, path)) for seed, path in self.paths[variant].items()]

    def loader(self, n: int) -> DeviceLoader:
        """The first n test images, in batches of the run's batch size."""
        return DeviceLoader(corrupted_sets.take(self.test, n), self.s["batch_size"], device=self.device)

    def bootstrap(self, arms: dict, targets: torch.Tensor, paired_seeds: bool = False) -> dict:
        return hierarchical_bootstrap(arms, targets, n_boot=self.s["n_boot"], level=self.s["level"],
                                      seed=self.s["seed"], paired_seeds=paired_seeds)

    def save_arrays(self, stage: str, arrays: dict[str, torch.Tensor]) -> None:
        """Tensors a later stage needs again after a resume: arrays/<stage>/<name>.npy (no pickles)."""
        for name, t in arrays.items():
            save_array(self.folder / "arrays" / stage / f"{plain_name(name)}.npy", t.numpy())

    def load_arrays(self, stage: str, names: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """The arrays a stage saved (save_arrays); `names`: the ones the caller needs (each must be there). A
        missing, damaged or foreign (symlinked out of the run folder) file is named with the fix."""
        folder = self.folder / "arrays" / stage
        fix = f"delete {self.folder / 'stages' / (stage + '.json')} to recompute that stage, or start a new run"
        if not folder.is_dir():
            raise PaperError(f"{folder} is missing: stage {stage!r} of this run kept no predictions; {fix}")
        files = {p.stem: p for p in sorted(folder.glob("*.npy"))}
        missing = sorted(set(names or ()) - set(files))
        if missing:
            raise PaperError(f"{folder} lacks {', '.join(n + '.npy' for n in missing[:5])}"
                             f"{' and more' if len(missing) > 5 else ''}: {fix}")
        return {name: load_array(path, self.folder, "the run folder", PaperError, fix) for name, path in files.items()}

    def mean(self, arms: dict, paired: bool = True) -> dict:
        return hierarchical_mean(arms, n_boot=self.s["n_boot"], level=self.s["level"], seed=self.s["seed"],
                                 paired=paired)

    def figure(self, name: str, kind: str, *data: Any) -> None:
        from ops.paper import figures

        paths = figures.draw(self.folder / "figures" / f"{name}.png", kind, *data)
        self.figures.setdefault(self.stage, []).extend(str(p.relative_to(self.folder)) for p in paths)

    def gifs(self, lands: dict) -> list[str]:
        from ops.plots.landscapes import animate_masks

        out = []
        for label, land in lands.items():
            name = label.lower().replace(", ", "_").replace(" + ", "_").replace(" ", "_")
            path = animate_masks({label: land}, self.folder / "figures" / f"landscape_{name}.gif")
            out.append(str(path.relative_to(self.folder)))
        self.figures.setdefault(self.stage, []).extend(out)
        return out


DEFAULT_CONFIG = "configs/fashion_mnist_reference.json"


def duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


def variant_seeds(spec: dict, variant: str, seeds: Sequence[int]) -> list[int]:
    """The seeds of `seeds` that the set trains for `variant` (an entry may list fewer seeds than the set)."""
    own = spec["networks"][variant].get("seeds", spec["seeds"])
    return [seed for seed in seeds if seed in own]


def network_paths(spec: dict, seeds: Sequence[int], dataset: str, resources: str | Path) -> dict:
    """{variant: {seed: checkpoint}} of the five reference variants; raises naming everything missing."""
    missing_variants = [v for v in pretrained.REFERENCE_VARIANTS if v not in spec["networks"]]
    if missing_variants:
        raise PaperError(f"the set config has no variants {missing_variants}: the report needs all of "
                         f"{list(pretrained.REFERENCE_VARIANTS)} (dnn, dnn_smoothing, mcdo, mcdo_smoothing, mcdo_mlp)")
    foreign = [s for s in seeds if s not in spec["seeds"]]
    if foreign:
        raise PaperError(f"--seeds {foreign} are not seeds of the set (set.seeds: {spec['seeds']}): analyse the "
                         f"set's own seeds")
    empty = [v for v in pretrained.REFERENCE_VARIANTS if not variant_seeds(spec, v, seeds)]
    if empty:
        raise PaperError(f"with seeds {list(seeds)}, {empty} would have no network (their seeds: "
                         f"{[spec['networks'][v].get('seeds', spec['seeds']) for v in empty]}): include one of them")
    paths, missing = {}, []
    for v in pretrained.REFERENCE_VARIANTS:
        paths[v], absent = _trained(spec, v, seeds, dataset, resources)
        missing += [f"{v} seed {seed}" for seed in absent]
    if missing:
        raise PaperError(f"{len(missing)} reference networks are missing in {resources}: {', '.join(missing)}. "
                         f"Train them with `python -m ops.run train-set <the set config>` (finished ones are "
                         f"skipped), or pass --seeds with the seeds that are complete (the report says which)")
    for v in SPECIAL_VARIANTS:  # the special cases' networks where trained: claim 8 says which are missing
        if v in spec["networks"]:
            paths[v] = _trained(spec, v, seeds, dataset, resources)[0]
    return paths


def _trained(spec, variant, seeds, dataset, resources) -> tuple[dict, list]:
    """({seed: checkpoint} of the variant's finished networks among `seeds`, [the seeds not trained yet])."""
    found, absent = {}, []
    for seed in variant_seeds(spec, variant, seeds):
        try:
            found[seed] = _with_card(pretrained.reference_path(variant, seed, dataset, spec["name"], resources))
        except FileNotFoundError:
            absent.append(seed)
    return found, absent


def _with_card(path):
    """`path` if its card is beside it, else FileNotFoundError: an export cut short (no card yet) is not finished."""
    if not pretrained.card_path(path).exists():
        raise FileNotFoundError(f"{path} has no card: its export was cut short")
    return path


# Networks of the paper's special cases (pre-activation, ReLU6): analysed by claim 8 where they are trained, never
# required (a set trained before them still has a report).
SPECIAL_VARIANTS = ("mcdo_preact", "mcdo_relu6")


def complete_seeds(spec: dict, dataset: str, resources: str | Path) -> tuple:
    """(seeds whose every network is in `resources`, the set's other seeds): what a run without --seeds analyses
    while a set is still being trained. A seed counts as complete when every variant the set trains at that seed
    is there (the MLP head has three seeds of the five: seeds 3 and 4 do not wait for it)."""
    done, partial = [], []
    variants = [v for v in (*pretrained.REFERENCE_VARIANTS, *SPECIAL_VARIANTS) if v in spec["networks"]]
    for seed in spec["seeds"]:
        absent = [v for v in variants if _trained(spec, v, [seed], dataset, resources)[1]]
        (partial if absent else done).append(seed)
    return done, partial


def weights_digest(path: str | Path) -> str:
    """sha256 of a checkpoint's tensors (names, dtypes, shapes and values), whatever else its file holds: two files
    with equal digests are the same network, even if re-saved."""
    from models.checkpoints import read_checkpoint

    state = read_checkpoint(path)
    state = state.get("state_dict", state) if isinstance(state.get("state_dict"), dict) else state
    h = hashlib.sha256()
    for key in sorted(k for k, v in state.items() if isinstance(v, torch.Tensor)):
        t = state[key].detach().cpu().contiguous().reshape(-1)  # a 0-d tensor cannot be viewed as bytes
        h.update(f"{key}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _card_problems(card, network, check_recipe) -> list:
    """How a card disagrees with the set's network (variant, seed, model, recipe)."""
    problems = []
    cfg = card.get("config") if isinstance(card.get("config"), dict) else {}
    if card.get("seed") != network.seed:
        problems.append(f"its card says seed {card.get('seed')!r}, its file name seed {network.seed}")
    if card.get("name") != network.model:
        problems.append(f"its card says model {card.get('name')!r}, the set's {network.variant} is {network.model}")
    uid = cfg.get("env", {}).get("uid") if isinstance(cfg.get("env"), dict) else None
    if (check_recipe or uid is not None) and uid != network.uid:
        problems.append(f"its card was trained as uid {uid!r}, not {network.uid!r}")
    if check_recipe and not problems:
        from ops.train import sets as sets_mod

        try:
            diffs = sets_mod._recipe_differences(cfg, network.cfg)
        except (KeyError, TypeError, AttributeError):
            diffs = {"config": ("incomplete", "the set's recipe")}
        problems += [f"{k} is {old!r}, the set's is {new!r}" for k, (old, new) in list(diffs.items())[:4]]
    return problems


def check_networks(paths: dict, networks: Sequence, check_recipe: bool = True) -> None:
    """Refuse, naming the file, a network that is not the set's: a card of another recipe (check_recipe), of
    another seed, model or uid than its file name says, or weights equal to another network's (a copied seed
    would narrow every interval)."""
    by_key = {(n.variant, n.seed): n for n in networks}
    seen, problems = {}, []
    for variant, by_seed in paths.items():
        for seed, path in by_seed.items():
            card = pretrained.read_card(path)
            found = _card_problems(card, by_key[(variant, seed)], check_recipe)
            digest = weights_digest(path)
            if digest in seen:
                found.append(f"its weights are those of {seen[digest]}")
            seen.setdefault(digest, path)
            problems += [f"{path}: {p}" for p in found]
    if problems:
        raise PaperError("these networks are not the set's own, so the report would not be about the set:\n  "
                         + "\n  ".join(problems) + "\nRetrain them with `python -m ops.run train-set <the set "
                         "config>` (move the wrong files away first), or pass --resources with the set's folder")


def _default_seeds(spec, seeds, dataset, resources, given) -> list:
    """Without --seeds, the set's seeds whose networks are all trained (said aloud); at least two are needed for
    an interval over seeds, else the missing networks are named."""
    if given:
        return seeds
    done, partial = complete_seeds(spec, dataset, resources)
    if len(done) < 2 or not partial:
        return seeds
    print(f"seeds {partial} of the set are not fully trained in {resources}: this run analyses seeds {done} "
          f"(pass --seeds to choose; the report names its seeds)", flush=True)
    return done


def load_data(cfg: dict, smoke: bool) -> tuple:
    """(train, test) of the set's dataset (synthetic stand-ins for the smoke run)."""
    if smoke:
        return datasets.get_dataset("synthetic", n_train=512, n_test=256)
    d = cfg["dataset"]
    try:
        return datasets.get_dataset(d["name"], root=d.get("root", "./data"), mean=d.get("mean"), std=d.get("std"))
    except FileNotFoundError as exc:
        raise PaperError(f"the test data of {d['name']} are not here: {exc}") from None


def _fingerprint(meta) -> str:
    kept = {k: v for k, v in meta.items() if k != "config"}  # the path may be written another way; its content counts
    kept["networks"] = {v: {seed: n["sha256"] for seed, n in by.items()} for v, by in meta["networks"].items()}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cache_base(meta: dict, s: dict, train: Any) -> dict:
    """What every per-network cache entry of this run shares besides the network and the stage's settings: the
    data (test and training images), the MC seed and batch, the device, the machine kind, torch, the claims and the
    library's source code."""
    return {"dataset": meta["dataset"], "test": meta["test"], "seed": s["seed"], "batch_size": s["batch_size"],
            "train": {"n": len(train), "sha1": corrupted_sets.fingerprint(train.images, train.labels)},
            "device": meta["device"], "machine_kind": meta["machine_kind"], "torch": meta["torch"],
            "claims_version": meta["claims_version"], "code": code_digest()}


def describe(config: str | Path, s: dict, seeds: Sequence[int], paths: dict, dataset: str, test: Any,
             device: torch.device) -> dict:
    """What the run is: settings, the config's content, networks with their sha256, data, device and torch (MC
    streams differ between devices and versions). Its hash is the run's fingerprint."""
    nets = {v: {str(seed): {"path": str(p), "sha256": sha256(p)} for seed, p in by.items()} for v, by in paths.items()}
    machine = machine_info(device)
    kind = {k: machine[k] for k in ("cpu", "cpu_capability", "imitation", "gpu") if k in machine}
    return {"config": str(config), "config_sha256": sha256(config), "settings": s, "dataset": dataset,
            "seeds": list(seeds), "networks": nets, "device": str(device), "torch": torch.__version__,
            "machine_kind": kind,  # other kernels (CPU kind, imitation, GPU) give other low bits: not mixed in a run
            "claims_version": CLAIMS_VERSION,  # stage files of another version of the claims are never mixed in
            "test": {"n": len(test), "sha1": corrupted_sets.fingerprint(test.images, test.labels)}}


def _open_run(folder, meta):
    """Write run.json, or check that the folder's run is this one (a resumed run must not mix results)."""
    path = folder / "run.json"
    if path.exists():
        try:
            old = read_json(path, what="paper run description")
        except ValueError as exc:
            raise PaperError(f"{exc}; or start a new run (no --uid)") from None
        if old.get("fingerprint") != meta["fingerprint"]:
            other = [k for k in ("machine_kind", "torch", "device") if old.get(k) != meta[k]]
            was, now = (", ".join(repr(m.get(k)) for k in other) for m in (old, meta))
            where = (f"; it was computed with another {' and '.join(other)} ({was} vs {now}), whose kernels give "
                     f"other numbers: resume it there" if other else "")
            if old.get("claims_version") != meta["claims_version"]:
                where += (f"; its stages were computed under claims version {old.get('claims_version', 1)!r}, "
                          f"this library's is {meta['claims_version']}")
            raise PaperError(f"{folder} holds a paper run with other settings, networks or data (fingerprint "
                             f"{old.get('fingerprint')} vs {meta['fingerprint']}){where}; or start a new run (no "
                             f"--uid)")
    write_json(path, meta)


def _check_figures(folder, figures):
    """A stage file names its figures; they must be files of this run folder (the report embeds them)."""
    if not isinstance(figures, list) or not all(
            isinstance(f, str) and inside(folder / f, folder) and (folder / f).is_file()
            for f in figures):
        raise PaperError(f"a stage file of {folder} names figures outside the run folder or missing ({figures!r}): "
                         f"start a new run (no --uid)")


def _read_stage(folder, path):
    """A finished stage's file, or None if the stage has not finished; a damaged, incomplete or foreign file is
    refused with its name and the fix (a KeyError or a stage file linked in from elsewhere is never used)."""
    if not path.exists() and not path.is_symlink():
        return None
    fix = f"delete {path} to recompute the stage, or start a new run (no --uid)"
    if not inside(path, folder):
        raise PaperError(f"{path} is a link out of the run folder, not a stage this run wrote: {fix}")
    try:
        saved = read_json(path, what="paper stage")
    except ValueError as exc:
        raise PaperError(f"{exc} ({fix})") from None
    lacking = [k for k in ("fingerprint", "result", "figures", "seconds") if k not in saved]
    if lacking or not isinstance(saved["result"], dict) or not isinstance(saved["seconds"], (int, float)) \
            or not is_number(saved.get("reused_seconds", 0.0), 0):
        raise PaperError(f"{path} is not a finished stage (lacks {lacking or 'a valid result'}): {fix}")
    return saved


def corrupted_root(out: str | Path, s: dict, test: Any) -> Path:
    """Where the generated -C set of these settings is cached: one folder per source images and corruption
    settings, so that runs with other settings (QUICK, an override) never meet a set they would refuse."""
    r = {k: v for k, v in s["robustness"].items() if k != "sizes"}
    key = json.dumps([r, s["seed"], corrupted_sets.fingerprint(test.images, test.labels)], sort_keys=True)
    return Path(out) / "data" / f"c-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def _stage_rate(done_units, seconds):
    return done_units / seconds if seconds > 0 else PRIOR_RATE


def run_stages(ctx: Context, fingerprint: str, plan: dict) -> dict:
    """Run (or keep, if finished under this fingerprint) every stage, printing stage i of 7 and the time left."""
    from ops.paper import stages

    timings, done_units, measured = {}, 0.0, 0.0
    keys = list(settings_mod.STAGES)
    for i, key in enumerate(keys, 1):
        title = CLAIMS[i - 1].title
        cached = ctx.folder / "stages" / f"{key}.json"
        saved = _read_stage(ctx.folder, cached)
        if saved is not None and saved.get("fingerprint") == fingerprint:
            _check_figures(ctx.folder, saved.get("figures"))
            ctx.results[key], ctx.figures[key], timings[key] = saved["result"], saved["figures"], saved["seconds"]
            ctx.reused[key] = saved.get("reused_seconds", 0.0)
            print(f"[stage {i} of {len(keys)}] {title}: finished earlier, kept", flush=True)
            continue
        left = sum(plan[k] for k in keys[i - 1:]) / _stage_rate(done_units, measured)
        print(f"[stage {i} of {len(keys)}] {title}; time left: about {duration(left)}", flush=True)
        ctx.stage, start = key, time.time()
        ctx.cache.take_reused()
        result = canonical(stages.STAGES[key](ctx))
        timings[key], ctx.reused[key] = time.time() - start, ctx.cache.take_reused()
        done_units, measured = done_units + plan[key], measured + timings[key]
        write_json(cached, {"fingerprint": fingerprint, "result": result, "figures": ctx.figures.get(key, []),
                            "seconds": timings[key], "reused_seconds": ctx.reused[key]})
        ctx.results[key] = result
    return timings


def resumed_seeds(out: str | Path, uid: str | None, seeds: Sequence[int] | None, smoke: bool) -> list | None:
    """The seeds to analyse: those given, else a resumed run's own (its run.json: the set may have grown since it
    started, and a run never changes its seeds), else None (the set's trained seeds are chosen later)."""
    if seeds is not None or uid is None or smoke:
        return seeds
    try:
        stored = read_json(Path(out) / uid / "run.json", what="paper run description").get("seeds")
    except ValueError as exc:
        raise PaperError(f"{exc}; or start a new run (no --uid)") from None
    return stored if isinstance(stored, list) and stored else None


def run(config: str | Path = DEFAULT_CONFIG, quick: bool = False, smoke: bool = False,
        seeds: Sequence[int] | None = None, resources: str | Path | None = None, out: str | Path = "runs/paper",
        uid: str | None = None, device: str | torch.device | None = None) -> Path:
    """Run the report (see the module docstring); returns the run folder."""
    from ops.paper import report, smoke as smoke_set
    from ops.train import configs

    paper_section = configs.read_config_file(config).get("paper")
    s = settings_mod.resolve(paper_section, quick=quick, smoke=smoke)
    spec, networks = sets.load_set(config)
    cfg = networks[0].cfg
    device = resolve_device(device)
    if uid is not None and not (Path(out) / uid / "run.json").is_file():
        raise PaperError(f"there is no paper run {uid!r} in {out} to resume (no run.json); leave out --uid to start "
                         f"a new one")
    seeds = resumed_seeds(out, uid, seeds, smoke)
    uid, folder = runs.output_folder(out, uid)
    given_seeds = seeds is not None
    with exclusive(folder / "lock", f"the paper run {folder}"):
        seeds = list(seeds or ([0, 1] if smoke else spec["seeds"]))
        if len(set(seeds)) != len(seeds):
            raise PaperError(f"--seeds lists a seed twice: {seeds}")
        dataset = "synthetic" if smoke else datasets.canonical_name(cfg["dataset"]["name"])
        if smoke:
            resources = smoke_set.make_set(folder / "models", spec, seeds)
        resources = Path(resources or spec["export"])
        seeds = _default_seeds(spec, seeds, dataset, resources, given=given_seeds or smoke)
        paths = network_paths(spec, seeds, dataset, resources)
        check_networks(paths, networks, check_recipe=not smoke)
        train, test = load_data(cfg, smoke)
        meta = describe(config, s, seeds, paths, dataset, test, device)
        meta["fingerprint"] = _fingerprint(meta)
        meta["uid"], meta["machine"] = uid, machine_info(device)
        _open_run(folder, meta)
        official = Path(cfg["dataset"].get("root", "./data")) if dataset in ("cifar10", "cifar100") else None
        ctx = Context(s, folder, test, train, dataset, paths, device, corrupted_root(out, s, test), official)
        ctx.shas = {v: {int(seed): n["sha256"] for seed, n in by.items()} for v, by in meta["networks"].items()}
        ctx.cache = NetworkCache(Path(out) / "cache", cache_base(meta, s, train))
        print(f"paper run {uid} ({s['mode']}): {dataset}, seeds {seeds}, {len(test)} test images; {folder}")
        start = time.time()
        timings = run_stages(ctx, meta["fingerprint"], planned_units(s, len(seeds)))
        report.write(folder, meta, ctx.results, ctx.figures, timings, time.time() - start, ctx.reused)
    print(f"report: {folder / 'report.md'} (and report.html, results.json)")
    return folder
