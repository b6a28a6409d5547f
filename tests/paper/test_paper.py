"""`make paper`: the smoke report has every claim with numbers, an interval and a verdict computed from it; a
killed run resumes with its finished stages; settings and configs are checked at the boundary."""
import json
import re
from pathlib import Path

import pytest

from ops.paper import PaperError, check, pipeline, settings, stages
from ops.paper.__main__ import main
from ops.train import sets

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "fashion_mnist_reference.json"
CIFAR = ROOT / "configs" / "cifar100_reference.json"


def _rule(interval, better, margin):
    """The verdict rule written out independently of ops.evaluate.intervals.verdict."""
    _, low, high = interval
    if better == "higher":
        low, high = -high, -low
    return "supported" if high < margin else "contradicted" if low > margin else "not resolved"


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """A smoke run killed in stage 5, then resumed under its uid (the finished stages are kept)."""
    out = tmp_path_factory.mktemp("paper")
    original = stages.STAGES["featuremaps"]

    def killed(ctx):
        raise KeyboardInterrupt("killed in stage 5")

    stages.STAGES["featuremaps"] = killed
    try:
        with pytest.raises(KeyboardInterrupt):
            pipeline.run(CONFIG, smoke=True, out=out)
    finally:
        stages.STAGES["featuremaps"] = original
    (folder,) = [p for p in out.iterdir() if p.name not in ("data", "cache")]
    finished = sorted(p.name for p in (folder / "stages").iterdir())
    return pipeline.run(CONFIG, smoke=True, out=out, uid=folder.name), finished


def verdicts_of(md: str) -> list[list[str]]:
    """The cells of the report's verdict table."""
    table = md.split("## Verdicts")[1].split("\n\n")[1].splitlines()[2:]
    return [[c.strip() for c in line.strip("|").split(" | ")] for line in table]


def test_the_smoke_report_has_every_claim_with_numbers_an_interval_and_a_verdict(smoke_run):
    folder, _ = smoke_run
    md = (folder / "report.md").read_text()
    # numbered as issue 31 lists the claims: 1-2 share the sweep, deep ensembles are beyond the paper (no number)
    headings = re.findall(r"\n## (Claims? [\d-]+|Beyond the paper)", md)
    assert headings == ["Claims 1-2", "Claim 3", "Beyond the paper", *(f"Claim {i}" for i in range(4, 9))]
    sections = re.split(r"\n## (?:Claims? [\d-]+|Beyond the paper)", md)
    assert len(sections) == 9  # the header (with the verdict table) and eight sections
    for section in sections[1:]:
        assert re.search(r"\*\*(supported|contradicted|not resolved)\*\*", section) or "context (no verdict)" in section
        assert re.search(r"-?\d+\.\d+ \[-?\d+\.\d+(e-?\d+)?, -?\d+\.\d+(e-?\d+)?\]", section)  # estimate [low, high]
        assert "Paper" in section  # the paper's CIFAR-100 line beside our figures
        assert "![claim" in section
    results = json.loads((folder / "results.json").read_text())
    assert set(results["claims"]) == set(settings.STAGES)
    for key, claim in results["claims"].items():
        primary = [r for r in claim["rows"] if r.get("primary")]
        assert bool(primary) == (key != "ensembles"), f"claim {key}: primary rows {len(primary)}"  # context only
        for r in claim["rows"]:
            if r.get("context"):  # beyond the paper: numbers and intervals, never a verdict
                assert r["verdict"] is None and not r["primary"]
            elif "difference" in r:
                est, low, high = r["difference"]
                assert low <= high
                # withheld where an arm is one network (the deep ensemble of every seed): no seed level
                expected = "not resolved" if r.get("note") else _rule(r["difference"], r["better"], r["margin"])
                assert r["verdict"] == expected
    # claim 6 on the original's grid (rise and roughness primary) and on the filter-normalised one (mask spread);
    # claim 7 for smoothing vs plain and for the GAP head vs the MLP head
    land = results["claims"]["landscapes"]["rows"]
    assert {(r["metric"], "original grid" in r["quantity"]) for r in land if r["primary"]} == {
        ("rise", True), ("roughness", True), ("spread", False)}
    assert {r["quantity"].split(":")[0] for r in land} == {"GAP head vs MLP head", "GAP + smoothing vs GAP head"}
    hess = [r for r in results["claims"]["hessians"]["rows"] if r["primary"]]
    assert sorted(r["quantity"].split(":")[0] for r in hess) == ["GAP head vs MLP head", "smoothing vs plain"]
    # claim 4's ensemble-size curve under corruption (the paper's figure 9) goes beyond the primary rows' sizes
    robust = results["claims"]["robustness"]
    assert len(robust["curve"]) == 2 and all(sorted(c, key=int) == ["1", "3"] for c in robust["curve"].values())
    beyond = [r for r in robust["rows"] if "ensemble-size curve" in r["quantity"]]
    assert {(r["metric"], "3 samples" in r["quantity"]) for r in beyond} == {("error", True), ("nll", True),
                                                                             ("ece", True)}
    assert (folder / "figures" / "robustness_curve.png").is_file()
    withheld = [r for r in results["claims"]["ensembles"]["rows"] if r.get("note")]
    S = len(results["run"]["seeds"])  # the one ensemble of all seeds has no seed level; smaller ones have
    assert withheld and all(r["a"] == f"deep ensemble of {S}" for r in withheld)
    html = (folder / "report.html").read_text()
    assert html.count("data:image/gif;base64,") == 3  # MLP head, GAP head, GAP + smoothing
    assert html.count("data:image/png;base64,") >= 7
    assert "smoke test" in md and "--check --config configs/cifar100_reference.json" in md
    # the header names every network by its sha256 and every stage's settings, before the verdicts
    header = md.split("## Verdicts")[0]
    nets = [n for by in results["run"]["networks"].values() for n in by.values()]
    assert nets and all(f"`{n['sha256']}`" in header for n in nets)
    assert f"| robustness | `{json.dumps(results['run']['settings']['robustness'], separators=(', ', ': '))}` |" \
        in header
    # claim 4's rows say which arm they are (MC dropout at a size, or deterministic)
    primary = [r["quantity"] for r in robust["rows"] if r["primary"]]
    assert {q.split(":")[0] for q in primary} == {"MC dropout, 1 sample", "deterministic"}
    # the README's table of such a run: numbered as the report, the equivalent size a measurement without verdict
    from ops.paper.report import _readme_table
    table = _readme_table(results).splitlines()
    assert [line.split(" | ")[0] for line in table[2:]] == [f"| {r[0]}" for r in verdicts_of(md)]
    equivalent = [line for line in table if "equivalent ensemble size" in line]
    assert len(equivalent) == 1 and "| measurement (no verdict) |" in equivalent[0]


