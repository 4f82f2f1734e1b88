"""M1+M2: M2 on the active latent features of a frozen M1."""

import pytest
import torch

from ssvae.data.batches import Batch
from ssvae.errors import SsvaeError
from ssvae.models.m1 import M1, M1Config
from ssvae.models.m1m2 import M1M2, M1M2Config, active_dimensions
from ssvae.models.m2 import M2Config


@pytest.fixture
def stacked():
    torch.manual_seed(0)
    m1 = M1Config(input_dim=16, latent_dim=6, hidden_dims=(10,))
    m2 = M2Config(input_dim=3, num_classes=4, latent_dim=2, hidden_dim=8, classifier_hidden_dim=5, likelihood="gaussian",
                  class_balance=0.0, adversarial_weight=0.0)  # as M1+M2 makes its M2
    return M1M2(M1M2Config(m1=m1, m2=m2, active_dims=(0, 2, 5)))


def test_active_dimensions_are_those_whose_q_means_vary_over_the_data():
    torch.manual_seed(0)
    m1 = M1(M1Config(input_dim=16, latent_dim=6, hidden_dims=(10,)))
    last = m1.encoder[-1]
    with torch.no_grad():  # the means of dimensions 1 and 4 no longer depend on x
        last.weight[[1, 4]] = 0.0
        last.weight[0] *= 50
    images = torch.rand(200, 16)
    assert active_dimensions(m1, images, threshold=0.0) == [0, 2, 3, 5]
    assert 0 in active_dimensions(m1, images, threshold=0.5)


def test_classification_uses_the_q_mean_of_z1_and_is_deterministic(stacked):
    x = torch.rand(7, 16)
    logits = stacked.classify(x)
    assert logits.shape == (7, 4)
    mean = stacked.m1.encode(x)[0][:, [0, 2, 5]]
    torch.testing.assert_close(logits, stacked.m2.classify(mean))
    torch.testing.assert_close(stacked.classify(x), logits)  # no sampling at test time


def test_training_draws_z1_from_q_with_each_steps_noise_and_only_m2_learns(stacked):
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(6, 16, generator=generator)
    y = torch.tensor([1, 3])
    noise = torch.randn(6, stacked.noise_width, generator=generator)
    split = stacked.m1.noise_width  # z1's noise first, then M2's

    def batch(noise):
        return Batch(labelled_x=x[:2], labelled_y=y, unlabelled_x=x[2:], labelled_share=0.1,
                     labelled_noise=noise[:2], unlabelled_noise=noise[2:])

    terms = stacked.loss(batch(noise))
    # Written out: M2's objective on z1 = mu + sigma * eps drawn from q(z1|x), its active dimensions.
    mu, logvar = stacked.m1.encode(x)
    z1 = (mu + torch.exp(0.5 * logvar) * noise[:, :split])[:, [0, 2, 5]].detach()
    expected = stacked.m2.loss(Batch(labelled_x=z1[:2], labelled_y=y, unlabelled_x=z1[2:], labelled_share=0.1,
                                     labelled_noise=noise[:2, split:], unlabelled_noise=noise[2:, split:]))
    torch.testing.assert_close(terms.loss, expected.loss)
    # Another draw of z1 alone, M2's draws held, is another loss: z1 is not fixed at its mean.
    other = noise.clone()
    other[:, :split] = torch.randn(6, split, generator=generator)
    assert not torch.allclose(stacked.loss(batch(other)).loss, terms.loss)
    terms.loss.backward()
    assert all(p.grad is None for p in stacked.m1.parameters())
    assert all(p.grad is not None for p in stacked.m2.parameters())
    stacked.train()
    assert not stacked.m1.training  # frozen, whatever the mode of the whole


def test_a_stacked_config_without_active_dimensions_is_refused():
    m2 = M2Config(input_dim=3, likelihood="gaussian")
    with pytest.raises(SsvaeError, match="active"):
        M1M2(M1M2Config(m2=m2, active_dims=()))


def test_the_config_survives_a_json_round_trip(stacked):
    import json
    from dataclasses import asdict

    back = M1M2Config(**json.loads(json.dumps(asdict(stacked.config))))
    assert back == stacked.config


def test_m2_on_the_features_has_no_classifier_terms_and_old_configs_read_without_them(stacked):
    import json
    from dataclasses import asdict

    default = M1M2Config()
    assert (default.m2.class_balance, default.m2.adversarial_weight) == (0.0, 0.0)
    payload = json.loads(json.dumps(asdict(stacked.config)))
    for name in ("class_balance", "class_balance_schedule", "adversarial_weight", "adversarial_radius"):
        del payload["m2"][name]
    read = M1M2Config(**payload)
    assert (read.m2.class_balance, read.m2.adversarial_weight) == (0.0, 0.0)
