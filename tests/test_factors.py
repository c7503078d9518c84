"""Densities declared by their factors compile to the same estimator as the hand-written ones."""

from __future__ import annotations

import pyro.distributions as dist
import pytest
import torch
from torch import nn

from kldiv import KL, DataDensity, Factor, FactoredDensity, GeneratorDensity
from toys import Encoder

DX, DZ = 5, 2


class Pixels(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(DZ, DX).double()

    def forward(self, z):
        return dist.Normal(self.lin(z), 0.5).to_event(1)


def _grads(estimator, params, x, seed):
    torch.manual_seed(seed)
    out = estimator(x)
    return out.values["vae"], torch.autograd.grad(out.losses["vae"], params)


def test_a_vae_by_factors_is_the_vae_by_hand():
    torch.manual_seed(0)
    enc, dec = Encoder(DX, DZ).double(), Pixels()
    standard = dist.Normal(torch.zeros(DZ, dtype=torch.float64), 1.0).to_event(1)
    by_hand = KL(DataDensity(enc), GeneratorDensity(dec, latent_shape=DZ, prior=standard))
    q = FactoredDensity([Factor("x", input="data"), Factor("z", enc, parents=("x",))], name="q")
    p = FactoredDensity([Factor("z", distribution=standard), Factor("x", dec, parents=("z",))], name="p")
    by_factors = KL(q, p)
    params = [*enc.parameters(), *dec.parameters()]
    x = torch.randn(16, DX, dtype=torch.float64)
    for closed_form in (False, True):
        a = _grads(by_hand.minimize(enc, dec, name="vae").compile(closed_form=closed_form), params, x, 1)
        b = _grads(by_factors.minimize(q, p, name="vae").compile(closed_form=closed_form), params, x, 1)
        torch.testing.assert_close(a[0], b[0])
        for ga, gb in zip(a[1], b[1]):
            torch.testing.assert_close(ga, gb)


def test_a_discrete_factor_takes_the_score_function_route():
    torch.manual_seed(0)

    class Bits(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(DX, 3).double()

        def forward(self, x):
            return dist.Bernoulli(logits=self.lin(x)).to_event(1)

    enc = Bits()
    q = FactoredDensity([Factor("x", input="data"), Factor("z", enc, parents=("x",), reparameterized=False)], name="q")
    prior = dist.Bernoulli(probs=torch.full((3,), 0.5, dtype=torch.float64)).to_event(1)
    p = GeneratorDensity(nn.Linear(3, DX).double(), latent_shape=3, sigma=0.5, prior=prior)
    step = KL(q, p).minimize(q, p, name="vae").compile()
    text = step.explain()
    assert "gradient by the score function" in text and "score of log q(z|x)" in text
    out = step(torch.randn(8, DX, dtype=torch.float64))
    out.backward()
    assert all(p.grad is not None for p in enc.parameters())
    # declared reparameterised, a Bernoulli cannot be drawn by rsample: the error says what to do
    bad = FactoredDensity([Factor("x", input="data"), Factor("z", enc, parents=("x",))], name="q")
    with pytest.raises(TypeError, match=r"reparameterized=False"):
        KL(bad, p).minimize(bad, p, name="vae").compile()(torch.randn(8, DX, dtype=torch.float64))
