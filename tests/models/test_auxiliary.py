"""ADGM and SDGM: the batched bounds against a slow loop over images and classes, in float64."""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from ssvae.data.batches import Batch
from ssvae.errors import SsvaeError
from ssvae.models.auxiliary import GENERATIVE_CLASSES, LOGVAR_LIMIT, AuxiliaryConfig, AuxiliaryDGM

K, D, Z, A = 4, 6, 3, 2


def small(skip: bool, **options) -> AuxiliaryDGM:
    torch.manual_seed(0)
    config = AuxiliaryConfig(input_dim=D, num_classes=K, latent_dim=Z, aux_dim=A, hidden_dims=(5, 4), skip=skip,
                             **options)
    model = AuxiliaryDGM(config).double()
    for network in model.children():  # so that the written-out networks below know the activation
        object.__setattr__(network, "owner", model)
    return model


def activate(model, h):
    """The hidden layers' activation, written out: ReLU (the default) or log(1 + e^h)."""
    if model.config.activation == "relu":
        return torch.where(h > 0, h, torch.zeros_like(h))
    return torch.log1p(torch.exp(h))


def mlp(network, y=None, **inputs):
    """One network on one example, every layer written out: the first, a sum of every part's weights
    times its input (and the class's row of weights), then activation and weights layer by layer."""
    pre = network.bias.clone()
    for name, value in inputs.items():
        pre = pre + network.parts[name].weight @ value
    if y is not None:
        pre = pre + network.class_rows[y]
    linears = [layer for layer in network.rest if isinstance(layer, torch.nn.Linear)]
    assert len(linears) == len(network.rest) // 2  # activation, weights; activation, weights; ...
    for layer in linears:
        pre = layer.weight @ activate(network.owner, pre) + layer.bias
    return pre


def gaussian(out):
    """Mean and log-variance from a network's output, the log-variance kept within the model's limit."""
    mean, logvar = out.chunk(2)
    return mean, logvar.clamp(-LOGVAR_LIMIT, LOGVAR_LIMIT)


def log_normal(value, mean, logvar):
    return sum(-0.5 * ((v - m) ** 2 / math.exp(lv) + lv + math.log(2 * math.pi))
               for v, m, lv in zip(value.tolist(), mean.tolist(), logvar.tolist()))


def slow_negative_bound(model, x, y, a_noise, z_noise, kl_weight=1.0, aux_kl_weight=None):
    """-L(x, y) for one image and class, term by term, with the given standard normal draws (and the
    KL terms weighted by ``kl_weight``, as during a warm-up; a's by ``aux_kl_weight`` where given)."""
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
    aux_kl_weight = kl_weight if aux_kl_weight is None else aux_kl_weight
    return -(log_px - math.log(K) - kl_weight * kl_z + aux_kl_weight * (log_pa - log_qa)), a


@pytest.mark.parametrize("activation", ["relu", "softplus"])
@pytest.mark.parametrize("skip", [False, True], ids=["adgm", "sdgm"])
def test_batched_bounds_match_a_loop_over_images_and_classes(skip, activation):
    model = small(skip, activation=activation)
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
    model = small(skip, class_balance=0.0, adversarial_weight=0.0)
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
def test_top_classes_sum_the_unlabelled_bound_over_each_images_most_probable_classes(skip):
    model = small(skip, kl_scale=1.0, class_balance=0.0, adversarial_weight=0.0, top_classes=2)
    everything = small(skip, kl_scale=1.0, class_balance=0.0, adversarial_weight=0.0)
    batch = a_batch(model, 5)
    # While the classes form, every class is summed: the loss is the whole sum's.
    model.at_step(0, 0.05)
    torch.testing.assert_close(model.loss(batch).loss, everything.loss(batch).loss)
    model.at_step(0, 0.5)
    terms = model.loss(batch)
    labelled, _, logits = everything.bounds(batch.labelled_x, batch.labelled_y, batch.unlabelled_x,
                                            batch.labelled_noise, batch.unlabelled_noise)
    unlabelled = []
    for b in range(3):
        q = F.softmax(logits[b], dim=-1)
        top = sorted(range(K), key=lambda c: -q[c].item())[:2]
        # The image's j-th most probable class gets the j-th share of its noise for z.
        noise = batch.unlabelled_noise[b]
        bounds = [slow_negative_bound(model, batch.unlabelled_x[b], c, noise[:A], noise[A + j * Z:A + (j + 1) * Z])[0]
                  for j, c in enumerate(top)]
        left_out = 1 - sum(q[c] for c in top)
        entropy = -sum(q[c] * torch.log(q[c]) for c in range(K))
        unlabelled.append(sum(q[c] * bound for c, bound in zip(top, bounds)) + left_out * max(bounds) - entropy)
    cross_entropy = F.cross_entropy(logits[3:], batch.labelled_y)
    expected = 0.25 * labelled.mean() + 0.75 * torch.stack(unlabelled).mean() + model.config.alpha * cross_entropy
    torch.testing.assert_close(terms.loss, expected)


