"""Every Python block of the README runs as written, so the README stays true.

Each block runs in its own process, in an empty folder with the repository's configs/ and resources/ beside it.
Where a block needs a dataset this machine may not have (Fashion-MNIST is not installed on every CI machine),
the only change is small data: `ops.data.datasets.get_dataset` then returns the synthetic set of the same shape.
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCKS = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)

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
    assert len(BLOCKS) >= 3


@pytest.mark.parametrize("index", range(len(BLOCKS)), ids=lambda i: f"block{i}")
def test_readme_block_runs(tmp_path, index):
    for name in ("configs", "resources"):
        (tmp_path / name).symlink_to(ROOT / name)
    script = tmp_path / "block.py"
    script.write_text("import matplotlib\nmatplotlib.use('Agg')\n" + SMALL_DATA + "\n" + BLOCKS[index])
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "2"}
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, f"README block {index}:\n{BLOCKS[index]}\n{proc.stdout[-2000:]}{proc.stderr[-3000:]}"
