"""Softplus, log(1 + e^x): the non-linearity between layers and the heart of the Bernoulli likelihood.

In a compiled CPU training step it is the costliest element-wise work there is: about a million
values per M2 step, forward and backward. The vectorised log1p that torch's own softplus calls
costs twice the exp before it (on a 2-core AVX-512 CPU, a compiled softplus over 501 x 500 values
takes 210 us, a ReLU 30 us). So inside compiled CPU code softplus is computed as

    softplus(x) = max(x, 0) + log1p(u),   u = exp(-|x|) in (0, 1],

with log1p on [0, 1] replaced by a polynomial, u + u^2 (c0 + c1 u + ... + c7 u^7), whose
coefficients were fitted by least squares on Chebyshev nodes of [0, 1]. Its error is below 1e-8
(absolute) and 2e-7 (relative) everywhere, under float32's own rounding of the result. The
gradient is the exact one, sigmoid(x).

u is computed as exp2(-|x| log2 e), not exp(-|x|): the compiler writes out to memory any exp
that more than one expression reads (to avoid computing it twice on CPU), and the polynomial
reads u nine times; exp2 is not on its list, so u stays in a register, computed once per
element. Same 501 x 500 values: 117 us; the Bernoulli likelihood's sum over 501 x 784 logits
170 us instead of 320 us; M2's whole training step 7.7 ms instead of 8.2 ms.

Everywhere else (eager code, float64, other devices) torch's softplus is used as it is: eager
code would run the polynomial as a dozen separate kernels, float64 is for checks that want the
exact function, and GPUs are limited by memory traffic, not by the log.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LOG2_E = math.log2(math.e)  # exp(v) = exp2(v log2 e)

# log1p(u) - u = u^2 * sum_k LOG1P_TAIL[k] u^k on [0, 1]; |error| < 9e-9 (see the module docstring).
LOG1P_TAIL = (
    -0.4999872642243738, 0.33304456394994164, -0.24740818029907347, 0.18749145787214067,
    -0.12972129342392252, 0.07068488887633012, -0.025163780757909322, 0.00420679437884847,
)


def polynomial_softplus(x: Tensor) -> Tensor:
    """max(x, 0) + log1p(exp(-|x|)), with log1p by the polynomial. No custom gradient: call
    :func:`softplus` in models."""
    u = torch.exp2(x.abs() * -LOG2_E)
    tail = LOG1P_TAIL[-1]
    for coefficient in reversed(LOG1P_TAIL[:-1]):  # Horner's rule
        tail = tail * u + coefficient
    return x.clamp(min=0) + u + u * u * tail


class _PolynomialSoftplus(torch.autograd.Function):
    """The polynomial forward with softplus's exact derivative, sigmoid(x); differentiating the
    polynomial itself would cost as much again in the backward pass."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        return polynomial_softplus(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        return grad * torch.sigmoid(x)


def softplus(x: Tensor) -> Tensor:
    """log(1 + e^x), elementwise: the polynomial form inside compiled CPU code in float32 or
    bfloat16, torch's own everywhere else."""
    if torch.compiler.is_compiling() and x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16):
        return _PolynomialSoftplus.apply(x)
    return F.softplus(x)


class Softplus(nn.Module):
    """:func:`softplus` as a layer, for ``nn.Sequential``."""

    def forward(self, x: Tensor) -> Tensor:
        return softplus(x)
