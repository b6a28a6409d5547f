"""The seven measurements of `make paper`, one function per claim: each runs its analysis on the reference
networks of every seed and returns JSON-able results with the claim's rows.

A row is one paired comparison "claimed arm (b) - other arm (a)": both arms' values and their difference, each
(estimate, low, high) with a 95% interval over seeds and test units, and the verdict computed from the
difference's interval (ops.evaluate.intervals.verdict). `primary` rows decide the claim; the others show
detail. Each function receives the run's Context (ops.paper.pipeline) and writes its figures through it.
"""
from __future__ import annotations

import copy
import hashlib
import itertools
import math
import time
from typing import TYPE_CHECKING

import numpy as np
import torch

from ops.analysis import featuremaps as fm
from ops.analysis import hessians, landscapes, robustness
from ops.data import corrupted_sets
from ops.data.loaders import DeviceLoader
from ops.evaluate import engine, metrics
from ops.evaluate.intervals import verdict
from ops.paper.claims import ALL_SEEDS
from ops.paper.settings import special_reuses_sweep, sweep_kept

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    import torch.nn as nn

    from ops.paper.pipeline import Context

KEYS = ("nll", "acc", "ece")
NAMES = {"nll": "NLL", "acc": "accuracy", "ece": "ECE"}
LABELS = {"mcdo": "MC dropout", "mcdo_smoothing": "MC dropout + smoothing", "dnn": "deterministic",
          "dnn_smoothing": "deterministic + smoothing", "mcdo_mlp": "MC dropout, MLP head",
          "mcdo_preact": "MC dropout, pre-activation", "mcdo_relu6": "MC dropout, ReLU6"}


def better(metric: str) -> str:
    return "higher" if metric == "acc" else "lower"


def row(h: dict, a: str, b: str, metric: str, quantity: str, primary: bool = False, margin: float = 0.0,
        stat: str | None = None, direction: str | None = None, paired: bool = False) -> dict:
    """A row from a hierarchical interval `h` (arms a and b, b the claimed arm); stat: the key in `h`. Without
    a seed level (an arm of one network) the verdict is withheld: 'not resolved', with a note."""
    stat = stat or metric
    diff = h[f"{b} - {a}"][stat]
    direction = direction or better(metric)
    if margin:
        quantity += f" (matches: not worse by more than {100 * margin:.3g} points)" if metric in ("acc", "ece") \
            else f" (matches: not worse by more than {margin:.3g} nats)"
    out = {"quantity": quantity, "metric": metric, "a": a, "b": b, "value_a": h[a][stat], "value_b": h[b][stat],
           "difference": diff, "better": direction, "margin": margin, "verdict": verdict(diff, direction, margin),
           "primary": primary, "seeds": h["seeds"]}
    if "per_seed" in h:
        out["direction"] = seed_directions(h["per_seed"][a][stat], h["per_seed"][b][stat], direction, paired)
    if not h.get("seed_level", True):
        out.update(verdict="not resolved", note="an arm has one network: the interval covers test units only")
    elif out["verdict"] == "not resolved" and out.get("direction", {}).get("all_claimed"):
        out["note"] = f"{ALL_SEEDS}: not resolved"
    return out


