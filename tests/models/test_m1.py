"""M1's bound against a slow, obvious version written from the VAE's equations."""


import pytest
import torch

from ssvae.data.batches import Batch
from ssvae.models.m1 import M1, M1Config


def softplus_network(sequential: torch.nn.Sequential, h: torch.Tensor) -> torch.Tensor:
    """The network one layer at a time, softplus written out between layers."""
    layers = [m for m in sequential if isinstance(m, torch.nn.Linear)]
    for i, layer in enumerate(layers):
        h = layer.weight @ h + layer.bias
        if i < len(layers) - 1:
            h = torch.log(1 + torch.exp(h))
    return h


def reference_negative_elbo(model: M1, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """-ELBO for one image, layer by layer, with the densities written out."""
    mu, logvar = softplus_network(model.encoder, x).chunk(2)
    sigma = torch.exp(logvar / 2)
    z = mu + sigma * eps
    h = softplus_network(model.decoder, z)
    p = torch.sigmoid(h)
    log_px = (x * torch.log(p) + (1 - x) * torch.log(1 - p)).sum()
    # KL as the expectation of log q - log p, integrated in closed form term by term
    log_q_minus_log_p = (-torch.log(sigma) + (sigma**2 + mu**2) / 2 - 0.5).sum()
    return -log_px + log_q_minus_log_p


@pytest.fixture
def model_and_data():
    torch.manual_seed(0)
    model = M1(M1Config(input_dim=12, latent_dim=3, hidden_dims=(9, 7))).double()
    x = torch.rand(5, 12, dtype=torch.float64)
    return model, x


def test_negative_elbo_matches_the_reference(model_and_data, monkeypatch):
    model, x = model_and_data
    draws = []
    original = torch.randn_like
    monkeypatch.setattr(torch, "randn_like", lambda t, *a, **k: draws.append(original(t, *a, **k)) or draws[-1])
    bound = model.negative_elbo(x)
    for b in range(len(x)):
        torch.testing.assert_close(bound[b], reference_negative_elbo(model, x[b], draws[0][b]), rtol=1e-6, atol=1e-6)


def test_loss_uses_every_image_and_no_label(model_and_data):
    model, x = model_and_data
    batch = Batch(labelled_x=x[:2], labelled_y=torch.tensor([0, 1]), unlabelled_x=x[2:], labelled_share=0.4)
    torch.manual_seed(3)
    terms = model.loss(batch)
    torch.manual_seed(3)
    expected = model.negative_elbo(torch.cat([x[2:], x[:2]])).mean()
    torch.testing.assert_close(terms.loss, expected)
    torch.testing.assert_close(terms.loss, terms.reconstruction + terms.kl)


def test_hidden_layers_and_latent_size_are_configurable():
    model = M1(M1Config(input_dim=784, latent_dim=2, hidden_dims=[500, 400, 300]))
    linear = [m for m in model.encoder if isinstance(m, torch.nn.Linear)]
    assert [m.out_features for m in linear] == [500, 400, 300, 4]
    assert model.decode(torch.zeros(1, 2)).shape == (1, 784)
    assert model.config.hidden_dims == (500, 400, 300)


def test_kl_warm_up_weights_the_kl_from_zero_to_one_and_then_trains_the_full_bound():
    torch.manual_seed(0)
    model = M1(M1Config(input_dim=12, latent_dim=3, hidden_dims=(9,), kl_warmup_steps=4)).double()
    x = torch.rand(6, 12, dtype=torch.float64)
    batch = Batch(labelled_x=x[:0], labelled_y=torch.zeros(0, dtype=torch.long), unlabelled_x=x, labelled_share=0.0)
    for step, weight in [(0, 0.0), (1, 0.25), (2, 0.5), (4, 1.0), (40, 1.0)]:
        model.at_step(step)
        terms = model.loss(batch)
        torch.testing.assert_close(terms.loss, terms.reconstruction + weight * terms.kl)
    # The weight is not part of the saved weights: a loaded model is evaluated on the true bound.
    assert "kl_weight" not in model.state_dict()


def test_the_trainer_tells_the_model_its_step(tmp_path):
    from ssvae.trainer import Trainer, TrainerSettings

    torch.manual_seed(0)
    model = M1(M1Config(input_dim=12, latent_dim=3, hidden_dims=(9,), kl_warmup_steps=10))
    x = torch.rand(6, 12)
    batch = Batch(labelled_x=x[:0], labelled_y=torch.zeros(0, dtype=torch.long), unlabelled_x=x, labelled_share=0.0)
    settings = TrainerSettings(epochs=1, minutes=None, learning_rate=1e-3, device=torch.device("cpu"), bf16=False,
                               compile=False, progress=False, selection_metric="score", checkpoint_each_epoch=False)
    Trainer(model, [batch] * 5, lambda m: {"score": 0.0}, tmp_path, settings).fit()
    assert model.kl_weight.item() == pytest.approx(0.4)  # the last of steps 0..4 saw 4/10
