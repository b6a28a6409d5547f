"""The report of a paper run: report.md, report.html (figures embedded) and results.json, from the stages'
results. The document is a list of blocks (heading, paragraph, table, image) rendered twice, so the Markdown and
the HTML always say the same."""
from __future__ import annotations

import base64
import datetime
import html
import json
from pathlib import Path

from models.atomic import write_json, write_text
from ops.paper.claims import ALL_SEEDS, CLAIMS

PERCENT = {"acc", "ece", "error", "auroc"}
METHOD = ("Each row compares a claimed arm (b) with another (a) on the same test units. Values are means over "
          "seeds. An interval combines two sources of uncertainty: the seeds (independently trained networks: the "
          "between-seed variance of the per-seed values over S) and the test units (a bootstrap of the images, "
          "mini-batches or MC masks, the same draws for both arms where the units are the same); it is the "
          "estimate +- Student's t with S - 1 degrees of freedom times the square root of their sum, at the "
          "{level:g}% level (with 3 seeds t is 4.30: a percentile bootstrap over 3 seeds would be too narrow). "
          "Verdict: *supported* if the interval of b - a excludes 0 in the claimed direction, *contradicted* if "
          "it excludes 0 the other way, *not resolved* otherwise; where an arm has a single network (one seed, "
          "or the one deep ensemble of all seeds) there is no seed level and the verdict is withheld (not "
          "resolved). Beside each verdict: how many seeds point the claimed way: each network of the claimed arm "
          "against the other arm's mean over seeds (independently trained variants have no natural pairing), or "
          "network i against network i where both arms are the same networks (e.g. 50 MC samples vs 1); where "
          "every seed does but the interval crosses zero, the row says so and stays not resolved. A claim that b "
          "*matches* a reads as 'not worse by more than a margin', 10% of what plain MC dropout's own 1 -> 50 "
          "samples change in the same metric: supported if the whole interval is better than that margin, "
          "contradicted if it is entirely worse. Measurements (the equivalent ensemble size) and rows of the "
          "section beyond the paper carry no verdict. An arm's own interval (its mean +- t times its standard "
          "error) can pass 0 or 100%: only the differences decide. Accuracy, ECE and errors are in percent, their "
          "differences in points.")


def fmt(metric: str, value: float) -> str:
    """'estimate [low, high]' in the metric's units (accuracy, ECE and error in percent)."""
    if isinstance(value, (list, tuple)):
        est, low, high = value
        return f"{fmt(metric, est)} [{fmt(metric, low)}, {fmt(metric, high)}]"
    if metric in PERCENT:
        return f"{100 * value:.2f}"
    if metric == "nll":
        return f"{value:.4f}"
    return f"{value:.3g}"


def _row_cells(r) -> list:
    if r.get("combined"):
        return [r["quantity"], "", "", f"per size: see below ({len(r['sizes'])} sizes)", _verdict_cell(r)]
    if r.get("kind") == "equivalent":
        return [r["quantity"], f"paper: {r['paper']}", "", r["text"], _verdict_cell(r)]
    unit = " (%)" if r["metric"] in PERCENT else ""
    note = f" ({r['note']})" if r.get("note") and not _all_seeds(r) else ""
    return [r["quantity"] + unit + note, f"{r['a']}: {fmt(r['metric'], r['value_a'])}",
            f"{r['b']}: {fmt(r['metric'], r['value_b'])}", fmt(r["metric"], r["difference"]), _verdict_cell(r)]


MEASUREMENT = "measurement (no verdict)"  # a primary row that is a quantity, not a comparison (the equivalent size)


def _all_seeds(r) -> bool:
    """Whether the row's note is 'every seed points the claimed way, but the interval crosses zero'."""
    return str(r.get("note", "")).startswith(ALL_SEEDS)


def _directions(r) -> str:
    """The per-seed direction, and in words where every seed points the claimed way but the interval crosses zero
    ("5 of 5 seeds lower: every seed points the claimed way, but the interval crosses zero")."""
    text = (r.get("direction") or {}).get("text", "")
    return f"{text}: {ALL_SEEDS}" if text and _all_seeds(r) else text


def _verdict_cell(r) -> str:
    """The verdict with the per-seed direction beside it ("**not resolved** (5 of 5 seeds lower)")."""
    if r.get("verdict") is None:
        return MEASUREMENT if r.get("kind") == "equivalent" else "context (no verdict)"
    direction = _directions(r)
    return f"**{r['verdict']}**" + (f" ({direction})" if direction else "")