def seed_directions(a: Sequence[float], b: Sequence[float], better: str, paired: bool = False) -> dict:
    """How many seeds point the claimed way: each network of arm b against the mean of arm a (independently
    trained arms have no natural pairing: seed i of one variant is not seed i of another), or network i against
    network i where both arms are the same networks (paired). {"better": k, "of": S, "text": "3 of 5 seeds lower",
    "all_claimed": k == S > 1}."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    other = a if paired and len(a) == len(b) else np.full(len(b), a.mean())
    k = int(np.sum(b > other) if better == "higher" else np.sum(b < other))
    return {"better": k, "of": len(b), "text": f"{k} of {len(b)} seeds {better}", "all_claimed": k == len(b) > 1}


def combined(verdicts: Iterable[str]) -> str:
    """"X at every size": supported if supported everywhere, contradicted if contradicted anywhere."""
    verdicts = list(verdicts)
    if verdicts and all(v == "supported" for v in verdicts):
        return "supported"
    return "contradicted" if "contradicted" in verdicts else "not resolved"


def _curve_means(curves) -> dict:
    """{seed: {n: {key: value}}} -> {n: {key: mean over seeds}}."""
    seeds = list(curves)
    sizes = sorted(curves[seeds[0]], key=int)
    return {int(n): {k: float(np.mean([curves[s][n][k] for s in seeds])) for k in KEYS} for n in sizes}


def _predictions(ctx, variant, sizes, images):
    """[{n: (N, C) log-probs} per seed], targets: a seeded sweep of every seed of `variant`."""
    def compute(net):
        kept = {}
        engine.sweep(net, ctx.loader(images), sizes=sizes, keep_predictions=kept, seed=ctx.s["seed"], progress=True)
        return {f"p{n}": kept[n] for n in sizes} | {"targets": kept["targets"]}

    out, targets = [], None
    for _, r in ctx.each(variant, "predictions", {"images": images, "sizes": sorted(sizes)}, compute):
        out.append({n: r[f"p{n}"] for n in sizes})
        targets = r["targets"]
    return out, targets


def equivalent_size(plain_curve: dict[int, float], value: float) -> float:
    """The number of plain MC samples whose NLL equals `value` ({n: NLL} of `plain_curve`): inf ("> M") where
    even the largest size M is worse than `value`, as the claim reads it; otherwise the size from which on every
    larger size is at least as good as `value`, linearly interpolated between the last worse size and the next
    (the curve wobbles where it flattens: a size below M that happens to match `value` while M is worse does not
    count), 0 where every size is at least as good."""
    sizes = sorted(plain_curve)
    if plain_curve[sizes[-1]] > value:
        return math.inf
    worse = [i for i, n in enumerate(sizes) if plain_curve[n] > value]
    if not worse:
        return 0.0
    lo, hi = sizes[worse[-1]], sizes[worse[-1] + 1]
    frac = (plain_curve[lo] - value) / (plain_curve[lo] - plain_curve[hi])
    return lo + frac * (hi - lo)


def _equivalence_row(ctx, preds, targets, means, sizes, M) -> dict:
    """Claim 2 as a quantity: the plain ensemble size whose NLL equals smoothing's with 2 samples. Estimate: the
    mean curves, interpolated; interval: the tested sizes n at which "smoothing with 2 - plain with n" is not
    resolved at the 95% level (a confidence set by inverting the paired tests; at the resolution of the sizes)."""
    plain, smooth = LABELS["mcdo"], LABELS["mcdo_smoothing"]
    target = means[smooth][2]["nll"]
    est = equivalent_size({n: v["nll"] for n, v in means[plain].items()}, target)
    outcome = {}
    for n in sizes:
        h = ctx.bootstrap({f"{plain}, {n}": [p[n] for p in preds["mcdo"]],
                           f"{smooth}, 2": [p[2] for p in preds["mcdo_smoothing"]]}, targets)
        outcome[n] = verdict(h[f"{smooth}, 2 - {plain}, {n}"]["nll"], "lower")
    same = [n for n in sizes if outcome[n] == "not resolved"]
    better_at = [n for n in sizes if outcome[n] == "supported"]  # smoothing with 2 beats plain with n
    worse_at = [n for n in sizes if outcome[n] == "contradicted"]
    if all(outcome[n] == "supported" for n in sizes):
        low = high = f"> {M}"
    elif same:
        low, high = str(min(same)), (f"> {M}" if max(same) == M else str(max(same)))
    else:  # no size is indistinguishable: the bracket between the last beaten and the first beating size
        low, high = f"> {max(better_at)}" if better_at else "< 1", f"< {min(worse_at)}"
    text = f"> {M}" if math.isinf(est) else "<= 1" if est == 0 else f"{est:.1f}"  # 0: plain with 1 is as good
    return {"quantity": f"equivalent ensemble size: the plain MC samples whose NLL equals smoothing's with 2 "
                        f"(sizes tested: {', '.join(map(str, sizes))})", "metric": "size", "kind": "equivalent",
            "estimate": None if math.isinf(est) else est, "text": f"{text} [{low}, {high}]", "verdict": None,
            "primary": True, "paper": "about 30 (read off its NLL figure: plain MC dropout reaches smoothing's "
                                      "2-sample NLL, 0.856, at about 30 samples; its text: 'comparable' to 50, "
                                      "'25x faster')", "per_size": outcome}


def _every_size_text(per_size: list[dict], metric: str) -> str:
    """'4 of 10 sizes with every seed lower', and the sizes where smoothing is significantly worse (each at its own
    95% level: with 10 sizes one such size can be chance, so they are named rather than left implicit)."""
    text = (f"{sum(r['direction']['better'] == r['direction']['of'] for r in per_size)} of {len(per_size)} sizes "
            f"with every seed {better(metric)}")
    worse = [str(r["size"]) for r in per_size if r["verdict"] == "contradicted"]
    return text + (f"; contradicted at {', '.join(worse)} sample{'s' * (worse != ['1'])}" if worse else "")


def _relative_margins(curves, M) -> dict:
    """'Comparable' as the paper reads it, relative to what MC sampling itself gains: 10% of the plain network's
    1 -> M change of each metric (mean over seeds), instead of a fixed margin."""
    means = _curve_means(curves)
    return {k: RELATIVE_MARGIN * abs(means[1][k] - means[M][k]) for k in KEYS}


RELATIVE_MARGIN = 0.1


def _sweep_entries(ctx: Context, variant: str) -> list[tuple[int, dict]]:
    """[(seed, {"curve": {n: metrics}, "targets", "p<n>": (N, C) log-probs of the kept sizes})]: the sweep of
    1..max_size MC samples of every network of `variant` (cached per network)."""
    s = ctx.s["sweep"]
    sizes, keep = list(range(1, s["max_size"] + 1)), sweep_kept(s)

    def compute(net):
        kept = {}
        res = engine.sweep(net, ctx.loader(s["images"]), sizes=sizes, keep_predictions=kept, seed=ctx.s["seed"],
                           progress=True)
        return {"curve": {n: {k: float(res[n][k]) for k in KEYS} for n in sizes}, "targets": kept["targets"],
                **{f"p{n}": kept[n] for n in keep}}

    return ctx.each(variant, "sweep", {"images": s["images"], "max_size": s["max_size"], "keep": keep}, compute)


def sweep(ctx: Context) -> dict:
    """Claims 1 and 2: MC dropout vs MC dropout + smoothing at every ensemble size, and 2-sample smoothing vs the
    plain network's largest size (the equivalent ensemble size, and a margin relative to the 1 -> M gain)."""
    s = ctx.s["sweep"]
    M, keep = s["max_size"], sweep_kept(s)
    curves, preds, targets = {}, {}, None
    for variant in ("mcdo", "mcdo_smoothing"):
        curves[variant], preds[variant] = {}, []
        for seed, r in _sweep_entries(ctx, variant):
            curves[variant][seed] = r["curve"]
            preds[variant].append({n: r[f"p{n}"] for n in keep})
            targets = r["targets"]
    ctx.memory["sweep"] = (preds, targets)
    ctx.save_arrays("sweep", {f"{v}-{i}-{n}": p[n] for v, runs in preds.items() for i, p in enumerate(runs)
                              for n in (1, 2)} | {"targets": targets})
    plain, smooth = LABELS["mcdo"], LABELS["mcdo_smoothing"]
    margins = _relative_margins(curves["mcdo"], M)
    a, b = f"{plain}, {M} samples", f"{smooth}, 2 samples"
    h = ctx.bootstrap({a: [p[M] for p in preds["mcdo"]], b: [p[2] for p in preds["mcdo_smoothing"]]}, targets)
    rows = [row(h, a, b, k, f"{NAMES[k]}: smoothing with 2 samples vs MC dropout with {M} (margin: "
                            f"{100 * RELATIVE_MARGIN:g}% of MC dropout's own 1 -> {M} change)",
                primary=k == "nll", margin=margins[k]) for k in KEYS]
    bands, every = {plain: {}, smooth: {}}, []
    for n in s["interval_sizes"]:
        a, b = f"{plain}, {n}", f"{smooth}, {n}"
        h = ctx.bootstrap({a: [p[n] for p in preds["mcdo"]], b: [p[n] for p in preds["mcdo_smoothing"]]}, targets)
        bands[plain][n], bands[smooth][n] = h[a], h[b]
        every += [dict(row(h, a, b, k, f"{NAMES[k]}: smoothing - plain at {n} samples"), size=n) for k in KEYS]
    for k in KEYS:
        per_size = [r for r in every if r["metric"] == k]
        rows.append({"quantity": f"{NAMES[k]}: smoothing better at every size tested ({per_size[0]['size']}-"
                                 f"{per_size[-1]['size']}; each size at its own 95% level, uncorrected)",
                     "metric": k, "combined": True, "primary": True,
                     "verdict": combined(r["verdict"] for r in per_size), "sizes": [r["size"] for r in per_size],
                     "direction": {"text": _every_size_text(per_size, k)}})
    means = {LABELS[v]: _curve_means(c) for v, c in curves.items()}
    rows.append(_equivalence_row(ctx, preds, targets, means, keep, M))
    a, b = f"{plain}, 1 sample", f"{plain}, {M} samples"
    h = ctx.bootstrap({a: [p[1] for p in preds["mcdo"]], b: [p[M] for p in preds["mcdo"]]}, targets,
                      paired_seeds=True)  # the same networks in both arms
    rows.append(row(h, a, b, "nll", f"NLL: MC dropout with {M} samples vs 1 (context: what MC sampling gains)",
                    paired=True))
    ctx.figure("ensemble_size", "ensemble_size", means, bands)
    return {"rows": rows + every, "curves": curves, "images": len(targets), "margins": margins}


