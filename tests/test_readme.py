"""Every Python block of the README and of the documentation (docs/*.md) runs as written, so they stay true.

A block fenced as ```python runs; one fenced as ```py is shown only (it needs what a CI machine may lack, such as
trained networks or a GPU). Each block runs in its own process, in an empty folder with the repository's configs/
and resources/ beside it. Where a block needs a dataset this machine may not have (Fashion-MNIST is not installed
on every CI machine), the only change is small data: `ops.data.datasets.get_dataset` then returns the synthetic
set of the same shape.
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
BLOCKS = [(page.relative_to(ROOT).as_posix(), i, code) for page in PAGES
          for i, code in enumerate(re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S))]

SMALL_DATA = '''
import ops.data.datasets as _d
_real = _d.get_dataset
def _get_dataset(name, *args, **kwargs):
    try:
        return _real(name, *args, **kwargs)
    except _d.DatasetNotFoundError:  # small data instead: same image size, 10 classes
        return _d.synthetic(n_train=512, n_test=1000)
_d.get_dataset = _get_dataset
'''


def test_readme_has_python_blocks():
    assert sum(page == "README.md" for page, _, _ in BLOCKS) >= 3
    assert {page for page, _, _ in BLOCKS} >= {"docs/models.md", "docs/evaluation.md"}


@pytest.mark.parametrize("page,index,code", BLOCKS, ids=[f"{page}:block{i}" for page, i, _ in BLOCKS])
def test_block_runs(tmp_path, page, index, code):
    for name in ("configs", "resources"):
        (tmp_path / name).symlink_to(ROOT / name)
    script = tmp_path / "block.py"
    script.write_text("import matplotlib\nmatplotlib.use('Agg')\n" + SMALL_DATA + "\n" + code)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "2"}
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, f"{page}, block {index}:\n{code}\n{proc.stdout[-2000:]}{proc.stderr[-3000:]}"
