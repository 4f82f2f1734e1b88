"""The diagonal-Gaussian formulas every model family's bounds use."""

from __future__ import annotations

import math

import torch
from torch import Tensor

LOG_2PI = math.log(2 * math.pi)


def gaussian_log_density(value: Tensor, mean: Tensor, logvar: Tensor) -> Tensor:
    """log Normal(value | mean, diag exp(logvar)), summed over the last dimension."""
    return -0.5 * ((value - mean).square() * torch.exp(-logvar) + logvar + LOG_2PI).sum(-1)


def kl_to_standard_normal(mean: Tensor, logvar: Tensor) -> Tensor:
    """KL(Normal(mean, diag exp(logvar)) || Normal(0, I)) in closed form, summed over the last dimension."""
    return 0.5 * (mean.square() + logvar.exp() - 1.0 - logvar).sum(-1)
