"""DDP is exact: 2 gloo processes on CPU compute what 1 process computes (tests/train/ddp_worker.py does the work)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WORKER = str(ROOT / "tests" / "train" / "ddp_worker.py")


def _worker(task, out, processes):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, WORKER, task, str(out)]
    if processes > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
               WORKER, task, str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(Path(out).read_text())


def test_evaluation_counts_every_image_once(tmp_path):
    one, two = _worker("eval", tmp_path / "one.json", 1), _worker("eval", tmp_path / "two.json", 2)
    for path in ("dataloader", "in_memory"):  # 13 images over 2 processes: no padding duplicate is scored
        assert one[path]["n"] == two[path]["n"] == 13, path
        for key, value in one[path].items():
            if isinstance(value, float):
                # equal up to the rounding of other batch sizes
                assert two[path][key] == pytest.approx(value, rel=1e-6, abs=1e-9, nan_ok=True), (path, key)
    n1, n2, n3, nll1, nll2 = two["sync"]
    assert n1 == n2 == n3 == 13 and nll1 == nll2  # sync() twice, or after an update, never double counts
    assert one["sync"][3] == pytest.approx(nll1, rel=1e-12)


def test_sync_batchnorm_step_matches_one_process(tmp_path):
    one, two = _worker("syncbn", tmp_path / "one.json", 1), _worker("syncbn", tmp_path / "two.json", 2)
    assert one.keys() == two.keys() and any("running_var" in k for k in one)
    for key in one:  # weights after one step, and BatchNorm running statistics of the global batch
        assert two[key] == pytest.approx(one[key], rel=1e-4, abs=1e-6), key