def _difference(r) -> str:
    """A primary row's difference as the tables print it (the equivalent size: its estimate and interval)."""
    if r.get("kind") == "equivalent":
        return r["text"]
    return "" if r.get("combined") else fmt(r["metric"], r["difference"])


def _verdict_table(results) -> tuple:
    rows = [[n, title, r["quantity"], _difference(r), _verdict_cell(r)]
            for n, title, r in _primary({"claims": results, "titles": {c.key: c.title for c in CLAIMS}})]
    return ("table", ["#", "claim", "measured (claimed arm - other)", "difference [interval]", "verdict"], rows)


def _grid(g) -> str:
    return (f"+-{g['scale']:g}, {g['n']}x{g['n']} points, {g['norm']} directions, {g['images']} training images, "
            f"{g['masks']} MC mask{'s' * (g['masks'] > 1)}")


def _scratch(timings, reused) -> str:
    """The time a run from scratch takes: what the stages took plus what the results they read from the
    per-network cache took to compute, each as recorded when it was computed (on this machine kind: the key)."""
    cached = sum(reused.values())
    if cached <= 0:
        return " Nothing came from the per-network cache: these are the times from scratch."
    return (f" From scratch, with nothing cached, about {(sum(timings.values()) + cached) / 60:.1f} min: the stage "
            f"times plus the {cached / 60:.1f} min that the per-network results read from the cache took to compute "
            f"(each timed when computed, on this machine kind); per stage: "
            + ", ".join(f"{k} {(v + reused.get(k, 0.0)) / 60:.1f} min" for k, v in timings.items()) + ".")


def _header(meta, timings, total, reused) -> list:
    s, m = meta["settings"], meta["machine"]
    mode = {"full": "full", "quick": "QUICK=1 (fewer images, masks and batches than the full report: less precise)",
            "smoke": "smoke test (tiny untrained networks, synthetic data: the numbers mean nothing)"}[s["mode"]]
    blocks = [("h1", f"Spatial smoothing: the original's claims on {meta['dataset']}"),
              ("p", f"Run `{meta['uid']}`, {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}; mode: {mode}. "
                    f"Networks: the reference set of `{meta['config']}`, seeds {meta['seeds']} "
                    f"({len(meta['networks'])} variants). Test images: {s['sweep']['images']} of {meta['test']['n']} "
                    f"for the sweeps; {s['robustness']['images_per_cell']} per corrupted cell; "
                    f"landscapes: the original's grid ({_grid(s['landscapes'])}) and a filter-normalised one "
                    f"({_grid(s['landscapes_filter'])}); {s['hessians']['batches']} Hessian "
                    f"mini-batches of {s['hessians']['batch_size']}; {s['n_boot']} bootstrap resamples."),
              ("p", f"Machine: {m.get('cpu')} ({m.get('cpu_capability')}, {m.get('threads')} threads, torch "
                    f"{m.get('torch')}{', imitation ' + str(m['imitation']) if m.get('imitation') else ''}). "
                    f"Time: {total / 60:.1f} min for this invocation; per stage (each when it ran, earlier "
                    f"invocations of a resumed run included): " + ", ".join(f"{k} {v / 60:.1f} min"
                                                                           for k, v in timings.items()) + "."
                    + _scratch(timings, reused))]
    blocks += _networks_and_settings(meta)
    if len(meta["seeds"]) < 2:
        blocks.append(("p", "**One seed**: no interval covers training-to-training variation, so every verdict is "
                            "withheld (not resolved); the numbers describe these networks only."))
    if meta["dataset"] not in ("cifar10", "cifar100"):
        blocks.append(("p", "The paper's own setting, CIFAR-100 with `configs/cifar100_reference.json` (ResNet-18 "
                            "at width 64, the official CIFAR-100-C), is validated here by `python -m ops.paper "
                            "--check --config configs/cifar100_reference.json` but not run: it needs a GPU, the "
                            "data and that trained set."))
    return blocks


def _networks_and_settings(meta) -> list:
    """The header's record of what was run: every network by its sha256 (the file names are the set's), and each
    stage's settings as run."""
    s = meta["settings"]
    nets = [[v, str(seed), f"`{Path(n['path']).name}`", f"`{n['sha256']}`"]
            for v, by in meta["networks"].items() for seed, n in by.items()]
    stages = [[k, f"`{json.dumps(v, separators=(', ', ': '))}`"] for k, v in s.items() if isinstance(v, dict)]
    other = ", ".join(f"{k} {v}" for k, v in s.items() if not isinstance(v, dict))
    return [("p", f"The {len(nets)} networks, by the sha256 of their weights files:"),
            ("table", ["variant", "seed", "file", "sha256"], nets),
            ("p", f"The settings of this run ({other}; images and batches are counts):"),
            ("table", ["stage", "settings"], stages)]