def test_a_killed_run_resumes_with_its_finished_stages_and_refuses_other_settings(smoke_run, tmp_path, capsys):
    folder, finished_before = smoke_run
    assert finished_before == ["deterministic.json", "ensembles.json", "robustness.json", "sweep.json"]
    assert sorted(p.stem for p in (folder / "stages").iterdir()) == sorted(settings.STAGES)
    capsys.readouterr()
    pipeline.run(CONFIG, smoke=True, out=folder.parent, uid=folder.name)  # everything finished: kept
    assert capsys.readouterr().out.count("finished earlier, kept") == 8
    other = tmp_path / "config.json"
    other.write_text(json.dumps({**json.loads(CONFIG.read_text()), "paper": {"level": 0.9}}))
    with pytest.raises(PaperError, match="other settings"):
        pipeline.run(other, smoke=True, out=folder.parent, uid=folder.name)


def test_the_stages_print_their_number_and_the_time_left(smoke_run, capsys):
    folder, _ = smoke_run
    pipeline.run(CONFIG, smoke=True, out=folder.parent / "again")
    out = capsys.readouterr().out
    for i in range(1, 9):
        assert re.search(rf"\[stage {i} of 8\] .*; time left: about \d+m\d\ds", out)


@pytest.mark.parametrize("override, message", [
    ({"sweep": {"imgs": 10}}, r"paper.sweep.imgs is not a setting \(known here: images"),
    ({"sweep": {"interval_sizes": [1, 5]}}, "include 2"),
    ({"landscapes": {"n": 4}}, "must be odd"),
    ({"landscapes_filter": {"masks": 1}}, "landscapes_filter.masks must be at least 2"),
    ({"landscapes": {"norm": "rows"}}, r"landscapes.norm must be one of"),
    ({"corruption_curve": {"images_per_cell": 5000}}, "must not exceed paper.robustness.images_per_cell"),
    ({"level": 1.5}, "between 0 and 1"),
    ({"robustness": {"corruptions": ["fogg"]}}, r"\['fogg'\] are not corruptions"),
    ({"n_boot": 0}, "paper.n_boot must be a positive integer"),
    ("all", "must be an object")])