def test_top_classes_are_checked():
    for wrong in (0, K + 1):
        with pytest.raises(SsvaeError, match="top_classes"):
            AuxiliaryConfig(num_classes=K, top_classes=wrong).validate()


def a_batch(model, seed):
    generator = torch.Generator().manual_seed(seed)
    return Batch(torch.rand(2, D, generator=generator, dtype=torch.float64), torch.tensor([1, 3]),
                 torch.rand(3, D, generator=generator, dtype=torch.float64), 0.25,
                 torch.randn(2, model.noise_width, generator=generator, dtype=torch.float64),
                 torch.randn(3, model.noise_width, generator=generator, dtype=torch.float64))


@pytest.mark.parametrize("skip", [False, True], ids=["adgm", "sdgm"])
def test_warmup_and_kl_scale_weight_the_kl_terms_of_the_loss_but_not_the_logged_bounds(skip):
    model = small(skip, kl_warmup_steps=10, kl_scale=2.0, class_balance=0.0, adversarial_weight=0.0)
    batch = a_batch(model, 3)
    for step, weight in [(4, 0.8), (25, 2.0)]:  # 2 x 4/10 of the way through the warm-up, then 2
        model.at_step(step)
        with torch.no_grad():
            terms = model.loss(batch)
            labelled, per_class, logits = model.bounds(batch.labelled_x, batch.labelled_y, batch.unlabelled_x,
                                                       batch.labelled_noise, batch.unlabelled_noise, weight)
        q = F.softmax(logits[:3], dim=-1)
        unlabelled = ((q * per_class).sum(-1) + (q * q.log()).sum(-1)).mean()
        cross_entropy = F.cross_entropy(logits[3:], batch.labelled_y)
        expected = 0.25 * labelled.mean() + 0.75 * unlabelled + model.config.alpha * cross_entropy
        torch.testing.assert_close(terms.loss, expected)
        # What is logged is the bound itself, -L at KL weight 1, term by term.
        bound = [slow_negative_bound(model, batch.labelled_x[b], int(batch.labelled_y[b]),
                                     batch.labelled_noise[b, :A], batch.labelled_noise[b, A:A + Z])[0]
                 for b in range(2)]
        assert terms.labelled_bound.item() == pytest.approx(sum(bound) / 2, abs=1e-9)


