"""M2: the generative semi-supervised classifier of Kingma et al. (2014).

Generative story, for one image x with class y and style z::

    p(y)       = Cat(1/K)                            # which class: uniform
    p(z)       = Normal(0, I)                        # the style: everything the class does not say
    p(x|y,z)   = Bernoulli(sigmoid(decoder(y, z)))   # the image, pixel by pixel (or another
                                                     # likelihood, see models/likelihoods.py)

Inference networks::

    q(y|x)     = Cat(softmax(classifier(x)))         # the classifier we are after
    q(z|x,y)   = Normal(mu(x,y), diag exp(logvar(x,y)))   # log-variance left unconstrained

Bounds, per image, in nats (L and U are *negative* evidence lower bounds, so lower is better)::

    -L(x,y) = E_q(z|x,y)[log p(x|y,z)] + log p(y) - KL(q(z|x,y) || p(z))
    -U(x)   = sum_y q(y|x) * (-L(x,y)) + H(q(y|x))           # y summed out, never sampled

Objective per training step, on a labelled batch and an unlabelled batch, with N_l labelled and
N_u unlabelled images in the data (N = N_l + N_u)::

    J = (N_l/N) mean_labelled L + (N_u/N) mean_unlabelled U + alpha * mean_labelled[-log q(y|x)]

This is the paper's objective divided by N, whatever the batch sizes; the paper's alpha = 0.1 N is
alpha = 0.1 here.

Without the alpha term the classifier only learns from labels through the generative model, which
is far too weak a signal (accuracy near 20% with 100 labels).

Two terms on the classifier alone are added to J by default (models/classifier_terms.py; 0 for
both gives the paper's objective): ``class_balance`` * the pull of q(y|x)'s class frequencies on the
unlabelled images toward p(y), its weight following the learning rate's cosine down to 0
(``class_balance_schedule``), and ``adversarial_weight`` * a virtual adversarial smoothness term of
q(y|x) with perturbations of length ``adversarial_radius``. The unlabelled bound alone lets a class
whose few labels cover few of its kinds lose the rest to a neighbour (shirts to T-shirts and
pullovers in Fashion-MNIST); the first holds the classes' frequencies up, the second carries each
label to the images around it.

The unlabelled bound is the hot path. All K classes are evaluated in one batched pass: the
encoder's first layer is split into an x-part, computed once per image and shared by every class,
and a y-part, which is just one row of weights per class. The labelled images ride along in the
same pass, at their own class only, so a training step is one classifier pass and one encoder and
decoder pass over all the (image, class) pairs it needs. The KL term is analytic (both Gaussians),
and one reparameterised sample of z per (x, y) estimates the expected log-likelihood.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .classifier_terms import class_balance_term, cosine_left, virtual_adversarial_term
from .densities import kl_to_standard_normal
from .likelihoods import NAMES as LIKELIHOOD_NAMES
from .likelihoods import likelihood as observation_model
from .softplus import Softplus, softplus


# The default weight of the labelled cross-entropy, per input dimension. The bounds are sums over
# the inputs, so the unlabelled bound's pull on the classifier (the gaps between the classes'
# bounds) grows with the image's size while the cross-entropy's does not. MNIST (784 pixels), alpha
# 10 against 3 on a 2-core AVX2 CPU: seeds 1-4 for 25 epochs each (what 10 minutes buy there) and
# seed 0 for 10 minutes, test 0.914 against 0.905 on average, better on four draws of five (seed 0:
# 0.911 against 0.880; it parts fewer threes from fives wrongly); alpha 20 no better. 8x8 digits
# (64 pixels, 50 labels, 40 epochs): test 0.888 / 0.880 / 0.863 / 0.848 at alpha 1 / 3 / 10 / 30.
ALPHA_PER_INPUT = 10.0 / 784

# Defaults of the classifier terms (models/classifier_terms.py), SDGM's, measured on M2 in 10 minutes,
# one thread a run, two side by side (docs/fashion-mnist.md). Fashion-MNIST, label draws 0-2: test
# 0.7876 / 0.7218 / 0.7821 against 0.7761 / 0.7024 / 0.7695 without them; they give back the classes
# the unlabelled bound starves (shirts called 553 times of 10,000 without them; seed 1's sandals 0.44
# -> 0.62). MNIST: see docs/mnist.md. Both follow the input's size, as alpha does, so that a small
# image is not swamped: the class balance's weight per input, like the bounds it competes with, and
# the perturbation's length as the square root of the inputs, like an image's own length (MNIST's
# 784: 50 and 2). scikit-learn's 8x8 digits as a folder, 50 labels, 40 epochs, 400 test images:
# 0.903 so scaled (4.1 and 0.57), 0.890 without the terms, 0.585 with 50 and 2 unchanged; the
# logistic regression on the same labels 0.853.
CLASS_BALANCE_PER_INPUT = 50.0 / 784
ADVERSARIAL_WEIGHT = 1.0
ADVERSARIAL_RADIUS_PER_ROOT_INPUT = 2.0 / math.sqrt(784)


@dataclass(frozen=True)
class M2Config:
    """Architecture of M2. Defaults are the paper's: one hidden layer of 500 softplus units."""

    input_dim: int = 784
    num_classes: int = 10
    latent_dim: int = 50
    hidden_dim: int = 500
    classifier_hidden_dim: int = 500
    # Weight of the labelled cross-entropy, relative to the per-image bounds (see module docstring);
    # None: ALPHA_PER_INPUT * input_dim, resolved when the config is made, so config.json holds the number.
    alpha: float | None = None
    # p(x|y,z), one of models/likelihoods.py: "bernoulli" (and the others made for them) for pixels in
    # [0, 1]; "gaussian" (mean and floored variance from the decoder) for real-valued features, such
    # as M1's latent z1 in M1+M2.
    likelihood: str = "bernoulli"
    # Weight of the pull of q(y|x)'s class frequencies on the unlabelled images toward p(y) (see
    # models/classifier_terms.py); 0 leaves the paper's objective. Its weight over the run:
    # "constant", or "cosine", down to 0 at the end of the budget along the learning rate's curve.
    # None: CLASS_BALANCE_PER_INPUT * input_dim, resolved when the config is made.
    class_balance: float | None = None
    class_balance_schedule: str = "cosine"
    # Weight of the virtual adversarial smoothness term on q(y|x), and the length of its
    # perturbation in the input's units (pixels in [0, 1]); weight 0 leaves it out.
    adversarial_weight: float = ADVERSARIAL_WEIGHT
    # None: ADVERSARIAL_RADIUS_PER_ROOT_INPUT * sqrt(input_dim), resolved when the config is made.
    adversarial_radius: float | None = None

    # What a run recorded before the classifier terms were options was trained with (read when such
    # a run is resumed).
    DEFAULTS_BEFORE_THEY_WERE_OPTIONS: ClassVar[dict] = {"class_balance": 0.0, "adversarial_weight": 0.0}

    def __post_init__(self):
        if self.alpha is None:
            object.__setattr__(self, "alpha", ALPHA_PER_INPUT * self.input_dim)
        if self.class_balance is None:
            object.__setattr__(self, "class_balance", CLASS_BALANCE_PER_INPUT * self.input_dim)
        if self.adversarial_radius is None:
            object.__setattr__(self, "adversarial_radius", ADVERSARIAL_RADIUS_PER_ROOT_INPUT * math.sqrt(self.input_dim))

    def validate(self) -> None:
        from ..errors import SsvaeError

        for name in ("input_dim", "latent_dim", "hidden_dim", "classifier_hidden_dim"):
            if getattr(self, name) < 1:
                raise SsvaeError(f"M2: {name} must be a positive integer, got {getattr(self, name)}")
        if not self.alpha >= 0:
            raise SsvaeError(f"M2: alpha must be a non-negative number, got {self.alpha}")
        if self.num_classes < 2:
            raise SsvaeError(f"M2: needs at least 2 classes, got {self.num_classes}")
        if not self.class_balance >= 0:
            raise SsvaeError(f"M2: class_balance must be 0 or more, got {self.class_balance}")
        if self.class_balance_schedule not in ("constant", "cosine"):
            raise SsvaeError(f"M2: class_balance_schedule must be constant or cosine, got {self.class_balance_schedule}")
        if not self.adversarial_weight >= 0:
            raise SsvaeError(f"M2: adversarial_weight must be 0 or more, got {self.adversarial_weight}")
        if not self.adversarial_radius > 0:
            raise SsvaeError(f"M2: adversarial_radius must be a positive number, got {self.adversarial_radius}")
        if self.likelihood not in LIKELIHOOD_NAMES:
            raise SsvaeError(f"M2: likelihood must be one of {', '.join(LIKELIHOOD_NAMES)}, got {self.likelihood}")


