"""Command line: train, or evaluate a trained run or checkpoint; works under torchrun.

    python -m ops.run train --config configs/cifar100_general.json --model resnet_mcdo_smoothing_18
    torchrun --nproc_per_node 8 -m ops.run train --config configs/cifar100_general.json --model resnet_mcdo_18
    python -m ops.run train --config configs/fashion_mnist_general.json train.epochs=5 model.block.width=16

    python -m ops.run train-set configs/fashion_mnist_reference.json [--executor slurm --partition gpu]
        trains a set of networks (variants x seeds, ops.train.sets), skipping finished ones

    python -m ops.run test --uid 20260101-120000-3fa9c1 [--model NAME] [--sizes 1,2,5,10,50]
        evaluates a run of ours: the model, data and subset are rebuilt from the run's stored config.json
    python -m ops.run test --checkpoint path/to/cifar_100_resnet_mcdo_18_x.pth.tar \\
        --config configs/cifar100_general.json [--sizes 1,2,5,10,50]
        evaluates any checkpoint in the original layout (the original implementation's too)

Overrides are section.key=value. Results go to {env.leaderboard_root}/{dataset}/{model}/ as CSV (the original's
columns) and JSON (with the seed, the overrides and the machine); their paths are printed, and no evaluation
replaces another's files. They are labelled with the run's uid (--uid), or the uid of the checkpoint's name
`{dataset}_{model}_{uid}.pth.tar` (another name: a plain label made from it, printed); the file names are checked
before any work. Where results go is decided by this command line (default leaderboard/logs), never
by a stored config or card. `test` seeds the MC-dropout masks (--seed, default 0): the same command gives the
same numbers. Errors print one line per problem, naming it and the fix, and exit with status 2 (`--debug`
shows the traceback): bad arguments, configs and names, seeds out of range (0 to 2**32 - 1), a --time the SLURM
executor cannot take, a run another process holds. Ctrl-C exits with 130 after saying how to resume.
"""
from __future__ import annotations

import argparse
import copy
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING

import torch.distributed as dist

if TYPE_CHECKING:
    from collections.abc import Sequence

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "fashion_mnist_general.json"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ops.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["train", "test", "train-set"])
    parser.add_argument("--config", default=None, help="config file (train: default fashion_mnist_general.json; "
                                                       "test --uid: the run's stored config)")
    parser.add_argument("--model", default=None, help="model name (else model.name from the config)")
    parser.add_argument("--uid", default=None, help="run id (train: resume it; test: the run to evaluate)")
    parser.add_argument("--checkpoint", default=None, help="test: a .pth.tar file to evaluate instead of a run")
    parser.add_argument("--sizes", default="1,2,3,4,5,10,20,50", help="test: MC ensemble sizes")
    parser.add_argument("--seed", type=int, default=0, help="test: seed of the MC-dropout masks (recorded)")
    parser.add_argument("--executor", default="local", choices=["local", "slurm", "submitit-local"],
                        help="train-set: here one after the other, or a SLURM job array through submitit")
    parser.add_argument("--partition", default=None, help="train-set --executor slurm: the SLURM partition")
    parser.add_argument("--gpus", type=int, default=None, help="train-set: GPUs per task (slurm default 1)")
    parser.add_argument("--cpus", type=int, default=None, help="train-set: CPUs per task")
    parser.add_argument("--time", type=int, default=720, help="train-set: minutes per task before requeueing")
    parser.add_argument("--parallel", type=int, default=None, help="train-set: array tasks running at once")
    parser.add_argument("--logs", default="runs/submitit", help="train-set: submitit's log folder")
    parser.add_argument("--wait", action="store_true", help="train-set: wait for the submitted tasks")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("overrides", nargs="*", help="section.key=value")
    args = parser.parse_intermixed_args(argv)
    try:
        if args.command == "train":
            _train(args)
        elif args.command == "train-set":
            _train_set(args)
        else:
            _test(args)
        return 0
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        return 130
    except Exception as exc:  # one readable message per problem; --debug for the whole story
        if args.debug:
            traceback.print_exc()
        problems = getattr(exc, "problems", None) or str(exc).splitlines() or [type(exc).__name__]
        print(f"error ({type(exc).__name__}{'' if args.debug else '; --debug shows the traceback'}):", file=sys.stderr)
        for line in problems:  # the problem itself is the last thing on the screen
            print(f"  {line}", file=sys.stderr)
        return 2
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def _train(args):
    from ops.train import configs
    from ops.train import trainer as trains

    overrides = list(args.overrides) + ([f"env.uid={args.uid}"] if args.uid else [])
    cfg = configs.load_config(args.config or DEFAULT_CONFIG, overrides)
    from ops import plots

    result = trains.train(cfg, model_name=args.model, epoch_figure=plots.reliability_diagram)
    if result["checkpoint"] is not None:
        print(f"Run folder: {result['run_dir']}\nWeights: {result['checkpoint']}\n"
              f"Evaluate: python -m ops.run test --uid {result['uid']} --model {result['config']['model']['name']}"
              + (f" env.out_dir={result['config']['env']['out_dir']}" if result["config"]["env"]["out_dir"] != "runs"
                 else ""))


