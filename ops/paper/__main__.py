"""python -m ops.paper: the command line of `make paper` (see ops.paper)."""
import argparse
import sys

from ops.paper import check, pipeline


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
    a = p.parse_args(argv)
    try:
        if a.check:
            problems = check.check(a.config, quick=a.quick, seeds=a.seeds, resources=a.resources)
            return 0 if not problems["config"] else 2
        pipeline.run(a.config, quick=a.quick, smoke=a.smoke, seeds=a.seeds, resources=a.resources, out=a.out,
                    uid=a.uid, device=a.device)
    except (ValueError, FileNotFoundError) as exc:  # PaperError, ConfigError, SetError: a message for the user
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
