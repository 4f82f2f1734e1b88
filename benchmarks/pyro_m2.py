"""M2 built with Pyro the way Pyro's SS-VAE tutorial builds it, for timing against ssvae.

Follows ``examples/vae/ss_vae_M2.py`` in pyro-ppl (https://pyro.ai/examples/ss-vae.html): z of 50,
one hidden layer of 500 softplus units in every network, hidden layers started from N(0, 1e-3),
a softmax classifier q(y|x), a Gaussian q(z|x,y) whose scale is an exponential, a sigmoid Bernoulli
decoder p(x|y,z), one-hot y summed out by parallel enumeration on unlabelled batches, and an
auxiliary -log q(y|x) on labelled batches scaled by 46, each loss with its own ``SVI`` sharing one
``pyro.optim.Adam`` (the tutorial's learning rate, 4.2e-4). Pyro is an optional benchmark dependency (``pip install pyro-ppl``).

    python benchmarks/pyro_m2.py [--seconds 60]   # self-check on MNIST with 100 labels
"""

from __future__ import annotations

import itertools

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, JitTraceEnum_ELBO, Trace_ELBO, TraceEnum_ELBO, config_enumerate
from pyro.optim import Adam
from torch import nn

# Each instance registers its networks in Pyro's global parameter store under its own prefix.
_instance_numbers = itertools.count()


def _hidden(n_in: int, n_out: int) -> nn.Sequential:
    """Linear + softplus, started from N(0, 1e-3) like the tutorial's MLP helper does its hidden layers."""
    layer = nn.Linear(n_in, n_out)
    nn.init.normal_(layer.weight, 0.0, 1e-3)
    nn.init.normal_(layer.bias, 0.0, 1e-3)
    return nn.Sequential(layer, nn.Softplus())