@dataclass
class M2Terms:
    """What one training step computed. ``loss`` is minimised; the rest are for the logs.

    Every field is a scalar tensor, still on the model's device, so that logging needs no host sync.
    """

    loss: Tensor
    labelled_bound: Tensor  # mean L(x,y) over the labelled batch, nats
    unlabelled_bound: Tensor  # mean U(x) over the unlabelled batch, nats
    classification: Tensor  # mean -log q(y|x) over the labelled batch
    classifier_entropy: Tensor  # mean H(q(y|x)) over the unlabelled batch


def at_least_float32(t: Tensor) -> Tensor:
    """Undo bf16 autocast where precision matters (log-likelihoods, KL), keep float64 as it is."""
    return t.float() if t.dtype in (torch.bfloat16, torch.float16) else t


def one_hot(classes: Tensor, num_classes: int, dtype: torch.dtype) -> Tensor:
    """Rows of the identity for ``classes`` (int64, any shape) -> shape (*classes.shape, num_classes).

    F.one_hot checks its input's range by reading its min and max back to the host on every device
    but CUDA and MPS; this comparison reads nothing back anywhere, so a training step that uses it
    stays free of host reads on any device (which the tests check on CPU)."""
    return (classes.unsqueeze(-1) == torch.arange(num_classes, device=classes.device)).to(dtype)