def _train_set(args):
    from ops.train import sets

    overrides = list(args.overrides)
    config = args.config
    if config is None and overrides and "=" not in overrides[0]:
        config = overrides.pop(0)
    if config is None:
        raise ValueError("train-set needs a set config: python -m ops.run train-set "
                         "configs/fashion_mnist_reference.json")
    gpus = args.gpus if args.gpus is not None else (1 if args.executor == "slurm" else 0)
    if args.executor != "local":  # the executor's options, before anything is loaded or submitted
        from ops.train import cluster

        cluster.check_options(args.executor, gpus, args.cpus, args.time, args.parallel)
    spec, networks = sets.load_set(config, overrides)
    if args.executor == "local":
        sets.run_local(networks, spec["export"])
        return
    cluster.submit(networks, spec["export"], executor=args.executor, folder=args.logs, partition=args.partition,
                   gpus=gpus, cpus=args.cpus, time_min=args.time, parallel=args.parallel, wait=args.wait,
                   name=f"train-set-{spec['name']}")


def parse_sizes(text: str) -> list:
    """'1,2,5' -> [1, 2, 5]; anything but comma-separated positive integers is refused."""
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise ValueError(f"--sizes must be comma-separated positive integers such as 1,2,5,10, got {text!r}")
    return sizes


# Where things are and where results go: from this command line (or the defaults), never from a stored config.
LOCATION_KEYS = (("env", "out_dir"), ("env", "checkpoint_root"), ("env", "leaderboard_root"), ("env", "device"),
                 ("env", "workers"), ("env", "progress"), ("dataset", "root"))


def evaluation_config(stored: dict, overrides: dict) -> dict:
    """A stored config (a card's or a run's) made fit to evaluate here: its recipe (model, data, subset), with
    the locations and devices of LOCATION_KEYS from `overrides` or the defaults."""
    from ops.train import configs

    stored = copy.deepcopy(stored)
    for section, key in LOCATION_KEYS:
        stored.get(section, {}).pop(key, None)
    return configs.make_config(stored, list(overrides))


def _model_to_test(args):
    """(model, config, weights path, name, uid label) of the run or checkpoint that `test` was given."""
    import models

    from ops.train import configs, pretrained, runs

    if args.uid is not None:  # the recipe from the run's stored config; overrides say where things are
        out_dir = configs.make_config({}, [o for o in args.overrides if o.startswith("env.out_dir=")])["env"]["out_dir"]
        model, stored, path = runs.load_run(args.uid, out_dir, args.model, overrides=args.overrides)
        cfg, label = evaluation_config(stored, args.overrides), args.uid
        if path.name == "checkpoint.pth.tar":  # the run has not finished: say which epoch is scored, file it apart
            epoch = models.read_checkpoint(path).get("epoch")
            label = f"{args.uid}-epoch{epoch}"
            print(f"Run {args.uid} has not finished: scoring its checkpoint after epoch {epoch} (filed as {label})")
        return model, cfg, path, cfg["model"]["name"], label
    path = Path(args.checkpoint)
    if args.config is None and pretrained.card_path(path).exists():
        # a checkpoint of ours: its card holds the config it was trained with (width, classes, test subset)
        stored = pretrained.read_card(path).get("config")
        if not isinstance(stored, dict):
            raise ValueError(f"the card of {path} holds no config to evaluate it with: pass --config and --model")
        cfg = evaluation_config(stored, args.overrides)
    else:
        cfg = configs.load_config(args.config or DEFAULT_CONFIG, list(args.overrides))
    name = args.model or cfg["model"]["name"] or models.read_checkpoint(path).get("name")
    if name is None:
        raise ValueError(f"{path} does not say which model it holds: pass --model NAME")
    return None, cfg, path, name, checkpoint_label(path, name)


