"""Deep ensembles: average member *probabilities*, return their log.

    Ensemble(models)(x) = log( (1/M) * sum_m softmax(f_m(x)) )   computed as  logsumexp_m(log_softmax f_m) - log M

The output is a valid vector of log-probabilities, so softmax / argmax / NLL downstream treat an ensemble like
any single model (softmax of the output gives back the mean probability). MC dropout members stay stochastic.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class Ensemble(nn.Module):
    def __init__(self, model_list):
        super().__init__()
        if len(model_list) == 0:
            raise ValueError("Ensemble needs at least one model")
        self.models = nn.ModuleList(model_list)
        names = sorted({getattr(m, "name", type(m).__name__) for m in model_list})
        self.name = "ensemble_" + "+".join(names)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, ...) -> (B, C) log mean probabilities
        # float32 so that bf16/fp16 member logits don't lose the tail of the distribution.
        log_probs = torch.stack([F.log_softmax(m(x).float(), dim=-1) for m in self.models])  # (M, B, C)
        return torch.logsumexp(log_probs, dim=0) - math.log(len(self.models))
