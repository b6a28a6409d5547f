"""Training sets on a cluster: one SLURM array task per network through submitit (or submitit's local executor).

Each task is `ops.train.sets.train_network`, the same resumable run as `--executor local` trains: on
preemption or timeout submitit requeues it (`Checkpointable`) and it resumes from its run folder's last epoch.
Results are gathered by uid: the exported checkpoints under the set's export folder, which a later
`python -m ops.run train-set ...` finds and skips.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import submitit

from ops.common.checks import is_int
from ops.train import sets

if TYPE_CHECKING:
    from collections.abc import Sequence
    from ops.train.sets import Network


class TrainTask(submitit.helpers.Checkpointable):
    """One network of a set. Requeued with the same arguments, it resumes from its run's checkpoint."""

    def __call__(self, cfg: dict, export: str, export_dtype: str = "float32") -> dict:
        return sets.train_network(cfg, export, export_dtype)


MAX_TIME_MIN = 525_600  # a year: far beyond any partition's limit, and well inside what SLURM can represent
MAX_TASK = 1024  # GPUs or CPUs per task, tasks at once


def check_options(executor: str, gpus: int, cpus: int | None, time_min: int, parallel: int | None) -> None:
    """Refuse options the executor cannot take, before anything is submitted: SetError, one line each."""
    problems = []
    if executor not in ("slurm", "submitit-local"):
        problems.append(f"executor must be slurm or submitit-local here, got {executor!r}")
    if not is_int(time_min, 1, MAX_TIME_MIN):
        problems.append(f"--time must be whole minutes from 1 to {MAX_TIME_MIN} (a year) per task before requeueing"
                        f", got {time_min!r}; 720 is 12 hours")
    for option, value, low in (("--gpus", gpus, 0), ("--cpus", cpus, 1), ("--parallel", parallel, 1)):
        if value is not None and not is_int(value, low, MAX_TASK):
            problems.append(f"{option} must be an integer from {low} to {MAX_TASK}, got {value!r}")
    if problems:
        raise sets.SetError("\n".join(problems))


def submit(networks: Sequence[Network], export: Path | str, executor: str = "slurm",
           folder: Path | str = "runs/submitit", partition: str | None = None, gpus: int = 1, cpus: int | None = None,
           time_min: int = 720, parallel: int | None = None, wait: bool = False, name: str = "train-set") -> list:
    """Submit the unfinished `networks` as one job array; returns the submitit jobs (their results if `wait`)."""
    check_options(executor, gpus, cpus, time_min, parallel)
    todo = [n for n in networks if not sets.is_finished(n, export)]
    print(f"Set of {len(networks)} networks: {len(networks) - len(todo)} finished in {export}, "
          f"{len(todo)} to submit", flush=True)
    if not todo:
        return []
    ex = submitit.AutoExecutor(folder=str(Path(folder) / "%j"), cluster="slurm" if executor == "slurm" else "local")
    params = {"name": name, "timeout_min": int(time_min), "nodes": 1,
              "tasks_per_node": 1, "gpus_per_node": int(gpus)}
    if cpus:
        params["cpus_per_task"] = int(cpus)
    if executor == "slurm":
        params["slurm_array_parallelism"] = int(parallel or len(todo))
        if partition:
            params["slurm_partition"] = partition
    ex.update_parameters(**params)
    jobs = ex.map_array(TrainTask(), [n.cfg for n in todo], [str(export)] * len(todo), [n.export_dtype for n in todo])
    for network, job in zip(todo, jobs):
        print(f"  job {job.job_id}: {network.label()}", flush=True)
    print(f"Logs: {folder}/<job id>/. When the jobs are done, the same train-set command lists them as "
          f"finished (and trains nothing).", flush=True)
    if wait:
        return [job.result() for job in jobs]
    return jobs