class M2(nn.Module):
    """The M2 model: classifier q(y|x), encoder q(z|x,y) and decoder p(x|y,z).

    Inputs ``x`` are pixel intensities in [0, 1] of shape (batch, input_dim): grey levels, or binary
    samples of them when the data pipeline binarises dynamically. The Bernoulli log-likelihood
    x*l - softplus(l) scores either.
    """

    def __init__(self, config: M2Config = M2Config()):
        super().__init__()
        config.validate()
        self.config = config
        d, k, z, h = config.input_dim, config.num_classes, config.latent_dim, config.hidden_dim

        self.classifier = nn.Sequential(
            nn.Linear(d, config.classifier_hidden_dim),
            Softplus(),
            nn.Linear(config.classifier_hidden_dim, k),
        )
        # q(z|x,y): first layer W_x x + W_y[y] + b. The x-part is the expensive one (d x h) and is
        # shared by all K classes; the y-part is one row of W_y per class.
        self.encoder_x = nn.Linear(d, h)
        self.encoder_y = nn.Parameter(torch.empty(k, h))
        self.encoder_head = nn.Linear(h, 2 * z)  # -> (mu, logvar)
        # p(x|y,z): first layer W_z z + V_y[y] + c, then Bernoulli logits per pixel.
        self.decoder_z = nn.Linear(z, h)
        self.decoder_y = nn.Parameter(torch.empty(k, h))
        self.observation = observation_model(config.likelihood)
        self.decoder_out = nn.Linear(h, d * self.observation.params_per_input)
        # One-hot inputs through a linear layer, initialised as nn.Linear would initialise W_y.
        bound = 1.0 / math.sqrt(k)
        nn.init.uniform_(self.encoder_y, -bound, bound)
        nn.init.uniform_(self.decoder_y, -bound, bound)
        # The class balance's weight at this point of its schedule, set by ``at_step``; a buffer, so
        # that a compiled loss reads its current value, and not saved with the weights.
        self.register_buffer("class_balance_weight", torch.full((), config.class_balance), persistent=False)
        # The class balance's running class frequencies, saved with the weights so that a resumed
        # run goes on exactly.
        self.register_buffer("class_frequencies", torch.full((k,), 1.0 / k))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Weights saved before the class-balance term have no running class frequencies: uniform.
        uniform = torch.full_like(self.class_frequencies, 1.0 / self.config.num_classes)
        state_dict.setdefault(prefix + "class_frequencies", uniform)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def at_step(self, step: int, progress: float = 0.0) -> None:
        """Called by the trainer before each optimiser step with the share of the budget used so far:
        sets the class balance's scheduled weight."""
        held = self.config.class_balance_schedule == "constant"
        self.class_balance_weight.fill_(self.config.class_balance * (1.0 if held else cosine_left(progress)))

    @property
    def noise_width(self) -> int:
        """Standard normal numbers one image needs per training step: one z per class, then (with the
        adversarial term) the random probe from which the adversarial direction is found. The batch
        sampler draws them (see :class:`~ssvae.data.batches.Batch`), so that an image's noise does
        not depend on how a batch is split between processes."""
        probe = self.config.input_dim if self.config.adversarial_weight > 0 else 0
        return self.config.num_classes * self.config.latent_dim + probe

    # -- the pieces of the generative story ------------------------------------------------------

    def classify(self, x: Tensor) -> Tensor:
        """Logits of q(y|x), shape (batch, K)."""
        return self.classifier(x)

    def encode(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and log-variance of q(z|x,y), each (batch, latent_dim), for classes ``y`` (int64, (batch,))."""
        hidden = softplus(self.encoder_x(x) + self.encoder_y[y])
        mu, logvar = at_least_float32(self.encoder_head(hidden)).chunk(2, dim=-1)
        return mu, logvar

    def decode(self, z: Tensor, y: Tensor) -> Tensor:
        """Parameters of p(x|y,z) for classes ``y`` (int64, (batch,)): (batch, input_dim * p), p numbers
        per input as the likelihood takes them (Bernoulli logits; location and scale side by side)."""
        return self.decoder_out(softplus(self.decoder_z(z) + self.decoder_y[y]))

    def pixel_means(self, out: Tensor) -> Tensor:
        """The mean of p(x|y,z) from the decoder's output."""
        return self.observation.mean(at_least_float32(out))

    # -- what pictures are drawn from ------------------------------------------------------------

    latent_name = "style z of q(z|x,y)"

    def style(self, x: Tensor, y: Tensor) -> Tensor:
        """The mean of q(z|x,y): what image ``x`` looks like once its class ``y`` is taken out."""
        return self.encode(x, y)[0]

    def generate(self, z: Tensor, y: Tensor) -> Tensor:
        """The mean image of p(x|y,z), shape (batch, input_dim): style ``z`` drawn as class ``y``."""
        return self.pixel_means(self.decode(z, y)).float()

    def latent(self, x: Tensor) -> Tensor:
        """The style of each image at the class the classifier gives it, for plotting."""
        return self.style(x, self.classify(x).argmax(-1))

    # -- bounds ----------------------------------------------------------------------------------

    def bounds(self, labelled_x: Tensor, labelled_y: Tensor, unlabelled_x: Tensor,
               labelled_noise: Tensor | None = None, unlabelled_noise: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """L(x,y) for every (image, class) pair a training step needs, in one pass.

        Returns ``(labelled, per_class)``: L(x,y) of each labelled image at its own class, shape
        (B_l,), and of each unlabelled image at every class, shape (B_u, K).

        The pairs are stacked as rows, B_u*K for the unlabelled images then B_l for the labelled
        ones, so that each layer after the shared x-part is one matrix multiply for the whole step.
        One reparameterised sample of z is drawn per row, from the given noise, (B, noise_width) per
        image (class c of an unlabelled image takes columns c*Z..(c+1)*Z, a labelled image the
        first Z), or afresh when none is given.
        """
        k, n_u = self.config.num_classes, unlabelled_x.shape[0]
        # First encoder layer: W_x x (once per image) + W_y[y] (one row of weights per class).
        shared = self.encoder_x(torch.cat([unlabelled_x, labelled_x]))
        # The labelled rows pick their class's row of weights by a one-hot product rather than by
        # indexing: its gradient is a small matrix multiply, where indexing's is a scatter that the
        # compiler fuses into a slow kernel (a third of the step's element-wise time on CPU).
        onehot = one_hot(labelled_y, k, shared.dtype)
        pre = torch.cat([
            (shared[:n_u].unsqueeze(1) + self.encoder_y).flatten(0, 1),  # every class, row b*K + c
            shared[n_u:] + onehot @ self.encoder_y,
        ])
        mu, logvar = at_least_float32(self.encoder_head(softplus(pre))).chunk(2, dim=-1)
        if unlabelled_noise is None:
            noise = torch.randn_like(mu)
        else:
            z_dim = self.config.latent_dim
            noise = torch.cat([unlabelled_noise[:, :k * z_dim].reshape(n_u * k, z_dim), labelled_noise[:, :z_dim]])
        z = mu + torch.exp(0.5 * logvar) * noise
        # First decoder layer: W_z z + V_y[y], the y-part again one row per class.
        first = self.decoder_z(z)
        pre = torch.cat([
            (first[:n_u * k].unflatten(0, (n_u, k)) + self.decoder_y).flatten(0, 1),
            first[n_u * k:] + onehot @ self.decoder_y,
        ])
        out = at_least_float32(self.decoder_out(softplus(pre)))
        log_px = self._log_likelihood(unlabelled_x, labelled_x, out)
        kl_z = kl_to_standard_normal(mu, logvar)
        negative = -(log_px - math.log(k) - kl_z)  # log p(y) = -log K
        return negative[n_u * k:], negative[:n_u * k].view(n_u, k)

    def _log_likelihood(self, unlabelled_x: Tensor, labelled_x: Tensor, out: Tensor) -> Tensor:
        """log p(x|y,z) of every row laid out by :meth:`bounds`, from the decoder's output ``out``.
        Each unlabelled image is broadcast against its K rows rather than copied K times."""
        n_u, k = unlabelled_x.shape[0], self.config.num_classes
        return torch.cat([
            self.observation.log_prob(unlabelled_x.unsqueeze(1), out[:n_u * k].unflatten(0, (n_u, k))).flatten(),
            self.observation.log_prob(labelled_x, out[n_u * k:]),
        ])

    def labelled_bound(self, x: Tensor, y: Tensor) -> Tensor:
        """L(x,y) per image, shape (batch,), for known classes ``y`` (int64, (batch,))."""
        return self.bounds(x, y, x[:0])[0]

    def unlabelled_bound(self, x: Tensor, class_logits: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """U(x) per image with y summed out over all K classes in one pass, and H(q(y|x)).

        Returns ``(U, entropy)``, each of shape (batch,).
        """
        if class_logits is None:
            class_logits = self.classify(x)
        per_class = self.bounds(x[:0], torch.zeros(0, dtype=torch.long, device=x.device), x)[1]
        return self._sum_out_classes(per_class, class_logits)

    @staticmethod
    def _sum_out_classes(per_class: Tensor, class_logits: Tensor) -> tuple[Tensor, Tensor]:
        """U = sum_y q(y|x) L(x,y) - H(q(y|x)), and H, from the per-class bounds and q's logits."""
        log_q = F.log_softmax(at_least_float32(class_logits), dim=-1)
        q = log_q.exp()
        entropy = -(q * log_q).sum(-1)
        return (q * per_class).sum(-1) - entropy, entropy

    def forward(self, batch):
        """Calling the model computes its training objective, :meth:`loss`; this is what
        DistributedDataParallel wraps to average the gradients over processes."""
        return self.loss(batch)

    def loss(self, batch) -> M2Terms:
        """The training objective J on one :class:`~ssvae.data.batches.Batch` (see module docstring).

        The classifier and every bound run once over the labelled and unlabelled images together.
        """
        n_u = batch.unlabelled_x.shape[0]
        labelled, per_class = self.bounds(batch.labelled_x, batch.labelled_y, batch.unlabelled_x,
                                          batch.labelled_noise, batch.unlabelled_noise)
        x = torch.cat([batch.unlabelled_x, batch.labelled_x])
        class_logits = at_least_float32(self.classify(x))
        unlabelled, entropy = self._sum_out_classes(per_class, class_logits[:n_u])
        classification = F.cross_entropy(class_logits[n_u:], batch.labelled_y)
        share = batch.labelled_share
        c = self.config
        loss = share * labelled.mean() + (1 - share) * unlabelled.mean() + c.alpha * classification
        if c.class_balance > 0 and self.training:
            loss = loss + self.class_balance_weight * class_balance_term(
                F.softmax(class_logits[:n_u], dim=-1), self.class_frequencies)
        if c.adversarial_weight > 0 and self.training:
            if batch.unlabelled_noise is None:
                probe = torch.randn_like(x)
            else:
                z_width = c.num_classes * c.latent_dim
                probe = torch.cat([batch.unlabelled_noise[:, z_width:], batch.labelled_noise[:, z_width:]])
            loss = loss + c.adversarial_weight * virtual_adversarial_term(
                self.classify, x, class_logits, probe, c.adversarial_radius)
        return M2Terms(
            loss=loss,
            labelled_bound=labelled.mean().detach(),
            unlabelled_bound=unlabelled.mean().detach(),
            classification=classification.detach(),
            classifier_entropy=entropy.mean().detach(),
        )
