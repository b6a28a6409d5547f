"""Training: configs, run folders, the trainer, distributed training, trained checkpoints, sets of networks.

    from ops.train import train                 # ops.train.trainer.train
"""
from ops.train.trainer import train

__all__ = ["train"]
