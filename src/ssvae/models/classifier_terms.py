"""Two terms on the classifier q(y|x) alone, outside the bound, that M2, ADGM and SDGM can add to
their training loss against the mistake that costs these models most with few labels: a class
whose labelled images cover few of its shapes loses the others to a neighbour early, q(y|x) grows
sure of them, and the unlabelled bound then trains only the neighbour's networks on them.

- **Class balance**: ``sum_y qbar(y) log(K m(y))``, with qbar the batch's mean of q(y|x) over its
  unlabelled images and m a running mean of qbar, held fixed. Its gradient in qbar is that of
  KL(m || p(y)) in m: a class given more often than p(y) = 1/K says is pulled down, a rarer one up,
  before q(y|x) is sure of the images it took.
- **Virtual adversarial smoothness** (Miyato et al. 2018): the mean over the images of
  ``KL(q(y|x) || q(y|x+r))``, with r of a given length in the direction in which q(y|x) changes
  most, found by one power iteration from a short random probe. Once q(y|x) is sure of an image the
  bound gives it almost no gradient; this term still asks that images close to each other get the
  same class, which is what the unlabelled images' clusters say.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

# Per step, how far the running class frequencies m move toward the batch's: about 100 steps'
# memory, 5,000 unlabelled images at the default batch, so that m is not one batch's noise.
CLASS_FREQUENCY_RATE = 0.01

# Length of the random probe from which the adversarial direction is found: small beside an image
# (an MNIST digit's length is about 9), large enough that the change it makes in q(y|x) stands well
# above float32 rounding.
ADVERSARIAL_PROBE = 0.1


def whole_batch_mean(share_mean: Tensor) -> Tensor:
    """Under distributed training, where each process holds an equal share of the batch, the mean
    over the whole batch of what each process averaged over its own share; else ``share_mean``.
    What a model keeps from step to step (the running class frequencies) must follow the whole
    batch, or every process would keep its own and the run would differ from one process's."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return share_mean
    together = share_mean.clone()
    torch.distributed.all_reduce(together)
    return together / torch.distributed.get_world_size()


def class_balance_term(q: Tensor, class_frequencies: Tensor) -> Tensor:
    """``sum_y qbar(y) log(K m(y))`` for q(y|x) of the batch's unlabelled images, (B_u, K), moving the
    running frequencies m (``class_frequencies``, (K,), updated in place) toward the batch's first.
    The term is linear in qbar, so processes that each average their own share of a batch get,
    averaged, the whole batch's gradient."""
    batch_frequencies = q.mean(0)
    with torch.no_grad():
        class_frequencies.lerp_(whole_batch_mean(batch_frequencies.detach()), CLASS_FREQUENCY_RATE)
    return (batch_frequencies * (class_frequencies * class_frequencies.shape[0]).log()).sum()


def cosine_left(progress: float) -> float:
    """The learning rate's cosine curve at ``progress`` (the share of the budget used): 1 down to 0.
    Scheduled weights of these terms follow it."""
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def virtual_adversarial_term(class_logits: Callable[[Tensor], Tensor], x: Tensor, clean_logits: Tensor,
                             probe_noise: Tensor, radius: Tensor | float) -> Tensor:
    """Mean over the images of KL(q(y|x) || q(y|x+r)), r the virtual adversarial perturbation of
    length ``radius``: the gradient of that KL at a short random probe (from ``probe_noise``, standard
    normal, one row per image) rescaled, one power iteration toward the direction in which the
    classifier changes most. ``class_logits`` maps images to q's logits (anything else q reads held
    fixed); ``clean_logits`` are its logits at ``x``, held fixed."""
    clean_logits = clean_logits.detach()
    target = F.softmax(clean_logits, dim=-1)
    log_target = F.log_softmax(clean_logits, dim=-1)

    def divergence(r: Tensor) -> Tensor:
        logits = class_logits(x + r)
        log_q = F.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)
        return (target * (log_target - log_q)).sum(-1)

    with torch.enable_grad():
        probe = (ADVERSARIAL_PROBE * F.normalize(probe_noise.to(x.dtype), dim=-1)).requires_grad_()
        (direction,) = torch.autograd.grad(divergence(probe).sum(), probe)
    r = radius * F.normalize(direction.detach(), dim=-1)
    return divergence(r).mean()
