"""python -m ops.paper: the command line of `make paper` (see ops.paper). Expected failures (a bad argument or
config, a missing network or data set, a run or cache another process holds) print one line naming the problem
and the fix, and exit with status 2; --debug shows the traceback."""
import argparse
import sys
import traceback
from pathlib import Path

from models.atomic import LockedError
from models.naming import uid_problem
from ops.common.checks import MAX_SEED, is_seed
from ops.paper import check, pipeline, report
from ops.train.runs import RunError

# PaperError, ConfigError, SetError, CheckpointError are ValueErrors; data not found is a FileNotFoundError
EXPECTED = (ValueError, FileNotFoundError, LockedError, RunError)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m ops.paper", description=__doc__)
    p.add_argument("--config", default=pipeline.DEFAULT_CONFIG, help="the reference set's config")
    p.add_argument("--quick", action="store_true", help="fewer images, masks and batches (QUICK=1)")
    p.add_argument("--smoke", action="store_true", help="tiny untrained networks on synthetic data (CI)")
    p.add_argument("--seeds", type=int, nargs="+", help="the seeds to analyse (default: the set's)")
    p.add_argument("--resources", help="where the set's networks are (default: the set's export folder)")
    p.add_argument("--out", default="runs/paper", help="runs/paper/<uid>/ receives the report")
    p.add_argument("--uid", help="resume this run (its finished stages are kept)")
    p.add_argument("--device", help="cpu, cuda, ... (default: cuda if available)")
    p.add_argument("--check", action="store_true", help="validate the config and say what is missing; run nothing")
    p.add_argument("--readme", metavar="RESULTS_JSON", help="write the verdict table of README.md (in the current "
                   "directory: the repository's root) from a full run's results.json, then exit")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    a = p.parse_args(argv)
    try:
        _check_arguments(a)
        if a.readme:
            report.write_readme_table("README.md", a.readme)
            print(f"README.md: the verdict table of {a.readme}")
            return 0
        if a.check:
            problems = check.check(a.config, quick=a.quick, seeds=a.seeds, resources=a.resources)
            return 0 if not problems["config"] else 2
        pipeline.run(a.config, quick=a.quick, smoke=a.smoke, seeds=a.seeds, resources=a.resources, out=a.out,
                     uid=a.uid, device=a.device)
    except EXPECTED as exc:  # a message for the user, naming the problem and the fix
        if a.debug:
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _check_arguments(a) -> None:
    """The arguments that name files or seed generators, before anything is loaded."""
    if a.uid is not None and uid_problem(a.uid):
        raise ValueError(f"--uid {uid_problem(a.uid)}, got {a.uid!r}; leave it out to start a new run")
    if Path(a.out).exists() and not Path(a.out).is_dir():
        raise ValueError(f"--out {a.out} is a file, not a folder: give a folder for the paper runs")
    bad = [s for s in a.seeds or () if not is_seed(s)]
    if bad:
        raise ValueError(f"--seeds must be integers from 0 to {MAX_SEED} (the set's seeds), got {bad}")


if __name__ == "__main__":
    sys.exit(main())
