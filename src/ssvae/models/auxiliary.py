"""Auxiliary deep generative models (Maaløe et al. 2016): ADGM and its skip variant SDGM.

M2 with an auxiliary variable a that makes the inference model richer. Generative story, for one
image x with class y, style z and auxiliary a::

    p(y)          = Cat(1/K)
    p(z)          = Normal(0, I)
    ADGM:  p(x|y,z)   = Bernoulli(sigmoid(decoder(y, z)))        # the image, as in M2
           p(a|x,y,z) = Normal(mean, diag exp(logvar))          # a, generated after the image
    SDGM:  p(a|y,z)   = Normal(mean, diag exp(logvar))          # a generated first ...
           p(x|a,y,z) = Bernoulli(sigmoid(decoder(a, y, z)))     # ... and the image from it too

Inference networks, the same for both::

    q(a|x)        = Normal(mean(x), diag exp(logvar(x)))
    q(y|a,x)      = Cat(softmax(classifier(a, x)))               # the classifier we are after
    q(z|a,x,y)    = Normal(mean(a, x, y), diag exp(logvar(a, x, y)))

With a drawn once per image from q(a|x), the bounds are M2's with two more terms, in nats (L and
U are negative lower bounds, lower is better)::

    -L(x,y) = E_q[log p(x|..) + log p(y) + log p(a|..) - log q(a|x)] - KL(q(z|a,x,y) || p(z))
    -U(x)   = E_q(a|x)[ sum_y q(y|a,x) (-L(x,y,a)) + H(q(y|a,x)) ]
    J       = (N_l/N) mean L + (N_u/N) mean U + alpha * mean_labelled[-log q(y|a,x)]

log p(a|..) - log q(a|x) has no closed form (p(a|..) depends on z): it is estimated from the one
sample of a. The KL of z is analytic. As in M2, y is summed out exactly: every network input that
does not depend on y (x, a) passes the first layer once per image, and each class adds its own
row of weights, so one step is one pass over all (image, class) pairs.

Two changes to J, both on by default (``kl_scale``, ``class_balance``; 1 and 0 give the paper's
objective), against the mistake that costs these models most with 100 labels: a class whose
labelled images are few of its shapes loses those shapes to a neighbour early (fives to threes),
q(y|a,x) grows sure of them, and the unlabelled bound then trains only the neighbour's networks on
them, with a gradient toward the right class scaled by its near-zero probability:

- the KL terms (of z, and log q(a|x) - log p(a|..)) are weighted by ``kl_scale`` = 2 in the
  training loss, so that the class is cheaper to carry in y (log K nats at most) than in z;
- ``class_balance`` * sum_y qbar(y) log(K m(y)) is added, with qbar the batch's mean of q(y|a,x)
  over its unlabelled images and m a running mean of qbar (held fixed): its gradient is that of
  KL(m || p(y)), which pulls down a class given more often than p(y) = 1/K says, before
  q(y|a,x) is sure of the images it took. Its weight follows the learning rate's cosine down to 0
  by the end of the budget (``class_balance_schedule``): once the classes have formed, a pull
  toward 1/K only biases them, giving some of a frequent class's images (MNIST's ones, 11%) to a
  rare one (its fives, 9%).

A third change, also on by default, works on the classifier alone (``adversarial_weight``; 0
leaves it out): a virtual adversarial smoothness term (Miyato et al. 2018),

    adversarial_weight * mean over the batch's images of KL(q(y|a,x) || q(y|a,x+r)),

with r of length ``adversarial_radius`` in the direction in which q(y|a,x) changes most, found by
one power iteration from a short random probe, and a held fixed. Once q(y|a,x) is sure of an image
the bounds above give it almost no gradient; this term still asks that images close to each other
get the same class, which is what the unlabelled images' clusters say. Its weight can rise over the
run (``adversarial_final_weight``), along the learning rate's cosine turned upside down: a large
weight from the start holds the classes back while they form. Its radius can likewise shrink
(``adversarial_final_radius``): once the classes have formed, a smaller ball around an ambiguous
image (a three that looks like a five) reaches less far toward the neighbouring class.

Summing out y costs K (image, class) pairs per unlabelled image, most of the step; once the
classes have formed, q(y|a,x) puts almost all of an image's weight on one or two of them, and the
pairs of the other classes add little but their cost. With ``top_classes`` m (off by default),
after the first tenth of the budget (``TOP_CLASSES_AFTER``; every class is summed while the
classes form) each unlabelled image is summed over its m most probable classes T under q(y|a,x)
at the step's draw of a, and the share of q left on the other classes counts at the worst -L
among T, held fixed::

    -U_m(x) = sum_{y in T} q(y|a,x) (-L(x,y,a)) + (1 - sum_{y in T} q(y|a,x)) max_{y in T} (-L(x,y,a)) - H(q)

So q(y|a,x) is still pushed off the classes left out, and -U_m is -U wherever that share is
nothing. What is logged as the unlabelled bound is then -U_m.

At test time q(y|a,x) is averaged over ``eval_samples`` draws of a from q(a|x), since a single
draw makes the classifier noisy. The model also holds its own answer, the posterior of its
generative story, p(y|x) = p(x,y) / sum_y' p(x,y'), with each log p(x,y) importance-weighted over
``generative_samples`` draws of a and z from q (the log of the mean of exp(-L(x,y,a,z))). Alone it
is a weaker classifier than q (SDGM: 0.974 against 0.979), but not wrong on the same images, so
evaluation, prediction and the report classify with the two fused: among the GENERATIVE_CLASSES
classes T most probable under q, where nearly all of the errors lie (a three or a five), their
share of q is shared out again in proportion to

    q(y|x) p(y|x)^w,      y in T, p normalised over T, w = ``generative_weight``,

and the other classes keep q's probability. Validation during training uses q alone, for speed:
each draw costs a pass over T's (image, class) pairs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .classifier_terms import class_balance_term, cosine_left, virtual_adversarial_term
from .densities import gaussian_log_density, kl_to_standard_normal
from .likelihoods import NAMES as LIKELIHOOD_NAMES
from .likelihoods import likelihood as observation_model
from .m1 import warmup_weight
from .m2 import M2Terms, at_least_float32, one_hot
from .softplus import Softplus

# Bound on the log-variances of q(a|x), q(z|a,x,y) and p(a|..). In the unlabelled bound a class
# that q(y|a,x) rules out gets (almost) no weight, so nothing holds its networks' outputs back: at
# Adam's 4e-3, log-variances of such (image, class) pairs drifted to -40 and +27 within 20 minutes,
# the KL overflowed, 0 * inf made the step non-finite, and the run fell apart (ADGM, seed 0).
# e^±10 leaves every variance a fitted model needs. The limit keeps such steps finite; it does not
# make 4e-3 a stable rate (see DEFAULT_LEARNING_RATES).
LOGVAR_LIMIT = 10.0

# Defaults of kl_scale and class_balance (see the module's story), from 10-minute SDGM runs of
# seed 2, whose fives go to 3, one thread each, validation accuracy: the paper's objective 0.888;
# kl_scale 2 0.900 (4: 0.887); with ReLU 0.902; with class_balance 20 as well 0.932, 50 0.944
# (100: 0.903).
KL_SCALE = 2.0
CLASS_BALANCE = 50.0
# The class balance's weight over the run (see the module's story). SDGM, 60 minutes, one thread
# each, two side by side, test accuracy with "cosine": 0.9780 (seed 0) and 0.9779 (seed 2), against
# 0.9754 and 0.9772 with "constant"; images called 5 beyond the test set's 892 fives fell from 48
# and 40 to 23 and 20, its threes called 5 from 30 and 19 to 18 and 14.
CLASS_BALANCE_SCHEDULE = "cosine"
# Defaults of the adversarial term (see the module's story), from 10-minute SDGM runs of seed 2,
# one thread each, validation accuracy: without it 0.944; weight 1, radius 2 0.960 (radius 1:
# 0.960); weight 3, radius 1 0.960, radius 2 0.930; weight 10, radius 2 0.804. Over the hour (seeds
# 0 and 2) test accuracy 0.975 and 0.977, against 0.965 and 0.965 without it.
ADVERSARIAL_WEIGHT = 1.0
ADVERSARIAL_RADIUS = 2.0
# Share of the budget over which the unlabelled bound sums over every class even with
# ``top_classes``: while the classes form, q(y|a,x) spreads over many of them. SDGM, one thread,
# seed 1: its mean entropy is 0.69 nats after the first epoch of 63, 0.15 after the third, 0.09
# after the sixth, when 0.1 of the hour has gone (ln 10 = 2.30 is q spread evenly).
TOP_CLASSES_AFTER = 0.1

# Defaults of the fused classification (see the module's story), from seven hour-long SDGM runs
# (seeds 0-3, both cores; `benchmarks/fused_classification.py`): with w 0.1, 8 draws and the top 2
# classes, test accuracy of the weights kept on validation 0.9799 against 0.9790 for q alone, and
# validation accuracy of each run's last weights (not chosen on it) 0.9779 against 0.9772, higher
# on all seven both ways. On validation w 0.2 or 0.3 or 4 draws gain less, the top 3 or all 10
# classes no more (nor did 16 draws, on six of the runs). The fused classification takes about
# 11 s per 10,000 images on 2 cores, against 1.5 s for q alone.
GENERATIVE_WEIGHT = 0.1
GENERATIVE_SAMPLES = 8
GENERATIVE_CLASSES = 2

ACTIVATIONS = {"softplus": Softplus, "relu": nn.ReLU}


def fuse(log_q: Tensor, classes: Tensor, log_p: Tensor, weight: float) -> Tensor:
    """The fused classification (see the module's story): log q(y|x) (B, K), with each image's
    ``classes`` (B, m) given their share of q again in proportion to q(y|x) p(y|x)^weight, from the
    generative posterior's ``log_p`` over those classes (B, m); the other classes keep q's."""
    top_log_q = log_q.gather(1, classes)
    fused = top_log_q + weight * log_p.to(log_q.dtype)
    fused = fused - torch.logsumexp(fused, -1, keepdim=True) + torch.logsumexp(top_log_q, -1, keepdim=True)
    return log_q.scatter(1, classes, fused)


def gaussian_parameters(out: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and log-variance (within ±LOGVAR_LIMIT) from a network's output, in at least float32."""
    mean, logvar = at_least_float32(out).chunk(2, dim=-1)
    return mean, logvar.clamp(-LOGVAR_LIMIT, LOGVAR_LIMIT)


@dataclass(frozen=True)
class AuxiliaryConfig:
    """Architecture of ADGM (``skip=False``) or SDGM (``skip=True``).

    The paper's networks have two hidden layers of 500 units, and z and a of 100 each, trained for
    hundreds of epochs at a learning rate of 3e-4. With minutes rather than days, M2's shape learns
    far faster: ADGM, seed 0, one thread, 10 minutes, validation accuracy 0.932 with one hidden
    layer and a z of 50 at 4e-3, against 0.836 with the paper's networks at 1e-3 and 0.813 at 4e-3.
    ``hidden_dims=(500, 500), latent_dim=100, kl_scale=1, class_balance=0, adversarial_weight=0``
    (``--hidden-layers 2 --latent-dim 100 --kl-scale 1 --class-balance 0 --adversarial 0``) restores
    them and the paper's objective.
    """

    input_dim: int = 784
    num_classes: int = 10
    latent_dim: int = 50
    aux_dim: int = 100
    hidden_dims: tuple[int, ...] = (500,)
    # Hidden layers of the classifier q(y|a,x) alone; None: the same as every other network's. Two
    # layers of 500 (the paper's) or one of 1,000 learn more slowly by the minute: SDGM, seeds 0 and
    # 2, one thread each, validation 0.946 / 0.965 and 0.952 / 0.969 after 25 minutes, against the
    # defaults' 0.973 / 0.976 after 30.
    classifier_hidden_dims: tuple[int, ...] | None = None
    alpha: float = 3.0  # weight of the labelled cross-entropy, relative to the per-image bounds
    skip: bool = False  # SDGM: a is generated, and the image from it
    likelihood: str = "bernoulli"
    eval_samples: int = 10  # draws of a over which q(y|a,x) is averaged to classify
    # Weight w of the generative posterior p(y|x) fused with q(y|x) to evaluate, predict and
    # report (see the module's story); 0 classifies with q alone. Training never reads it.
    generative_weight: float = GENERATIVE_WEIGHT
    # Draws of a and z over which each log p(x,y) of that posterior is importance-weighted.
    generative_samples: int = GENERATIVE_SAMPLES
    # Steps over which the weight of the KL terms (of z, and of a: log q(a|x) - log p(a|..)) rises
    # from 0 to 1 in the training loss; 0, no warm-up, as in the paper's MNIST runs.
    kl_warmup_steps: int = 0
    # The KL terms' weight in the training loss once warmed up; 1 is the bound itself (see the
    # module's story: above 1, a class carried in z costs more than one carried in y).
    kl_scale: float = KL_SCALE
    # The weight of a's KL term (log q(a|x) - log p(a|..)) alone, once warmed up; None: ``kl_scale``.
    # At the default kl_scale, SDGM's a carries little of the image and q(y|a,x) barely reads it
    # (ADGM's carries nothing). At 1 or 0.5 a carries more, and the classifier reads a instead of
    # x, where the adversarial term (which perturbs x, a held) no longer smooths it: SDGM, seed 2,
    # 10 minutes, validation 0.898 and 0.887 against 0.960, threes and fives mixed.
    aux_kl_scale: float | None = None
    # Weight of the pull of the classifier's class frequencies on unlabelled images toward p(y)
    # (see the module's story); 0 leaves the objective as in the paper.
    class_balance: float = CLASS_BALANCE
    # Between the hidden layers: "relu" as in the paper's code, or "softplus" as in M2. On a 2-core
    # AVX2 CPU ReLU's compiled SDGM step is as fast (1,039 against 996 images/s, one thread), and
    # ahead by the epoch; on an AVX512-BF16 CPU it was slower (1,543 against 2,026).
    activation: str = "relu"
    # Weight of a virtual adversarial smoothness term on q(y|a,x) (Miyato et al. 2018): the KL from
    # q(y|a,x) to q(y|a,x+r), with r of length ``adversarial_radius`` (pixels in [0, 1]) in the
    # direction that changes the classifier most (see the module's story). 0 leaves it out, as in
    # the paper.
    adversarial_weight: float = ADVERSARIAL_WEIGHT
    adversarial_radius: float = ADVERSARIAL_RADIUS
    # The adversarial term's weight at the end of the budget, reached from ``adversarial_weight``
    # along the learning rate's cosine turned upside down; None keeps it constant.
    adversarial_final_weight: float | None = None
    # The perturbation's length at the end of the budget, reached from ``adversarial_radius`` along
    # the same curve; None keeps it constant.
    adversarial_final_radius: float | None = None
    # How the class-balance weight changes over the run: "constant", or "cosine", down to 0 at the
    # end of the budget along the learning rate's curve (see the module's story).
    class_balance_schedule: str = CLASS_BALANCE_SCHEDULE
    # How many classes the unlabelled bound sums over once the classes have formed (after
    # TOP_CLASSES_AFTER of the budget): each image's most probable under q(y|a,x), the others'
    # share of q standing in at the worst of those classes' bounds (see the module's story).
    # None sums over every class all the run, as the paper does.
    top_classes: int | None = None

    # What a run recorded before kl_scale, class_balance (and its schedule), adversarial_weight and
    # top_classes existed was trained with: the paper's objective, every class summed (read when
    # such a run is resumed).
    DEFAULTS_BEFORE_THEY_WERE_OPTIONS: ClassVar[dict] = {"kl_scale": 1.0, "class_balance": 0.0,
                                                         "class_balance_schedule": "constant",
                                                         "adversarial_weight": 0.0, "top_classes": None}

    def __post_init__(self):
        object.__setattr__(self, "hidden_dims", tuple(int(h) for h in self.hidden_dims))
        if self.classifier_hidden_dims is not None:
            object.__setattr__(self, "classifier_hidden_dims", tuple(int(h) for h in self.classifier_hidden_dims))

    def validate(self) -> None:
        from ..errors import SsvaeError

        if self.kl_warmup_steps < 0:
            raise SsvaeError(f"auxiliary model: kl_warmup_steps must be 0 or more, got {self.kl_warmup_steps}")
        if not self.kl_scale > 0:
            raise SsvaeError(f"auxiliary model: kl_scale must be a positive number, got {self.kl_scale}")
        if self.aux_kl_scale is not None and not self.aux_kl_scale > 0:
            raise SsvaeError(f"auxiliary model: aux_kl_scale must be a positive number, got {self.aux_kl_scale}")
        if not self.class_balance >= 0:
            raise SsvaeError(f"auxiliary model: class_balance must be 0 or more, got {self.class_balance}")
        if self.class_balance_schedule not in ("constant", "cosine"):
            raise SsvaeError("auxiliary model: class_balance_schedule must be constant or cosine, "
                             f"got {self.class_balance_schedule}")
        if not self.adversarial_weight >= 0:
            raise SsvaeError(f"auxiliary model: adversarial_weight must be 0 or more, got {self.adversarial_weight}")
        if self.adversarial_final_weight is not None and not self.adversarial_final_weight >= 0:
            raise SsvaeError("auxiliary model: adversarial_final_weight must be 0 or more, "
                             f"got {self.adversarial_final_weight}")
        if self.adversarial_final_radius is not None and not self.adversarial_final_radius > 0:
            raise SsvaeError("auxiliary model: adversarial_final_radius must be a positive number, "
                             f"got {self.adversarial_final_radius}")
        if not self.adversarial_radius > 0:
            raise SsvaeError(f"auxiliary model: adversarial_radius must be a positive number, got {self.adversarial_radius}")
        if not self.generative_weight >= 0:
            raise SsvaeError(f"auxiliary model: generative_weight must be 0 or more, got {self.generative_weight}")
        for name in ("input_dim", "latent_dim", "aux_dim", "eval_samples", "generative_samples"):
            if getattr(self, name) < 1:
                raise SsvaeError(f"auxiliary model: {name} must be a positive integer, got {getattr(self, name)}")
        if not self.hidden_dims or min(self.hidden_dims) < 1:
            raise SsvaeError(f"auxiliary model: hidden_dims must be positive sizes, got {self.hidden_dims}")
        if self.classifier_hidden_dims is not None and (not self.classifier_hidden_dims
                                                        or min(self.classifier_hidden_dims) < 1):
            raise SsvaeError("auxiliary model: classifier_hidden_dims must be positive sizes, "
                             f"got {self.classifier_hidden_dims}")
        if self.num_classes < 2:
            raise SsvaeError(f"auxiliary model: needs at least 2 classes, got {self.num_classes}")
        if self.top_classes is not None and not 1 <= self.top_classes <= self.num_classes:
            raise SsvaeError(f"auxiliary model: top_classes must be between 1 and the number of classes "
                             f"({self.num_classes}), got {self.top_classes}")
        if not self.alpha >= 0:
            raise SsvaeError(f"auxiliary model: alpha must be a non-negative number, got {self.alpha}")
        if self.likelihood not in LIKELIHOOD_NAMES:
            raise SsvaeError(f"auxiliary model: likelihood must be one of {', '.join(LIKELIHOOD_NAMES)}, "
                             f"got {self.likelihood}")
        if self.activation not in ACTIVATIONS:
            raise SsvaeError(f"auxiliary model: activation must be one of {', '.join(ACTIVATIONS)}, got {self.activation}")


class SplitMLP(nn.Module):
    """An MLP whose first layer is a sum of named parts, so that the parts that do not depend on the
    class are computed once per image and broadcast over the classes.

    ``parts`` maps input names to widths; the name ``"y"`` is a class index, whose part is one
    row of weights per class (a one-hot input through a linear layer)."""

    def __init__(self, parts: dict[str, int], hidden: tuple[int, ...], out: int, num_classes: int,
                 activation: str = "softplus"):
        super().__init__()
        first = hidden[0]
        self.parts = nn.ModuleDict({name: nn.Linear(width, first, bias=False) for name, width in parts.items()
                                    if name != "y"})
        self.bias = nn.Parameter(torch.zeros(first))
        self.class_rows = nn.Parameter(torch.empty(num_classes, first)) if "y" in parts else None
        if self.class_rows is not None:
            bound = 1.0 / math.sqrt(num_classes)
            nn.init.uniform_(self.class_rows, -bound, bound)
        sizes = [*hidden, out]
        layers: list[nn.Module] = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [ACTIVATIONS[activation](), nn.Linear(a, b)]
        self.rest = nn.Sequential(*layers)

    def first(self, **inputs: Tensor) -> Tensor:
        """The first layer's pre-activation from the non-class inputs given (each (..., width))."""
        total = self.bias
        for name, value in inputs.items():
            total = total + self.parts[name](value)
        return total

    def forward(self, pre: Tensor) -> Tensor:
        return self.rest(pre)


class AuxiliaryDGM(nn.Module):
    """ADGM or SDGM (see the module's story). Inputs ``x`` are pixels in [0, 1], (batch, input_dim)."""

    latent_name = "style z of q(z|a,x,y)"

    def __init__(self, config: AuxiliaryConfig = AuxiliaryConfig()):
        super().__init__()
        config.validate()
        self.config = config
        c = config
        d, k, z, a, h = c.input_dim, c.num_classes, c.latent_dim, c.aux_dim, c.hidden_dims
        self.observation = observation_model(c.likelihood)
        out = d * self.observation.params_per_input

        def mlp(parts: dict[str, int], width: int, hidden: tuple[int, ...] = h) -> SplitMLP:
            return SplitMLP(parts, hidden, width, k, c.activation)

        self.aux_encoder = mlp({"x": d}, 2 * a)  # q(a|x)
        self.classifier = mlp({"x": d, "a": a}, k, c.classifier_hidden_dims or h)  # q(y|a,x)
        self.encoder = mlp({"x": d, "a": a, "y": k}, 2 * z)  # q(z|a,x,y)
        if c.skip:
            self.aux_decoder = mlp({"z": z, "y": k}, 2 * a)  # p(a|y,z)
            self.decoder = mlp({"z": z, "a": a, "y": k}, out)  # p(x|a,y,z)
        else:
            self.aux_decoder = mlp({"x": d, "z": z, "y": k}, 2 * a)  # p(a|x,y,z)
            self.decoder = mlp({"z": z, "y": k}, out)  # p(x|y,z)
        # The KL terms' weight in the training loss (see kl_warmup_steps); a buffer, so that a
        # compiled loss reads its current value, set by ``at_step`` and not saved with the weights.
        self.register_buffer("kl_weight", torch.ones(()), persistent=False)
        self.register_buffer("aux_kl_weight", torch.ones(()), persistent=False)  # a's alone, likewise
        # The class balance's weight at this point of the schedule, likewise.
        self.register_buffer("class_balance_weight", torch.full((), config.class_balance), persistent=False)
        # The adversarial term's weight and radius at this point of their schedules, likewise.
        self.register_buffer("adversarial_weight_now", torch.full((), config.adversarial_weight), persistent=False)
        self.register_buffer("adversarial_radius_now", torch.full((), config.adversarial_radius), persistent=False)
        # The running class frequencies m of the class-balance term, saved with the weights so that
        # a resumed run goes on exactly.
        self.register_buffer("class_frequencies", torch.full((k,), 1.0 / k))
        # Classes the unlabelled bound sums over at this point of the run, set by ``at_step``.
        self.classes_summed = k

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Weights saved before the class-balance term have no running class frequencies: uniform.
        uniform = torch.full_like(self.class_frequencies, 1.0 / self.config.num_classes)
        state_dict.setdefault(prefix + "class_frequencies", uniform)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def at_step(self, step: int, progress: float = 0.0) -> None:
        """Called by the trainer before each optimiser step, with the share of the budget used so
        far: sets the warm-up's KL weight, and the class balance's and the adversarial term's
        scheduled weights."""
        c = self.config
        warmed = warmup_weight(step, c.kl_warmup_steps)
        self.kl_weight.fill_(c.kl_scale * warmed)
        self.aux_kl_weight.fill_((c.kl_scale if c.aux_kl_scale is None else c.aux_kl_scale) * warmed)
        left = cosine_left(progress)
        held = c.class_balance_schedule == "constant"
        self.class_balance_weight.fill_(c.class_balance * (1.0 if held else left))

        def toward(start: float, final: float) -> float:  # along the cosine turned upside down
            return start + (final - start) * (1.0 - left)

        if c.adversarial_final_weight is not None:
            self.adversarial_weight_now.fill_(toward(c.adversarial_weight, c.adversarial_final_weight))
        if c.adversarial_final_radius is not None:
            self.adversarial_radius_now.fill_(toward(c.adversarial_radius, c.adversarial_final_radius))
        # A plain int, so that a compiled loss is compiled once more for the smaller shapes.
        formed = c.top_classes is not None and progress >= TOP_CLASSES_AFTER
        self.classes_summed = c.top_classes if formed else c.num_classes

    @property
    def adversarial(self) -> bool:
        """Whether the adversarial term is part of the training loss at any point of the run."""
        c = self.config
        return c.adversarial_weight > 0 or (c.adversarial_final_weight or 0.0) > 0

    @property
    def noise_width(self) -> int:
        """Noise per image and step: one a, then one z per class, then (with the adversarial term)
        the random probe from which the adversarial direction is found."""
        c = self.config
        probe = c.input_dim if self.adversarial else 0
        return c.aux_dim + c.num_classes * c.latent_dim + probe

    # -- the pieces of the story -------------------------------------------------------------------

    def aux_posterior(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and log-variance of q(a|x)."""
        return gaussian_parameters(self.aux_encoder(self.aux_encoder.first(x=x)))

    def class_logits(self, x: Tensor, a: Tensor) -> Tensor:
        """Logits of q(y|a,x)."""
        return self.classifier(self.classifier.first(x=x, a=a))

    def classify(self, x: Tensor) -> Tensor:
        """log of q(y|a,x) averaged over ``eval_samples`` draws of a ~ q(a|x), a fixed set of draws
        (the same for every call), so that validation figures do not jitter."""
        mean, logvar = self.aux_posterior(x)
        s = self.config.eval_samples
        generator = torch.Generator(device=x.device).manual_seed(0)
        noise = torch.randn((s, *mean.shape), generator=generator, device=x.device, dtype=mean.dtype)
        a = mean + torch.exp(0.5 * logvar) * noise  # (S, B, A)
        log_q = F.log_softmax(at_least_float32(self.class_logits(x.unsqueeze(0).expand(s, -1, -1), a)), dim=-1)
        return torch.logsumexp(log_q, dim=0) - math.log(s)

    def generative_log_weights(self, x: Tensor, classes: Tensor | None = None, samples: int | None = None) -> Tensor:
        """-L(x,y,a,z) of each image at each of its ``classes`` (B, m; default every class) for each of
        ``samples`` draws (default ``generative_samples``) of a ~ q(a|x), z ~ q(z|a,x,y), (S, B, m): the
        log importance weights of p(x,y). The draws are fixed (the same for every call, as in
        ``classify``), and a class's draw of z does not depend on which other classes are asked for."""
        c = self.config
        n = x.shape[0]
        if classes is None:
            classes = torch.arange(c.num_classes, device=x.device).expand(n, -1)
        m = classes.shape[1]
        generator = torch.Generator(device=x.device).manual_seed(0)
        noise = torch.randn((samples or c.generative_samples, n, self.noise_width), generator=generator,
                            device=x.device, dtype=x.dtype)
        rows_x, rows_y = x.repeat_interleave(m, 0), classes.reshape(-1)
        z_columns = c.aux_dim + rows_y[:, None] * c.latent_dim + torch.arange(c.latent_dim, device=x.device)
        log_weights = []
        for draw in noise:
            # Each (image, class) row is scored as a labelled image: its image's draw of a, and its
            # class's own draw of z, moved to where a labelled row reads z's noise.
            row_noise = draw.repeat_interleave(m, 0)
            row_noise[:, c.aux_dim:c.aux_dim + c.latent_dim] = row_noise.gather(1, z_columns)
            fit, kl, _ = self.pair_terms(rows_x, rows_y, x[:0], row_noise, row_noise[:0])
            log_weights.append(-(fit + kl).view(n, m))
        return torch.stack(log_weights)

    def generative_log_posterior(self, x: Tensor, classes: Tensor | None = None) -> Tensor:
        """log p(y|x) under the generative story over the given ``classes`` of each image (B, m;
        default every class), (B, m): each log p(x,y) estimated as the log of the mean of its
        importance weights (``generative_log_weights``), then normalised over those classes."""
        return F.log_softmax(torch.logsumexp(self.generative_log_weights(x, classes), dim=0), dim=-1)  # 1/S cancels

    def classify_thoroughly(self, x: Tensor) -> Tensor:
        """log of q(y|x) (``classify``) fused with the generative posterior p(y|x) raised to
        ``generative_weight`` over the GENERATIVE_CLASSES classes most probable under q (see
        ``fuse``): what evaluation, prediction and the report classify with."""
        log_q = self.classify(x)
        if self.config.generative_weight == 0:
            return log_q
        classes = log_q.topk(min(GENERATIVE_CLASSES, self.config.num_classes), dim=-1).indices
        return fuse(log_q, classes, self.generative_log_posterior(x, classes), self.config.generative_weight)

    # -- what pictures are drawn from --------------------------------------------------------------

    def style(self, x: Tensor, y: Tensor) -> Tensor:
        """The mean of q(z|a,x,y) at the mean of q(a|x): the image's style once its class is taken out."""
        a = self.aux_posterior(x)[0]
        pre = self.encoder.first(x=x, a=a) + one_hot(y, self.config.num_classes, a.dtype) @ self.encoder.class_rows
        return at_least_float32(self.encoder(pre)).chunk(2, dim=-1)[0]

    def generate(self, z: Tensor, y: Tensor) -> Tensor:
        """The mean image of p(x|y,z) (SDGM: of p(x|a,y,z), at the mean of p(a|y,z)), (batch, input_dim)."""
        onehot = one_hot(y, self.config.num_classes, z.dtype)
        if self.config.skip:
            a = at_least_float32(self.aux_decoder(self.aux_decoder.first(z=z) + onehot @ self.aux_decoder.class_rows))
            out = self.decoder(self.decoder.first(z=z, a=a.chunk(2, dim=-1)[0]) + onehot @ self.decoder.class_rows)
        else:
            out = self.decoder(self.decoder.first(z=z) + onehot @ self.decoder.class_rows)
        return self.observation.mean(at_least_float32(out))

    def latent(self, x: Tensor) -> Tensor:
        """The style of each image at the class the classifier gives it, for plotting."""
        return self.style(x, self.classify(x).argmax(-1))

    # -- bounds ------------------------------------------------------------------------------------

    def bounds(self, labelled_x: Tensor, labelled_y: Tensor, unlabelled_x: Tensor,
               labelled_noise: Tensor | None = None, unlabelled_noise: Tensor | None = None,
               kl_weight: Tensor | float = 1.0):
        """-L(x,y,a) for every (image, class) pair a step needs, and what U needs besides, with the
        KL terms weighted by ``kl_weight`` (1: the bound itself).

        Returns ``(labelled, per_class, class_logits)``: -L of each labelled image at its class (B_l,),
        of each unlabelled image at every class (B_u, K), and the logits of q(y|a,x) of all images,
        unlabelled first (B_u + B_l, K), for the same draw of a."""
        fit, kl, class_logits = self.pair_terms(labelled_x, labelled_y, unlabelled_x, labelled_noise, unlabelled_noise)
        negative = fit + kl_weight * kl
        unlabelled_rows = unlabelled_x.shape[0] * self.config.num_classes
        return negative[unlabelled_rows:], negative[:unlabelled_rows].view(unlabelled_x.shape[0], -1), class_logits

    def unlabelled_bound(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """U(x) per image, the paper's bound (KL weight 1) with y summed out under q(y|a,x) at one draw
        of a, and H(q(y|a,x)); each (batch,), nats, as M2's ``unlabelled_bound``."""
        per_class, class_logits = self.bounds(x[:0], torch.zeros(0, dtype=torch.long, device=x.device), x)[1:]
        log_q = torch.log_softmax(at_least_float32(class_logits), dim=-1)
        entropy = -(log_q.exp() * log_q).sum(-1)
        return (log_q.exp() * per_class).sum(-1) - entropy, entropy

    def pair_terms(self, labelled_x: Tensor, labelled_y: Tensor, unlabelled_x: Tensor,
                   labelled_noise: Tensor | None = None, unlabelled_noise: Tensor | None = None):
        """The two parts of -L(x,y,a) for every (image, class) pair, one row each: ``fit``,
        -log p(x|..) - log p(y), and ``kl``, log q(a|x) - log p(a|..) + KL(q(z|a,x,y) || p(z)), the part
        that a KL warm-up or ``kl_scale`` weights; and the logits of q(y|a,x) (see ``bounds``).
        Rows are laid out as in M2: B_u*K rows for the unlabelled images (row b*K + c), then B_l
        rows for the labelled ones."""
        fit, kl_z, kl_a, class_logits = self._pair_terms(labelled_x, labelled_y, unlabelled_x, labelled_noise,
                                                         unlabelled_noise)[:4]
        return fit, kl_z + kl_a, class_logits

    def _pair_terms(self, labelled_x, labelled_y, unlabelled_x, labelled_noise=None, unlabelled_noise=None,
                    classes_summed=None):
        """``pair_terms`` with its ``kl`` in two parts, KL(q(z|a,x,y) || p(z)) and log q(a|x) - log p(a|..),
        so that each can be weighted on its own; then the images (unlabelled first), the draw of a they
        were computed at, the rest of each image's noise (the adversarial term's probe), and the classes
        of the unlabelled rows, (B_u, m).

        With ``classes_summed`` m below K, each unlabelled image has m rows, for its m most probable
        classes under q(y|a,x) (row b*m + j), instead of K."""
        c = self.config
        k, n_u, n_l = c.num_classes, unlabelled_x.shape[0], labelled_x.shape[0]
        m = k if classes_summed is None else classes_summed
        x = torch.cat([unlabelled_x, labelled_x])
        if unlabelled_noise is None:
            noise = torch.randn(n_u + n_l, self.noise_width, device=x.device, dtype=x.dtype)
        else:
            noise = torch.cat([unlabelled_noise, labelled_noise])
        z_end = c.aux_dim + k * c.latent_dim
        a_noise, z_noise, probe_noise = noise[:, :c.aux_dim], noise[:, c.aux_dim:z_end], noise[:, z_end:]

        a_mean, a_logvar = self.aux_posterior(x)
        a = a_mean + torch.exp(0.5 * a_logvar) * a_noise  # one draw per image
        log_qa = gaussian_log_density(a, a_mean, a_logvar)
        class_logits = at_least_float32(self.class_logits(x, a))

        # Every row's image index, and its class: (b, c) for the unlabelled rows, (b, y_b) after.
        image_of_row = torch.cat([torch.arange(n_u, device=x.device).repeat_interleave(m),
                                  torch.arange(n_u, n_u + n_l, device=x.device)])
        if m == k:
            classes = torch.arange(k, device=x.device).expand(n_u, k)
            unlabelled_onehot = torch.eye(k, device=x.device, dtype=x.dtype).repeat(n_u, 1)
        else:
            classes = class_logits[:n_u].detach().topk(m, dim=-1).indices
            unlabelled_onehot = one_hot(classes.reshape(-1), k, x.dtype)
        onehot = torch.cat([unlabelled_onehot, one_hot(labelled_y, k, x.dtype)])

        def with_class(network: SplitMLP, per_image: Tensor) -> Tensor:
            # Each row: its image's class-free part, plus its class's row of weights.
            return per_image[image_of_row] + onehot.to(per_image.dtype) @ network.class_rows

        z_noise = torch.cat([z_noise[:n_u, :m * c.latent_dim].reshape(n_u * m, c.latent_dim),
                             z_noise[n_u:, :c.latent_dim]])
        z_mean, z_logvar = gaussian_parameters(self.encoder(with_class(self.encoder, self.encoder.first(x=x, a=a))))
        z = z_mean + torch.exp(0.5 * z_logvar) * z_noise
        kl_z = kl_to_standard_normal(z_mean, z_logvar)

        a_rows = a[image_of_row]
        if c.skip:
            p_a = self.aux_decoder(self.aux_decoder.first(z=z) + onehot @ self.aux_decoder.class_rows)
            decoded = self.decoder(self.decoder.first(z=z, a=a_rows) + onehot @ self.decoder.class_rows)
        else:
            p_a = self.aux_decoder(with_class(self.aux_decoder, self.aux_decoder.first(x=x))
                                   + self.aux_decoder.parts["z"](z))
            decoded = self.decoder(self.decoder.first(z=z) + onehot @ self.decoder.class_rows)
        pa_mean, pa_logvar = gaussian_parameters(p_a)
        log_pa = gaussian_log_density(a_rows, pa_mean, pa_logvar)
        log_px = self._log_likelihood(x[image_of_row], at_least_float32(decoded))

        return math.log(k) - log_px, kl_z, log_qa[image_of_row] - log_pa, class_logits, x, a, probe_noise, classes

    def _log_likelihood(self, x: Tensor, out: Tensor) -> Tensor:
        return self.observation.log_prob(x, out)

    def forward(self, batch):
        """Calling the model computes its training objective (what DDP wraps)."""
        return self.loss(batch)

    def loss(self, batch) -> M2Terms:
        """The training objective J on one batch (see the module's story)."""
        c, n_u, m = self.config, batch.unlabelled_x.shape[0], self.classes_summed
        fit, kl_z, kl_a, class_logits, x, a, probe, classes = self._pair_terms(
            batch.labelled_x, batch.labelled_y, batch.unlabelled_x, batch.labelled_noise, batch.unlabelled_noise, m)
        log_q = F.log_softmax(class_logits[:n_u], dim=-1)
        q = log_q.exp()
        entropy = -(q * log_q).sum(-1)
        q_summed = q if m == c.num_classes else q.gather(1, classes)

        def labelled_and_unlabelled(negative: Tensor) -> tuple[Tensor, Tensor]:
            per_class = negative[:n_u * m].view(n_u, m)
            expected = (q_summed * per_class).sum(-1)
            if m < c.num_classes:
                # The classes left out get their share of q at the worst summed class's -L, held
                # fixed: q(y|a,x) is still pushed off them, and the sum stays close to the whole
                # one, since their share is small once the classes have formed.
                left_out = 1.0 - q_summed.sum(-1)
                expected = expected + left_out * per_class.detach().max(-1).values
            return negative[n_u * m:].mean(), (expected - entropy).mean()

        labelled, unlabelled = labelled_and_unlabelled(fit + self.kl_weight * kl_z + self.aux_kl_weight * kl_a)
        classification = F.cross_entropy(class_logits[n_u:], batch.labelled_y)
        share = batch.labelled_share
        loss = share * labelled + (1 - share) * unlabelled + c.alpha * classification
        if c.class_balance > 0 and self.training:
            loss = loss + self.class_balance_weight * self._class_balance_term(q)
        if self.adversarial and self.training:
            loss = loss + self.adversarial_weight_now * self._adversarial_term(x, a.detach(), class_logits.detach(), probe)
        with torch.no_grad():  # what is logged: the bounds themselves, whatever the KL terms' weight
            labelled_bound, unlabelled_bound = labelled_and_unlabelled(fit + kl_z + kl_a)
        return M2Terms(loss=loss, labelled_bound=labelled_bound, unlabelled_bound=unlabelled_bound,
                       classification=classification.detach(), classifier_entropy=entropy.mean().detach())

    def _class_balance_term(self, q: Tensor) -> Tensor:
        """The class-balance term (models/classifier_terms.py) of q(y|a,x) on the unlabelled images."""
        return class_balance_term(q, self.class_frequencies)

    def _adversarial_term(self, x: Tensor, a: Tensor, clean_logits: Tensor, probe_noise: Tensor) -> Tensor:
        """The virtual adversarial term (models/classifier_terms.py) of q(y|a,x), with x perturbed and
        a held, at the radius of this point of its schedule."""
        return virtual_adversarial_term(lambda shifted: self.class_logits(shifted, a), x, clean_logits,
                                        probe_noise, self.adversarial_radius_now)
