"""M1: the latent-feature model of Kingma et al. (2014), a variational autoencoder.

Generative story, for one image x with latent features z::

    p(z)     = Normal(0, I)                          # the features: no label involved
    p(x|z)   = Bernoulli(sigmoid(decoder(z)))        # the image, pixel by pixel (or another
                                                     # likelihood, see models/likelihoods.py)

Inference network::

    q(z|x)   = Normal(mu(x), diag exp(logvar(x)))    # log-variance left unconstrained

Bound, per image, in nats (the negative evidence lower bound, so lower is better)::

    -ELBO(x) = -E_q(z|x)[log p(x|z)] + KL(q(z|x) || p(z))

M1 learns from every training image and ignores the labels. It is used two ways: with a 2-D z to
draw the latent space coloured by class, and with z of 50 as a feature extractor, whose q-means
feed a classifier (M1+SVM) or M2 (M1+M2, see :mod:`ssvae.models.m1m2`). The paper's encoder and
decoder have two hidden layers of 500-600 softplus units.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..errors import SsvaeError
from .densities import kl_to_standard_normal
from .likelihoods import NAMES as LIKELIHOOD_NAMES
from .likelihoods import likelihood as observation_model
from .m2 import at_least_float32
from .softplus import Softplus


@dataclass(frozen=True)
class M1Config:
    """Architecture of M1. Defaults are the paper's text: two hidden layers of 600 softplus units, z of 50."""

    input_dim: int = 784
    latent_dim: int = 50
    hidden_dims: tuple[int, ...] = (600, 600)
    num_classes: int = 10  # unused by the model; kept so every family is built from the same data facts
    # Steps over which the KL term's weight in the training loss rises linearly from 0 to 1. Early on,
    # the full KL pulls every latent dimension onto the prior before the decoder has learnt to use
    # it, and most never come back; the warm-up lets more dimensions carry information (15 of 50
    # instead of 10 after 8 minutes on MNIST, and a better bound: -96.1 against -97.8 nats). 0: none.
    kl_warmup_steps: int = 10_000
    likelihood: str = "bernoulli"  # p(x|z), one of models/likelihoods.py

    def __post_init__(self):
        object.__setattr__(self, "hidden_dims", tuple(self.hidden_dims))  # a JSON round trip gives a list

    def validate(self) -> None:
        if self.input_dim < 1 or self.latent_dim < 1:
            raise SsvaeError(f"M1: input_dim and latent_dim must be positive, got {self.input_dim}, {self.latent_dim}")
        if self.kl_warmup_steps < 0:
            raise SsvaeError(f"M1: kl_warmup_steps must be 0 or more, got {self.kl_warmup_steps}")
        if self.likelihood not in LIKELIHOOD_NAMES:
            raise SsvaeError(f"M1: likelihood must be one of {', '.join(LIKELIHOOD_NAMES)}, got {self.likelihood}")
        if not self.hidden_dims or any(h < 1 for h in self.hidden_dims):
            raise SsvaeError(f"M1: hidden_dims must be one or more positive sizes, got {list(self.hidden_dims)}")


@dataclass
class M1Terms:
    """What one training step computed; scalar tensors on the model's device."""

    loss: Tensor  # mean -ELBO over the batch, nats (with the KL down-weighted during a warm-up)
    reconstruction: Tensor  # mean -E_q[log p(x|z)]
    kl: Tensor  # mean KL(q(z|x) || p(z))


def warmup_weight(step: int, warmup_steps: int) -> float:
    """The weight of a warmed-up term at ``step``: rising linearly from 0 to 1 over ``warmup_steps``
    (Sønderby et al. 2016), then 1; always 1 when ``warmup_steps`` is 0."""
    return min(1.0, step / warmup_steps) if warmup_steps > 0 else 1.0