def deterministic(ctx: Context) -> dict:
    """Claim 3: deterministic networks with and without smoothing (one pass each)."""
    n = ctx.s["sweep"]["images"]
    plain, t = _predictions(ctx, "dnn", [1], n)
    smooth, _ = _predictions(ctx, "dnn_smoothing", [1], n)
    ctx.memory["dnn"] = (plain, t)
    a, b = LABELS["dnn"], LABELS["dnn_smoothing"]
    h = ctx.bootstrap({a: [p[1] for p in plain], b: [p[1] for p in smooth]}, t)
    rows = [row(h, a, b, k, f"{NAMES[k]}: deterministic + smoothing vs deterministic", primary=k == "nll")
            for k in KEYS]
    ctx.figure("deterministic", "forest", rows, "Deterministic networks: smoothing - plain")
    return {"rows": rows, "values": {a: h[a], b: h[b]}, "images": len(t)}


def _deep_ensembles(members, k):
    """Log-probabilities of every deep ensemble of k of the members (all combinations): [(N, C)]."""
    out = []
    for combo in itertools.combinations(range(len(members)), k):
        lp = torch.stack([members[i] for i in combo])  # (k, N, C)
        out.append(torch.logsumexp(lp, 0) - math.log(k))
    return out


def ensembles(ctx: Context) -> dict:
    """Beyond the paper: deep ensembles of independently trained deterministic networks beside MC dropout (+
    smoothing), temperature scaling and OOD detection; context rows, no verdict."""
    n_img = ctx.s["sweep"]["images"]
    if "dnn" in ctx.memory:
        dnn, targets = ctx.memory["dnn"]
    else:
        dnn, targets = _predictions(ctx, "dnn", [1], n_img)
    if "sweep" in ctx.memory:
        preds, _ = ctx.memory["sweep"]
    else:  # a resumed run: stage 1's own 2-sample predictions (a new sweep would draw other masks)
        names = {v: [[f"{v}-{i}-{n}" for n in (1, 2)] for i in range(len(ctx.paths[v]))]
                 for v in ("mcdo", "mcdo_smoothing")}
        saved = ctx.load_arrays("sweep", [k for by in names.values() for keys in by for k in keys])
        preds = {v: [{n: saved[f"{v}-{i}-{n}"] for n in (1, 2)} for i in range(len(ctx.paths[v]))]
                 for v in ("mcdo", "mcdo_smoothing")}
    members = [p[1] for p in dnn]
    S = len(members)
    de = {k: _deep_ensembles(members, k) for k in range(1, S + 1)}
    curve = {k: {m: float(np.mean([metrics.summarize(lp.exp(), targets, log_probs=lp)[m] for lp in de[k]]))
                 for m in KEYS} for k in de}
    smooth2 = [p[2] for p in preds["mcdo_smoothing"]]
    plain2 = [p[2] for p in preds["mcdo"]]
    rows = []
    for k in sorted({min(2, S), S}):
        a, b = f"deep ensemble of {k}", f"{LABELS['mcdo_smoothing']}, 2 samples"
        h = ctx.bootstrap({a: de[k], b: smooth2}, targets)  # the C(S, k) ensembles share members: see claims
        rows += [row(h, a, b, m, f"{NAMES[m]}: smoothing with 2 samples vs a deep ensemble of {k}") for m in KEYS]
    a, b = f"deep ensemble of {min(2, S)}", f"{LABELS['mcdo']}, 2 samples"
    h = ctx.bootstrap({a: de[min(2, S)], b: plain2}, targets)
    rows.append(row(h, a, b, "nll", f"NLL: plain MC dropout with 2 samples vs a deep ensemble of {min(2, S)} "
                                    f"(context)"))
    scaled, temperatures = _temperature_scaled(ctx, preds, targets)
    ood_rows, ood = _ood(ctx)
    rows += scaled + ood_rows
    for r in rows:  # not a claim of the paper: the numbers and intervals as context, no verdict either way
        r.update(verdict=None, primary=False, context=True)
        if r.get("note", "").startswith(ALL_SEEDS):
            r.pop("note")
    mc = ctx.results.get("sweep", {}).get("curves", {})
    lines = {LABELS[v]: _curve_means(c) for v, c in mc.items()}
    lines["deep ensemble (deterministic)"] = curve
    ctx.figure("ensembles", "ensemble_size", lines, None)
    return {"rows": rows, "deep_ensemble": curve, "members": S, "images": len(targets),
            "temperatures": temperatures, "ood": ood}


