"""The observation models against slow, written-out references, and the properties that keep a
bound finite: discrete ones sum to 1 over the 256 levels, densities integrate to 1, floors hold."""

import math

import pytest
import torch

from ssvae.models.likelihoods import (HALF_BIN, LEVELS, MIN_LOG_SCALE, MIN_STD, NAMES, bits_per_dimension,
                                      continuous_bernoulli_log_normaliser, likelihood)
from ssvae.models.m1 import M1, M1Config
from ssvae.models.m2 import M2, M2Config


def logistic_cdf(v: float) -> float:
    if v == math.inf:
        return 1.0
    return 1.0 / (1.0 + math.exp(-v)) if v > -700 else 0.0


def reference_log_prob(name: str, x: list[float], out: list[float]) -> float:
    """log p(x | out), one input at a time, straight from each distribution's definition."""
    total = 0.0
    d = len(x)
    for i, value in enumerate(x):
        if name in ("bernoulli", "continuous-bernoulli"):
            lam = 1.0 / (1.0 + math.exp(-out[i]))
            total += value * math.log(lam) + (1 - value) * math.log(1 - lam)
            if name == "continuous-bernoulli":  # C(lambda) = 2 atanh(1 - 2 lambda) / (1 - 2 lambda)
                total += math.log(2 * math.atanh(1 - 2 * lam) / (1 - 2 * lam)) if abs(lam - 0.5) > 1e-9 else math.log(2)
        elif name == "logistic":
            mean, scale = out[i], math.exp(max(out[d + i], MIN_LOG_SCALE))
            level = round(value * (LEVELS - 1))
            upper, lower = (value + HALF_BIN - mean) / scale, (value - HALF_BIN - mean) / scale
            if level == LEVELS - 1:
                upper = math.inf
            if level == 0:
                lower = -math.inf
            # P(lower < v < upper) of a standard logistic, from whichever tail keeps its digits.
            if lower > 0:
                total += math.log(logistic_cdf(-lower) - logistic_cdf(-upper))
            else:
                total += math.log(logistic_cdf(upper) - logistic_cdf(lower))
        else:  # gaussian, variance floored: exp(raw) + MIN_STD^2
            mean, var = out[i], math.exp(out[d + i]) + MIN_STD ** 2
            total += -0.5 * math.log(2 * math.pi * var) - (value - mean) ** 2 / (2 * var)
    return total


def some_inputs(name: str, batch: int = 5, d: int = 7):
    generator = torch.Generator().manual_seed(1)
    x = torch.randint(0, LEVELS, (batch, d), generator=generator).double() / (LEVELS - 1)
    x[0, :3] = torch.tensor([0.0, 1.0, 0.5])  # the edges of the discrete range, and the middle
    width = likelihood(name).params_per_input
    out = torch.randn(batch, d * width, generator=generator, dtype=torch.float64) * 2
    if width == 2:
        out[:, d:] = torch.rand(batch, d, generator=generator, dtype=torch.float64) * 4 - 4  # log-scales -4..0
    return x, out


@pytest.mark.parametrize("name", NAMES)
def test_each_likelihood_matches_its_definition_written_out(name):
    x, out = some_inputs(name)
    got = likelihood(name).log_prob(x, out)
    expected = torch.tensor([reference_log_prob(name, x[b].tolist(), out[b].tolist()) for b in range(len(x))],
                            dtype=torch.float64)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)


def test_the_discretised_logistic_is_a_probability_over_the_256_levels():
    levels = torch.arange(LEVELS, dtype=torch.float64) / (LEVELS - 1)
    model = likelihood("logistic")
    for mean, log_scale in [(0.5, -2.0), (0.0, -5.0), (1.0, -1.0), (0.3, -7.0), (-3.0, 1.0), (0.71, -10.0)]:
        out = torch.tensor([[mean, log_scale]], dtype=torch.float64).expand(LEVELS, 2)
        log_p = model.log_prob(levels.unsqueeze(1), out)
        assert torch.logsumexp(log_p, 0).item() == pytest.approx(0.0, abs=1e-9), (mean, log_scale)
        assert (log_p <= 0).all()


def test_the_discretised_logistic_is_exact_where_a_naive_difference_of_sigmoids_cancels():
    # A sharp logistic far to the right of the level: sigmoid(upper) - sigmoid(lower) is 0 in
    # float32 but the mirrored difference keeps the probability, and its gradient, finite.
    x = torch.tensor([[100 / 255]])
    out = torch.tensor([[0.9, -6.0]], requires_grad=True)
    log_p = likelihood("logistic").log_prob(x, out)
    expected = reference_log_prob("logistic", [100 / 255], [0.9, -6.0])
    assert math.isfinite(log_p.item()) and log_p.item() == pytest.approx(expected, rel=1e-4)
    log_p.sum().backward()
    assert torch.isfinite(out.grad).all()


