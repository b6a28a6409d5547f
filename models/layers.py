"""Small building blocks shared by every family: convolutions and MC dropout.

MC dropout (Gal & Ghahramani, 2016) keeps dropout *on* at test time and averages several stochastic
forward passes. `MCDropout` therefore ignores `eval()`; `mc_dropout(model, enabled=False)` turns it off
for a deterministic pass, as a plain call or as a context manager that restores the previous state.
"""
import torch.nn as nn
import torch.nn.functional as F


def conv(in_channels, out_channels, kernel_size, stride=1, padding=0, groups=1):
    """Bias-free convolution, as in the original implementation (a BatchNorm usually follows)."""
    return nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                     groups=groups, bias=False)


def conv1x1(in_channels, out_channels, stride=1):
    return conv(in_channels, out_channels, 1, stride=stride)


def conv3x3(in_channels, out_channels, stride=1, groups=1):
    return conv(in_channels, out_channels, 3, stride=stride, padding=1, groups=groups)


class MCDropout(nn.Module):
    """Dropout that stays stochastic in eval() while `mc` is True (the default).

    In train() it behaves like nn.Dropout. It has no parameters, so it never changes a state_dict.
    """

    def __init__(self, p):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"MC dropout rate must be in [0, 1), got {p}")
        self.p = p
        self.mc = True

    def forward(self, x):
        return F.dropout(x, self.p, training=self.training or self.mc)

    def extra_repr(self):
        return f"p={self.p}, mc={self.mc}"


def dropout(p):
    """MC dropout of rate p, or an identity when p == 0 (deterministic variants)."""
    return MCDropout(p) if p > 0 else nn.Identity()


class mc_dropout:
    """Switch MC dropout on or off for every MCDropout in `model`.

    Takes effect immediately; used as a context manager it restores the previous states on exit:

        models.mc_dropout(model, enabled=False)          # deterministic from now on
        with models.mc_dropout(model, enabled=False):    # deterministic inside the block only
            logits = model(x)
    """

    def __init__(self, model, enabled=True):
        self.modules = [m for m in model.modules() if isinstance(m, MCDropout)]
        self.previous = [m.mc for m in self.modules]
        for m in self.modules:
            m.mc = bool(enabled)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for m, mc in zip(self.modules, self.previous):
            m.mc = mc
        return False


def is_stochastic(model):
    """True if `model` has an active MC dropout layer, i.e. two eval() passes can differ."""
    return any(isinstance(m, MCDropout) and m.mc for m in model.modules())
