"""The naive loss-landscape loop: a deep copy of the model per grid point and mask, and a full evaluation.

What ops.analysis.landscapes.landscape is measured against (benchmarks/landscape_speed.py) and checked against
(tests/analysis/test_landscapes.py): it shares none of landscape()'s evaluation code.
"""
import contextlib
import copy

import torch

import models
from ops.analysis.fixed import FixedMasks, mask_seed, prepare_batches
from ops.evaluate.engine import require_parameters
from ops.evaluate.metrics import Metrics


def naive_landscape(model, data, directions, *, xs, ys=None, n_masks=1, seed=0, n_images=None, batch_size=128,
                    masks="reseed", bins=10, cutoffs=(0.0, 0.9)):
    """The plain way: per point and mask, a deep copy of the model with the new weights (load_state_dict)
    and a full evaluation of the data. masks="reseed" fixes MC-dropout masks by reseeding
    torch's generator before every batch (the same masks at every point, but not the masks of `landscape`);
    masks="fixed" uses FixedMasks without a cache (the masks of `landscape`, for tests). Returns records."""
    if masks not in ("reseed", "fixed"):
        raise ValueError(f"masks must be 'reseed' or 'fixed', got {masks!r}")
    device = require_parameters(model, "a loss landscape").device
    batches = prepare_batches(data, n_images, batch_size, seed=seed, device=device)
    w0 = copy.deepcopy(model.state_dict())
    coords = [(x, y) for y in ys for x in xs] if ys is not None else [(x,) for x in xs]
    records = []
    for i, c in enumerate(coords):
        for m in range(n_masks):
            net = copy.deepcopy(model).eval()
            state = {k: v.clone() for k, v in w0.items()}
            for coef, d in zip(c, directions):
                for k, t in d.items():
                    state[k] = state[k] + coef * t
            net.load_state_dict(state)
            meter, nll, n = None, 0.0, 0
            fixed = FixedMasks(net, seed=seed, cache=False) if masks == "fixed" else contextlib.nullcontext()
            with torch.no_grad(), fixed as fm:
                for b, (x, y) in enumerate(batches):
                    if fm is not None:
                        fm.select(m, b, x)
                    elif models.is_stochastic(net):
                        torch.manual_seed(mask_seed(seed, m, b))
                    lp = torch.log_softmax(net(x).float(), dim=-1)
                    if meter is None:
                        meter = Metrics(lp.shape[-1], bins=bins, cutoffs=cutoffs, device=x.device)
                    meter.update(lp.exp(), y)
                    nll -= float(lp.gather(1, y[:, None]).double().sum())
                    n += len(y)
            res = meter.compute()
            res["nll"] = nll / n
            records.append({"index": i, "mask": m, **{k: v for k, v in res.items() if not k.startswith("bin_")}})
    return records
