"""The fast softplus of compiled CPU steps against torch's own."""

import torch
import torch.nn.functional as F

from ssvae.models.softplus import polynomial_softplus, softplus


def test_polynomial_matches_softplus_to_float32_precision():
    x = torch.cat([torch.linspace(-100, 100, 20001, dtype=torch.float64),
                   torch.linspace(-1e-3, 1e-3, 2001, dtype=torch.float64)])
    exact = F.softplus(x, threshold=1000)
    error = (polynomial_softplus(x) - exact).abs()
    assert error.max() < 1e-8
    # relative error too, down where softplus(x) ~ e^x is tiny
    assert (error / exact).max() < 5e-7


def test_compiled_softplus_values_and_gradient():
    x = (torch.randn(4000, generator=torch.Generator().manual_seed(0)) * 8).requires_grad_()
    compiled = torch.compile(lambda t: softplus(t).sum(), fullgraph=True)
    value = compiled(x)
    (grad,) = torch.autograd.grad(value, x)
    assert torch.allclose(value, F.softplus(x).sum(), rtol=1e-6)
    assert torch.allclose(grad, torch.sigmoid(x.detach()), atol=1e-7)


def test_eager_softplus_is_torchs_own():
    x = torch.randn(100, generator=torch.Generator().manual_seed(0))
    assert torch.equal(softplus(x), F.softplus(x))
