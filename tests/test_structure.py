"""A density's declared structure, checked against autograd.

For every pair of a source (a density that draws samples) and a term of a
density over the same variables, the compiler's rule is that the term's
expectation under the source carries a gradient into a network exactly when
the network is one of the term's own (``Term.modules``) or one through which
the source's samples of the variables the term reads are reparameterised
(``Density.pathwise``). A density that declares this wrongly would silently
drop a gradient or add one; here every built-in density class and a
user-defined one is checked on random networks.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

import pyro.distributions as dist

from kldiv import (DataDensity, DecoupledEBLVM, Density, EnergyPrior, Factor, FactoredDensity, GeneratorDensity, Langevin,
                   LatentEBM, MarginalEBM, Samples, Term)
from kldiv.samplers import NoiseStart
from kldiv.compiler import Round, _NoGame
from toys import Decoder, decoupled_parts, triangle_parts

DX, DZ, N = 5, 2, 64


class LearnedPriorGenerator(Density):
    """A user's density: z ~ N(m, I) with a learned mean m, x = g(z) + sigma eps."""

    variables = ("x", "z")

    def __init__(self, prior: nn.Module, decoder: nn.Module, sigma: float = 0.5, name: str = "u"):
        super().__init__(name)
        self.prior, self.decoder, self.sigma = prior, decoder, sigma

    def _mean(self, ev, n):
        return ev.call(self.prior, torch.ones(1, 1, dtype=torch.float64)).expand(n, DZ)

    def terms(self):
        def log_prior(ev, s):
            m = self._mean(ev, s.n)
            return -0.5 * (s["z"] - m).square().sum(1) - 0.5 * DZ * math.log(2 * math.pi)

        def log_lik(ev, s):
            g = ev.call(self.decoder, s["z"])
            return -0.5 * (s["x"] - g).square().sum(1) / self.sigma**2

        return (
            Term(key=("u-prior", id(self)), label="log N(z; m, I)", latex="", reads=frozenset({"z"}),
                 modules=(self.prior,), evaluate=log_prior, factor="z"),
            Term(key=("u-lik", id(self)), label="log N(x; g(z))", latex="", reads=frozenset({"x", "z"}),
                 modules=(self.decoder,), evaluate=log_lik, factor="x"),
        )

    def networks(self):
        return {"prior": self.prior, "decoder": self.decoder}

    def own_networks(self):
        return (self.prior, self.decoder)

    def dependence(self, reads):
        return frozenset({self.prior, self.decoder}) if "x" in reads else frozenset({self.prior})

    def pathwise(self, reads):
        return self.dependence(reads)

    @property
    def sampleable(self):
        return True

    def sample(self, ev, n):
        z = self._mean(ev, n) + torch.randn(n, DZ, dtype=torch.float64)
        x = ev.call(self.decoder, z) + self.sigma * torch.randn(n, DX, dtype=torch.float64)
        return Samples({"x": x, "z": z}, n)

    def describe_sampling(self):
        return "z ~ N(m, I), x ~ N(g(z), sigma^2 I)"


class Location(nn.Module):
    """p(z) = N(m, I) with a learned mean: a parentless factor."""

    def __init__(self):
        super().__init__()
        self.m = nn.Parameter(torch.randn(DZ, dtype=torch.float64))

    def forward(self):
        return dist.Normal(self.m, 1.0).to_event(1)


class Pixels(nn.Module):
    """p(x|z) = N(g(z), 0.5^2 I)."""

    def __init__(self):
        super().__init__()
        self.g = Decoder(DZ, DX).double()

    def forward(self, z):
        return dist.Normal(self.g(z), 0.5).to_event(1)


# the summands whose declared gradient cancels exactly (see the test)
CANCELS = {("p", "log N(x; g(z), σ²I)"), ("p_s", "log N(x; g(z), σ²I)"), ("u", "log N(z; m, I)"),
           ("u", "log N(x; g(z))"), ("p_ebm", "log N(x; g(z), σ²I)"), ("f", "log f(z)"), ("f", "log f(x|z)"),
           ("f_s", "log f(z)")}


