"""The compiled training step (``--compile auto``, on for runs of minutes, the README's first command
among them) computes what the eager one computes: the same loss and the same gradients. M2, the
main job's model, with both classifier terms on, so that the power iteration's gradient inside the
loss is compiled too; each compilation costs tens of seconds, so the other families are left to
their eager references."""

import dataclasses

import pytest
import torch

from ssvae.data.batches import Batch
from ssvae.models.m2 import M2, M2Config

D, K = 12, 3


def models():
    yield "m2 with both classifier terms", M2(M2Config(input_dim=D, num_classes=K, latent_dim=2, hidden_dim=8,
                                                       classifier_hidden_dim=6, class_balance=5.0,
                                                       adversarial_weight=1.0, adversarial_radius=0.5))


@pytest.mark.parametrize("name, model", list(models()), ids=lambda v: v if isinstance(v, str) else "")
def test_the_compiled_loss_and_its_gradients_match_the_eager_ones(name, model):
    from torch._inductor import config as inductor_config

    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(1)
    batch = Batch(labelled_x=torch.rand(3, D, generator=generator), labelled_y=torch.tensor([0, 1, 2]),
                  unlabelled_x=torch.rand(5, D, generator=generator), labelled_share=0.3,
                  labelled_noise=torch.randn(3, model.noise_width, generator=generator),
                  unlabelled_noise=torch.randn(5, model.noise_width, generator=generator))
    model.at_step(0, 0.25)
    frequencies = model.class_frequencies.clone()

    def step(loss_fn):
        model.zero_grad()
        model.class_frequencies.copy_(frequencies)
        terms = loss_fn(batch)
        terms.loss.backward()
        return terms, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    eager, eager_grads = step(model.loss)
    with inductor_config.patch(fallback_random=True):
        compiled, compiled_grads = step(torch.compile(model.loss, fullgraph=False))
    for field in dataclasses.fields(eager):
        torch.testing.assert_close(getattr(compiled, field.name), getattr(eager, field.name), rtol=1e-4, atol=1e-5)
    assert compiled_grads.keys() == eager_grads.keys()
    for parameter, grad in eager_grads.items():
        torch.testing.assert_close(compiled_grads[parameter], grad, rtol=1e-3, atol=1e-5, msg=parameter)


def test_the_bf16_step_stays_within_a_percent_of_the_float32_step():
    """``--bf16 auto`` runs the matrix multiplies in bf16 (8 bits of mantissa) on CPUs that have it;
    the bounds and the KL are computed back in float32, so the loss stays within 1% of float32's."""
    from ssvae.runtime import autocast

    model = next(models())[1]
    generator = torch.Generator().manual_seed(2)
    x = torch.rand(40, D, generator=generator)
    batch = Batch(labelled_x=x[:10], labelled_y=torch.arange(10) % K, unlabelled_x=x[10:], labelled_share=0.1,
                  labelled_noise=torch.randn(10, model.noise_width, generator=generator),
                  unlabelled_noise=torch.randn(30, model.noise_width, generator=generator))
    full = model.loss(batch)
    with autocast(torch.device("cpu"), True):
        half = model.loss(batch)
    for field in ("loss", "labelled_bound", "unlabelled_bound"):
        value, reference = getattr(half, field), getattr(full, field)
        assert value.dtype == torch.float32, field
        assert abs(value.item() - reference.item()) <= 0.01 * abs(reference.item()), field
