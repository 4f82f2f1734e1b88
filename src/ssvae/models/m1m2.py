"""M1+M2: the stacked model of Kingma et al. (2014), M2 on the latent features of a trained M1.

Generative story, for one image x with class y, style z2 and features z1::

    p(y)        = Cat(1/K)
    p(z2)       = Normal(0, I)
    p(z1|y,z2)  = Normal(mean(y, z2), diag exp(logvar(y, z2)))   # M2, Gaussian over features
    p(x|z1)     = Bernoulli(sigmoid(M1's decoder(z1)))           # M1, trained first, then fixed

Inference::

    q(z1|x)     = M1's encoder, fixed                           # features of the image
    q(y|z1), q(z2|z1,y)                                          # M2's networks, on the features

M1 is trained first, on every training image without labels. M2 is then trained on its features
exactly as it is trained on pixels, with two differences taken from the paper's code: a fresh z1 is
drawn from q(z1|x) for every batch (so M2 sees the features' uncertainty, a regulariser), and only
the *active* dimensions of z1 are kept, those whose q-means vary over the training images (standard
deviation above a threshold); the rest carry no information about x. For validation and test, the
q-mean of z1 is classified, with no sampling.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..data.batches import Batch
from ..errors import SsvaeError
from .m1 import M1, M1Config
from .m2 import M2, M2Config, M2Terms


# M2's settings on M1's features where they differ from M2 on pixels. The features are a handful of
# informative dimensions (15 or so), so a z2 of 50 lets the encoder carry the class in z2 and the
# generative model need not use y: z2 of 10 reached 0.956 validation accuracy in 4 minutes where 50
# reached 0.945 (seed 0, same M1). Their bound is also smaller than a pixel bound (about 38 nats
# against 100), so the cross-entropy needs less weight: alpha 1 reached 0.960 where 3 reached 0.956.
# The classifier terms, M2's defaults on pixels, are left out on the features: they were measured on
# pixels only.
STACKED_M2_DEFAULTS = {"latent_dim": 10, "alpha": 1.0, "likelihood": "gaussian", "class_balance": 0.0,
                       "adversarial_weight": 0.0}


@dataclass(frozen=True)
class M1M2Config:
    """Both stages' architectures, and which of M1's latent dimensions M2 sees."""

    m1: M1Config = field(default_factory=M1Config)
    m2: M2Config = field(default_factory=lambda: M2Config(**STACKED_M2_DEFAULTS))
    # Indices of the active z1 dimensions, fixed once M1 is trained (see active_dimensions).
    active_dims: tuple[int, ...] = ()

    def __post_init__(self):
        # Accept the plain dicts and lists a JSON round trip gives back.
        if isinstance(self.m1, dict):
            object.__setattr__(self, "m1", M1Config(**self.m1))
        if isinstance(self.m2, dict):  # what a config saved before an option existed was trained with
            object.__setattr__(self, "m2", M2Config(**{**M2Config.DEFAULTS_BEFORE_THEY_WERE_OPTIONS, **self.m2}))
        object.__setattr__(self, "active_dims", tuple(int(i) for i in self.active_dims))

    def validate(self) -> None:
        if not self.active_dims:
            raise SsvaeError("M1+M2: none of M1's latent dimensions is active (its q-means hardly vary over the "
                             "data); train M1 longer (--minutes, --m1-share) or lower --active-threshold")
        self.m1.validate()
        self.m2.validate()
        if self.m2.input_dim != len(self.active_dims) or self.m2.likelihood != "gaussian":
            raise SsvaeError(f"M1+M2: M2 must be Gaussian over the {len(self.active_dims)} active dimensions")
        if max(self.active_dims) >= self.m1.latent_dim:
            raise SsvaeError(f"M1+M2: active dimension {max(self.active_dims)} is not in M1's z of "
                             f"{self.m1.latent_dim}")


@torch.no_grad()
def active_dimensions(m1: M1, images: Tensor, threshold: float = 0.1, batch_size: int = 5000) -> list[int]:
    """The z1 dimensions whose q-means have a standard deviation above ``threshold`` over ``images``."""
    means = torch.cat([m1.encode(images[i:i + batch_size])[0] for i in range(0, len(images), batch_size)])
    return torch.nonzero(means.std(dim=0) > threshold).flatten().tolist()


class M1M2(nn.Module):
    """M2 on M1's active latent features. ``self.m1`` is frozen; only ``self.m2`` is trained."""

    def __init__(self, config: M1M2Config):
        super().__init__()
        config.validate()
        self.config = config
        self.m1 = M1(config.m1).requires_grad_(False)
        self.m2 = M2(config.m2)
        self.register_buffer("active", torch.tensor(config.active_dims, dtype=torch.long), persistent=False)

    def train(self, mode: bool = True):
        super().train(mode)
        self.m1.eval()  # fixed, whatever the stage
        return self

    def at_step(self, step: int, progress: float = 0.0) -> None:
        """The trainer's call before each step, passed on to M2 (its classifier terms' schedule)."""
        self.m2.at_step(step, progress)

    @property
    def noise_width(self) -> int:
        """Noise per image and step: M1's z1 first, then M2's z2 for every class."""
        return self.m1.noise_width + self.m2.noise_width

    @torch.no_grad()
    def features(self, x: Tensor, sample: bool, noise: Tensor | None = None) -> Tensor:
        """Active z1 of images ``x``: a draw from q(z1|x) when ``sample`` (from ``noise`` if given),
        else its mean."""
        z1 = self.m1.sample_latent(x, noise) if sample else self.m1.encode(x)[0]
        return z1.index_select(-1, self.active).float()

    def classify(self, x: Tensor) -> Tensor:
        """Logits of q(y|x): M2's classifier on the q-mean of z1."""
        return self.m2.classify(self.features(x, sample=False))

    latent_name = "z1, M1's features (active dimensions)"

    def latent(self, x: Tensor) -> Tensor:
        """The q-mean of z1's active dimensions, the features M2 classifies, for plotting."""
        return self.features(x, sample=False)

    def style(self, x: Tensor, y: Tensor) -> Tensor:
        """The mean of M2's q(z2|z1,y) on the q-mean of z1: the image's style once its class is taken out."""
        return self.m2.style(self.features(x, sample=False), y)

    @torch.no_grad()
    def generate(self, z2: Tensor, y: Tensor) -> Tensor:
        """Through both stages: M2 gives the mean of z1's active dimensions from (y, z2), M1 draws it.

        The inactive dimensions are set to 0, the prior's mean, where their q-means sit since the KL
        term pulled them there and the decoder learned to ignore them."""
        z1 = z2.new_zeros(len(z2), self.config.m1.latent_dim)
        z1[:, self.active] = self.m2.generate(z2, y)
        return self.m1.generate(z1)

    def forward(self, batch):
        """Calling the model computes its training objective, :meth:`loss`; this is what
        DistributedDataParallel wraps to average the gradients over processes."""
        return self.loss(batch)

    def loss(self, batch: Batch) -> M2Terms:
        """M2's objective on a fresh draw of z1 for every image of the batch."""
        split = self.m1.noise_width
        has_noise = batch.unlabelled_noise is not None
        features = Batch(
            labelled_x=self.features(batch.labelled_x, True, batch.labelled_noise if has_noise else None),
            labelled_y=batch.labelled_y,
            unlabelled_x=self.features(batch.unlabelled_x, True, batch.unlabelled_noise if has_noise else None),
            labelled_share=batch.labelled_share,
            labelled_noise=batch.labelled_noise[:, split:] if has_noise else None,
            unlabelled_noise=batch.unlabelled_noise[:, split:] if has_noise else None,
        )
        return self.m2.loss(features)