def _claim_blocks(c, result, figures) -> list:
    blocks = [("h2", c.heading), ("p", c.words)]
    rows = result.get("rows", [])
    primary = [r for r in rows if r.get("primary")]
    if primary:
        blocks.append(("p", "Verdict: " + "; ".join(
            f"{r['quantity']}: " + (r["text"] if r.get("kind") == "equivalent" else f"**{r['verdict']}**")
            for r in primary) + "."))
    if result.get("missing"):
        blocks.append(("p", "Not measured yet: " + "; ".join(result["missing"]) + " (train them with `python -m "
                            "ops.run train-set <the set config>`; a new run then includes them)."))
    for f in figures:
        blocks.append(("img", f, f"claim {c.number or c.key}"))
    blocks.append(("p", c.paper))
    header = ["quantity", "a", "b (claimed)", "b - a [interval]", "verdict"]
    blocks.append(("table", header, [_row_cells(r) for r in rows]))
    return blocks


def blocks(meta: dict, results: dict, figures: dict, timings: dict, total: float, reused: dict | None = None
           ) -> list:
    s = meta["settings"]
    out = _header(meta, timings, total, reused or {})
    out += [("h2", "Verdicts"), _verdict_table(results),
            ("p", METHOD.format(level=100 * s["level"]))]
    for c in CLAIMS:
        out += _claim_blocks(c, results.get(c.key, {}), figures.get(c.key, []))
    return out


def to_markdown(doc: list) -> str:
    lines = []
    for b in doc:
        if b[0] in ("h1", "h2"):
            lines += ["#" * int(b[0][1]) + " " + b[1], ""]
        elif b[0] == "p":
            lines += [b[1], ""]
        elif b[0] == "img":
            lines += [f"![{b[2]}]({b[1]})", ""]
        elif b[0] == "table":
            lines += ["| " + " | ".join(b[1]) + " |", "|" + " --- |" * len(b[1])]
            lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in r) + " |" for r in b[2]] + [""]
    return "\n".join(lines)


def _inline(text) -> str:
    """Escape, then the two inline marks the report uses: **bold** and `code`."""
    out, parts = [], html.escape(text).split("**")
    for i, part in enumerate(parts):
        code = part.split("`")
        part = "".join(f"<code>{p}</code>" if j % 2 else p for j, p in enumerate(code))
        out.append(f"<b>{part}</b>" if i % 2 else part)
    return "".join(out)


def to_html(doc: list, folder: Path) -> str:
    body = []
    for b in doc:
        if b[0] in ("h1", "h2"):
            body.append(f"<{b[0]}>{_inline(b[1])}</{b[0]}>")
        elif b[0] == "p":
            body.append(f"<p>{_inline(b[1])}</p>")
        elif b[0] == "img":
            data = base64.b64encode((Path(folder) / b[1]).read_bytes()).decode()
            kind = "gif" if b[1].endswith(".gif") else "png"
            body.append(f'<p><img alt="{html.escape(b[2])}" src="data:image/{kind};base64,{data}"></p>')
        elif b[0] == "table":
            head = "".join(f"<th>{_inline(h)}</th>" for h in b[1])
            rows = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in b[2])
            body.append(f"<table><tr>{head}</tr>{rows}</table>")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:auto;line-height:1.4}table{border-collapse:"
             "collapse;font-size:0.85em}td,th{border:1px solid #ccc;padding:3px 6px}img{max-width:100%}")
    return f"<!doctype html><html><head><meta charset='utf-8'><style>{style}</style></head><body>" \
           + "\n".join(body) + "</body></html>\n"


def write(folder: Path, meta: dict, results: dict, figures: dict, timings: dict, total: float,
          reused: dict | None = None) -> Path:
    """report.md, report.html and results.json in `folder`; returns the Markdown's path. reused: {stage: seconds
    that the per-network results it read from the cache took to compute}."""
    folder = Path(folder)
    doc = blocks(meta, results, figures, timings, total, reused)
    write_json(folder / "results.json", {"run": meta, "seconds": timings, "total_seconds": total,
                                         "reused_seconds": reused or {},
                                         "titles": {c.key: c.title for c in CLAIMS},
                                         "claims": {c.key: results.get(c.key) for c in CLAIMS}})
    write_text(folder / "report.html", to_html(doc, folder))
    return write_text(folder / "report.md", to_markdown(doc))