def _ood_sets(ctx) -> dict:
    """{name: ImageTensorDataset} of out-of-distribution images: for Fashion-MNIST the real handwritten digits of
    scikit-learn (upscaled to 28x28); for every data set synthetic uniform noise of the test images' shape."""
    from ops.data import datasets
    from ops.data.datasets import ImageTensorDataset

    n, test = ctx.s["ood"]["images"], ctx.test
    g = torch.Generator().manual_seed(ctx.s["seed"])
    noise = torch.randint(0, 256, (n, *test.images.shape[1:]), generator=g, dtype=torch.uint8)
    sets = {"noise (synthetic)": ImageTensorDataset(noise, torch.zeros(n, dtype=torch.long), test.classes, test.mean,
                                                    test.std, "synthetic_noise")}
    if ctx.dataset_name == "fashion_mnist":  # the library's own sets, as the notebook uses them
        sets = {"digits (scikit-learn, real)": datasets.get_ood_dataset("digits", n=n, seed=ctx.s["seed"]),
                "noise (synthetic)": datasets.get_ood_dataset("noise", n=n, seed=ctx.s["seed"])}
    return sets


def _ood_scores(ctx, net, dataset, sizes) -> dict:
    """{size: {score: (N,)}} of seeded MC predictions of `dataset` (msp, negative entropy, negative MI)."""
    from ops.evaluate import ood

    from ops.common.runtime import seeded

    x = next(iter(DeviceLoader(dataset, len(dataset), device=ctx.device)))[0]
    with seeded(ctx.s["seed"], ctx.device):
        lp = engine.predict_log_probs(net, x, max(sizes), max_batch=ctx.s["batch_size"] * 8)  # (S, N, C)
    return {m: ood.scores(lp[:m].double().exp()) for m in sizes}


def _ood(ctx) -> tuple:
    """Beyond the paper: OOD detection with and without smoothing (MC dropout at the settings' sizes): AUROC and
    FPR95 per network of each score, test images (in) against each OOD set (out); intervals over seeds."""
    from ops.evaluate.ood import detection_metrics

    o = ctx.s["ood"]
    inside, sets = corrupted_sets.take(ctx.test, o["images"]), _ood_sets(ctx)
    def compute(net):
        s_in = _ood_scores(ctx, net, inside, o["sizes"])
        s_out = {name: _ood_scores(ctx, net, ds, o["sizes"]) for name, ds in sets.items()}
        return {"found": {name: {m: {k: detection_metrics(s_in[m][k], s_out[name][m][k]) for k in s_in[m]}
                                 for m in o["sizes"]} for name in sets}}

    found = {v: [r["found"] for _, r in ctx.each(v, "ood", o, compute)]  # {variant: [{set: {size: {score: {metric:
             for v in ("mcdo", "mcdo_smoothing")}                           # value}}}} per seed]}
    rows, a, b = [], LABELS["mcdo"], LABELS["mcdo_smoothing"]
    for name in sets:
        for m in o["sizes"]:
            for score in ("msp", "neg_entropy", "neg_mi"):
                for metric, direction in (("auroc", "higher"), ("fpr95", "lower")):
                    per = {v: [np.array([run[name][m][score][metric]]) for run in runs] for v, runs in found.items()}
                    h = ctx.mean({a: per["mcdo"], b: per["mcdo_smoothing"]}, paired=False)
                    rows.append(row(h, a, b, "error" if metric == "fpr95" else "auroc",
                                    f"OOD {name}: {metric.upper()} of {score}, {m} samples", stat="mean",
                                    direction=direction))
    return rows, found


def _temperature_scaled(ctx, preds, targets) -> tuple:
    """Beyond the paper: does smoothing's calibration gain survive temperature scaling of both arms? Each network's
    predictive (1 and 2 MC samples; the log of the mean predictive serves as logits, so T scales the ensemble's
    predictive) is scaled by 2-fold cross-fitting on the test images: every image is scored with a T fitted on
    the other half, never on itself. Rows: smoothing - plain NLL and ECE after scaling."""
    from ops.evaluate.calibration import cross_fit

    rows, temperatures = [], {}
    for n in (1, 2):
        fitted = {v: [cross_fit(p[n].double(), targets, folds=2, seed=ctx.s["seed"]) for p in preds[v]]
                  for v in ("mcdo", "mcdo_smoothing")}
        temperatures[n] = {v: [list(f.temperatures) for f in fits] for v, fits in fitted.items()}
        a, b = f"{LABELS['mcdo']}, {n} sample{'s' * (n > 1)}, T-scaled", \
            f"{LABELS['mcdo_smoothing']}, {n} sample{'s' * (n > 1)}, T-scaled"
        h = ctx.bootstrap({a: [f.log_probs.float() for f in fitted["mcdo"]],
                           b: [f.log_probs.float() for f in fitted["mcdo_smoothing"]]}, targets)
        rows += [row(h, a, b, k, f"{NAMES[k]} after temperature scaling of both arms (2-fold cross-fitted), "
                                 f"{n} sample{'s' * (n > 1)}") for k in ("nll", "ece")]
    return rows, temperatures


def _corrupted_set(ctx, clean):
    r = ctx.s["robustness"]
    if ctx.official_c is not None:
        return corrupted_sets.load_cifar_c(ctx.official_c, ctx.dataset_name)
    return corrupted_sets.generate_corrupted(clean, ctx.data_root, corruptions=r["corruptions"],
                                             severities=r["severities"], profile=r["profile"], seed=ctx.s["seed"],
                                             workers=2)


def _cells_of(ctx, net, cset, clean, cells, sizes, n):
    """Per-image errors and NLL {n: (K, N)} over the K cells (the first n images of each), the clean ones
    {n: (N,)}, and each cell's metrics."""
    bs = ctx.s["batch_size"]
    example = next(iter(DeviceLoader(corrupted_sets.take(clean, bs), bs)))[0]
    prepared, stochastic = robustness.prepare(copy.deepcopy(net), example, channels_last=True)  # the shared
    # network stays as it was for the later stages
    kw = dict(sizes=sizes, fuse_bn=False, channels_last=True, mc=stochastic, seed=ctx.s["seed"])

    def score(ds):
        kept = {}
        res = engine.sweep(prepared, DeviceLoader(ds, bs), keep_predictions=kept, **kw)
        t = kept["targets"]
        err = {m: (kept[m].argmax(1) != t).double() for m in sizes}
        nll = {m: -kept[m].double().gather(1, t[:, None]).squeeze(1) for m in sizes}
        return err, nll, {m: {k: float(res[m][k]) for k in KEYS} for m in sizes}

    clean_err, clean_nll, clean_metrics = score(corrupted_sets.take(clean, n))
    errs, nlls, cell_metrics = {m: [] for m in sizes}, {m: [] for m in sizes}, {}
    for c, sev in cells:
        e, nl, mt = score(cset.dataset(c, sev, clean.mean, clean.std, classes=clean.classes, n=n))
        for m in sizes:
            errs[m].append(e[m])
            nlls[m].append(nl[m])
        cell_metrics[f"{c}/{sev}"] = mt
    return ({m: torch.stack(v) for m, v in errs.items()}, {m: torch.stack(v) for m, v in nlls.items()},
            clean_err, clean_metrics, cell_metrics)


