"""Score-function gradients, checked against exact enumeration of a discrete latent.

A VAE whose latent is 3 Bernoulli bits (8 states): the encoder's samples
carry no pathwise gradient, so the compiler estimates the encoder's gradient
through the distribution of z by the score function with a leave-one-out
baseline. Summing over the 8 states gives the objective and its gradient
exactly; the Monte Carlo estimates over independent rounds must agree within
4.5 standard errors, coordinate by coordinate.
"""

from __future__ import annotations

import itertools

import pyro.distributions as dist
import pytest
import torch
from torch import nn

from kldiv import KL, DataDensity, Density, GeneratorDensity, Langevin, MarginalEBM, Samples, Term
from kldiv.errors import IntractableError

DX, BITS = 3, 3


class BernoulliEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(DX, BITS)

    def forward(self, x):
        return dist.Bernoulli(logits=self.lin(x)).to_event(1)


def _parts(seed=0):
    torch.manual_seed(seed)
    enc, dec = BernoulliEncoder().double(), nn.Linear(BITS, DX).double()
    prior = dist.Bernoulli(probs=torch.full((BITS,), 0.3, dtype=torch.float64)).to_event(1)
    q = DataDensity(enc, reparameterized=False)
    p = GeneratorDensity(dec, latent_shape=BITS, sigma=0.7, prior=prior)
    return enc, dec, prior, q, p


def _exact(enc, dec, prior, x, sigma=0.7):
    """E_q[log q(z|x) - log p(z) - log p(x|z)], averaged over x, by summing over every z."""
    states = torch.tensor(list(itertools.product([0.0, 1.0], repeat=BITS)), dtype=torch.float64)  # (8, BITS)
    q = enc(x)  # batch (n,)
    total = 0.0
    for z in states:
        zz = z.expand(len(x), BITS)
        log_q = q.log_prob(zz)
        log_lik = torch.distributions.Normal(dec(zz), sigma).log_prob(x).sum(1)
        total = total + (log_q.exp() * (log_q - prior.log_prob(zz) - log_lik)).mean()
    return total


@pytest.mark.parametrize(("closed_form", "baseline"), [(True, True), (False, True), (True, False)],
                         ids=["closed-form KL", "one-sample KL", "no baseline"])
def test_discrete_vae_gradients_agree_with_exact_enumeration(closed_form, baseline):
    enc, dec, prior, q, p = _parts()
    x = torch.randn(4, DX, dtype=torch.float64).repeat(500, 1)  # 4 data points, 500 draws of z each
    step = KL(q, p).minimize(q, p, name="vae").compile(closed_form=closed_form, baseline=baseline)
    assert "score function" in step.explain()
    params = [*enc.parameters(), *dec.parameters()]
    exact_value = _exact(enc, dec, prior, x)
    exact = torch.cat([g.flatten() for g in torch.autograd.grad(exact_value, params)])
    values, grads = [], []
    torch.manual_seed(1)
    for _ in range(40):
        out = step(x)
        values.append(float(out.values["vae"]))
        grads.append(torch.cat([g.flatten() for g in torch.autograd.grad(out.losses["vae"], params)]))
    g = torch.stack(grads)
    mean, se = g.mean(0), g.std(0) / len(g) ** 0.5
    assert torch.all((mean - exact).abs() <= 4.5 * se + 1e-9), (mean - exact) / se
    v = torch.tensor(values)
    assert abs(v.mean() - exact_value.item()) <= 4.5 * v.std() / len(v) ** 0.5 + 1e-9


def test_a_generator_without_pathwise_samples_needs_sampled_synthesis():
    with pytest.raises(ValueError, match="synthesis='sample'"):
        GeneratorDensity(nn.Linear(2, 3), latent_shape=2, sigma=0.5, synthesis="mean", reparameterized=False)
    p = GeneratorDensity(nn.Linear(2, 3), latent_shape=2, sigma=0.5, reparameterized=False)
    assert p.pathwise(frozenset({"x", "z"})) == frozenset() and "score-function" in p.describe_sampling()


def test_a_reparameterised_encoder_that_cannot_rsample_says_what_to_do():
    enc, dec, prior, _, p = _parts()
    q = DataDensity(enc)  # reparameterized=True, but a Bernoulli has no rsample
    step = KL(q, p).minimize(q, p).compile()
    with pytest.raises(TypeError, match=r"reparameterized=False(.|\n)*score function"):
        step(torch.randn(8, DX, dtype=torch.float64))


