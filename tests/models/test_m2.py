"""M2's bounds against a slow, obvious version written straight from the paper's equations."""

import math

import pytest
import torch
import torch.nn.functional as F

from ssvae.data.batches import Batch
from ssvae.models.m2 import M2, M2Config


def reference_bound(model: M2, x: torch.Tensor, y: int, eps: torch.Tensor) -> torch.Tensor:
    """L(x,y) for one image and one class: one-hot y concatenated to the inputs, as in the paper."""
    k = model.config.num_classes
    onehot = F.one_hot(torch.tensor(y), k).to(x.dtype)
    enc_w = torch.cat([model.encoder_x.weight, model.encoder_y.t()], dim=1)  # acts on [x, y]
    hidden = F.softplus(enc_w @ torch.cat([x, onehot]) + model.encoder_x.bias)
    mu, logvar = (model.encoder_head.weight @ hidden + model.encoder_head.bias).chunk(2)
    z = mu + torch.sqrt(torch.exp(logvar)) * eps
    dec_w = torch.cat([model.decoder_z.weight, model.decoder_y.t()], dim=1)  # acts on [z, y]
    out = model.decoder_out.weight @ F.softplus(dec_w @ torch.cat([z, onehot]) + model.decoder_z.bias) \
        + model.decoder_out.bias
    if model.config.likelihood == "bernoulli":
        p = torch.sigmoid(out)
        log_px = (x * torch.log(p) + (1 - x) * torch.log(1 - p)).sum()
    else:  # a diagonal Gaussian, density written out
        mean, x_logvar = out.chunk(2)
        x_var = torch.exp(x_logvar)
        log_px = torch.log(torch.exp(-((x - mean) ** 2) / (2 * x_var)) / torch.sqrt(2 * math.pi * x_var)).sum()
    var = torch.exp(logvar)
    kl = 0.5 * (mu**2 + var - 1 - torch.log(var)).sum()
    return -(log_px + math.log(1.0 / k) - kl)


@pytest.fixture
def model_and_data():
    torch.manual_seed(0)
    # The paper's objective: the classifier terms off (their own tests below add them)
    config = M2Config(input_dim=20, num_classes=4, latent_dim=3, hidden_dim=16, classifier_hidden_dim=8,
                      class_balance=0.0, adversarial_weight=0.0)
    model = M2(config).double()
    x = torch.bernoulli(torch.rand(6, 20, dtype=torch.float64))
    return model, x


def capture_noise(monkeypatch):
    """Record every standard-normal draw the model makes, so the reference can reuse it."""
    draws = []
    original = torch.randn_like

    def recording(t, *args, **kwargs):
        draws.append(original(t, *args, **kwargs))
        return draws[-1]

    monkeypatch.setattr(torch, "randn_like", recording)
    return draws