def test_bad_settings_are_named_with_the_fix(override, message):
    with pytest.raises(ValueError, match=message):
        settings.resolve(override)


def test_quick_and_smoke_shrink_the_full_settings():
    full, quick = settings.resolve(), settings.resolve(quick=True)
    # all test images for claim 1; 500 of each corrupted cell (37,500 images) within the 2-hour budget
    assert full["sweep"]["images"] == 10000 and full["robustness"]["images_per_cell"] >= 500
    assert len(full["robustness"]["corruptions"]) * len(full["robustness"]["severities"]) == 75
    assert quick["sweep"]["images"] < full["sweep"]["images"] and quick["mode"] == "quick"
    assert quick["landscapes"]["n"] < full["landscapes"]["n"] == 21 and full["landscapes"]["scale"] == 0.1
    assert quick["landscapes_filter"]["masks"] < full["landscapes_filter"]["masks"]


def test_missing_networks_are_all_named_with_the_command_that_trains_them(tmp_path):
    spec, _ = sets.load_set(CONFIG)
    with pytest.raises(PaperError) as err:
        pipeline.network_paths(spec, [0, 1, 2], "fashion_mnist", tmp_path)
    assert "15 reference networks are missing" in str(err.value) and "mcdo_mlp seed 2" in str(err.value)
    assert "train-set" in str(err.value) and "--seeds" in str(err.value)


def test_the_cifar100_config_is_valid_and_the_check_says_what_a_run_lacks(tmp_path, capsys):
    result = check.check(CIFAR, resources=tmp_path)
    assert result["config"] == []
    missing = " ".join(result["missing"])
    assert "15 reference networks are missing" in missing and "CIFAR-100-C" in missing
    assert main(["--check", "--config", str(CIFAR), "--resources", str(tmp_path)]) == 0
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({**json.loads(CIFAR.read_text()), "paper": {"sweep": {"max_size": 0}}}))
    assert main(["--check", "--config", str(broken)]) == 2
    assert "paper.sweep.max_size must be a positive integer" in capsys.readouterr().out


def test_train_set_ignores_the_paper_section(tmp_path):
    cfg = tmp_path / "set.json"
    cfg.write_text(json.dumps({**json.loads(CONFIG.read_text()), "paper": {"n_boot": 10}}))
    _, with_paper = sets.load_set(cfg)
    _, without = sets.load_set(CONFIG)
    assert [n.cfg for n in with_paper] == [n.cfg for n in without]


def test_a_run_that_is_not_there_duplicate_seeds_and_foreign_figures_are_refused(smoke_run, tmp_path):
    folder, _ = smoke_run
    with pytest.raises(PaperError, match="no paper run 'nope'"):
        pipeline.run(CONFIG, smoke=True, out=folder.parent, uid="nope")
    with pytest.raises(PaperError, match="lists a seed twice"):
        pipeline.run(CONFIG, smoke=True, out=tmp_path, seeds=[0, 0])
    stage = folder / "stages" / "sweep.json"
    saved = json.loads(stage.read_text())
    stage.write_text(json.dumps({**saved, "figures": ["../../../etc/passwd"]}))
    try:
        with pytest.raises(PaperError, match="outside the run folder"):
            pipeline.run(CONFIG, smoke=True, out=folder.parent, uid=folder.name)
    finally:
        stage.write_text(json.dumps(saved))


def test_each_corruption_setting_has_its_own_cached_set():
    from ops.data import datasets

    test = datasets.synthetic(n_train=1, n_test=32)[1]
    full, quick = settings.resolve(), settings.resolve(quick=True)
    assert pipeline.corrupted_root("out", full, test) != pipeline.corrupted_root("out", quick, test)
    changed_sizes = settings.merged(full, {"robustness": {"sizes": [1]}})
    assert pipeline.corrupted_root("out", full, test) == pipeline.corrupted_root("out", changed_sizes, test)
    with pytest.raises(ValueError, match="profile must be one of"):
        settings.resolve({"robustness": {"profile": "cifra"}})


# --- the committed report of the first full run -------------------------------------------------------------------

COMMITTED = ROOT / "resources" / "paper" / "fashion_mnist"


