"""A generator with an energy-based prior on z (Pang et al. 2020), checked against a Gaussian it can be solved for.

With the quadratic energy f(z) = a.z - b |z|^2 / 2 the tilted prior is
exp f(z) N(z; 0, I) / Z = N(a / (1 + b), I / (1 + b)), with
log Z = |a|^2 / (2 (1 + b)) - (d / 2) log(1 + b). So KL(q || p) has an
analytic gradient in (a, b), and the compiled estimator's (its log Z paid
for by samples of the prior) must agree with it within Monte Carlo error.
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import pytest
import torch
from torch import nn

from kldiv import KL, DataDensity, EnergyPrior, GeneratorDensity, Samples, sample
from kldiv.errors import IntractableError
from kldiv.samplers import Langevin, NoiseStart, Sampler

D, DX = 3, 4


class Quadratic(nn.Module):
    """f(z) = a.z - b |z|^2 / 2 with b = softplus(c) > 0."""

    def __init__(self):
        super().__init__()
        self.a = nn.Parameter(torch.tensor([0.5, -0.3, 0.2], dtype=torch.float64))
        self.c = nn.Parameter(torch.tensor(0.4, dtype=torch.float64))

    @property
    def b(self):
        return nn.functional.softplus(self.c)

    def forward(self, z):
        return z @ self.a - 0.5 * self.b * z.square().sum(1)

    def tilted(self):
        """The exact prior: mean and standard deviation."""
        return self.a / (1 + self.b), (1 + self.b).rsqrt()

    def log_z(self):
        return self.a.square().sum() / (2 * (1 + self.b)) - 0.5 * D * torch.log1p(self.b)


class Exact(Sampler):
    """Draws the quadratic prior exactly (what a perfect Langevin chain would)."""

    def sample(self, density, ev, n):
        with torch.no_grad():
            mean, sd = density.energy.tilted()
            return Samples({"z": mean + sd * torch.randn(n, D, dtype=torch.float64)})


class FixedEncoder(nn.Module):
    """q(z|x) = N(m, s^2 I), whatever x: its moments are known."""

    m = torch.tensor([1.0, 0.0, -0.5], dtype=torch.float64)
    s = 0.7

    def forward(self, x):
        n = x.shape[0]
        return dist.Normal(self.m.expand(n, D), torch.full((n, D), self.s, dtype=torch.float64)).to_event(1)


def _parts(sampler):
    torch.manual_seed(0)
    f, g = Quadratic(), nn.Linear(D, DX).double()
    prior = EnergyPrior(f, D, sampler=sampler)
    p = GeneratorDensity(g, latent_shape=D, sigma=0.5, prior=prior)
    return f, g, prior, p


def test_the_prior_players_gradient_is_the_analytic_one():
    f, _, prior, p = _parts(Exact())
    q = DataDensity(FixedEncoder())
    estimator = KL(q, p).minimize(prior, name="prior").compile()
    params = list(f.parameters())
    grads = []
    for _ in range(30):
        out = estimator(torch.zeros(2000, DX, dtype=torch.float64))
        grads.append(torch.cat([g.flatten() for g in torch.autograd.grad(out.losses["prior"], params)]))
    grads = torch.stack(grads)
    # exact: d/d(a, c) of -E_q[f(z)] + log Z, with E_q[z] = m and E_q|z|^2 = |m|^2 + D s^2
    m, s = FixedEncoder.m, FixedEncoder.s
    exact_objective = -(m @ f.a - 0.5 * f.b * (m.square().sum() + D * s**2)) + f.log_z()
    exact = torch.cat([g.flatten() for g in torch.autograd.grad(exact_objective, params)])
    se = grads.std(0) / math.sqrt(len(grads))
    assert ((grads.mean(0) - exact).abs() < 4 * se + 1e-12).all(), (grads.mean(0), exact, se)


def test_the_encoders_kl_is_paired_in_closed_form_and_the_prior_is_its_correction():
    _, g, prior, p = _parts(Exact())
    q = DataDensity(FixedEncoder())
    text = KL(q, p).minimize(q, name="encoder").minimize(g, name="generator").minimize(prior, name="prior") \
        .compile().explain()
    prior_part = text[text.index("player 'prior'"):]
    assert "E_q[KL(q(z|x) ‖ N(0, I))]" in text and "−1 E_q[f(z)]" in prior_part
    assert "paid for by a sampler" in prior_part and "log Z(p_α)" in prior_part


def test_the_prior_without_a_sampler_is_refused_naming_log_z():
    f, _, _, _ = _parts(None)
    prior = EnergyPrior(f, D)
    p = GeneratorDensity(nn.Linear(D, DX).double(), latent_shape=D, sigma=0.5, prior=prior)
    with pytest.raises(IntractableError, match=r"log Z\(p_α\)"):
        KL(DataDensity(FixedEncoder()), p).minimize(prior, name="prior").compile()


def test_langevin_on_the_prior_targets_the_tilted_normal():
    """The sampler's target includes the base N(0, I): the chains' moments are the tilted prior's."""
    f, _, prior, p = _parts(Langevin(300, 0.1, init=NoiseStart("normal", shape={"z": (D,)})))
    torch.manual_seed(1)
    with torch.no_grad():
        z = sample(prior, 4000)["z"]
        mean, sd = f.tilted()
    # ULA at step delta inflates the variance of N(mu, s^2) by 1 / (1 - delta^2 / (4 s^2))
    inflated = sd.square() / (1 - 0.1**2 / (4 * sd.square()))
    torch.testing.assert_close(z.mean(0), mean, atol=0.05, rtol=0)
    torch.testing.assert_close(z.var(0), inflated.expand(D), atol=0.05, rtol=0)
    s = sample(p, 50)  # the generator's z come from the prior's chains
    assert s["z"].shape == (50, D) and not s["z"].requires_grad and s["x"].requires_grad


def test_log_prob_is_the_joint_up_to_log_z():
    f, g, prior, p = _parts(Exact())
    x, z = torch.randn(6, DX, dtype=torch.float64), torch.randn(6, D, dtype=torch.float64)
    with torch.no_grad():
        normal = torch.distributions.Normal
        exact = f(z) + normal(0.0, 1.0).log_prob(z).sum(1) + normal(g(z), 0.5).log_prob(x).sum(1)
        torch.testing.assert_close(p.log_prob({"x": x, "z": z}), exact)
        torch.testing.assert_close(prior.log_prob({"z": z}), f(z) + normal(0.0, 1.0).log_prob(z).sum(1))
        # with the exact log Z, the prior is the tilted normal
        mean, sd = f.tilted()
        torch.testing.assert_close(prior.log_prob({"z": z}) - f.log_z(), normal(mean, sd).log_prob(z).sum(1))
    assert p.uncomputed() == ("log Z(p_α)",)
    assert set(p.networks().values()) == {g, f} and p.own_networks() == (g, f)


def test_a_prior_of_another_shape_is_refused():
    f = Quadratic()
    with pytest.raises(ValueError, match=r"energy-based prior .* shape \(3,\), but latent_shape is \(2,\)"):
        GeneratorDensity(nn.Linear(2, DX), latent_shape=2, sigma=0.5, prior=EnergyPrior(f, D))