def test_unlabelled_bound_sums_every_class_like_a_per_class_loop(model_and_data, monkeypatch):
    model, x = model_and_data
    draws = capture_noise(monkeypatch)
    bound, entropy = model.unlabelled_bound(x)
    eps = draws[0].view(len(x), 4, -1)  # one draw per image and class, rows ordered image-major
    q = torch.softmax(model.classify(x), -1)
    for b in range(len(x)):
        per_class = torch.stack([reference_bound(model, x[b], k, eps[b, k]) for k in range(4)])
        h = -(q[b] * torch.log(q[b])).sum()
        expected = (q[b] * per_class).sum() - h
        torch.testing.assert_close(bound[b], expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(entropy[b], h, rtol=1e-5, atol=1e-5)


def test_labelled_bound_matches_the_reference(model_and_data, monkeypatch):
    model, x = model_and_data
    y = torch.tensor([0, 1, 2, 3, 1, 2])
    draws = capture_noise(monkeypatch)
    bound = model.labelled_bound(x, y)
    eps = draws[0]  # (batch, latent)
    for b in range(len(x)):
        torch.testing.assert_close(bound[b], reference_bound(model, x[b], int(y[b]), eps[b]), rtol=1e-5, atol=1e-5)


def test_one_pass_over_labelled_and_unlabelled_images_gives_each_its_own_bound(model_and_data, monkeypatch):
    """The training step stacks both kinds of image into one pass; no row may leak into another."""
    model, x = model_and_data
    labelled_x, labelled_y, unlabelled_x = x[:2], torch.tensor([3, 0]), x[2:]
    draws = capture_noise(monkeypatch)
    labelled, per_class = model.bounds(labelled_x, labelled_y, unlabelled_x)
    eps = draws[0]  # 4 unlabelled images x 4 classes, then the 2 labelled images
    assert labelled.shape == (2,) and per_class.shape == (4, 4)
    for b in range(4):
        for k in range(4):
            expected = reference_bound(model, unlabelled_x[b], k, eps[4 * b + k])
            torch.testing.assert_close(per_class[b, k], expected, rtol=1e-5, atol=1e-5)
    for j in range(2):
        expected = reference_bound(model, labelled_x[j], int(labelled_y[j]), eps[16 + j])
        torch.testing.assert_close(labelled[j], expected, rtol=1e-5, atol=1e-5)


def test_loss_is_the_papers_objective_per_image(model_and_data):
    model, x = model_and_data
    # Labelled and unlabelled images differ, and in number, so that mixing the two up shows.
    y = torch.tensor([0, 1])
    batch = Batch(labelled_x=x[:2], labelled_y=y, unlabelled_x=x[2:], labelled_share=0.25)
    torch.manual_seed(1)
    terms = model.loss(batch)
    expected_ce = F.cross_entropy(model.classify(x[:2]), y)
    torch.testing.assert_close(terms.classification, expected_ce)
    log_q = F.log_softmax(model.classify(x[2:]), -1)
    torch.testing.assert_close(terms.classifier_entropy, -(log_q.exp() * log_q).sum(-1).mean())
    # The paper's J / N: each bound weighted by its share of the data, plus alpha times the cross-entropy.
    torch.testing.assert_close(
        terms.loss, 0.25 * terms.labelled_bound + 0.75 * terms.unlabelled_bound + model.config.alpha * expected_ce)


def test_labels_reach_the_classifier_through_the_loss(model_and_data):
    """Without a gradient from the labels into q(y|x), M2 classifies near chance."""
    model, x = model_and_data
    batch = Batch(labelled_x=x, labelled_y=torch.zeros(6, dtype=torch.long), unlabelled_x=x[:0], labelled_share=1.0)
    model.loss(batch).loss.backward()
    assert model.classifier[0].weight.grad.abs().sum() > 0


def test_gaussian_likelihood_for_real_valued_features_matches_the_reference(monkeypatch):
    """M1+M2 puts M2 on M1's latent features: p(z1|y,z2) is a diagonal Gaussian."""
    torch.manual_seed(0)
    config = M2Config(input_dim=5, num_classes=3, latent_dim=2, hidden_dim=8, classifier_hidden_dim=4,
                      likelihood="gaussian")
    model = M2(config).double()
    unlabelled_x, labelled_x = torch.randn(3, 5, dtype=torch.float64), torch.randn(2, 5, dtype=torch.float64)
    labelled_y = torch.tensor([2, 0])
    draws = capture_noise(monkeypatch)
    labelled, per_class = model.bounds(labelled_x, labelled_y, unlabelled_x)
    eps = draws[0]
    for b in range(3):
        for k in range(3):
            torch.testing.assert_close(per_class[b, k], reference_bound(model, unlabelled_x[b], k, eps[3 * b + k]),
                                       rtol=1e-6, atol=1e-6)
    for j in range(2):
        torch.testing.assert_close(labelled[j], reference_bound(model, labelled_x[j], int(labelled_y[j]), eps[9 + j]),
                                   rtol=1e-6, atol=1e-6)


def a_batch(model: M2, x: torch.Tensor, y: torch.Tensor, share: float = 0.25) -> Batch:
    generator = torch.Generator().manual_seed(3)
    n_l = len(y)
    return Batch(labelled_x=x[:n_l], labelled_y=y, unlabelled_x=x[n_l:], labelled_share=share,
                 labelled_noise=torch.randn(n_l, model.noise_width, generator=generator, dtype=x.dtype),
                 unlabelled_noise=torch.randn(len(x) - n_l, model.noise_width, generator=generator, dtype=x.dtype))


def test_class_balance_adds_the_pull_of_the_running_class_frequencies_toward_uniform(model_and_data):
    model, x = model_and_data
    balanced = M2(M2Config(**{**vars(model.config), "class_balance": 5.0, "class_balance_schedule": "constant"})).double()
    balanced.load_state_dict(model.state_dict())
    y = torch.tensor([0, 1])
    frequencies = torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=torch.float64)
    balanced.class_frequencies.copy_(frequencies)
    batch = a_batch(balanced, x, y)
    terms, paper = balanced.loss(batch), model.loss(batch)
    # Written out: the running frequencies move 1% of the way to the batch's mean q(y|x) over its
    # unlabelled images, and the term is sum_y qbar(y) log(K m(y)).
    qbar = F.softmax(model.classify(x[2:]), dim=-1).mean(0)
    moved = frequencies + 0.01 * (qbar - frequencies)
    torch.testing.assert_close(balanced.class_frequencies, moved)
    torch.testing.assert_close(terms.loss, paper.loss + 5.0 * (qbar * torch.log(4 * moved)).sum())
    # Its gradient lowers q of the classes given more often than uniform: here class 0.
    logits = model.classify(x[2:]).detach().requires_grad_()
    (F.softmax(logits, -1).mean(0) * torch.log(4 * moved)).sum().backward()
    assert (logits.grad[:, 0] > 0).all() and (logits.grad[:, 3] < 0).all()


