"""Every notebook of the repository runs top to bottom in smoke mode (tiny data, one epoch, few samples)."""
import re
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(ROOT.glob("*.ipynb"))


# What each notebook must leave in its run folder (its figures, tables and results), smoke mode included.
EXPECTED = {
    "classification.ipynb": {"ensemble_size.png", "table.md", "results.json"},
    "losslandscape.ipynb": {"landscape_contour.png", "landscape_surface.png", "landscape_curves_x.png",
                            "landscape_summary.csv", "hessian_max_eigenvalues.png", "hessian_density.png",
                            "hessian_summary.csv", "results.json"},
    "robustness.ipynb": {"examples.png", "severity.png", "error_heatmap.png", "mce.md", "summary.json",
                         "ensemble_size_corrupted.png", "flip_rates.png", "perturbations.json", "timings.json"},
    "featuremaps.ipynb": {"feature_maps.png", "variance.png", "fourier.png", "resnet18_variance.png",
                          "resnet18_fourier.png", "results.json"},
}


def test_there_are_notebooks():
    assert [p.name for p in NOTEBOOKS] == sorted(EXPECTED)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, f"{path.name} has outputs: clear them"
    assert any("parameters" in c.metadata.get("tags", []) for c in nb.cells), "papermill needs a parameters cell"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_parameter_is_visible_to_papermill(path):
    """papermill lists a notebook's parameters by parsing its parameters cell; a line it cannot parse (an `=` in
    a trailing comment is enough) drops that parameter from `papermill --help-notebook` and warns on every run."""
    from papermill.translators import PythonTranslator

    nb = nbformat.read(path, as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    assigned = set(re.findall(r"^(\w+)\s*=", cell.source, flags=re.M))
    assert assigned and {p.name for p in PythonTranslator.inspect(cell)} == assigned


@pytest.fixture(autouse=True)
def text_progress(monkeypatch):
    """Headless kernels have no front-end for widgets: text bars, as `make demo` uses (a widget bar in a headless
    kernel is also one more thing that can stall nbclient under load)."""
    monkeypatch.setenv("SMOOTHING_PROGRESS", "text")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_in_smoke_mode(path, tmp_path):
    import papermill

    out = tmp_path / path.name
    papermill.execute_notebook(str(path), str(out), parameters={"smoke": True, "out_dir": str(tmp_path / "out")},
                               cwd=str(ROOT), progress_bar=False, kernel_name="python3",
                               execution_timeout=900)
    nb = nbformat.read(out, as_version=4)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    produced = {p.name for p in (tmp_path / "out").rglob("*") if p.stat().st_size > 0}
    assert EXPECTED[path.name] <= produced, f"{path.name} did not write {EXPECTED[path.name] - produced}"
    assert any(name.endswith(".csv") for name in produced) or path.name == "featuremaps.ipynb"


def test_classification_recipe_comes_from_its_config(tmp_path, monkeypatch):
    """Parameters left at None take the config's values: config_path alone selects the paper's recipe."""
    from ops.train.configs import load_config

    monkeypatch.chdir(ROOT)
    notebook = nbformat.read(ROOT / "classification.ipynb", as_version=4)
    cells = [c.source for c in notebook.cells if c.cell_type == "code"]
    namespace = {}
    exec(cells[0], namespace)  # the parameters cell
    namespace.update(config_path="configs/cifar100_general.json", out_dir=str(tmp_path))
    exec(cells[1], namespace)  # the set-up cell builds `cfg`
    cfg, paper = namespace["cfg"], load_config("configs/cifar100_general.json")
    assert cfg["train"] == paper["train"] and cfg["optim"] == paper["optim"] and cfg["model"] == paper["model"]
    assert cfg["train"]["warmup_epochs"] == 1 and cfg["optim"]["scheduler"]["name"] == "MultiStepLR"
    assert cfg["dataset"]["download"] is True and cfg["env"]["precision"] == "auto"
    assert cfg["dataset"]["test_size"] is None and "width" not in cfg["model"]["block"]  # all images, width 64


# The numbers each notebook reports, file by file; timings and paths are left out (they differ by design).
RESULTS = {"classification.ipynb": "results.json", "losslandscape.ipynb": "results.json",
           "robustness.ipynb": "summary.json", "featuremaps.ipynb": "results.json"}


def _numbers(obj):
    """obj without timings and paths (keys naming time, seconds, checkpoints or outputs)."""
    if isinstance(obj, dict):
        return {k: _numbers(v) for k, v in obj.items()
                if not re.search(r"time|seconds|checkpoint|path|out_dir|outputs", str(k))}
    if isinstance(obj, list):
        return [_numbers(v) for v in obj]
    return obj


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_gives_the_same_numbers_twice(path, tmp_path):
    """Every stochastic step is seeded: two runs of the same notebook report the same numbers."""
    import json

    import papermill

    reported = []
    for run in ("a", "b"):
        papermill.execute_notebook(str(path), str(tmp_path / f"{run}.ipynb"), cwd=str(ROOT), progress_bar=False,
                                   parameters={"smoke": True, "out_dir": str(tmp_path / run)}, kernel_name="python3",
                                   execution_timeout=900)
        result = next((tmp_path / run).rglob(RESULTS[path.name]))
        reported.append(_numbers(json.loads(result.read_text())))
    assert reported[0] == reported[1]
