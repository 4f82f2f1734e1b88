"""ADGM and SDGM: the batched bounds against a slow loop over images and classes, in float64."""

import math

import pytest
import torch
import torch.nn.functional as F

from ssvae.data.batches import Batch
from ssvae.models.auxiliary import LOGVAR_LIMIT, AuxiliaryConfig, AuxiliaryDGM

K, D, Z, A = 4, 6, 3, 2


def small(skip: bool, **options) -> AuxiliaryDGM:
    torch.manual_seed(0)
    config = AuxiliaryConfig(input_dim=D, num_classes=K, latent_dim=Z, aux_dim=A, hidden_dims=(5, 4), skip=skip,
                             **options)
    return AuxiliaryDGM(config).double()


def mlp(network, y=None, **inputs):
    """One network on one example, its first layer written out in full: every part times its input."""
    pre = network.bias.clone()
    for name, value in inputs.items():
        pre = pre + network.parts[name].weight @ value
    if y is not None:
        pre = pre + network.class_rows[y]
    return network.rest(pre)


def gaussian(out):
    """Mean and log-variance from a network's output, the log-variance kept within the model's limit."""
    mean, logvar = out.chunk(2)
    return mean, logvar.clamp(-LOGVAR_LIMIT, LOGVAR_LIMIT)


def log_normal(value, mean, logvar):
    return sum(-0.5 * ((v - m) ** 2 / math.exp(lv) + lv + math.log(2 * math.pi))
               for v, m, lv in zip(value.tolist(), mean.tolist(), logvar.tolist()))


def slow_negative_bound(model, x, y, a_noise, z_noise, kl_weight=1.0):
    """-L(x, y) for one image and class, term by term, with the given standard normal draws (and the
    KL terms weighted by ``kl_weight``, as during a warm-up)."""
    a_mean, a_logvar = gaussian(mlp(model.aux_encoder, x=x))
    a = a_mean + torch.exp(0.5 * a_logvar) * a_noise
    z_mean, z_logvar = gaussian(mlp(model.encoder, y, x=x, a=a))
    z = z_mean + torch.exp(0.5 * z_logvar) * z_noise
    if model.config.skip:
        pa_mean, pa_logvar = gaussian(mlp(model.aux_decoder, y, z=z))
        logits = mlp(model.decoder, y, z=z, a=a)
    else:
        pa_mean, pa_logvar = gaussian(mlp(model.aux_decoder, y, x=x, z=z))
        logits = mlp(model.decoder, y, z=z)
    log_px = sum(xi * li - math.log1p(math.exp(li)) for xi, li in zip(x.tolist(), logits.tolist()))
    # KL(q(z|a,x,y) || N(0, I)) in closed form; log p(a|..) - log q(a|x) from the one draw of a.
    kl_z = sum(0.5 * (m * m + math.exp(lv) - 1 - lv) for m, lv in zip(z_mean.tolist(), z_logvar.tolist()))
    log_pa, log_qa = log_normal(a, pa_mean, pa_logvar), log_normal(a, a_mean, a_logvar)
    return -(log_px - math.log(K) + kl_weight * (-kl_z + log_pa - log_qa)), a


@pytest.mark.parametrize("skip", [False, True], ids=["adgm", "sdgm"])
def test_batched_bounds_match_a_loop_over_images_and_classes(skip):
    model = small(skip)
    generator = torch.Generator().manual_seed(1)
    unlabelled_x, labelled_x = torch.rand(3, D, generator=generator, dtype=torch.float64), \
        torch.rand(2, D, generator=generator, dtype=torch.float64)
    labelled_y = torch.tensor([2, 0])
    unlabelled_noise = torch.randn(3, model.noise_width, generator=generator, dtype=torch.float64)
    labelled_noise = torch.randn(2, model.noise_width, generator=generator, dtype=torch.float64)
    with torch.no_grad():
        labelled, per_class, logits = model.bounds(labelled_x, labelled_y, unlabelled_x, labelled_noise,
                                                   unlabelled_noise)
        for b in range(3):
            a_noise = unlabelled_noise[b, :A]
            for c in range(K):
                z_noise = unlabelled_noise[b, A + c * Z:A + (c + 1) * Z]  # class c's share of the noise
                expected, a = slow_negative_bound(model, unlabelled_x[b], c, a_noise, z_noise)
                assert per_class[b, c].item() == pytest.approx(expected, abs=1e-9)
            # q(y|a,x) at the same draw of a
            torch.testing.assert_close(logits[b], mlp(model.classifier, x=unlabelled_x[b], a=a))
        for b in range(2):
            noise = labelled_noise[b]
            expected, _ = slow_negative_bound(model, labelled_x[b], int(labelled_y[b]), noise[:A], noise[A:A + Z])
            assert labelled[b].item() == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("skip", [False, True], ids=["adgm", "sdgm"])