def _world():
    enc, dec, f, q, p_mean, pi = triangle_parts(DX, DZ, synthesis="mean")
    p_sample = GeneratorDensity(dec, latent_shape=DZ, sigma=0.5, synthesis="sample", name="p_s")
    fx = decoupled_parts(DX, DZ)[2]
    big_pi = DecoupledEBLVM(fx, enc, name="Π")  # sharing the triangle's encoder
    user = LearnedPriorGenerator(nn.Linear(1, DZ).double(), Decoder(DZ, DX).double())
    chains = LatentEBM(f, sampler=Langevin(3, 0.1, init=p_mean), name="π_mcmc")
    marginal = MarginalEBM(fx, sampler=Langevin(3, 0.1, init=p_mean), name="π_x")
    fz = nn.Sequential(nn.Linear(DZ, 8), nn.Tanh(), nn.Linear(8, 1)).double()
    ebm_prior = EnergyPrior(fz, DZ, sampler=Langevin(3, 0.1, init=NoiseStart("normal", shape={"z": (DZ,)})))
    p_ebm = GeneratorDensity(dec, latent_shape=DZ, sigma=0.5, synthesis="mean", prior=ebm_prior, name="p_ebm")
    # a user's density declared by its factors: the structure is derived, not written
    loc, pix = Location(), Pixels()
    factored = FactoredDensity([Factor("z", loc), Factor("x", pix, parents=("z",))], name="f")
    unpathed = FactoredDensity([Factor("z", loc), Factor("x", pix, parents=("z",), reparameterized=False)], name="f_s")
    fq = FactoredDensity([Factor("x", input="data"), Factor("z", enc, parents=("x",))], name="fq")
    sources = [p_mean, p_sample, q, user, chains, marginal, ebm_prior, p_ebm, factored, unpathed, fq]
    holders = [p_mean, q, pi, big_pi, user, MarginalEBM(fx), ebm_prior, p_ebm, factored, fq]
    nets = {"encoder": enc, "decoder": dec, "f(x, z)": f, "f(x)": fx, "user prior": user.prior,
            "user decoder": user.decoder, "f(z)": fz, "factor prior": loc, "factor decoder": pix}
    return sources, holders, nets


def _cases():
    sources, holders, _ = _world()
    for (si, s), (hi, h) in itertools.product(enumerate(sources), enumerate(holders)):
        for ti, t in enumerate(h.terms()):
            if t.computable and t.reads and t.reads <= set(s.variables):
                yield pytest.param(si, hi, ti, id=f"E_{s.name}[{t.label} of {h.name}]")


def _gradient_reach(source, term, nets) -> tuple[set[str], set[str]]:
    """The networks autograd reaches from E_source[term], and those the structure declares."""
    data = torch.randn(N, DX, dtype=torch.float64)
    r = Round(_NoGame(source), {"data": data}, n=N)
    s = r.samples(source)
    value = s.mean(term.evaluate(r, s))
    params = {name: list(m.parameters()) for name, m in nets.items()}
    flat = [q for ps in params.values() for q in ps]
    grads = torch.autograd.grad(value, flat, allow_unused=True) if value.requires_grad else [None] * len(flat)
    it = iter(grads)
    actual = {name for name, ps in params.items()
              if any(g is not None and g.abs().sum() > 0 for g in [next(it) for _ in ps])}
    declared_modules = set(term.modules) | set(source.pathwise(term.reads))
    return actual, {name for name, m in nets.items() if m in declared_modules}


@pytest.mark.parametrize(("si", "hi", "ti"), list(_cases()))
def test_a_term_has_a_gradient_exactly_where_the_structure_says(si, hi, ti):
    torch.manual_seed(1)
    sources, holders, nets = _world()
    source, term = sources[si], holders[hi].terms()[ti]
    actual, declared = _gradient_reach(source, term, nets)
    if (source.name, term.label) in CANCELS:
        # a location family's log density of its own reparameterised samples is
        # parameter-free: log N(g(z) + s eps; g(z), s^2) = -|eps|^2 / 2 + const
        assert actual == set() and declared, f"E_{source.name}[{term.label}] should cancel to no gradient"
        return
    assert actual == declared, (
        f"E_{source.name}[{term.label}]: autograd reaches {sorted(actual)}, the structure says {sorted(declared)}"
    )