def _readme_verdict_table():
    """(claim number, claim, difference, verdict) of each row of the README's verdict table."""
    text = (ROOT / "README.md").read_text()
    start = text.index("| # | claim | row (claimed arm - other arm) |")
    rows = []
    for line in text[start:].splitlines()[2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]  # \| a pipe
        rows.append((cells[0], cells[1], cells[3], cells[4]))
    return rows


def test_the_committed_report_is_a_full_run_of_the_shipped_networks():
    run = json.loads((COMMITTED / "results.json").read_text())["run"]
    assert run["settings"]["mode"] == "full" and len(run["seeds"]) >= 3
    # a report of older claims would put rows the report no longer makes into the README
    assert run["claims_version"] == pipeline.CLAIMS_VERSION, "rerun make paper and publish it (docs/paper.md)"
    _, networks = sets.load_set(CONFIG)
    # every network of the report's variants and seeds, no other (the set grows by seeds and variants over sittings)
    assert {(v, int(s)) for v, by in run["networks"].items() for s in by} == \
        {(n.variant, n.seed) for n in networks if n.variant in run["networks"] and n.seed in run["seeds"]}
    for by in run["networks"].values():
        for net in by.values():
            assert pipeline.sha256(ROOT / net["path"]) == net["sha256"], net["path"]  # the networks shipped now
    report = (COMMITTED / "report.md").read_text()
    for image in re.findall(r"!\[[^]]*\]\(([^)]+)\)", report):
        assert (COMMITTED / image).is_file(), image


def test_the_readme_verdict_table_is_the_committed_report():
    from ops.paper.report import README_MARKS, readme_table, verdicts

    rows = _readme_verdict_table()
    assert [(n, claim, verdict) for n, claim, _, verdict in rows] == \
        [(n, claim, verdict) for n, claim, _, verdict in verdicts(COMMITTED / "results.json")]
    report = (COMMITTED / "report.md").read_text()
    for _, _, difference, _ in rows:
        if "[" in difference:
            assert f"| {difference} |" in report, difference  # the numbers are the report's
    readme = (ROOT / "README.md").read_text()
    assert f"{README_MARKS[0]}\n\n{readme_table(COMMITTED / 'results.json')}\n\n{README_MARKS[1]}" in readme


def test_the_readme_table_command_writes_the_table_and_names_bad_input(tmp_path, monkeypatch, capsys):
    from ops.paper.__main__ import main
    from ops.paper.report import README_MARKS, readme_table

    monkeypatch.chdir(tmp_path)
    (tmp_path / "README.md").write_text(f"# x\n\n{README_MARKS[0]}\n\nold table\n\n{README_MARKS[1]}\n\nafter\n")
    assert main(["--readme", str(COMMITTED / "results.json")]) == 0
    text = (tmp_path / "README.md").read_text()
    assert "old table" not in text and readme_table(COMMITTED / "results.json") in text and text.endswith("after\n")
    (tmp_path / "bad.json").write_text('{"run": {}}')
    assert main(["--readme", "bad.json"]) == 2
    assert "bad.json is not the results.json of a paper run" in capsys.readouterr().err
    committed = json.loads((COMMITTED / "results.json").read_text())
    quick = dict(committed, run=dict(committed["run"], settings=dict(committed["run"]["settings"], mode="quick")))
    (tmp_path / "quick.json").write_text(json.dumps(quick))
    assert main(["--readme", "quick.json"]) == 2
    assert "quick.json is the results.json of a quick run: the README shows a full run's" in capsys.readouterr().err
    (tmp_path / "cut.json").write_text(json.dumps(dict(committed, claims={"sweep": {"rows": [{"primary": True}]}})))
    assert main(["--readme", "cut.json"]) == 2
    assert "cut.json is not a complete results.json (KeyError" in capsys.readouterr().err
    assert main(["--readme", str(tmp_path)]) == 2  # a folder
    assert "cannot read" in capsys.readouterr().err
    (tmp_path / "README.md").write_text("no marks\n")
    assert main(["--readme", str(COMMITTED / "results.json")]) == 2
    assert "has no verdict table between" in capsys.readouterr().err
    assert (tmp_path / "README.md").read_text() == "no marks\n"
    (tmp_path / "README.md").unlink()
    assert main(["--readme", str(COMMITTED / "results.json")]) == 2
    assert "run the command in the repository's root" in capsys.readouterr().err