@pytest.mark.parametrize("skip", [False, True], ids=["adgm", "sdgm"])
def test_aux_kl_scale_weights_the_kl_term_of_a_alone(skip):
    model = small(skip, kl_scale=2.0, aux_kl_scale=0.5, class_balance=0.0, adversarial_weight=0.0)
    batch = a_batch(model, 4)
    model.at_step(0)
    with torch.no_grad():
        terms = model.loss(batch)
        unlabelled = []
        for b in range(3):  # U, one image and one class at a time, z's KL weighted by 2 and a's by 0.5
            noise = batch.unlabelled_noise[b]
            per_class, a = zip(*[slow_negative_bound(model, batch.unlabelled_x[b], c, noise[:A],
                                                     noise[A + c * Z:A + (c + 1) * Z], 2.0, 0.5) for c in range(K)])
            q = F.softmax(mlp(model.classifier, x=batch.unlabelled_x[b], a=a[0]), dim=-1)
            unlabelled.append(sum(q[c] * per_class[c] for c in range(K)) + (q * q.log()).sum())
        labelled = [slow_negative_bound(model, batch.labelled_x[b], int(batch.labelled_y[b]),
                                        batch.labelled_noise[b, :A], batch.labelled_noise[b, A:A + Z], 2.0, 0.5)
                    for b in range(2)]
        logits = torch.stack([mlp(model.classifier, x=batch.labelled_x[b], a=labelled[b][1]) for b in range(2)])
        expected = (0.25 * sum(bound for bound, _ in labelled) / 2 + 0.75 * sum(unlabelled) / 3
                    + model.config.alpha * F.cross_entropy(logits, batch.labelled_y))
    assert terms.loss.item() == pytest.approx(float(expected), abs=1e-9)
    # The logged bound is the bound itself, every KL term at weight 1.
    bound = sum(slow_negative_bound(model, batch.labelled_x[b], int(batch.labelled_y[b]), batch.labelled_noise[b, :A],
                                    batch.labelled_noise[b, A:A + Z])[0] for b in range(2)) / 2
    assert terms.labelled_bound.item() == pytest.approx(bound, abs=1e-9)
    with pytest.raises(SsvaeError, match="aux_kl_scale"):
        AuxiliaryConfig(aux_kl_scale=0.0).validate()


def test_classifier_hidden_dims_shape_the_classifier_alone():
    model = AuxiliaryDGM(AuxiliaryConfig(input_dim=D, num_classes=K, latent_dim=Z, aux_dim=A, hidden_dims=(5,),
                                         classifier_hidden_dims=[7, 6]))  # a list, as config.json gives it
    widths = lambda network: [layer.out_features for layer in network.rest if isinstance(layer, torch.nn.Linear)]
    assert widths(model.classifier) == [6, K] and model.classifier.bias.shape == (7,)
    assert widths(model.encoder) == [2 * Z] and model.encoder.bias.shape == (5,)
    assert model.classify(torch.rand(3, D)).shape == (3, K)
    with pytest.raises(SsvaeError, match="classifier_hidden_dims"):
        AuxiliaryConfig(classifier_hidden_dims=(500, 0)).validate()


@pytest.mark.parametrize("skip", [False, True], ids=["adgm", "sdgm"])
def test_class_balance_pulls_frequent_classes_down_from_running_frequencies(skip):
    model = small(skip, class_balance=3.0, adversarial_weight=0.0)
    paper = small(skip, class_balance=0.0, adversarial_weight=0.0)  # the same weights
    frequencies = torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=torch.float64)
    model.class_frequencies.copy_(frequencies)
    batch = a_batch(model, 4)
    terms, without = model.loss(batch), paper.loss(batch)
    with torch.no_grad():
        logits = model.bounds(batch.labelled_x, batch.labelled_y, batch.unlabelled_x,
                              batch.labelled_noise, batch.unlabelled_noise)[2]
    batch_frequencies = F.softmax(logits[:3], dim=-1).mean(0)
    # The running frequencies move 1% of the way to this batch's, then weigh its classes.
    running = frequencies + 0.01 * (batch_frequencies - frequencies)
    torch.testing.assert_close(model.class_frequencies, running)
    expected = without.loss + 3.0 * sum(batch_frequencies[c] * math.log(K * running[c]) for c in range(K))
    torch.testing.assert_close(terms.loss, expected)
    # The gradient in q(y|a,x) lowers the classes given more often than 1/K: the logit of class 0
    # (running 0.4) is pushed down harder than without the term, class 3's (0.1) less or up.
    logit_gradients = []
    for network in (model, paper):
        network.zero_grad()
        captured = {}
        handle = network.classifier.rest[-1].register_forward_hook(lambda m, i, o: captured.setdefault("out", o))
        loss = network.loss(batch).loss
        handle.remove()
        out = captured["out"]
        logit_gradients.append(torch.autograd.grad(loss, out)[0][:3].sum(0))
    difference = logit_gradients[0] - logit_gradients[1]
    assert difference[0] > 0 > difference[3]  # gradient descent lowers logit 0, raises logit 3
    # Evaluation leaves the objective and the running frequencies alone.
    model.eval()
    before = model.class_frequencies.clone()
    paper.eval()
    torch.testing.assert_close(model.loss(batch).loss, paper.loss(batch).loss)
    assert torch.equal(model.class_frequencies, before)