def test_a_density_that_declares_no_pathwise_gradient_is_caught():
    """The failure this guards against: samples that carry a gradient the compiler is told they do not."""

    class Undeclared(LearnedPriorGenerator):
        def pathwise(self, reads):
            return frozenset()

    torch.manual_seed(1)
    _, holders, nets = _world()
    user = Undeclared(nets["user prior"], nets["user decoder"])
    pi = holders[2]  # the latent EBM: E_u[f(x, z)] flows into u's networks through its samples
    actual, declared = _gradient_reach(user, pi.terms()[0], nets)
    assert {"user prior", "user decoder"} <= actual and not {"user prior", "user decoder"} & declared


def test_every_density_has_a_log_prob_up_to_the_terms_it_names():
    torch.manual_seed(0)
    enc, dec, f, q, p, pi = triangle_parts(DX, DZ, sigma=0.5)
    fx = decoupled_parts(DX, DZ)[2]
    big_pi, marginal = DecoupledEBLVM(fx, enc), MarginalEBM(fx)
    x, z = torch.randn(7, DX, dtype=torch.float64), torch.randn(7, DZ, dtype=torch.float64)
    with torch.no_grad():
        normal = torch.distributions.Normal
        exact = normal(0.0, 1.0).log_prob(z).sum(1) + normal(dec(z), 0.5).log_prob(x).sum(1)
        torch.testing.assert_close(p.log_prob({"x": x, "z": z}), exact)
        torch.testing.assert_close(q.log_prob({"x": x, "z": z}), enc(x).log_prob(z))
        torch.testing.assert_close(pi.log_prob({"x": x, "z": z}), f(x, z).flatten())
        torch.testing.assert_close(big_pi.log_prob({"x": x, "z": z}), fx(x) + enc(x).log_prob(z))
        torch.testing.assert_close(marginal.log_prob({"x": x}), fx(x))
    assert p.uncomputed() == () and q.uncomputed() == ("log q_data(x)",)
    assert pi.uncomputed() == ("log Z(π)",) and len(big_pi.uncomputed()) == 1
    with pytest.raises(ValueError, match=r"missing \['z'\]"):
        p.log_prob({"x": x})
    with pytest.raises(ValueError, match="one common number of rows"):
        p.log_prob({"x": x, "z": z[:3]})


def test_a_factored_density_derives_what_the_hand_written_ones_declare():
    torch.manual_seed(0)
    enc = triangle_parts(DX, DZ)[0]
    q, fq = DataDensity(enc), FactoredDensity([Factor("x", input="data"), Factor("z", enc, parents=("x",))])
    for reads in (frozenset({"x"}), frozenset({"z"}), frozenset({"x", "z"})):
        assert fq.dependence(reads) == q.dependence(reads) and fq.pathwise(reads) == q.pathwise(reads)
    assert fq.marginal_key(frozenset({"x"})) == q.marginal_key(frozenset({"x"}))  # the same data
    assert [t.key for t in fq.terms()] == [("data", "data"), ("factor", enc, "z", ("x",))]
    assert fq.drawn_from("z") is fq.terms()[1] and fq.uncomputed() == ("log q_data(x)",)
    with pytest.raises(ValueError, match="which no earlier factor draws"):
        FactoredDensity([Factor("z", enc, parents=("x",)), Factor("x", input="data")])
    with pytest.raises(ValueError, match="exactly one of network, distribution, input or density"):
        Factor("z")


def test_every_density_samples_itself_outside_a_game_with_sample_n():
    """``p.sample(n)`` and ``q.sample(data=x)`` are `kldiv.sample`; ``sample(ev, n)`` stays the compiler's call."""
    from kldiv import sample
    from kldiv.errors import InputError, NotSampleableError

    *_, q, p, pi = triangle_parts(synthesis="sample")
    x = torch.randn(N, DX, dtype=torch.float64)
    torch.manual_seed(3)
    a = p.sample(7)
    torch.manual_seed(3)
    b = sample(p, 7)
    assert set(a.values) == {"x", "z"} and all(torch.equal(a[v], b[v]) for v in a.values)
    assert q.sample(data=x)["z"].shape == (N, DZ)
    u = LearnedPriorGenerator(nn.Linear(1, DZ).double(), Decoder(DZ, DX).double())  # a user's density
    assert u.sample(n=5)["x"].shape == (5, DX)
    with pytest.raises(NotSampleableError, match="attach a sampler"):
        pi.sample(4)
    with pytest.raises(InputError, match="positive int"):
        p.sample(0)
    with pytest.raises(TypeError, match="one count"):
        p.sample(3, 4)