def checkpoint_label(path: Path | str, model_name: str) -> str:
    """The label a checkpoint's results are filed under: the uid of `{dataset}_{model}_{uid}.pth.tar` (a_run of
    ..._resnet_mcdo_18_a_run.pth.tar), else the file's name; made a plain name if it is not one (said so)."""
    import re

    from models.naming import PLAIN_NAME

    stem = Path(path).name.removesuffix(".pth.tar")
    label = stem.split(f"_{model_name}_", 1)[1] if f"_{model_name}_" in stem else stem
    if PLAIN_NAME.fullmatch(label) and ".." not in label:
        return label
    plain = re.sub(r"\.\.+", ".", re.sub(r"[^A-Za-z0-9._+-]+", "-", label)).strip("-.")[:64] or "checkpoint"
    plain = plain if plain[0].isalnum() else f"c{plain}"[:64]
    print(f"{path}: its name is not a plain name; its results are filed under {plain!r}")
    return plain


def _test(args):
    import models

    from ops.common.checks import MAX_SEED, is_seed
    from ops.common.runtime import machine_info
    from ops.data import loaders
    from ops.data.datasets import canonical_name
    from ops.evaluate import intervals, reports
    from ops.evaluate.engine import sweep
    from ops.train.distributed import init_distributed
    from ops.train.trainer import load_data

    if (args.uid is None) == (args.checkpoint is None):
        raise ValueError("test needs --uid UID (a run of ours) or --checkpoint PATH (a .pth.tar), one of the two")
    if not is_seed(args.seed):
        raise ValueError(f"--seed must be an integer from 0 to {MAX_SEED} (it seeds the MC-dropout masks), got "
                         f"{args.seed}")
    sizes = parse_sizes(args.sizes)
    model, cfg, path, name, label = _model_to_test(args)
    # where the results go, checked before any work (the names are plain, the label fits)
    reports.leaderboard_path(canonical_name(cfg["dataset"]["name"]), name, label, cfg["env"]["leaderboard_root"])
    rank, world_size, device = init_distributed(cfg["env"]["device"])
    dataset_name, _, test_set = load_data(cfg)
    if model is None:
        model = models.get_model(name, num_classes=len(test_set.classes), stem=cfg["model"]["stem"],
                                 **cfg["model"]["block"])
        models.load_checkpoint(path, model)  # checks the name, build arguments and tensors
    loader = loaders.make_loader(test_set, cfg["val"]["batch_size"], device=device, rank=rank,
                                 world_size=world_size, workers=cfg["env"]["workers"])
    kept = {}
    results = sweep(model, loader, sizes=sizes, device=device, precision=cfg["val"]["precision"],
                    progress=rank == 0 and cfg["env"]["progress"], seed=args.seed, keep_predictions=kept)
    if rank != 0:
        return results
    about = {"checkpoint": str(path), "seed": args.seed, "overrides": list(args.overrides), "sizes": sizes,
             "test_images": len(test_set), "precision": cfg["val"]["precision"], "machine": machine_info(device)}
    out = reports.write_leaderboard(results, reports.new_leaderboard_path(
        dataset_name, name, label, root=cfg["env"]["leaderboard_root"]), about=about)
    print(f"{name} ({path}) on {len(test_set)} {dataset_name} test images, {cfg['val']['precision']}, "
          f"MC seed {args.seed}:")
    if world_size == 1:  # the intervals need every image's prediction, which only one process holds here
        cis = {n: intervals.bootstrap({name: kept[n]}, kept["targets"], pairs=None) for n in sizes}
        print(reports.format_interval_table(cis))
        print("(95% bootstrap intervals over the test images)")
    else:
        print(reports.format_table({name: results}))
    print(f"Leaderboard: {out} (and {out.with_suffix('.json')})")
    return results


if __name__ == "__main__":
    sys.exit(main())