class Quadratic(nn.Module):
    """f_a(x) = -(x - a)^2 / 2: the EBM is N(a, 1)."""

    def __init__(self, a: float, trainable: bool = True):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(a, dtype=torch.float64), requires_grad=trainable)

    def forward(self, x):
        return -0.5 * (x[:, 0] - self.a).square()


def test_kl_from_an_ebm_with_a_sampler_has_the_covariance_gradient():
    """KL(pi, p) for pi = N(a, 1) (Langevin-sampled) and p = N(0, 1): the value a^2 / 2 up to the
    log normalisers, the gradient a, estimated as Cov_pi(f - log p, grad f) with log Z centred away."""
    from kldiv.samplers import NoiseStart

    torch.manual_seed(0)
    f = Quadratic(0.8)
    pi = MarginalEBM(f, sampler=Langevin(200, 0.1, init=NoiseStart("normal", shape=(1,))))
    p = MarginalEBM(Quadratic(0.0, trainable=False), name="p")
    step = KL(pi, p).minimize(pi, name="ebm").compile()
    text = step.explain()
    assert "score function" in text and "paid for by a sampler" in text
    grads = []
    for _ in range(30):
        out = step(n=2000)
        grads.append(torch.autograd.grad(out.losses["ebm"], [f.a])[0].item())
    g = torch.tensor(grads)
    # unadjusted Langevin at step 0.1 has variance 1 / (1 - 0.1^2 / 4): the gradient a Var(x)
    expected = 0.8 / (1 - 0.1**2 / 4)
    assert abs(g.mean() - expected) <= 4.5 * g.std() / len(g) ** 0.5 + 1e-3, (g.mean(), expected)


def test_without_a_computable_log_density_the_score_route_is_refused():
    """A source whose samples depend on a network through a log density kldiv cannot compute."""
    from kldiv import Density, Samples, Term

    torch.manual_seed(0)
    net = nn.Linear(1, DX).double()

    class Implicit(Density):  # x = net(noise): a sampler with no density
        variables = ("x",)

        def __init__(self):
            super().__init__("s")

        def terms(self):
            return (Term(key=("implicit", id(self)), label="log s(x)", latex="", reads=frozenset({"x"}),
                         modules=(net,), computable=False, reason="an implicit sampler has no density",
                         factor="x"),)

        def networks(self):
            return {"net": net}

        def own_networks(self):
            return (net,)

        def dependence(self, reads):
            return frozenset({net})

        @property
        def sampleable(self):
            return True

        def sample(self, ev, n):
            return Samples({"x": net(torch.randn(n, 1, dtype=torch.float64)).detach()})

    p = MarginalEBM(Quadratic(0.0, trainable=False), name="p")
    p2 = MarginalEBM(Quadratic(0.5, trainable=False), name="p2")
    src = Implicit()
    # log s cancels; E_s[log p2 - log p] still depends on net through the samples alone
    with pytest.raises(IntractableError, match=r"carry no gradient(.|\n)*cannot be computed for a score-function"):
        (KL(src, p) - KL(src, p2)).minimize(src, name="s").compile()


def test_the_convolutional_bernoulli_encoder_trains_through_a_compiled_step():
    from kldiv.nn import BernoulliEncoder, Generator

    torch.manual_seed(0)
    enc, dec = BernoulliEncoder((1, 8, 8), 6, width=4), Generator(6, (1, 8, 8), width=4)
    prior = dist.Bernoulli(probs=torch.full((6,), 0.5)).to_event(1)
    q = DataDensity(enc, reparameterized=False)
    p = GeneratorDensity(dec, latent_shape=6, sigma=0.5, prior=prior)
    out = KL(q, p).minimize(q, p, name="vae").compile()(torch.rand(16, 1, 8, 8) * 2 - 1)
    out.backward()
    assert all(q_.grad is not None and torch.isfinite(q_.grad).all() for q_ in enc.parameters())