def mlp(sizes: list[int]) -> nn.Sequential:
    """Linear layers of the given sizes with softplus between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(Softplus())
    return nn.Sequential(*layers)


class M1(nn.Module):
    """A VAE with Gaussian q(z|x) and (by default) Bernoulli p(x|z); inputs are pixels in [0, 1], shape
    (batch, input_dim)."""

    def __init__(self, config: M1Config = M1Config()):
        super().__init__()
        config.validate()
        self.config = config
        hidden = list(config.hidden_dims)
        self.encoder = mlp([config.input_dim, *hidden, 2 * config.latent_dim])  # -> (mu, logvar)
        self.observation = observation_model(config.likelihood)
        self.decoder = mlp([config.latent_dim, *reversed(hidden),
                            config.input_dim * self.observation.params_per_input])  # -> p(x|z)'s parameters
        # The KL term's weight in the training loss; a buffer, so a compiled loss reads its current
        # value. Set from the step count by ``at_step``, so it is not saved with the weights.
        self.register_buffer("kl_weight", torch.ones(()), persistent=False)

    def at_step(self, step: int, progress: float = 0.0) -> None:
        """Called by the trainer before each optimiser step: sets the warm-up's KL weight."""
        self.kl_weight.fill_(warmup_weight(step, self.config.kl_warmup_steps))

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and log-variance of q(z|x), each (batch, latent_dim)."""
        mu, logvar = at_least_float32(self.encoder(x)).chunk(2, dim=-1)
        return mu, logvar

    def decode(self, z: Tensor) -> Tensor:
        """Parameters of p(x|z), shape (batch, input_dim * p): p numbers per input (Bernoulli: a logit)."""
        return self.decoder(z)

    latent_name = "z of q(z|x)"

    def latent(self, x: Tensor) -> Tensor:
        """The mean of q(z|x), for plotting."""
        return self.encode(x)[0]

    def generate(self, z: Tensor) -> Tensor:
        """The mean image of p(x|z), shape (batch, input_dim)."""
        return self.observation.mean(at_least_float32(self.decode(z))).float()

    @property
    def noise_width(self) -> int:
        """Standard normal numbers one image needs per training step (one z), drawn by the batch sampler."""
        return self.config.latent_dim

    def sample_latent(self, x: Tensor, noise: Tensor | None = None) -> Tensor:
        """One reparameterised draw of z ~ q(z|x), from ``noise`` (B, >= latent_dim) or afresh."""
        mu, logvar = self.encode(x)
        noise = torch.randn_like(mu) if noise is None else noise[:, :mu.shape[1]]
        return mu + torch.exp(0.5 * logvar) * noise

    def terms(self, x: Tensor, noise: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Per image: -E_q[log p(x|z)] (one sample of z) and the analytic KL, each (batch,)."""
        mu, logvar = self.encode(x)
        noise = torch.randn_like(mu) if noise is None else noise[:, :mu.shape[1]]
        z = mu + torch.exp(0.5 * logvar) * noise
        log_px = self.observation.log_prob(x, at_least_float32(self.decode(z)))
        kl = kl_to_standard_normal(mu, logvar)
        return -log_px, kl

    def negative_elbo(self, x: Tensor) -> Tensor:
        """-ELBO(x) per image, shape (batch,), nats."""
        reconstruction, kl = self.terms(x)
        return reconstruction + kl

    def forward(self, batch):
        """Calling the model computes its training objective, :meth:`loss`; this is what
        DistributedDataParallel wraps to average the gradients over processes."""
        return self.loss(batch)

    def loss(self, batch) -> M1Terms:
        """Mean -ELBO over every image of a batch; labels, if any, are not used."""
        x = torch.cat([batch.unlabelled_x, batch.labelled_x])
        noise = None if batch.unlabelled_noise is None else torch.cat([batch.unlabelled_noise, batch.labelled_noise])
        reconstruction, kl = self.terms(x, noise)
        return M1Terms(loss=(reconstruction + self.kl_weight * kl).mean(),
                       reconstruction=reconstruction.mean().detach(), kl=kl.mean().detach())