def test_the_unlabelled_bound_sums_the_classes_out_under_q(skip):
    model = small(skip)
    generator = torch.Generator().manual_seed(2)
    batch = Batch(torch.rand(2, D, generator=generator, dtype=torch.float64), torch.tensor([1, 3]),
                  torch.rand(3, D, generator=generator, dtype=torch.float64), 0.25,
                  torch.randn(2, model.noise_width, generator=generator, dtype=torch.float64),
                  torch.randn(3, model.noise_width, generator=generator, dtype=torch.float64))
    terms = model.loss(batch)
    labelled, per_class, logits = model.bounds(batch.labelled_x, batch.labelled_y, batch.unlabelled_x,
                                               batch.labelled_noise, batch.unlabelled_noise)
    unlabelled = []
    for b in range(3):  # U = sum_y q(y|a,x) L(x,y,a) - H(q(y|a,x)), one image and one class at a time
        q = F.softmax(logits[b], dim=-1)
        entropy = -sum(q[c] * torch.log(q[c]) for c in range(K))
        unlabelled.append(sum(q[c] * per_class[b, c] for c in range(K)) - entropy)
    cross_entropy = -F.log_softmax(logits[3:], dim=-1)[torch.arange(2), batch.labelled_y].mean()
    expected = 0.25 * labelled.mean() + 0.75 * torch.stack(unlabelled).mean() + model.config.alpha * cross_entropy
    torch.testing.assert_close(terms.loss, expected)
    terms.loss.backward()  # every network gets a gradient
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("skip", [False, True], ids=["adgm", "sdgm"])
def test_kl_warmup_weights_the_kl_terms_of_the_training_loss_then_ends(skip):
    model = small(skip, kl_warmup_steps=10)
    generator = torch.Generator().manual_seed(3)
    batch = Batch(torch.rand(2, D, generator=generator, dtype=torch.float64), torch.tensor([1, 3]),
                  torch.rand(3, D, generator=generator, dtype=torch.float64), 0.25,
                  torch.randn(2, model.noise_width, generator=generator, dtype=torch.float64),
                  torch.randn(3, model.noise_width, generator=generator, dtype=torch.float64))
    for step, weight in [(4, 0.4), (25, 1.0)]:
        model.at_step(step)
        with torch.no_grad():
            terms = model.loss(batch)
        expected = [slow_negative_bound(model, batch.labelled_x[b], int(batch.labelled_y[b]),
                                        batch.labelled_noise[b, :A], batch.labelled_noise[b, A:A + Z], weight)[0]
                    for b in range(2)]
        assert terms.labelled_bound.item() == pytest.approx(sum(expected) / 2, abs=1e-9)


@pytest.mark.parametrize("skip", [False, True], ids=["adgm", "sdgm"])
def test_runaway_variances_leave_the_step_finite(skip):
    # What the networks of a class that q(y|a,x) rules out can drift to: without a limit on the
    # log-variances, exp(100) overflows the KL and the step is lost.
    model = small(skip).float()
    with torch.no_grad():
        model.encoder.rest[-1].bias[Z:] = 100.0  # log-variance of q(z|a,x,y)
        model.aux_decoder.rest[-1].bias[A:] = -100.0  # log-variance of p(a|..)
    generator = torch.Generator().manual_seed(4)
    batch = Batch(torch.rand(2, D, generator=generator), torch.tensor([1, 3]), torch.rand(3, D, generator=generator),
                  0.25, torch.randn(2, model.noise_width, generator=generator),
                  torch.randn(3, model.noise_width, generator=generator))
    terms = model.loss(batch)
    terms.loss.backward()
    assert torch.isfinite(terms.loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_classify_averages_q_over_draws_of_a_and_repeats_itself():
    model = small(False)
    x = torch.rand(5, D, dtype=torch.float64)
    with torch.no_grad():
        first, second = model.classify(x), model.classify(x)
    torch.testing.assert_close(first, second)  # fixed draws: validation does not jitter
    torch.testing.assert_close(first.exp().sum(-1), torch.ones(5, dtype=torch.float64))