def test_a_cosine_class_balance_schedule_lowers_the_term_to_nothing_by_the_end_of_the_budget():
    scheduled = small(True, class_balance=3.0, class_balance_schedule="cosine", adversarial_weight=0.0)
    constant = small(True, class_balance=3.0, class_balance_schedule="constant", adversarial_weight=0.0)
    paper = small(True, class_balance=0.0, adversarial_weight=0.0)
    batch = a_batch(scheduled, 6)
    for progress, share_left in [(0.0, 1.0), (0.5, 0.5), (1.0, 0.0)]:
        for model in (scheduled, constant, paper):
            model.class_frequencies.copy_(torch.tensor([0.4, 0.3, 0.2, 0.1]))
            model.at_step(100, progress)
        term = constant.loss(batch).loss - paper.loss(batch).loss  # the whole term, at its full weight
        torch.testing.assert_close(scheduled.loss(batch).loss - paper.loss(batch).loss, share_left * term)
        assert term.abs() > 1e-3  # the term is there to be scaled
    with pytest.raises(SsvaeError, match="class_balance_schedule"):
        AuxiliaryConfig(class_balance_schedule="linear").validate()


@pytest.mark.parametrize("skip", [False, True], ids=["adgm", "sdgm"])
def test_adversarial_term_perturbs_images_where_the_classifier_is_most_sensitive(skip):
    radius = 0.3
    model = small(skip, class_balance=0.0, adversarial_weight=2.0, adversarial_radius=radius)
    paper = small(skip, class_balance=0.0, adversarial_weight=0.0)  # the same weights, without the term
    batch = a_batch(model, 5)
    terms = model.loss(batch)
    # The loss is the paper's plus the weighted term, whose random probe is the end of each image's
    # noise (so that a resumed or distributed run draws the same); the rest of the noise is as before.
    assert model.noise_width == paper.noise_width + D
    _, _, _, logits, x, a, probe, _ = model._pair_terms(batch.labelled_x, batch.labelled_y, batch.unlabelled_x,
                                                        batch.labelled_noise, batch.unlabelled_noise)
    torch.testing.assert_close(probe, torch.cat([batch.unlabelled_noise, batch.labelled_noise])[:, -D:])
    term = model._adversarial_term(x, a.detach(), logits.detach(), probe)
    shorter = dataclasses.replace(batch, labelled_noise=batch.labelled_noise[:, :-D],
                                  unlabelled_noise=batch.unlabelled_noise[:, :-D])
    torch.testing.assert_close(terms.loss, paper.loss(shorter).loss + 2.0 * term)

    # Written out: the mean over the images of KL(q(y|a,x) || q(y|a,x+r)) over every r of the radius.
    def divergence(r):
        target = F.softmax(logits.detach(), dim=-1)
        shifted = F.log_softmax(model.class_logits(x + r, a.detach()), dim=-1)
        return (target * (target.log() - shifted)).sum(-1)

    with torch.no_grad():
        generator = torch.Generator().manual_seed(2)
        random = F.normalize(torch.randn(500, *x.shape, generator=generator, dtype=x.dtype), dim=-1) * radius
        by_direction = torch.stack([divergence(r) for r in random]).mean(-1)
    # The direction found changes the classifier more than any of 500 random ones of the same length.
    assert term > by_direction.max() > 0
    # It trains the classifier only, and evaluation leaves it out.
    names, parameters = zip(*model.named_parameters())
    gradients = torch.autograd.grad(term, parameters, allow_unused=True)
    trained = [name for name, gradient in zip(names, gradients) if gradient is not None]
    assert trained and all(name.startswith("classifier.") for name in trained)
    model.eval()
    paper.eval()
    torch.testing.assert_close(model.loss(batch).loss, paper.loss(batch).loss)


