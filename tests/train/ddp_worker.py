"""Run by tests/train/test_distributed.py, once as a plain process and once under torchrun with 2 processes.

    python tests/train/ddp_worker.py eval OUT.json      # evaluation: DataLoader and in-memory paths, Metrics.sync twice
    python tests/train/ddp_worker.py syncbn OUT.json    # one training step of a BatchNorm model with sync_bn

Rank 0 writes what it computed to OUT.json; the test compares the 1- and 2-process files.
"""
import json
import os
import sys

import torch
import torch.distributed as dist

import models
from ops.data import datasets
from ops.data import loaders
from ops.train import distributed as syncbn
from ops.evaluate.metrics import Metrics
from ops.evaluate.engine import sweep


def evaluation():
    rank, world = dist.get_rank() if dist.is_initialized() else 0, dist.get_world_size() if dist.is_initialized() else 1
    _, test_set = datasets.synthetic(n_train=8, n_test=13)  # 13 images: not a multiple of 2
    torch.manual_seed(0)
    model = models.get_model("resnet_dnn_18", width=4).eval()
    out = {}
    images, labels = zip(*[test_set[i] for i in range(len(test_set))])  # normalised floats, as the DataLoader path
    plain = torch.utils.data.TensorDataset(torch.stack(images), torch.tensor(labels))
    for path, dataset in (("dataloader", plain), ("in_memory", test_set)):
        loader = loaders.make_loader(dataset, 4, rank=rank, world_size=world, workers=0)
        out[path] = {k: v for k, v in sweep(model, loader, sizes=(1,))[1].items() if not k.startswith("bin_")}
    # Metrics.sync twice, and an update after a sync, count every prediction once.
    probs, y = torch.softmax(torch.randn(13, 5, generator=torch.Generator().manual_seed(1)), 1), torch.arange(13) % 5
    m = Metrics(5)
    m.update(probs[rank::world], y[rank::world])
    first = m.sync().compute()
    second = m.sync().compute()
    m.update(probs[:0], y[:0])
    third = m.sync().compute()
    out["sync"] = [first["n"], second["n"], third["n"], first["nll"], second["nll"]]
    return out


def sync_batchnorm():
    """One SGD step on a global batch of 8 images: 2 processes take 4 each (sync_bn), 1 process all 8."""
    rank, world = dist.get_rank() if dist.is_initialized() else 0, dist.get_world_size() if dist.is_initialized() else 1
    torch.manual_seed(0)
    model = models.get_model("resnet_dnn_18", width=4)
    model = syncbn.convert_sync_batchnorm(model)
    net = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, 3, 32, 32, generator=g), torch.randint(0, 10, (8,), generator=g)
    share = slice(rank * 8 // world, (rank + 1) * 8 // world)
    net.train()
    loss = torch.nn.functional.cross_entropy(net(x[share]), y[share])
    loss.backward()
    opt.step()
    state = models.unwrap(model).state_dict()
    return {k: v.flatten()[:20].tolist() for k, v in state.items() if v.is_floating_point()}


if __name__ == "__main__":
    torch.set_num_threads(1)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("gloo")
    result = {"eval": evaluation, "syncbn": sync_batchnorm}[sys.argv[1]]()
    if not dist.is_initialized() or dist.get_rank() == 0:
        with open(sys.argv[2], "w") as f:
            json.dump(result, f)
    if dist.is_initialized():
        dist.destroy_process_group()