def _primary(data: dict) -> list[tuple[str, str, dict]]:
    """(claim number, title, row) of each primary row of a results.json, numbered and titled as its report was
    (a report of the first version recorded no titles: its own are FIRST_TITLES and FIRST_NUMBERS)."""
    titles, numbers = (data["titles"], {}) if data.get("titles") else (FIRST_TITLES, FIRST_NUMBERS)
    return [(numbers.get(c.key, c.number), titles.get(c.key, c.title), r) for c in CLAIMS
            for r in (data["claims"].get(c.key) or {}).get("rows", []) if r.get("primary")]


def verdicts(results_json: str | Path | dict) -> list:
    """[(claim number, title, quantity, verdict)] of the primary rows of a results.json (for the README; a
    measurement's verdict: 'measurement (no verdict)')."""
    data = json.loads(Path(results_json).read_text()) if not isinstance(results_json, dict) else results_json
    return [(n, title, r["quantity"], r["verdict"] or MEASUREMENT) for n, title, r in _primary(data)]


def readme_table(results_json: str | Path | dict) -> str:
    """The README's verdict table (markdown) of a full run's results.json: the primary row of each claim, its
    difference as the report prints it, its verdict and the per-seed directions. `python -m ops.paper --readme`
    writes it. Anything but a full run's results.json is refused with a ValueError naming it."""
    data, fix = results_json, "give the results.json beside a full run's report.md"
    if not isinstance(results_json, dict):
        try:
            data = json.loads(Path(results_json).read_text())
        except OSError as exc:
            raise ValueError(f"cannot read {results_json} ({exc.strerror or exc}): {fix}") from None
        except ValueError as exc:
            raise ValueError(f"{results_json} is not JSON ({exc}): {fix}") from None
    run = data.get("run") if isinstance(data, dict) else None
    settings = run.get("settings") if isinstance(run, dict) else None
    mode = settings.get("mode") if isinstance(settings, dict) else None
    if not isinstance(data, dict) or not isinstance(data.get("claims"), dict) or mode is None:
        raise ValueError(f"{results_json} is not the results.json of a paper run (no claims or settings): {fix}")
    if mode != "full":
        raise ValueError(f"{results_json} is the results.json of a {mode} run: the README shows a full run's "
                         f"verdicts (make paper, without QUICK=1)")
    try:
        return _readme_table(data)
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise ValueError(f"{results_json} is not a complete results.json ({type(exc).__name__}: {exc}): "
                         f"{fix}") from None


def _readme_table(data: dict) -> str:
    cells = []
    for n, title, r in _primary(data):
        diff = "per size: see the report" if r.get("combined") else _difference(r)
        cells.append([n, title, r["quantity"], diff, r["verdict"] or MEASUREMENT, _directions(r)])
    header = ["#", "claim", "row (claimed arm - other arm)", "difference [95% interval]", "verdict", "seeds"]
    return to_markdown([("table", header, cells)]).rstrip("\n")  # the report's own table markdown


README_MARKS = ("<!-- --8<-- [start:verdicts] -->", "<!-- --8<-- [end:verdicts] -->")


def write_readme_table(readme: str | Path, results_json: str | Path) -> None:
    """Replace the table between the README's verdict marks by readme_table(results_json)."""
    path = Path(readme)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run the command in the repository's root, where README.md is")
    text = path.read_text()
    start, end = (text.find(m) for m in README_MARKS)
    if start < 0 or end < start:
        raise ValueError(f"{path} has no verdict table between {README_MARKS[0]} and {README_MARKS[1]}: put the "
                         f"two marks where the table belongs")
    body = f"{README_MARKS[0]}\n\n{readme_table(results_json)}\n\n"
    write_text(path, text[:start] + body + text[end:])


# The claims' titles of reports written before results.json recorded them (the first full run, 3 seeds).
FIRST_TITLES = {"sweep": "MC dropout + smoothing with 2 samples matches MC dropout with 50",
                "deterministic": "Smoothing helps deterministic networks too",
                "ensembles": "Blurs behave like ensembles",
                "robustness": "Smoothing improves robustness to corruptions",
                "featuremaps": "Smoothing steadies and low-passes the feature maps",
                "landscapes": "GAP and smoothing flatten and steady the loss landscape",
                "hessians": "Smoothing suppresses the large Hessian eigenvalues"}
FIRST_NUMBERS = {key: str(i) for i, key in enumerate(FIRST_TITLES, 1)}  # and the numbers: one per stage
