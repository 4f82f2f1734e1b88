"""p(x | decoder output): the observation models every family's decoder can end in.

Images arrive as 8-bit grey levels scaled to [0, 1] (``uint8 / 255``). Each likelihood below turns
the decoder's output for one image (``params_per_input`` numbers per input) into a log-probability
summed over the inputs, and into the image's mean for pictures::

    bernoulli             x*l - softplus(l)                      # l: one logit per pixel
    continuous-bernoulli  x*l - softplus(l) + log C(l)           # its normaliser: a density on [0, 1]
    logistic              log P(the 8-bit level of x | mu, s)    # discretised logistic, 256 levels
    gaussian              log Normal(x | mu, max-ish(var, floor)) # real-valued features

The Bernoulli is not a density for grey levels (a pixel of 0.5 is scored as half a black and half a
white pixel) but is bounded above by 0 and well behaved, which is why it is the classic choice. The
continuous Bernoulli (Loaiza-Ganem and Cunningham, 2019) adds the normaliser that makes it a
density on [0, 1]. The discretised logistic (Kingma et al. 2016; Salimans et al. 2017) is a proper
probability over the 256 levels: it can never exceed 1, so its bound cannot run away on constant
pixels, and it is reported in bits per dimension. The Gaussian's variance has a smooth floor, so
that its density cannot grow without bound where a feature is constant.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import SsvaeError
from .densities import LOG_2PI
from .softplus import softplus

# The discretised logistic's bins: 256 levels of an 8-bit image in [0, 1], each 1/255 wide.
LEVELS = 256
HALF_BIN = 0.5 / (LEVELS - 1)
# Floor of the logistic's log-scale: a scale of e^-7 is already a tenth of a bin, so the level's
# probability is ~1 and nothing is gained below it, while the gradients there vanish (PixelCNN++'s
# choice as well).
MIN_LOG_SCALE = -7.0
# Floor of the Gaussian's standard deviation, applied smoothly to the variance: var + floor^2.
MIN_STD = 1e-3
# Below this |logit| the continuous Bernoulli's log-normaliser is taken from its Taylor series,
# where the closed form is 0/0.
CB_TAYLOR = 1e-2


class Likelihood:
    """One observation model: how many decoder outputs per input, log p(x|out), and E[x|out].

    ``log_prob(x, out)`` sums over the last dimension; ``x`` broadcasts against ``out``'s leading
    dimensions (an image's row against all K classes' rows, say). Outputs of two numbers per input
    hold the location in the first half and the (log-)scale in the second.
    """

    name = ""
    params_per_input = 1
    discrete = False  # a probability over the 256 levels, so that bits per dimension mean something

    def log_prob(self, x: Tensor, out: Tensor) -> Tensor:
        raise NotImplementedError

    def mean(self, out: Tensor) -> Tensor:
        raise NotImplementedError


class Bernoulli(Likelihood):
    name = "bernoulli"

    def log_prob(self, x: Tensor, out: Tensor) -> Tensor:
        return (x * out).sum(-1) - softplus(out).sum(-1)

    def mean(self, out: Tensor) -> Tensor:
        return torch.sigmoid(out)


def continuous_bernoulli_log_normaliser(logits: Tensor) -> Tensor:
    """log C(l), where C(l) = l / tanh(l/2) makes Bernoulli(x | sigmoid(l)) a density on [0, 1];
    an even function, 2 at l = 0 (where its Taylor series is used)."""
    magnitude = logits.abs()
    small = magnitude < CB_TAYLOR
    safe = torch.where(small, torch.ones_like(magnitude), magnitude)
    closed = torch.log(safe) - torch.log(torch.tanh(safe / 2))
    square = logits.square()
    taylor = math.log(2.0) + square / 12 - 7 * square.square() / 1440
    return torch.where(small, taylor, closed)


class ContinuousBernoulli(Likelihood):
    name = "continuous-bernoulli"

    def log_prob(self, x: Tensor, out: Tensor) -> Tensor:
        return (x * out).sum(-1) - (softplus(out) - continuous_bernoulli_log_normaliser(out)).sum(-1)

    def mean(self, out: Tensor) -> Tensor:
        # E[x] = lambda/(2 lambda - 1) + 1/(2 atanh(1 - 2 lambda)) = 1/(1 - e^-l) - 1/l, 1/2 at l = 0.
        small = out.abs() < CB_TAYLOR
        safe = torch.where(small, torch.ones_like(out), out)
        return torch.where(small, 0.5 + out / 12, 1 / (-torch.expm1(-safe)) - 1 / safe)


class DiscretisedLogistic(Likelihood):
    name = "logistic"
    params_per_input = 2
    discrete = True

    @staticmethod
    def split(out: Tensor) -> tuple[Tensor, Tensor]:
        mean, log_scale = out.chunk(2, dim=-1)
        return mean, log_scale.clamp(min=MIN_LOG_SCALE)

    def log_prob(self, x: Tensor, out: Tensor) -> Tensor:
        """log P(level of x) = log(sigmoid(u) - sigmoid(l)), u and l the bin's edges in units of the
        scale. Written as sigmoid(u) - sigmoid(l) = sigmoid(u) sigmoid(-l) (1 - exp(-(u - l))), every
        factor is computed without cancellation, and u - l = bin width / scale depends on the scale
        alone. The lowest level takes all the mass below it (only sigmoid(u) is left), the highest all
        the mass above it (only sigmoid(-l)), as in Salimans et al. (2017)."""
        mean, log_scale = self.split(out)
        inverse_scale = torch.exp(-log_scale)
        centred = x - mean
        upper = (centred + HALF_BIN) * inverse_scale
        lower = (centred - HALF_BIN) * inverse_scale
        not_top, not_bottom = x < 1 - HALF_BIN, x > HALF_BIN
        # The floor only acts for a scale over 10^30 bins wide, where exp(-(u - l)) rounds to 1.
        log_width = torch.log(torch.clamp(-torch.expm1(-2 * HALF_BIN * inverse_scale), min=1e-30))
        per_input = (torch.where(not_top, F.logsigmoid(upper), 0.0) + torch.where(not_bottom, F.logsigmoid(-lower), 0.0)
                     + torch.where(not_top & not_bottom, log_width, 0.0))
        return per_input.sum(-1)

    def mean(self, out: Tensor) -> Tensor:
        return self.split(out)[0].clamp(0, 1)


class Gaussian(Likelihood):
    name = "gaussian"
    params_per_input = 2

    @staticmethod
    def split(out: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and floored log-variance: log(exp(raw) + MIN_STD^2), smooth, never below the floor."""
        mean, raw = out.chunk(2, dim=-1)
        return mean, torch.logaddexp(raw, torch.full_like(raw, 2 * math.log(MIN_STD)))

    def log_prob(self, x: Tensor, out: Tensor) -> Tensor:
        mean, logvar = self.split(out)
        return -0.5 * ((x - mean).square() * torch.exp(-logvar) + logvar + LOG_2PI).sum(-1)

    def mean(self, out: Tensor) -> Tensor:
        return self.split(out)[0]


LIKELIHOODS = {cls.name: cls() for cls in (Bernoulli, ContinuousBernoulli, DiscretisedLogistic, Gaussian)}
NAMES = tuple(LIKELIHOODS)


def likelihood(name: str) -> Likelihood:
    """The observation model called ``name`` (one of :data:`NAMES`)."""
    if name not in LIKELIHOODS:
        raise SsvaeError(f"likelihood {name!r}: choose one of {', '.join(NAMES)}")
    return LIKELIHOODS[name]


def bits_per_dimension(negative_log_likelihood_nats: float, dimensions: int) -> float:
    """A bound in nats per image as bits per input dimension (meaningful for discrete likelihoods)."""
    return negative_log_likelihood_nats / (dimensions * math.log(2))
