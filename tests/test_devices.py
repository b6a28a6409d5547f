"""The same behaviour on every device this machine has: the CPU always, and CUDA where a GPU is present.

Each test is parametrized over `DEVICES`, so on a CPU-only machine (CI) it runs on the CPU and on a GPU machine
on both; nothing is skipped.
"""
import pytest
import torch

import models
from ops.data import loaders
from ops.common import runtime
from ops.train import trainer as trains
from ops.data.datasets import synthetic
from ops.evaluate.metrics import summarize
from ops.evaluate.engine import predict_log_probs
from ops.evaluate.engine import sweep

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_training_learns_on_the_device(tmp_path, device):
    result = trains.train(None, "resnet_mcdo_smoothing_18", [
        "dataset.name=synthetic", "dataset.kwargs={\"n_train\": 1024, \"n_test\": 256}", "train.batch_size=64",
        "train.epochs=3", "train.warmup_epochs=0", "model.block.width=8", "optim.scheduler.name=CosineAnnealingLR",
        f"env.device={device}", "env.precision=auto", "env.channels_last=true", "env.progress=false",
        "env.tensorboard=false", f"env.out_dir={tmp_path}/runs", f"env.checkpoint_root={tmp_path}/ckpt"])
    history = result["history"]
    assert history[-1]["train_loss"] < 0.7 * history[0]["train_loss"]
    assert history[-1]["test_acc"] > 0.4  # 10 classes: chance is 0.1
    assert next(result["model"].parameters()).device.type == device
    assert result["config"]["env"]["precision"] == runtime.resolve_precision("auto", device)[0]


@pytest.mark.parametrize("device", DEVICES)
def test_stacked_mc_samples_match_sequential_statistics(device):
    model = models.get_model("resnet_mcdo_18", width=4).to(device).eval()
    x = torch.randn(8, 3, 32, 32, device=device)
    stacked = predict_log_probs(model, x, 12, max_batch=64)  # 8 copies per pass
    one_by_one = predict_log_probs(model, x, 12, max_batch=8)
    assert stacked.shape == one_by_one.shape == (12, 8, 10) and stacked.device.type == device
    assert not torch.equal(stacked[0], stacked[1])  # independent masks within one stacked pass
    torch.testing.assert_close(stacked.exp().sum(-1), torch.ones(12, 8, device=device))
    with models.mc_dropout(model, enabled=False):
        torch.testing.assert_close(predict_log_probs(model, x, 3, max_batch=64)[0],
                                   predict_log_probs(model, x, 1)[0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_sweep_and_metrics_on_the_device(device):
    _, test_set = synthetic(n_train=8, n_test=40)
    loader = loaders.make_loader(test_set, 16, device=device)
    model = models.get_model("resnet_mcdo_smoothing_18", width=4)
    results = sweep(model, loader, sizes=(1, 4), device=device)
    assert results[4]["n"] == 40 and results[4]["stochastic"] and results[4]["mutual_info"] > 0
    probs = torch.softmax(torch.randn(50, 10, device=device), 1)
    y = torch.randint(0, 10, (50,), device=device)
    on_device, on_cpu = summarize(probs, y), summarize(probs.cpu(), y.cpu())
    for key in ("nll", "acc", "ece", "iou_90", "auroc", "aurc"):
        assert on_device[key] == pytest.approx(on_cpu[key], rel=1e-5), key


@pytest.mark.parametrize("name", ["resnet_mcdo_smoothing_18", "preresnet_mcdo_smoothing_34", "vgg_mcdo_smoothing_11",
                                  "alexnet_mcdo_smoothing", "resnext_mcdo_smoothing_50"])
def test_models_compile_to_one_graph_with_mc_dropout_on(name):
    """env.compile=true compiles the whole network: a graph break inside a block (an op dynamo cannot trace, such
    as the fast CPU dropout's Tensor.random_) compiles every block on its own, and past 8 block shapes dynamo's
    recompile limit sends the rest back to eager, silently slower (0.86x eager, measured)."""
    import torch._dynamo

    model = models.get_model(name, width=16) if "res" in name else models.get_model(name)
    model.train()
    explained = torch._dynamo.explain(model)(torch.randn(2, 3, 32, 32))
    assert explained.graph_break_count == 0, [b.reason for b in explained.break_reasons]
    model.eval()  # MC dropout stays on in eval()
    assert torch._dynamo.explain(model)(torch.randn(2, 3, 32, 32)).graph_break_count == 0