def test_the_continuous_bernoulli_is_a_density_on_the_unit_interval():
    model = likelihood("continuous-bernoulli")
    grid = torch.linspace(0, 1, 20001, dtype=torch.float64)
    for logit in [0.0, 1e-4, 0.3, -2.0, 5.0, -12.0]:
        density = model.log_prob(grid.unsqueeze(1), torch.full((len(grid), 1), logit, dtype=torch.float64)).exp()
        assert torch.trapezoid(density, grid).item() == pytest.approx(1.0, rel=1e-4), logit
        mean = torch.trapezoid(density * grid, grid).item()
        assert model.mean(torch.tensor(logit, dtype=torch.float64)).item() == pytest.approx(mean, abs=1e-4)


def test_the_continuous_bernoulli_normaliser_is_smooth_where_its_closed_form_is_zero_over_zero():
    logits = torch.tensor([-0.011, -0.0099, 0.0, 0.0099, 0.011], dtype=torch.float64)
    values = continuous_bernoulli_log_normaliser(logits)
    assert values[2].item() == pytest.approx(math.log(2))
    # Both sides of the switch to the Taylor series agree with the exact function.
    for logit, value in zip(logits.tolist(), values.tolist()):
        if logit:
            assert value == pytest.approx(math.log(logit / math.tanh(logit / 2)), abs=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_the_mean_is_what_pictures_show(name):
    x, out = some_inputs(name)
    mean = likelihood(name).mean(out)
    assert mean.shape == x.shape
    if name != "gaussian":
        assert (mean >= 0).all() and (mean <= 1).all()


def test_the_gaussian_floor_bounds_the_density_of_a_constant_input():
    # A decoder that has learnt a constant pixel exactly, with its variance driven to nothing: the
    # density per input stops at that of the floor instead of growing without end.
    x = torch.full((1, 10), 0.25)
    out = torch.cat([x, torch.full((1, 10), -1e4)], dim=1)
    log_p = likelihood("gaussian").log_prob(x, out).item()
    ceiling = -0.5 * math.log(2 * math.pi * MIN_STD ** 2) * 10
    assert math.isfinite(log_p) and log_p == pytest.approx(ceiling, rel=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_m2_and_m1_train_on_constant_images_without_a_runaway_bound(name):
    """Images that are all one grey level (the background of a photograph is): every likelihood's
    bound stays finite and bounded however hard the decoder fits them."""
    from ssvae.data.batches import Batch

    torch.manual_seed(0)
    x = torch.full((16, 12), 0.0)
    x[:, 6:] = 128 / 255
    m2 = M2(M2Config(input_dim=12, num_classes=2, latent_dim=2, hidden_dim=16, classifier_hidden_dim=8, likelihood=name))
    m1 = M1(M1Config(input_dim=12, latent_dim=2, hidden_dims=(16,), kl_warmup_steps=0, likelihood=name))
    batch = Batch(x[:4], torch.tensor([0, 1, 0, 1]), x[4:], labelled_share=0.25)
    for model in (m2, m1):
        optimiser = torch.optim.Adam(model.parameters(), lr=0.1)
        for _ in range(100):
            optimiser.zero_grad()
            terms = model.loss(batch)
            terms.loss.backward()
            optimiser.step()
            assert torch.isfinite(terms.loss)
        negative_log_likelihood = (m1.terms(x)[0] if model is m1 else model.labelled_bound(x[:4], batch.labelled_y))
        if name == "gaussian":  # at most the floor's density on each of the 12 inputs
            assert negative_log_likelihood.min().item() > 12 * 0.5 * math.log(2 * math.pi * MIN_STD ** 2) - 1e-3
        elif name != "continuous-bernoulli":  # probabilities: -log p >= 0 (less the prior's log K for M2)
            assert negative_log_likelihood.min().item() > -1e-3 - (0 if model is m1 else -math.log(2))


def test_bits_per_dimension_of_a_uniform_model_over_the_levels_is_eight():
    nats = 784 * math.log(LEVELS)
    assert bits_per_dimension(nats, 784) == pytest.approx(8.0)


def test_an_unknown_likelihood_is_refused_with_the_choices():
    from ssvae.errors import SsvaeError

    with pytest.raises(SsvaeError, match="choose one of bernoulli"):
        likelihood("poisson")
    with pytest.raises(SsvaeError, match="likelihood must be one of"):
        M2(M2Config(likelihood="poisson"))