ROBUSTNESS_PAIRS = (("mcdo", "mcdo_smoothing"), ("dnn", "dnn_smoothing"))


def _cells_id(cset, clean, cells, n) -> str:
    """A digest of the corrupted images every network is scored on (the cache key's data: a regenerated or
    replaced -C set is another computation)."""
    parts = [corrupted_sets.fingerprint(clean.images[:n], clean.labels[:n])]
    for c, sev in cells:
        ds = cset.dataset(c, sev, clean.mean, clean.std, classes=clean.classes, n=n)
        parts.append(corrupted_sets.fingerprint(ds.images, ds.labels))
    return hashlib.sha256(" ".join(parts).encode()).hexdigest()


def _robustness_units(ctx, variant, cset, clean, cells, sizes, n) -> tuple:
    """Per seed: {key: {size: (U,) units}} (errors and NLL per image averaged over the cells; ECE per cell) and
    the per-cell metrics, on the first n images of each cell."""
    units = {"mce": {m: [] for m in sizes}, "rel": {m: [] for m in sizes}, "nll": {m: [] for m in sizes},
             "ece": {m: [] for m in sizes}}
    per_cell = {}

    def compute(net):
        errs, nlls, clean_err, clean_m, cell_m = _cells_of(ctx, net, cset, clean, cells, sizes, n)
        return ({f"err{m}": errs[m] for m in sizes} | {f"nll{m}": nlls[m] for m in sizes}
                | {f"clean{m}": clean_err[m] for m in sizes} | {"clean": clean_m, "cells": cell_m})

    if ("cells_id", n) not in ctx.memory:
        ctx.memory["cells_id", n] = _cells_id(cset, clean, cells, n)
    settings = {"robustness": ctx.s["robustness"], "cells": cells, "sizes": sizes, "images_per_cell": n,
                "data": ctx.memory["cells_id", n]}
    for seed, r in ctx.each(variant, "robustness", settings, compute):
        errs, nlls, clean_err = ({m: r[f"{k}{m}"] for m in sizes} for k in ("err", "nll", "clean"))
        clean_m, cell_m = r["clean"], r["cells"]
        for m in sizes:
            units["mce"][m].append(errs[m].mean(0))          # (N,): mean error over the cells
            units["rel"][m].append(errs[m].mean(0) - clean_err[m])
            units["nll"][m].append(nlls[m].mean(0))
            units["ece"][m].append(np.array([cell_m[f"{c}/{sev}"][m]["ece"] for c, sev in cells]))  # (K,) cells
        per_cell[seed] = {"clean": clean_m, "cells": cell_m}
    return units, per_cell


ROBUSTNESS_ROWS = (("mce", "mCE (mean error over the cells, not AlexNet-normalised)", "error"),
                   ("nll", "NLL on corrupted images (mean over the cells)", "nll"),
                   ("ece", "ECE on corrupted images (mean over the cells; the cells are the units)", "ece"),
                   ("rel", "relative mCE (corruption error - clean error)", "error"))


def robustness_stage(ctx: Context) -> dict:
    """Claim 4: corrupted test images (15 corruptions x 5 severities), MC dropout at each size and deterministic
    networks, with and without smoothing: mCE, NLL and ECE under corruption (primary at one sample), relative mCE."""
    r = ctx.s["robustness"]
    clean = corrupted_sets.take(ctx.test, r["images_per_cell"])
    cset = _corrupted_set(ctx, clean)
    cells = [(c, s) for c in r["corruptions"] if c in cset.corruptions for s in r["severities"]]
    mc_sizes = sorted(set(r["sizes"]))
    units, per_cell, rows = {}, {}, []
    for pair in ROBUSTNESS_PAIRS:
        sizes = mc_sizes if pair[0] == "mcdo" else [1]
        for variant in pair:
            units[variant], per_cell[variant] = _robustness_units(ctx, variant, cset, clean, cells, sizes,
                                                                  r["images_per_cell"])
        a, b = LABELS[pair[0]], LABELS[pair[1]]
        for m in sizes:
            for key, what, metric in ROBUSTNESS_ROWS:
                h = ctx.mean({a: units[pair[0]][key][m], b: units[pair[1]][key][m]})
                arm = f"MC dropout, {m} sample{'s' * (m > 1)}" if pair[0] == "mcdo" else "deterministic"
                rows.append(row(h, a, b, metric, f"{arm}: {what}", stat="mean", direction="lower",
                                primary=(key != "rel" and m == sizes[0])))
    severity = _by_severity({v: per_cell[v] for v in ("mcdo", "mcdo_smoothing")}, r["severities"], mc_sizes)
    ctx.figure("robustness", "severity", severity, mc_sizes)
    curve_rows, curve = _corruption_curve(ctx, cset, clean, cells, skip=mc_sizes)
    return {"rows": rows + curve_rows, "cells": [f"{c}/{s}" for c, s in cells],
            "images_per_cell": r["images_per_cell"], "per_cell": per_cell, "by_severity": severity,
            "curve": curve, "set": str(cset)}