def test_a_rising_adversarial_weight_goes_from_its_start_to_its_final_weight_over_the_budget():
    rising = small(True, class_balance=0.0, adversarial_weight=1.0, adversarial_final_weight=3.0)
    unit = small(True, class_balance=0.0, adversarial_weight=1.0)  # the term at weight 1, held
    batch = a_batch(rising, 7)
    shorter = dataclasses.replace(batch, labelled_noise=batch.labelled_noise[:, :-D],
                                  unlabelled_noise=batch.unlabelled_noise[:, :-D])
    paper = small(True, class_balance=0.0, adversarial_weight=0.0)
    for progress, weight in [(0.0, 1.0), (0.5, 2.0), (1.0, 3.0)]:
        for model in (rising, unit, paper):  # the same KL weight for all three
            model.at_step(100, progress)
        term = unit.loss(batch).loss - paper.loss(shorter).loss
        assert term > 1e-6  # the term is there to be scaled
        torch.testing.assert_close(rising.loss(batch).loss - paper.loss(shorter).loss, weight * term)
    # From nothing, the term is still drawn and trained: its probe is part of each image's noise.
    from_nothing = small(True, adversarial_weight=0.0, adversarial_final_weight=3.0)
    assert from_nothing.noise_width == paper.noise_width + D


def test_a_shrinking_adversarial_radius_goes_from_its_start_to_its_final_length_over_the_budget():
    shrinking = small(True, class_balance=0.0, adversarial_radius=2.0, adversarial_final_radius=1.0)
    batch = a_batch(shrinking, 8)
    for progress, radius in [(0.0, 2.0), (0.5, 1.5), (1.0, 1.0)]:
        held = small(True, class_balance=0.0, adversarial_radius=radius)  # the same weights
        for model in (shrinking, held):
            model.at_step(100, progress)
        torch.testing.assert_close(shrinking.loss(batch).loss, held.loss(batch).loss)
    assert small(True, class_balance=0.0, adversarial_radius=1.0).loss(batch).loss != \
        small(True, class_balance=0.0, adversarial_radius=2.0).loss(batch).loss  # the length matters


def test_adversarial_options_are_checked():
    with pytest.raises(SsvaeError, match="adversarial_weight"):
        AuxiliaryConfig(adversarial_weight=-1.0).validate()
    with pytest.raises(SsvaeError, match="adversarial_final_weight"):
        AuxiliaryConfig(adversarial_final_weight=-1.0).validate()
    with pytest.raises(SsvaeError, match="adversarial_radius"):
        AuxiliaryConfig(adversarial_radius=0.0).validate()
    with pytest.raises(SsvaeError, match="adversarial_final_radius"):
        AuxiliaryConfig(adversarial_final_radius=0.0).validate()