def _cat(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Join on the last dimension after broadcasting the others: under parallel enumeration y (and z,
    which depends on it) carry a leading dimension of 10 that x lacks."""
    lead = torch.broadcast_shapes(a.shape[:-1], b.shape[:-1])
    return torch.cat([a.expand(*lead, a.shape[-1]), b.expand(*lead, b.shape[-1])], dim=-1)


class _InBf16(nn.Module):
    """Runs ``inner`` under bf16 autocast and hands its output back in float32: Pyro's enumerated
    ELBO itself cannot run under autocast (Dice's tensordot refuses the mixed dtypes), so only the
    networks' matrix multiplies get bf16."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            out = self.inner(x)
        return out.float()


class _Networks(nn.Module):
    def __init__(self, input_dim: int, num_classes: int, z_dim: int, hidden: int, bf16: bool = False):
        super().__init__()
        wrap = _InBf16 if bf16 else (lambda module: module)
        self.classifier = wrap(nn.Sequential(_hidden(input_dim, hidden), nn.Linear(hidden, num_classes),
                                             nn.Softmax(dim=-1)))  # q(y|x) as probabilities
        self.encoder = wrap(_hidden(input_dim + num_classes, hidden))  # q(z|x,y), two heads below
        self.encoder_loc = wrap(nn.Linear(hidden, z_dim))
        self.encoder_scale = wrap(nn.Linear(hidden, z_dim))
        self.decoder = wrap(nn.Sequential(_hidden(z_dim + num_classes, hidden), nn.Linear(hidden, input_dim),
                                          nn.Sigmoid()))  # p(x|y,z): Bernoulli probabilities

    def encode(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(_cat(x, y))
        return self.encoder_loc(h), self.encoder_scale(h).exp()


class PyroM2:
    """SS-VAE M2 as in Pyro's tutorial: z 50, one hidden layer of 500 softplus units in each network
    (classifier q(y|x), encoder q(z|x,y), decoder p(x|y,z) Bernoulli), y enumerated in parallel
    (config_enumerate + TraceEnum_ELBO(max_plate_nesting=1)) for unlabelled batches, and the
    auxiliary classification loss (the tutorial's aux_loss_multiplier, 46) on labelled batches.
    ``jit=True`` is the tutorial's ``--jit``: the unlabelled loss traced once and replayed.
    ``bf16=True`` goes beyond the tutorial: the networks run under bf16 autocast (the ELBO in float32).

    The constructor clears Pyro's parameter store; several instances may still live in one process,
    since each re-registers its own (uniquely named) parameters on every step."""

    def __init__(self, input_dim: int = 784, num_classes: int = 10, z_dim: int = 50, hidden: int = 500,
                 aux_loss_multiplier: float = 46.0, learning_rate: float = 4.2e-4, seed: int = 0,
                 beta1: float = 0.9, jit: bool = False, bf16: bool = False):
        pyro.clear_param_store()
        pyro.set_rng_seed(seed)  # the same seed gives the same initial weights and the same noise
        self.name = f"pyro_m2_{next(_instance_numbers)}"
        self.num_classes, self.z_dim, self.aux_loss_multiplier = num_classes, z_dim, aux_loss_multiplier
        self.nets = _Networks(input_dim, num_classes, z_dim, hidden, bf16)
        # One optimiser for both losses, as the tutorial has: the classifier's Adam state is shared.
        optimiser = Adam({"lr": learning_rate, "betas": (beta1, 0.999)})
        # expand=True and no enumeration warning on labelled batches (nothing to enumerate there),
        # as in the tutorial's current version.
        guide = config_enumerate(self.guide, "parallel", expand=True)
        # jit: the tutorial's --jit, the enumerated ELBO traced once by torch.jit and replayed.
        elbo = JitTraceEnum_ELBO if jit else TraceEnum_ELBO
        self.elbo = SVI(self.model, guide, optimiser, loss=elbo(max_plate_nesting=1, strict_enumeration_warning=False))
        self.aux = SVI(self.model_classify, self.guide_classify, optimiser, loss=Trace_ELBO())

    def model(self, xs: torch.Tensor, ys: torch.Tensor | None = None) -> None:
        """p(z) = N(0, I), p(y) uniform one-hot (observed when labelled), p(x|y,z) Bernoulli."""
        pyro.module(self.name, self.nets)  # all three networks: the guide's get their gradients here too
        b, k = xs.shape[0], self.num_classes
        with pyro.plate("data", b):
            prior = dist.Normal(xs.new_zeros(b, self.z_dim), xs.new_ones(b, self.z_dim))
            zs = pyro.sample("z", prior.to_event(1))
            ys = pyro.sample("y", dist.OneHotCategorical(xs.new_full((b, k), 1.0 / k)), obs=ys)
            probs = self.nets.decoder(_cat(zs, ys))
            # x is grey levels in [0, 1], not 0/1, so the tutorial turns off Bernoulli's support check.
            pyro.sample("x", dist.Bernoulli(probs, validate_args=False).to_event(1), obs=xs)

    def guide(self, xs: torch.Tensor, ys: torch.Tensor | None = None) -> None:
        """q(y|x) when y is unobserved (enumerated, not sampled), then q(z|x,y)."""
        with pyro.plate("data", xs.shape[0]):
            if ys is None:
                ys = pyro.sample("y", dist.OneHotCategorical(self.nets.classifier(xs)))
            loc, scale = self.nets.encode(xs, ys)
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    def model_classify(self, xs: torch.Tensor, ys: torch.Tensor) -> None:
        """The auxiliary term: observed labels scored under q(y|x), scaled by the multiplier."""
        pyro.module(self.name, self.nets)
        with pyro.plate("data", xs.shape[0]), pyro.poutine.scale(scale=self.aux_loss_multiplier):
            pyro.sample("y_aux", dist.OneHotCategorical(self.nets.classifier(xs)), obs=ys)

    def guide_classify(self, xs: torch.Tensor, ys: torch.Tensor) -> None:
        """Nothing is latent in the auxiliary term."""

    def unlabelled_step(self, x: torch.Tensor) -> float:
        """One SVI step on unlabelled images (floats in [0, 1], (B, D)); returns the loss."""
        return self.elbo.step(x)

    def labelled_step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """The tutorial's labelled batch: an ELBO step, then an auxiliary-loss step (y: int64 classes)."""
        ys = nn.functional.one_hot(y, self.num_classes).to(x.dtype)
        return self.elbo.step(x, ys) + self.aux.step(x, ys)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """The most probable class under q(y|x), int64 (B,)."""
        return self.nets.classifier(x).argmax(-1)


def _self_check(seconds: float, batch: int = 200, num_labels: int = 100) -> None:
    """Train on MNIST with 100 balanced labels for ``seconds``; print speed and validation accuracy."""
    import time

    import numpy as np

    from ssvae.data.labels import balanced_label_split
    from ssvae.data.mnist import load_mnist

    torch.set_num_threads(2)
    data = load_mnist()
    labelled = balanced_label_split(data.train_labels, num_labels, 10, seed=0)
    unlabelled = torch.from_numpy(np.setdiff1d(np.arange(len(data.train_labels)), labelled))
    images = torch.from_numpy(data.train_images)
    x_lab, y_lab = images[labelled].float() / 255, torch.from_numpy(data.train_labels[labelled])
    # The tutorial passes once per epoch over the labelled images, spread evenly among the unlabelled
    # batches. All 100 labels form one batch, so that is one labelled step per epoch's ~250 batches.
    per_epoch = len(unlabelled) // batch
    model = PyroM2(seed=0)
    generator = torch.Generator().manual_seed(0)
    step = labelled_steps = 0
    busy, start = 0.0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        order = unlabelled[torch.randperm(len(unlabelled), generator=generator)]
        for i in range(per_epoch):  # full batches only, so every timed step has the same size
            if i == 1:  # where the tutorial's `i % periodic_interval_batches == 1` puts it
                model.labelled_step(x_lab, y_lab)
                labelled_steps += 1
            x = images[order[i * batch:(i + 1) * batch]].float() / 255
            t = time.perf_counter()
            model.unlabelled_step(x)
            busy += time.perf_counter() - t
            step += 1
            if time.perf_counter() - start >= seconds:
                break
    accuracy = (model.predict(torch.from_numpy(data.val_images).float() / 255)
                == torch.from_numpy(data.val_labels)).float().mean().item()
    print(f"pyro {pyro.__version__}, torch {torch.__version__}, {torch.get_num_threads()} threads, batch {batch}")
    print(f"{step} unlabelled steps ({step * batch / busy:.0f} unlabelled images/s), {labelled_steps} labelled")
    print(f"validation accuracy after {time.perf_counter() - start:.0f} s: {accuracy:.4f}")


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    _self_check(parser.parse_args().seconds)