def _corruption_curve(ctx, cset, clean, cells, skip) -> tuple[list, dict]:
    """The paper's figure 9: NLL, accuracy and ECE on corrupted images against the MC ensemble size, with and
    without smoothing, on the first `corruption_curve.images_per_cell` images of each cell. Rows (not primary)
    at the sizes the main rows (`skip`) do not cover; returns (rows, {label: {size: {metric: mean over seeds}}})."""
    cv = ctx.s["corruption_curve"]
    sizes, n = sorted(set(cv["sizes"])), cv["images_per_cell"]
    units, lines = {}, {}
    for v in ("mcdo", "mcdo_smoothing"):
        units[v], _ = _robustness_units(ctx, v, cset, clean, cells, sizes, n)
        avg = lambda key, m, i: float(np.asarray(units[v][key][m][i], dtype=float).mean())  # noqa: E731
        per_seed = {i: {m: {"nll": avg("nll", m, i), "acc": 1.0 - avg("mce", m, i), "ece": avg("ece", m, i)}
                        for m in sizes} for i in range(len(units[v]["nll"][sizes[0]]))}
        lines[LABELS[v]] = _curve_means(per_seed)
    a, b = LABELS["mcdo"], LABELS["mcdo_smoothing"]
    rows = []
    for m in (m for m in sizes if m not in skip):
        for key, what, metric in ROBUSTNESS_ROWS[:3]:  # error, NLL and ECE, as its figure 9
            h = ctx.mean({a: units["mcdo"][key][m], b: units["mcdo_smoothing"][key][m]})
            rows.append(row(h, a, b, metric, f"MC dropout, {m} samples: {what} (the ensemble-size curve, {n} "
                                             f"images per cell)",
                            stat="mean", direction="lower"))
    ctx.figure("robustness_curve", "ensemble_size", lines, None,
               f"On corrupted images: {len(cells)} cells (corruption x severity), {n} images each, mean over seeds")
    return rows, lines


def _by_severity(per_cell, severities, sizes) -> dict:
    """{label: {size: {severity (0 = clean): {key: mean over corruptions and seeds}}}}."""
    out = {}
    for variant, by_seed in per_cell.items():
        out[LABELS[variant]] = {}
        for m in sizes:
            curve = {0: {k: float(np.mean([v["clean"][m][k] for v in by_seed.values()])) for k in KEYS}}
            for sev in severities:
                vals = [cell[m] for v in by_seed.values() for name, cell in v["cells"].items()
                        if name.endswith(f"/{sev}")]
                curve[sev] = {k: float(np.mean([x[k] for x in vals])) for k in KEYS}
            out[LABELS[variant]][m] = curve
    return out


def featuremaps(ctx: Context) -> dict:
    """Claim 5: MC variance of the stage outputs and their high-frequency amplitude, smoothing vs plain."""
    f = ctx.s["featuremaps"]
    images = next(iter(DeviceLoader(corrupted_sets.take(ctx.test, f["images"]), f["images"])))[0]
    groups = images.chunk(f["groups"])
    points = fm.stage_points(ctx.nets("mcdo")[0][1], images[:1])
    variance, profiles = {}, {}
    for variant in ("mcdo", "mcdo_smoothing"):
        variance[variant], profiles[variant] = [], []
        for seed, net in ctx.nets(variant):
            variance[variant].append([fm.mc_variance(net, g, points, samples=f["samples"], seed=ctx.s["seed"])
                                      for g in groups])
            profiles[variant].append([fm.fourier_profiles(net, g, points, seed=ctx.s["seed"]) for g in groups])
    at = {p: min(float(prof[p][0][-1]) for runs in profiles.values() for seed in runs for prof in seed)
          for p in points}  # each stage at the highest frequency every map of it reaches
    units = {v: {"variance": [np.array([np.mean([np.log10(g[p]["relative"]) for p in points]) for g in seed])
                              for seed in variance[v]],
                 "high": [np.array([np.mean([fm.profile_at(*prof[p], at[p]) for p in points]) for prof in seed])
                          for seed in profiles[v]]} for v in variance}
    a, b = LABELS["mcdo"], LABELS["mcdo_smoothing"]
    rows = []
    for key, what, primary in (
            ("variance", "log10 relative MC variance of the stage outputs (mean over stages)", True),
            # a 2x2 blur has no response at the Nyquist frequency: shown, but it cannot fail, so it does not decide
            ("high", "high-frequency log amplitude of the stage outputs (mean over stages; true by construction "
                     "right after a blur)", False)):
        h = ctx.mean({a: units["mcdo"][key], b: units["mcdo_smoothing"][key]})
        rows.append(row(h, a, b, key, what, stat="mean", direction="lower", primary=primary))
    for p in points:
        per = {v: [np.array([np.log10(g[p]["relative"]) for g in seed]) for seed in variance[v]] for v in variance}
        h = ctx.mean({a: per["mcdo"], b: per["mcdo_smoothing"]})
        rows.append(row(h, a, b, "variance", f"log10 relative MC variance after {p}", stat="mean", direction="lower"))
    rows += _following_stage_rows(ctx, groups, points, f, ctx.s["seed"])
    summary = {LABELS[v]: {p: {k: float(np.mean([g[p][k] for seed in variance[v] for g in seed]))
                               for k in ("variance", "power", "relative")} for p in points} for v in variance}
    mean_profiles = {LABELS[v]: {p: (profiles[v][0][0][p][0], torch.stack([g[p][1] for seed in profiles[v]
                                                                             for g in seed]).mean(0))
                                 for p in points} for v in profiles}
    ctx.figure("featuremaps", "featuremaps", summary, mean_profiles)
    return {"rows": rows, "points": points, "variance": summary, "frequencies": at}


def following_points(net: nn.Module, points: Sequence[str]) -> list[str]:
    """The end of the stage after each smoothed point (smoothK -> layerK+1, where the network has it): there a blur
    is no longer trivially a low-pass, so a lower MC variance or less high frequency is not true by construction."""
    names = dict(net.named_modules())
    out = []
    for p in points:
        if p.startswith("smooth") and p[6:].isdigit() and f"layer{int(p[6:]) + 1}" in names:
            out.append(f"layer{int(p[6:]) + 1}")
    return out