def test_weights_saved_before_the_class_balance_term_still_load():
    model = small(True)
    state = model.state_dict()
    del state["class_frequencies"]
    fresh = small(True)
    fresh.class_frequencies.fill_(0.5)
    fresh.load_state_dict(state)
    assert torch.allclose(fresh.class_frequencies, torch.full((K,), 1.0 / K, dtype=torch.float64))


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
        # Written out: q(y|a,x) averaged over the eval_samples draws a = mean + sigma * eps, one by one.
        mean, logvar = model.aux_posterior(x)
        draws = torch.randn((model.config.eval_samples, *mean.shape), generator=torch.Generator().manual_seed(0),
                            dtype=mean.dtype)
        averaged = torch.stack([F.softmax(model.class_logits(x, mean + torch.exp(0.5 * logvar) * eps), -1)
                                for eps in draws]).mean(0)
        one_draw = F.softmax(model.class_logits(x, mean + torch.exp(0.5 * logvar) * draws[0]), -1)
    assert model.config.eval_samples > 1
    torch.testing.assert_close(first.exp(), averaged)
    assert not torch.allclose(first.exp(), one_draw)  # the draws are not all alike
    torch.testing.assert_close(first, second)  # fixed draws: validation does not jitter


@pytest.mark.parametrize("skip", [False, True], ids=["adgm", "sdgm"])
def test_the_generative_posterior_importance_weights_each_class_bound_over_draws_of_a_and_z(skip):
    model = small(skip, generative_samples=3)
    x = torch.rand(2, D, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        batched = model.generative_log_posterior(x)
    # The model's fixed draws: per draw and image, a's noise, then one z's per class.
    noise = torch.randn((3, 2, model.noise_width), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for b in range(2):
        log_joint = []
        for y in range(K):
            log_weights = [-slow_negative_bound(model, x[b], y, noise[s, b, :A], noise[s, b, A + y * Z:A + (y + 1) * Z])[0]
                           for s in range(3)]
            log_joint.append(math.log(sum(math.exp(w) for w in log_weights) / 3))
        normaliser = math.log(sum(math.exp(j) for j in log_joint))
        assert batched[b].tolist() == pytest.approx([j - normaliser for j in log_joint], abs=1e-9)


def test_the_generative_posterior_over_some_classes_is_the_whole_one_renormalised_over_them():
    model = small(True, generative_samples=2)
    x = torch.rand(3, D, dtype=torch.float64)
    classes = torch.tensor([[2, 0], [1, 3], [3, 2]])
    with torch.no_grad():
        whole, some = model.generative_log_posterior(x), model.generative_log_posterior(x, classes)
    torch.testing.assert_close(some, whole.gather(1, classes).log_softmax(-1))  # the same draws per class


def test_thorough_classification_shares_out_q_among_its_top_classes_by_the_generative_posterior():
    model = small(True, generative_weight=0.5)
    x = torch.rand(4, D, dtype=torch.float64)
    with torch.no_grad():
        q, p, fused = model.classify(x).exp(), model.generative_log_posterior(x).exp(), model.classify_thoroughly(x).exp()
        alone = small(True, generative_weight=0.0).classify_thoroughly(x)
    for b in range(4):
        top = q[b].argsort(descending=True)[:GENERATIVE_CLASSES].tolist()  # fewer than the K = 4 classes
        p_top = p[b, top] / p[b, top].sum()
        product = q[b, top] * p_top ** 0.5
        expected = q[b].clone()
        expected[top] = q[b, top].sum() * product / product.sum()
        torch.testing.assert_close(fused[b], expected)
    torch.testing.assert_close(fused.sum(-1), torch.ones(4, dtype=torch.float64))
    torch.testing.assert_close(alone, model.classify(x))  # weight 0: q alone


def test_generative_options_are_checked():
    with pytest.raises(SsvaeError, match="generative_weight"):
        AuxiliaryConfig(generative_weight=-0.1).validate()
    with pytest.raises(SsvaeError, match="generative_samples"):
        AuxiliaryConfig(generative_samples=0).validate()


def test_building_by_name_gives_the_family_named():
    from ssvae.models import build_model

    assert build_model("sdgm", input_dim=D, num_classes=K).config.skip
    assert not build_model("adgm", input_dim=D, num_classes=K).config.skip
    with pytest.raises(SsvaeError, match="model adgm: skip=True would build the other one"):
        build_model("adgm", input_dim=D, num_classes=K, skip=True)
