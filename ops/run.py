"""Command line: train or test with a config file and key=value overrides; works under torchrun.

    python -m ops.run train --config configs/cifar100_general.json --model resnet_mcdo_smoothing_18
    torchrun --nproc_per_node 8 -m ops.run train --config configs/cifar100_general.json --model resnet_mcdo_18
    python -m ops.run test --config configs/cifar100_general.json --model resnet_mcdo_18 --uid 20260101-120000 \
        --sizes 1,2,5,10,50
    python -m ops.run train --config configs/fashion_mnist_general.json train.epochs=5 model.block.width=16
"""
import argparse
import sys
from pathlib import Path

import torch.distributed as dist

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "fashion_mnist_general.json"


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m ops.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["train", "test"])
    parser.add_argument("--config", default=str(DEFAULT_CONFIG))
    parser.add_argument("--model", default=None, help="model name (else model.name from the config)")
    parser.add_argument("--uid", default=None, help="run id (test: the checkpoint to evaluate)")
    parser.add_argument("--sizes", default="1,2,3,4,5,10,20,50", help="test: MC ensemble sizes")
    parser.add_argument("overrides", nargs="*", help="section.key=value")
    args = parser.parse_intermixed_args(argv)

    from . import configs, trains

    overrides = list(args.overrides) + ([f"env.uid={args.uid}"] if args.uid else [])
    cfg = configs.load_config(args.config, overrides)
    try:
        if args.command == "train":
            result = trains.train(cfg, model_name=args.model)
            if result["checkpoint"] is not None:
                print(f"Run folder: {result['run_dir']}\nWeights: {result['checkpoint']}")
        else:
            _test(cfg, args)
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    return 0


def _test(cfg, args):
    import models

    from . import loaders, reports
    from .tests import sweep
    from .trains import init_distributed, load_data

    name = args.model or cfg["model"]["name"]
    if name is None or cfg["env"]["uid"] is None:
        sys.exit("test needs --model NAME and --uid UID (the checkpoint's run id)")
    rank, world_size, device = init_distributed(cfg["env"]["device"])
    dataset_name, _, test_set = load_data(cfg)
    model = models.get_model(name, num_classes=len(test_set.classes), stem=cfg["model"]["stem"],
                             **cfg["model"]["block"])
    models.load(model, dataset_name, cfg["env"]["uid"], root=cfg["env"]["checkpoint_root"])
    loader = loaders.make_loader(test_set, cfg["val"]["batch_size"], device=device, rank=rank,
                                 world_size=world_size, workers=cfg["env"]["workers"])
    sizes = [int(s) for s in args.sizes.split(",")]
    results = sweep(model, loader, sizes=sizes, device=device, precision=cfg["env"]["precision"],
                    progress=rank == 0 and cfg["env"]["progress"])
    if rank == 0:
        path = reports.write_leaderboard(results, reports.leaderboard_path(dataset_name, name, cfg["env"]["uid"]))
        print(reports.format_table({name: results}))
        print(f"Leaderboard: {path}")


if __name__ == "__main__":
    sys.exit(main())