def test_class_balance_weight_follows_the_learning_rates_cosine_down_to_nothing():
    model = M2(M2Config(input_dim=8, class_balance=50.0))
    for progress, expected in [(0.0, 50.0), (0.5, 25.0), (1.0, 0.0)]:
        model.at_step(10, progress)
        assert model.class_balance_weight.item() == pytest.approx(expected, abs=1e-5)
    held = M2(M2Config(input_dim=8, class_balance=50.0, class_balance_schedule="constant"))
    held.at_step(10, 0.9)
    assert held.class_balance_weight.item() == 50.0


def test_adversarial_term_moves_each_image_along_the_classifiers_most_sensitive_direction(model_and_data):
    model, x = model_and_data
    radius = 0.5
    vat = M2(M2Config(**{**vars(model.config), "adversarial_weight": 2.0, "adversarial_radius": radius})).double()
    vat.load_state_dict(model.state_dict())
    y = torch.tensor([0, 1])
    batch = a_batch(vat, x, y)
    z_width = model.noise_width
    assert vat.noise_width == z_width + x.shape[1]  # the probe comes after the z's
    paper = model.loss(Batch(labelled_x=batch.labelled_x, labelled_y=y, unlabelled_x=batch.unlabelled_x,
                             labelled_share=0.25, labelled_noise=batch.labelled_noise[:, :z_width],
                             unlabelled_noise=batch.unlabelled_noise[:, :z_width]))
    terms = vat.loss(batch)
    # Written out: near x, KL(q(y|x) || q(y|x+r)) is r' H r / 2 with H = J' (diag p - p p') J (J the
    # Jacobian of the logits), so one power iteration from the probe d points along H d.
    images = torch.cat([batch.unlabelled_x, batch.labelled_x])
    probes = torch.cat([batch.unlabelled_noise, batch.labelled_noise])[:, z_width:]
    expected = []
    for image, probe in zip(images, probes):
        jacobian = torch.autograd.functional.jacobian(model.classify, image.unsqueeze(0)).squeeze(0).squeeze(1)
        p = F.softmax(model.classify(image.unsqueeze(0)), -1).squeeze(0).detach()
        hessian = jacobian.T @ (torch.diag(p) - torch.outer(p, p)) @ jacobian
        r = radius * F.normalize(hessian @ probe, dim=0)
        shifted = F.log_softmax(model.classify((image + r).unsqueeze(0)), -1).squeeze(0)
        expected.append((p * (p.log() - shifted)).sum())
    term = torch.stack(expected).mean().detach()
    assert term > 0
    torch.testing.assert_close(terms.loss.detach(), paper.loss.detach() + 2.0 * term, rtol=1e-3, atol=1e-4)


def test_weights_saved_before_the_classifier_terms_still_load(model_and_data):
    model, _ = model_and_data
    state = {k: v for k, v in model.state_dict().items() if k != "class_frequencies"}
    fresh = M2(model.config).double()
    fresh.load_state_dict(state)
    torch.testing.assert_close(fresh.class_frequencies, torch.full((4,), 0.25, dtype=torch.float64))
