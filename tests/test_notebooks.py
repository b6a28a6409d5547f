"""Every notebook of the repository runs top to bottom in smoke mode (tiny data, one epoch, few samples)."""
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(ROOT.glob("*.ipynb"))


def test_there_are_notebooks():
    assert "classification.ipynb" in [p.name for p in NOTEBOOKS]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, f"{path.name} has outputs: clear them"
    assert any("parameters" in c.metadata.get("tags", []) for c in nb.cells), "papermill needs a parameters cell"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_in_smoke_mode(path, tmp_path):
    import papermill

    out = tmp_path / path.name
    papermill.execute_notebook(str(path), str(out), parameters={"smoke": True, "out_dir": str(tmp_path / "out")},
                               cwd=str(ROOT), progress_bar=False, kernel_name="python3")
    nb = nbformat.read(out, as_version=4)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    produced = {p.name for p in (tmp_path / "out").rglob("*")}
    if path.name == "classification.ipynb":
        assert {"ensemble_size.png", "table.md", "results.json"} <= produced
        assert any(name.endswith(".csv") for name in produced)