def _following_stage_rows(ctx, groups, points, f, seed) -> list:
    """Claim 5 where it can fail: log10 relative MC variance and high-frequency amplitude at the end of the stage
    that follows each smoothing layer, plain vs smoothing (units: image groups, as for the paper's rows)."""
    later = following_points(ctx.nets("mcdo")[0][1], points)
    if not later:
        return []
    units = {}
    for variant in ("mcdo", "mcdo_smoothing"):
        var, high = [], []
        for _, net in ctx.nets(variant):
            v = [fm.mc_variance(net, g, later, samples=f["samples"], seed=seed) for g in groups]
            prof = [fm.fourier_profiles(net, g, later, seed=seed) for g in groups]
            var.append(np.array([np.mean([np.log10(x[p]["relative"]) for p in later]) for x in v]))
            high.append(np.array([np.mean([fm.profile_at(*x[p], float(x[p][0][-1])) for p in later]) for x in prof]))
        units[variant] = {"variance": var, "high": high}
    a, b = LABELS["mcdo"], LABELS["mcdo_smoothing"]
    rows = []
    for key, what in (("variance", "log10 relative MC variance at the end of the following stage"),
                      ("high", "high-frequency log amplitude at the end of the following stage")):
        h = ctx.mean({a: units["mcdo"][key], b: units["mcdo_smoothing"][key]})
        rows.append(row(h, a, b, key, f"{what} ({', '.join(later)}; not true by construction)", stat="mean",
                        direction="lower", primary=True))
    return rows


def _landscape_units(summary, key):
    """The units an interval resamples: the masks for rise, |curvature| and roughness; the grid points of the
    spread are strongly correlated, so it counts once per network."""
    if key == "spread":
        return np.array([summary["mean_spread"]])
    return np.abs(summary[key]) if key == "curvature" else np.array(summary[key])


def _landscapes(ctx, key) -> tuple[dict, dict]:
    """({variant: [summary per seed]}, {variant: the first seed's Landscape}) of the grid settings `key`."""
    ls = ctx.s[key]
    summaries, first = {}, {}
    for variant in ("mcdo_mlp", "mcdo", "mcdo_smoothing"):
        summaries[variant] = []
        for seed, net in ctx.nets(variant):
            # the grid's resumable folder is the network's cache entry: another run over this network reads it
            with ctx.cache.workspace("landscape", ctx.shas[variant][seed], ls) as folder:
                finished, start = (folder / "landscape.json").is_file(), time.perf_counter()
                land = landscapes.landscape(net, ctx.train, n=ls["n"], scale=ls["scale"], norm=ls["norm"],
                                            n_masks=ls["masks"], seed=ctx.s["seed"], n_images=ls["images"],
                                            batch_size=ctx.s["batch_size"], progress=True, path=folder)
                ctx.cache.timed(folder, time.perf_counter() - start, finished)
            summaries[variant].append(landscapes.summary(land))
            first.setdefault(variant, land)
    return summaries, first


# (statistic, what it measures, primary on the original's grid, primary on the filter-normalised grid)
LANDSCAPE_STATS = (("rise", "mean rise of the loss over the grid (per mask)", True, False),
                   ("roughness", "roughness: RMS of the loss left by a quadratic fit (per mask)", True, False),
                   ("curvature", "magnitude of the curvature at the centre (per mask)", False, False),
                   ("spread", "spread of the loss across MC masks (one value per network)", False, True))


def landscapes_stage(ctx: Context) -> dict:
    """Claim 6: loss landscapes of the MLP head, the GAP head and GAP + smoothing. Primary: the original
    notebook's grid (+-0.1, its direction normalisation, training images, one mask per landscape): rise and
    roughness. Secondary: a filter-normalised +-1 grid with several masks: their spread, and the GIFs."""
    label = {**LABELS, "mcdo": "MC dropout, GAP head"}
    rows, out = [], {}
    for key, protocol in (("landscapes", "original grid"), ("landscapes_filter", "filter-normalised grid")):
        ls = ctx.s[key]
        summaries, first = _landscapes(ctx, key)
        where = (f"{protocol}: +-{ls['scale']:g}, {ls['norm']} directions, {ls['n']} x {ls['n']}, "
                 f"{ls['images']} training images, {ls['masks']} mask{'s' * (ls['masks'] > 1)}")
        for lo, hi, name in (("mcdo_mlp", "mcdo", "GAP head vs MLP head"),
                             ("mcdo", "mcdo_smoothing", "GAP + smoothing vs GAP head")):
            a, b = label[lo], label[hi]
            for stat, what, first_primary, filter_primary in LANDSCAPE_STATS:
                if stat == "spread" and ls["masks"] < 2:
                    continue  # one mask: no spread across masks
                h = ctx.mean({a: [_landscape_units(s, stat) for s in summaries[lo]],
                              b: [_landscape_units(s, stat) for s in summaries[hi]]}, paired=False)
                primary = first_primary if key == "landscapes" else filter_primary
                rows.append(row(h, a, b, stat, f"{name}: {what}; {where}", stat="mean", direction="lower",
                                primary=primary))
        out[key] = {v: [{k: s[f"mean_{k}"] for k in ("rise", "curvature", "spread", "roughness")} for s in runs]
                    for v, runs in summaries.items()}
        if key == "landscapes":
            ctx.figure("landscapes", "landscapes", {label[v]: land for v, land in first.items()})
        else:
            out["gifs"] = ctx.gifs({label[v]: land for v, land in first.items()})
    return {"rows": rows, "summaries": out.pop("landscapes"), "filter_summaries": out.pop("landscapes_filter"),
            "gifs": out["gifs"]}