class TwoBits(Density):
    """z1 ~ Bernoulli(sigmoid(w)), z2 | z1 ~ Bernoulli(sigmoid(w (2 z1 - 1) + 1)): one parameter, two factors."""

    variables = ("z1", "z2")
    order = ("z1", "z2")

    def __init__(self, net: nn.Module, name: str = "s"):
        super().__init__(name)
        self.net = net

    def _logits(self, z1=None):
        w = self.net.w
        return w if z1 is None else w * (2 * z1 - 1) + 1

    def terms(self):
        def first(ev, s):
            return torch.distributions.Bernoulli(logits=self._logits()).log_prob(s["z1"])

        def second(ev, s):
            return torch.distributions.Bernoulli(logits=self._logits(s["z1"])).log_prob(s["z2"])

        return (
            Term(key=("z1", id(self)), label="log s(z1)", latex="", reads=frozenset({"z1"}),
                 modules=(self.net,), evaluate=first, factor="z1"),
            Term(key=("z2", id(self)), label="log s(z2|z1)", latex="", reads=frozenset({"z1", "z2"}),
                 modules=(self.net,), evaluate=second, factor="z2"),
        )

    def networks(self):
        return {"net": self.net}

    def own_networks(self):
        return (self.net,)

    def dependence(self, reads):
        return frozenset({self.net}) if reads else frozenset()

    @property
    def sampleable(self):
        return True

    def sample(self, ev, n):
        with torch.no_grad():
            z1 = torch.distributions.Bernoulli(logits=self._logits().expand(n)).sample()
            z2 = torch.distributions.Bernoulli(logits=self._logits(z1)).sample()
        return Samples({"z1": z1, "z2": z2})

    def describe_sampling(self):
        return "z1, then z2 | z1 (not reparameterised)"


class Target(Density):
    """t(z1, z2) = 3 z1 + 0.5 z2 (unnormalised: only its terms' expectations matter)."""

    variables = ("z1", "z2")

    def __init__(self):
        super().__init__("t")

    def terms(self):
        return (
            Term(key=("t1",), label="3 z1", latex="", reads=frozenset({"z1"}), evaluate=lambda ev, s: 3 * s["z1"],
                 factor="z1"),
            Term(key=("t2",), label="0.5 z2", latex="", reads=frozenset({"z2"}),
                 evaluate=lambda ev, s: 0.5 * s["z2"], factor="z2"),
        )

    def networks(self):
        return {}

    def own_networks(self):
        return ()

    def dependence(self, reads):
        return frozenset()


def test_the_score_route_keeps_only_the_factors_upstream_of_a_term():
    """KL(s || t) with log t = 3 z1 + 0.5 z2: the score of E_s[log s(z1)] and E_s[3 z1] needs only
    log s(z1) (Rao-Blackwellised), the others both factors; unbiased either way (exact enumeration),
    less noisy with the order."""

    class Unordered(TwoBits):
        order = None

    def estimates(cls):
        torch.manual_seed(0)
        net = nn.Module()
        net.w = nn.Parameter(torch.tensor(0.4, dtype=torch.float64))
        s = cls(net)
        step = KL(s, Target()).minimize(s, name="s").compile()
        grads = [torch.autograd.grad(step(n=64).losses["s"], [net.w])[0].item() for _ in range(400)]
        w = net.w.detach().requires_grad_()
        p1 = torch.sigmoid(w)
        exact = 0.0
        for z1 in (0.0, 1.0):
            for z2 in (0.0, 1.0):
                p2 = torch.sigmoid(w * (2 * z1 - 1) + 1)
                prob = (p1 if z1 else 1 - p1) * (p2 if z2 else 1 - p2)
                exact = exact + prob * (prob.log() - 3 * z1 - 0.5 * z2)
        (g_exact,) = torch.autograd.grad(exact, [w])
        return torch.tensor(grads), g_exact.item(), step.explain()

    rb, exact, text = estimates(TwoBits)
    plain, _, plain_text = estimates(Unordered)
    assert "E_s[3 z1]                    score of log s(z1); " in text
    assert "E_s[3 z1]                    score of log s(z1), log s(z2|z1); " in plain_text
    for g in (rb, plain):
        assert abs(g.mean() - exact) <= 4.5 * g.std() / len(g) ** 0.5, (g.mean(), exact)
    assert rb.var() < 0.8 * plain.var(), (rb.var(), plain.var())