def hessians_stage(ctx: Context) -> dict:
    """Claim 7: the top Hessian eigenvalue of each mini-batch (the same batches for all): plain vs smoothing, and
    the MLP head vs the GAP head."""
    hs = ctx.s["hessians"]
    spectra = {}
    def compute(net):
        return hessians.max_eigenvalue_spectrum(net, ctx.train, n_batches=hs["batches"], batch_size=hs["batch_size"],
                                                max_iter=hs["max_iter"], tol=hs["tol"], seed=ctx.s["seed"],
                                                progress=True)

    for variant in ("mcdo_mlp", "mcdo", "mcdo_smoothing"):
        spectra[variant] = [spec for _, spec in ctx.each(variant, "hessians", hs, compute)]
    label = {**LABELS, "mcdo": "MC dropout, GAP head"}
    # an unconverged power iteration understates the magnitude (and may miss the sign): its share is shown
    converged = {v: float(np.mean([c for s in runs for c in s["converged"]])) for v, runs in spectra.items()}
    rows = []
    # The paper's Algorithm 1 keeps each mini-batch's top eigenvalue with its sign: the magnitude is the claim,
    # the share of negative ones (negative curvature at the trained weights) is shown beside it.
    per = {"magnitude": lambda s: np.abs(s["eigenvalues"]), "negative": lambda s: np.array(s["eigenvalues"]) < 0,
           "eigenvalues": lambda s: np.array(s["eigenvalues"]), "normalised": lambda s: np.abs(s["normalised"])}
    for lo, hi, name in (("mcdo", "mcdo_smoothing", "smoothing vs plain"),
                         ("mcdo_mlp", "mcdo", "GAP head vs MLP head")):
        a, b = label[lo], label[hi]
        for key, what, primary in (
                ("magnitude", "magnitude of the top Hessian eigenvalue per mini-batch (mean)", True),
                ("negative", "share of mini-batches whose top eigenvalue is negative", False),
                ("eigenvalues", "top Hessian eigenvalue per mini-batch, signed (mean)", False),
                ("normalised", "magnitude of the top eigenvalue x squared weight norm per mini-batch (scale-free, "
                               "mean)", False)):
            h = ctx.mean({a: [per[key](s).astype(float) for s in spectra[lo]],  # the same mini-batches for all
                          b: [per[key](s).astype(float) for s in spectra[hi]]})
            if key == "magnitude":
                what += (f"; the power iteration converged on {100 * converged[lo]:.0f}% ({a}) and "
                         f"{100 * converged[hi]:.0f}% ({b}) of the mini-batches")
            r = row(h, a, b, "error" if key == "negative" else key, f"{name}: {what}", stat="mean",
                    direction="lower", primary=primary)
            if key == "negative":  # descriptive: the paper claims nothing about the sign
                r.pop("note", None)
                r.update(verdict=None, context=True)
            rows.append(r)
    keep = ("eigenvalues", "normalised", "iterations", "converged", "history", "weight_norm_sq")
    out = {label[v]: [{k: s[k] for k in keep} for s in runs] for v, runs in spectra.items()}
    ctx.figure("hessians", "hessians", out)
    return {"rows": rows, "spectra": out, "converged": {label[v]: c for v, c in converged.items()}}


# (other arm, claimed arm, what is compared) of claim 8
SPECIAL_PAIRS = (("mcdo_mlp", "mcdo", "GAP head vs MLP head"), ("mcdo", "mcdo_preact", "pre-activation vs post"),
                 ("mcdo", "mcdo_relu6", "ReLU6 vs ReLU"))


def _train_nll(ctx, variant, n) -> list:
    """[(N,) per-image NLL of n un-augmented training images, one MC sample, per seed]: does the head overfit?"""
    def compute(net):
        kept = {}
        loader = DeviceLoader(corrupted_sets.take(ctx.train, n), ctx.s["batch_size"], device=ctx.device)
        engine.sweep(net, loader, sizes=[1], keep_predictions=kept, seed=ctx.s["seed"])
        return {"nll": -kept[1].double().gather(1, kept["targets"][:, None]).squeeze(1)}

    return [r["nll"] for _, r in ctx.each(variant, "train_nll", {"train_images": n}, compute)]


def _special_predictions(ctx, variant, sizes, images) -> tuple[list, torch.Tensor]:
    """_predictions of claim 8, where the plain MC dropout networks' come from claim 1's sweep when it scored the
    same images and kept these sizes: the first n of its masks, not a second pass over 10,000 images x n."""
    if variant == "mcdo" and special_reuses_sweep(ctx.s):
        found = _sweep_entries(ctx, variant)
        return [{n: r[f"p{n}"] for n in sizes} for _, r in found], found[-1][1]["targets"]
    return _predictions(ctx, variant, sizes, images)


def special(ctx: Context) -> dict:
    """Claim 8: GAP, pre-activation and ReLU6 against the plain MC dropout network (test NLL, accuracy and ECE at
    1 sample and the largest size), and the MLP vs GAP heads' training NLL. Variants not trained yet are named."""
    sp, rows, missing = ctx.s["special"], [], []
    sizes = sorted(set(sp["sizes"]))
    preds = {}
    for lo, hi, what in SPECIAL_PAIRS:
        absent = [v for v in (lo, hi) if not ctx.paths.get(v)]
        if absent:
            missing += [f"{what}: no trained {v} network" for v in absent if v not in missing]
            continue
        for v in (lo, hi):
            if v not in preds:
                preds[v], targets = _special_predictions(ctx, v, sizes, sp["images"])
        a, b = LABELS[lo], LABELS[hi]
        for n in sizes:
            h = ctx.bootstrap({a: [p[n] for p in preds[lo]], b: [p[n] for p in preds[hi]]}, targets)
            rows += [row(h, a, b, k, f"{NAMES[k]}: {what}, {n} sample{'s' * (n > 1)}",  # the figure labels by pair
                         primary=(k == "nll" and n == sizes[0])) for k in KEYS]
    if ctx.paths.get("mcdo_mlp") and ctx.paths.get("mcdo"):
        a, b = LABELS["mcdo_mlp"], LABELS["mcdo"]
        h = ctx.mean({a: _train_nll(ctx, "mcdo_mlp", sp["train_images"]),
                      b: _train_nll(ctx, "mcdo", sp["train_images"])}, paired=True)
        r = row(h, a, b, "nll", f"GAP head vs MLP head: training NLL ({sp['train_images']} training images, no "
                                f"augmentation, 1 sample; the paper's Table 1: the MLP head does not overfit, i.e. "
                                f"its training NLL is not below the GAP head's while its test NLL is above)",
                stat="mean")
        r.pop("note", None)
        rows.append(dict(r, verdict=None, context=True))  # what it shows is read beside the test rows
    drawn = [r for r in rows if not r.get("context")]
    if drawn:
        ctx.figure("special", "forest", drawn, "Special cases: claimed arm - other arm")
    return {"rows": rows, "missing": missing}


STAGES = {"sweep": sweep, "deterministic": deterministic, "ensembles": ensembles, "robustness": robustness_stage,
          "featuremaps": featuremaps, "landscapes": landscapes_stage, "hessians": hessians_stage, "special": special}
