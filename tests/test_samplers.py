"""Samplers: Langevin (kernel and sampler), importance weights, Pyro NUTS, plotting.

Statistical checks compare an estimate with an exactly known value and allow
``Z`` Monte Carlo standard errors, the standard error being computed from the
same samples (or, for Langevin on a Gaussian, from the exactly known law of
the chain after T steps).  Every test is seeded.
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from kldiv import KL, DataDensity, DecoupledEBLVM, GeneratorDensity, LatentEBM, MarginalEBM, S
from kldiv.errors import IntractableError
from kldiv.samplers import (
    NUTS,
    AmortizedStart,
    Importance,
    Langevin,
    LangevinState,
    NoiseStart,
    PersistentStart,
    gaussian_reference,
    langevin_chain,
    langevin_init,
    langevin_step,
)

Z = 4.0  # standard errors allowed: a false alarm has probability ~6e-5 per check

DT = torch.float64



# ----------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------
class Ev:
    """The smallest Evaluator: inputs, memo-free calls, one sample set per density."""

    def __init__(self, n: int, data: torch.Tensor | None = None, dtype=DT):
        self.device = torch.device("cpu")
        self.dtype = dtype
        self.n = n
        self.inputs = {} if data is None else {"data": data}
        self._samples = {}

    def call(self, module, *args):
        return module(*args)

    def input(self, name):
        return self.inputs[name]

    def samples(self, density):
        if id(density) not in self._samples:
            self._samples[id(density)] = density.sample(self, self.n)
        return self._samples[id(density)]


class Quadratic(nn.Module):
    r"""f(v) = -(v - mu)^T Lambda (v - mu) / 2 over v = cat(x, z) (flattened)."""

    def __init__(self, mu, precision):
        super().__init__()
        self.mu = nn.Parameter(torch.as_tensor(mu, dtype=DT))
        self.register_buffer("precision", torch.as_tensor(precision, dtype=DT))

    def forward(self, *parts):
        v = torch.cat([p.flatten(1) for p in parts], dim=1) - self.mu  # (n, d)
        return -0.5 * ((v @ self.precision) * v).sum(1)


class LearnedGaussian(nn.Module):
    """f(x) = -(x - m)^2 / (2 s^2), parameters m and log s."""

    def __init__(self, d: int = 1):
        super().__init__()
        self.m = nn.Parameter(torch.zeros(d, dtype=DT))
        self.log_s = nn.Parameter(torch.zeros(d, dtype=DT))

    def forward(self, x):
        return -0.5 * ((x - self.m) / self.log_s.exp()).square().sum(1)


def ula_law(mu, precision, deltas, m0, cov0, steps):
    """Exact mean and covariance after ``steps`` ULA steps on N(mu, precision^-1).

    v' = v + (D/2) Lambda (mu - v) + D^(1/2) eps with D = diag(delta_i^2):
    m' = mu + A (m - mu), C' = A C A^T + D, with A = I - D Lambda / 2.
    """
    d2 = torch.diag(torch.as_tensor(deltas, dtype=DT) ** 2)
    a = torch.eye(len(mu), dtype=DT) - 0.5 * d2 @ precision
    m, c = m0.clone(), cov0.clone()
    for _ in range(steps):
        m = mu + a @ (m - mu)
        c = a @ c @ a.T + d2
    return m, c


def assert_moments(v, mean, cov, what):
    """Sample mean and covariance of ``v`` (n, d) against the exact ones, within Z SE."""
    n = v.shape[0]
    m_hat = v.mean(0)
    se_m = (cov.diagonal() / n).sqrt()
    assert ((m_hat - mean).abs() <= Z * se_m).all(), f"{what}: mean {m_hat} vs {mean} (SE {se_m})"
    c_hat = torch.cov(v.T, correction=1).reshape(cov.shape)
    # Var of a Gaussian sample covariance entry: (C_ij^2 + C_ii C_jj) / n
    se_c = ((cov.square() + torch.outer(cov.diagonal(), cov.diagonal())) / n).sqrt()
    assert ((c_hat - cov).abs() <= Z * se_c).all(), f"{what}: cov {c_hat} vs {cov} (SE {se_c})"


def gmm_parts(k: int = 8, radius: float = 2.0, std: float = 0.2):
    angles = torch.arange(k, dtype=DT) * (2 * math.pi / k)
    centres = radius * torch.stack([angles.cos(), angles.sin()], 1)  # (k, 2)
    return centres, std


class MixtureEnergy(nn.Module):
    """log of an equal-weight mixture of isotropic Gaussians (normalised), shape (n,)."""

    def __init__(self, centres, std):
        super().__init__()
        self.register_buffer("centres", centres)
        self.std = std
        self.temperature = nn.Parameter(torch.ones((), dtype=DT))  # so the EBM is a player

    def forward(self, x):
        d2 = (x[:, None, :] - self.centres).square().sum(-1)  # (n, k)
        log_n = -0.5 * d2 / self.std**2 - math.log(2 * math.pi * self.std**2)
        return self.temperature * (torch.logsumexp(log_n, 1) - math.log(self.centres.shape[0]))


class SectorDecoder(nn.Module):
    """A generator near the mixture: z's angle picks a component, g(z) = centre + std * z."""

    def __init__(self, centres, std):
        super().__init__()
        self.register_buffer("centres", centres)
        self.std = std

    def forward(self, z):
        k = self.centres.shape[0]
        angle = torch.atan2(z[:, 1], z[:, 0]) % (2 * math.pi)
        idx = torch.round(angle / (2 * math.pi / k)).long() % k
        return self.centres[idx] + self.std * z


# ----------------------------------------------------------------------------------------
# The kernel
# ----------------------------------------------------------------------------------------
def test_kernel_state_and_step_formula():
    torch.manual_seed(0)
    f = Quadratic([1.0, -1.0], torch.tensor([[2.0, 0.5], [0.5, 1.0]]))
    x = torch.randn(5, 2, dtype=DT)
    state = langevin_init(x, f)
    assert isinstance(state, LangevinState)
    assert state.log_density.shape == (5,) and not state.log_density.requires_grad
    expected_grad = -(x - f.mu.detach()) @ f.precision
    torch.testing.assert_close(state.grad, expected_grad)
    g = torch.Generator().manual_seed(3)
    new = langevin_step(state, f, 0.3, generator=g)
    eps = torch.randn(5, 2, generator=torch.Generator().manual_seed(3), dtype=DT)
    torch.testing.assert_close(new.position, x + 0.045 * expected_grad + 0.3 * eps)
    assert f.mu.grad is None  # the energy's parameters never receive gradients


def test_kernel_clip_and_no_noise():
    f = Quadratic([0.0, 0.0], torch.eye(2, dtype=DT))
    x = torch.tensor([[30.0, 40.0], [0.3, 0.4]], dtype=DT)  # gradient norms 50 and 0.5
    state = langevin_init(x, f)
    new = langevin_step(state, f, 0.2, noise=False, clip_grad=1.0)
    step = (new.position - x).norm(dim=1)
    torch.testing.assert_close(step, torch.tensor([0.02 * 1.0, 0.02 * 0.5], dtype=DT))


def test_kernel_works_under_no_grad_and_over_several_variables():
    f = Quadratic([0.0, 0.0, 0.0], torch.eye(3, dtype=DT))
    pos = {"x": torch.ones(4, 2, dtype=DT), "z": torch.ones(4, 1, dtype=DT)}
    with torch.no_grad():
        state = langevin_init(pos, lambda v: f(v["x"], v["z"]))
        out = langevin_chain(pos, lambda v: f(v["x"], v["z"]), 3, {"x": 0.1, "z": 0.2}, noise=False)
    torch.testing.assert_close(state.grad["z"], -torch.ones(4, 1, dtype=DT))
    torch.testing.assert_close(out["x"], torch.full((4, 2), (1 - 0.005) ** 3, dtype=DT))
    torch.testing.assert_close(out["z"], torch.full((4, 1), (1 - 0.02) ** 3, dtype=DT))
    assert f.mu.grad is None


def test_compiled_chain_is_the_eager_chain():
    # two variables, one step size each, noise from a seeded generator, clipping and the diagnostics:
    # the compiled step draws the same noise in the same order, so the chains agree to rounding
    torch.manual_seed(0)
    f = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 1))
    pos = {"x": torch.randn(6, 2), "z": torch.randn(6, 1)}
    log_p = lambda v: f(torch.cat([v["x"], v["z"]], 1))  # noqa: E731

    def run(compile):
        g = torch.Generator().manual_seed(3)
        return langevin_chain(pos, log_p, 4, {"x": 0.1, "z": 0.3}, clip_grad=2.0, generator=g,
                              info=True, compile=compile)

    (eager, info_e), (compiled, info_c) = run(False), run(True)
    assert not any(v.requires_grad for v in compiled.values())  # nothing tracks the energy's parameters
    g = torch.Generator().manual_seed(3)
    last = langevin_chain(pos, log_p, 4, {"x": 0.1, "z": 0.3}, clip_grad=2.0, generator=g, compile=True)
    for k in ("x", "z"):  # without the diagnostics the last step is a move alone: the same chains
        torch.testing.assert_close(last[k], eager[k], rtol=1e-5, atol=1e-5)
    for k in ("x", "z"):
        torch.testing.assert_close(compiled[k], eager[k], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(info_c.mean_log_density, info_e.mean_log_density, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(info_c.mean_grad_norm, info_e.mean_grad_norm, rtol=1e-5, atol=1e-5)
    assert all(p.grad is None for p in f.parameters())


def test_compiled_langevin_sampler_on_a_spectrally_normalised_energy():
    # the sampler's compile flag, on an energy with torch's spectral-norm parametrisation in training
    # mode (its power iteration runs at every call, in both) and a latent EBM's two variables
    torch.manual_seed(0)
    sn = nn.utils.parametrizations.spectral_norm
    net = nn.Sequential(sn(nn.Linear(3, 8)), nn.LeakyReLU(0.1), sn(nn.Linear(8, 1)))
    energy = lambda x, z: net(torch.cat([x, z], 1))  # noqa: E731
    start = {"x": torch.randn(5, 2, dtype=torch.float32), "z": torch.randn(5, 1)}
    saved = {k: v.clone() for k, v in net.state_dict().items()}
    out, vectors = {}, {}
    for compile in (False, True):
        net.load_state_dict(saved)  # both runs start from the same power-iteration vectors
        sampler = Langevin(3, 0.2, generator=torch.Generator().manual_seed(1), compile=compile)
        out[compile] = sampler._run(start, lambda v: energy(v["x"], v["z"]), None)
        vectors[compile] = {k: v.clone() for k, v in net.state_dict().items() if k.endswith("_u")}
    assert "compile=True" in repr(Langevin(3, 0.2, compile=True))
    for k in ("x", "z"):
        torch.testing.assert_close(out[True][k], out[False][k], rtol=1e-5, atol=1e-5)
    for k, u in vectors[False].items():  # the power iteration ran in the compiled chain too
        torch.testing.assert_close(vectors[True][k], u, rtol=1e-5, atol=1e-5)
    assert not torch.equal(vectors[True]["0.parametrizations.weight.0._u"], saved["0.parametrizations.weight.0._u"])
    with pytest.raises(TypeError, match="compile must be True or False"):
        Langevin(3, 0.2, compile="yes")


def test_gaussian_reference_gradient_ascent_reaches_the_mode():
    # f = -(x - 2)^2 / 2 with reference sigma = 1: log p has its mode at 1, curvature 2
    f = Quadratic([2.0], torch.eye(1, dtype=DT))
    x0 = torch.linspace(-3, 3, 7, dtype=DT)[:, None]
    delta, steps = 0.5, 20
    out = langevin_chain(x0, gaussian_reference(f, 1.0), steps, delta, noise=False)
    a = 1 - delta**2 * 2 / 2
    torch.testing.assert_close(out, 1 + a**steps * (x0 - 1))


# ----------------------------------------------------------------------------------------
# The Langevin sampler on Gaussians: exact law of the unadjusted chain after T steps
# ----------------------------------------------------------------------------------------
def test_langevin_marginal_gaussian_matches_exact_ula_law():
    mu, s, delta, steps, n = 1.0, 0.5, 0.2, 100, 4000
    f = Quadratic([mu], torch.tensor([[1 / s**2]]))
    sampler = Langevin(
        steps, delta, init=NoiseStart("normal", shape=(1,)), generator=torch.Generator().manual_seed(1)
    )
    with torch.no_grad():
        x = MarginalEBM(f, sampler=sampler).sample(Ev(n), n)["x"]
    assert x.shape == (n, 1) and not x.requires_grad and f.mu.grad is None
    m, c = ula_law(
        torch.tensor([mu], dtype=DT),
        f.precision,
        [delta],
        torch.zeros(1, dtype=DT),
        torch.eye(1, dtype=DT),
        steps,
    )
    # the chain is (numerically) stationary; its variance is the ULA one, not s^2
    a = 1 - delta**2 / (2 * s**2)
    stationary = delta**2 / (1 - a**2)
    assert abs(c.item() - stationary) < 1e-6 and stationary > 1.01 * s**2
    assert_moments(x, m, c, "MarginalEBM")


def test_langevin_latent_ebm_joint_gaussian_matches_exact_ula_law():
    # v = (x1, x2, z): a 3-D Gaussian with a known precision, one step size per variable
    precision = torch.tensor([[2.0, 0.6, -0.4], [0.6, 1.5, 0.3], [-0.4, 0.3, 1.0]], dtype=DT)
    mu = torch.tensor([0.5, -1.0, 1.5], dtype=DT)
    f = Quadratic(mu, precision)
    deltas, steps, n = {"x": 0.3, "z": 0.4}, 25, 4000  # few steps: not yet stationary
    sampler = Langevin(
        steps,
        deltas,
        init="uniform",
        shape={"x": (2,), "z": (1,)},
        generator=torch.Generator().manual_seed(2),
    )
    s = LatentEBM(f, sampler=sampler).sample(Ev(n), n)
    assert s["x"].shape == (n, 2) and s["z"].shape == (n, 1)
    m, c = ula_law(
        mu, precision, [0.3, 0.3, 0.4], torch.zeros(3, dtype=DT), torch.eye(3, dtype=DT) / 3, steps
    )
    assert_moments(torch.cat([s["x"], s["z"]], 1), m, c, "LatentEBM")


def test_langevin_posterior_over_z_given_x():
    precision = torch.tensor([[2.0, 0.6], [0.6, 1.5]], dtype=DT)
    mu = torch.tensor([0.5, -1.0], dtype=DT)
    f = Quadratic(mu, precision)
    n, delta, steps = 4000, 0.3, 60
    x = torch.full((n, 1), 2.0, dtype=DT)
    z0 = torch.zeros(n, 1, dtype=DT)
    sampler = Langevin(steps, delta, generator=torch.Generator().manual_seed(4))
    z = sampler.posterior(LatentEBM(f), x, z0)
    # z | x is Gaussian with precision L_zz and mean mu_z - L_zz^-1 L_zx (x - mu_x)
    lzz = precision[1:, 1:]
    cond_mu = mu[1:] - torch.linalg.solve(lzz, precision[1:, :1] @ (x[:1].T - mu[:1, None]))[:, 0]
    m, c = ula_law(cond_mu, lzz, [delta], torch.zeros(1, dtype=DT), torch.zeros(1, 1, dtype=DT), steps)
    assert_moments(z, m, c, "posterior z|x")


def test_langevin_sigma_ref_and_clip_are_applied():
    f = Quadratic([2.0], torch.eye(1, dtype=DT))
    starts = []
    sampler = Langevin(
        10,
        0.5,
        init=NoiseStart("uniform", shape=(1,), low=-3, high=3),
        noise=False,
        sigma_ref=1.0,
        callback=lambda t, st: starts.append(st.position["x"]) if t == 0 else None,
    )
    x = MarginalEBM(f, sampler=sampler).sample(Ev(50), 50)["x"]
    a = 1 - 0.5**2 * 2 / 2
    torch.testing.assert_close(x, 1 + a**10 * (starts[0] - 1))

    starts.clear()
    clipped = Langevin(
        1,
        0.2,
        init=NoiseStart("uniform", shape=(1,), low=20, high=30),
        noise=False,
        clip_grad=1.0,
        callback=lambda t, st: starts.append(st.position["x"]) if t == 0 else None,
    )
    x = MarginalEBM(f, sampler=clipped).sample(Ev(50), 50)["x"]
    torch.testing.assert_close(x - starts[0], torch.full((50, 1), -0.02, dtype=DT))


def test_a_density_reference_is_the_chains_target_and_a_term_of_its_log_density():
    # pi(x) ∝ exp f(x) N(x; 0, s^2): with f = -(x - mu)^2 Λ / 2, a Gaussian of precision Λ + 1/s^2
    # and mean Λ mu / (Λ + 1/s^2); the chains follow it exactly as the sampler's own sigma_ref would
    mu, lam, s, delta, steps, n = 2.0, 1.0, 0.5, 0.2, 80, 4000
    f = Quadratic([mu], torch.tensor([[lam]], dtype=DT))
    pi = MarginalEBM(f, reference=s, sampler=Langevin(
        steps, delta, init=NoiseStart("normal", shape=(1,)), generator=torch.Generator().manual_seed(2)))
    with torch.no_grad():
        x = pi.sample(Ev(n), n)["x"]
    precision = torch.tensor([[lam + 1 / s**2]], dtype=DT)
    m, c = ula_law(lam * mu / precision[0], precision, [delta], torch.zeros(1, dtype=DT),
                   torch.eye(1, dtype=DT), steps)
    assert_moments(x, m, c, "MarginalEBM with a reference")
    assert abs(m.item() - 0.4) < 1e-3  # (nearly stationary) far from the energy's own mode, 2.0

    same = Langevin(steps, delta, init=NoiseStart("normal", shape=(1,)), sigma_ref=s,
                    generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(MarginalEBM(f, sampler=same).sample(Ev(n), n)["x"], x)

    # the term, and the target: f(x) + log N(x; 0, s^2) with its constant
    v = torch.randn(7, 1, dtype=DT)
    ref = next(t for t in pi.terms() if t.label.startswith("log N(x"))
    exact = torch.distributions.Normal(torch.zeros((), dtype=DT), s).log_prob(v)[:, 0]
    torch.testing.assert_close(ref.evaluate(Ev(7), {"x": v}), exact)
    _, log_density = pi.target()
    torch.testing.assert_close(log_density({"x": v}), f(v) + exact)
    assert not ref.modules and ref.factor == "x"


def test_a_reference_is_refused_twice_and_kept_by_a_decoupled_eblvm():
    f = Quadratic([0.0], torch.eye(1, dtype=DT))
    both = MarginalEBM(f, reference=0.5, sampler=Langevin(2, 0.1, init="normal", shape=1, sigma_ref=0.5))
    with pytest.raises(ValueError, match="already has a Gaussian reference.*sigma_ref=0.5"):
        both.sample(Ev(3), 3)
    with pytest.raises(ValueError, match="already has a Gaussian reference"):
        Langevin(2, 0.1, sigma_ref=1.0).posterior(LatentEBM(Quadratic([0.0, 0.0], torch.eye(2, dtype=DT)),
                                                            reference=0.5),
                                                  torch.zeros(3, 1, dtype=DT), torch.zeros(3, 1, dtype=DT))
    encoder = nn.Sequential(nn.Linear(1, 2))
    pi = MarginalEBM(f, reference=0.5)
    decoupled = DecoupledEBLVM(pi, encoder)
    assert decoupled.reference == 0.5 and "log N(x; 0, 0.5²I)" in [t.label for t in decoupled.terms()]
    with pytest.raises(ValueError, match="differs from the MarginalEBM's own"):
        DecoupledEBLVM(pi, encoder, reference=0.25)
    for bad, err in ((0.0, ValueError), (-1.0, ValueError), (float("nan"), ValueError), (float("inf"), ValueError),
                     ("0.5", TypeError), (True, TypeError)):
        with pytest.raises(err, match="reference must be"):
            MarginalEBM(f, reference=bad)


def test_a_latent_ebm_reference_is_the_posterior_chains_prior_on_z():
    # f(x, z) = -|(x, z)|^2 / 2 with a reference s on z: z | x ~ N(0, 1 / (1 + 1/s^2)); the posterior
    # chain with the density's reference equals the one with the sampler's sigma_ref
    f = Quadratic([0.0, 0.0], torch.eye(2, dtype=DT))
    x, z0 = torch.ones(500, 1, dtype=DT), torch.zeros(500, 1, dtype=DT)
    a = Langevin(30, 0.2, generator=torch.Generator().manual_seed(3)).posterior(LatentEBM(f, reference=0.5), x, z0)
    b = Langevin(30, 0.2, sigma_ref=0.5, generator=torch.Generator().manual_seed(3)).posterior(LatentEBM(f), x, z0)
    torch.testing.assert_close(a, b)


def test_persistent_start_reuses_and_reinitialises_chains():
    f = Quadratic([0.0], torch.eye(1, dtype=DT))
    n, p = 2000, 0.2
    start = PersistentStart(capacity=n, reinit=0.0, noise=NoiseStart("uniform", shape=(1,), low=5, high=6))
    g = torch.Generator().manual_seed(5)
    seen = []
    # noise-free steps that halve x: a final position never lies in the noise range [5, 6]
    sampler = Langevin(
        3,
        1.0,
        init=start,
        noise=False,
        generator=g,
        callback=lambda t, st: seen.append(st.position["x"]) if t == 0 else None,
    )
    pi = MarginalEBM(f, sampler=sampler)
    first = pi.sample(Ev(n), n)["x"]
    pi.sample(Ev(n), n)
    # with reinit=0 and n = capacity, the second call starts exactly where the first stopped
    torch.testing.assert_close(seen[1].sort(0).values, first.sort(0).values)
    assert ((seen[0] >= 5) & (seen[0] <= 6)).all()

    start.reinit = p
    pi.sample(Ev(n), n)
    restarted = ((seen[2] >= 5) & (seen[2] <= 6)).sum().item()  # fresh noise lies in [5, 6]
    se = math.sqrt(n * p * (1 - p))
    assert abs(restarted - n * p) <= Z * se, f"{restarted} restarts, expected {n * p} ± {Z * se:.0f}"

    saved = start.state_dict()
    again = PersistentStart(capacity=n)
    again.load_state_dict(saved)
    assert torch.equal(again.buffer["x"], start.buffer["x"])


def test_amortized_start_of_a_latent_ebm_is_the_generators_pair():
    f = Quadratic([0.0, 0.0, 0.0], torch.eye(3, dtype=DT))
    gen = GeneratorDensity(nn.Linear(1, 2).double(), latent_shape=1, sigma=0.1, synthesis="mean")
    starts = []
    sampler = Langevin(
        2, 0.1, init=gen, callback=lambda t, st: starts.append(st.position) if t == 0 else None
    )
    ev = Ev(16)
    s = LatentEBM(f, sampler=sampler).sample(ev, 16)
    drawn = ev.samples(gen)
    torch.testing.assert_close(starts[0]["x"], drawn["x"].detach())
    torch.testing.assert_close(starts[0]["z"], drawn["z"])
    assert s["x"].shape == (16, 2) and s["z"].shape == (16, 1) and not s["x"].requires_grad


def test_decoupled_eblvm_samples_x_then_z_from_its_encoder():
    class Enc(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(2, 6).double()

        def forward(self, x):
            mu, log_s = self.lin(x).chunk(2, -1)
            return dist.Normal(mu, log_s.exp()).to_event(1)

    f = Quadratic([0.0, 0.0], torch.eye(2, dtype=DT))
    big_pi = DecoupledEBLVM(f, Enc(), sampler=Langevin(5, 0.1, init="normal", shape=(2,)))
    s = big_pi.sample(Ev(7), 7)
    assert s["x"].shape == (7, 2) and s["z"].shape == (7, 3) and not s["x"].requires_grad


# ----------------------------------------------------------------------------------------
# Maximum likelihood through the compiler
# ----------------------------------------------------------------------------------------
def test_maximum_likelihood_of_a_gaussian_ebm_needs_a_sampler():
    f = LearnedGaussian()
    with pytest.raises(IntractableError, match="log Z"):
        KL(DataDensity(), MarginalEBM(f)).minimize(f).compile()


def test_maximum_likelihood_of_a_gaussian_ebm_recovers_the_data_moments():
    torch.manual_seed(0)
    n, delta, steps = 1000, 0.3, 10
    data = 1.5 + 0.7 * torch.randn(n, 1, generator=torch.Generator().manual_seed(6), dtype=DT)
    f = LearnedGaussian()
    sampler = Langevin(
        steps,
        delta,
        init=PersistentStart(n, reinit=0.0, noise="normal", shape=(1,)),
        generator=torch.Generator().manual_seed(7),
    )
    pi = MarginalEBM(f, sampler=sampler)
    estimator = KL(DataDensity(), pi).minimize(pi).compile()
    opt = torch.optim.Adam(f.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [200], gamma=0.2)
    tail = []
    for it in range(300):
        opt.zero_grad()
        estimator(data).backward()
        opt.step()
        sched.step()
        if it >= 200:
            tail.append((f.m.item(), f.log_s.exp().item() ** 2))
    m_hat = sum(t[0] for t in tail) / len(tail)
    s2_hat = sum(t[1] for t in tail) / len(tail)
    # at the fixed point the chains' moments equal the data's; the chains' variance is the
    # ULA stationary variance of the model, s^4 / (s^2 - delta^2 / 4), not s^2
    v_model = s2_hat**2 / (s2_hat - delta**2 / 4)
    mean, var = data.mean().item(), data.var().item()
    # standard errors of one step's chain average (n chains): the fit is no noisier
    se_m, se_v = math.sqrt(var / n), var * math.sqrt(2 / n)
    assert abs(m_hat - mean) <= Z * se_m, f"mean {m_hat:.4f} vs data {mean:.4f} (SE {se_m:.4f})"
    assert abs(v_model - var) <= Z * se_v, f"ULA variance {v_model:.4f} vs data {var:.4f} (SE {se_v:.4f})"


def test_amortized_start_through_the_compiler_uses_this_rounds_generator_samples():
    centres, std = gmm_parts()
    f = MixtureEnergy(centres, std)
    gen = GeneratorDensity(SectorDecoder(centres, std), latent_shape=2, sigma=0.05, synthesis="mean")
    starts = []
    sampler = Langevin(
        5, 0.05, init=gen, callback=lambda t, st: starts.append(st.position["x"]) if t == 0 else None
    )
    assert sampler.sources() == (gen,) and isinstance(sampler.init, AmortizedStart)
    pi = MarginalEBM(f, sampler=sampler)
    estimator = KL(DataDensity(), pi).minimize(pi).compile()
    out = estimator(torch.randn(64, 2, dtype=DT))
    out.backward()
    torch.testing.assert_close(starts[0], out.round.samples(gen)["x"].detach())
    assert f.temperature.grad is not None


def test_amortized_start_reaches_the_energy_level_in_fewer_steps_than_noise():
    centres, std = gmm_parts()
    f = MixtureEnergy(centres, std)
    n, budget, delta = 500, 150, 0.05
    # the level: within half a nat of the target's mean log density (exact samples)
    g = torch.Generator().manual_seed(8)
    exact = centres[torch.randint(8, (20000,), generator=g)] + std * torch.randn(
        20000, 2, generator=g, dtype=DT
    )
    with torch.no_grad():
        level = f(exact).mean().item() - 0.5

    def steps_to_level(init, seed):
        first = []

        def record(t, state):
            if not first and state.log_density.mean().item() >= level:
                first.append(t)

        gen = torch.Generator().manual_seed(seed)
        sampler = Langevin(budget, delta, init=init, generator=gen, callback=record)
        ev = Ev(n)
        torch.manual_seed(seed)
        MarginalEBM(f, sampler=sampler).sample(ev, n)
        return first[0] if first else math.inf

    amortized = GeneratorDensity(SectorDecoder(centres, std), latent_shape=2, sigma=0.05, synthesis="mean")
    t_amortized = steps_to_level(amortized, 9)
    t_noise = steps_to_level(NoiseStart("uniform", shape=(2,), low=-4, high=4), 10)
    assert t_amortized < t_noise, (
        f"steps to reach mean log density {level:.3f}: amortised start {t_amortized}, "
        f"uniform-noise start {t_noise}"
    )


# ----------------------------------------------------------------------------------------
# Importance weights
# ----------------------------------------------------------------------------------------
def test_importance_constant_ratio_scales_expectations():
    x = torch.randn(100, 2, generator=torch.Generator().manual_seed(11), dtype=DT)
    f = Quadratic([0.0, 0.0], torch.eye(2, dtype=DT))
    s = MarginalEBM(f, sampler=Importance("data", ratio=0.05)).sample(Ev(100, x), 100)
    assert s["x"] is not x and torch.equal(s["x"], x) and not s.self_normalized
    torch.testing.assert_close(s.mean(x[:, 0]), 0.05 * x[:, 0].mean())


def test_importance_callable_ratio_gives_the_target_mean():
    # proposal N(0, 1), target N(1, 1): r(x) = pi(x) / q(x) = exp(x - 1/2)
    n = 20000
    x = torch.randn(n, 1, generator=torch.Generator().manual_seed(12), dtype=DT)
    f = Quadratic([1.0], torch.eye(1, dtype=DT))
    s = MarginalEBM(f, sampler=Importance("data", ratio=lambda x: (x[:, 0] - 0.5).exp())).sample(Ev(n, x), n)
    wx = s.weights * x[:, 0]
    se = wx.std().item() / math.sqrt(n)
    assert abs(s.mean(x[:, 0]).item() - 1.0) <= Z * se


def test_importance_self_normalized_on_a_uniform_batch():
    # data uniform on [-6, 6]; weights ∝ exp f with f of N(1, 0.5^2): the mean is 1
    n = 20000
    x = 12 * torch.rand(n, 1, generator=torch.Generator().manual_seed(13), dtype=DT) - 6
    f = Quadratic([1.0], torch.tensor([[4.0]], dtype=DT))
    s = MarginalEBM(f, sampler=Importance("data", ratio="self-normalized")).sample(Ev(n, x), n)
    assert s.self_normalized
    w = s.weights
    est = s.mean(x[:, 0]).item()
    se = math.sqrt((w.square() * (x[:, 0] - est).square()).sum().item()) / w.sum().item()  # delta method
    assert abs(est - 1.0) <= Z * se, f"{est} vs 1 (SE {se})"


def test_importance_from_a_density_and_its_refusals():
    gen = GeneratorDensity(nn.Linear(2, 2).double(), latent_shape=2, sigma=0.1)
    f = Quadratic([0.0, 0.0], torch.eye(2, dtype=DT))
    imp = Importance(gen, ratio=lambda x: torch.ones(x.shape[0], dtype=DT) * 2)
    assert imp.sources() == (gen,)
    s = MarginalEBM(f, sampler=imp).sample(Ev(9), 9)
    assert (
        s["x"].shape == (9, 2)
        and not s["x"].requires_grad
        and torch.equal(s.weights, torch.full((9,), 2.0, dtype=DT))
    )
    with pytest.raises(ValueError, match="uniform"):
        Importance(gen, ratio="self-normalized")
    with pytest.raises(TypeError, match="over"):
        LatentEBM(f, sampler=Importance("data")).sample(Ev(3, torch.zeros(3, 1, dtype=DT)), 3)


def test_bidvl_lower_level_compiles_and_scales_the_data_terms_by_r():
    torch.manual_seed(14)
    dx, dz, r = 3, 2, 0.05

    class Enc(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(dx, 2 * dz).double()

        def forward(self, x):
            mu, log_s = self.lin(x).chunk(2, -1)
            return dist.Normal(mu, log_s.exp()).to_event(1)

    enc, dec = Enc(), nn.Linear(dz, dx).double()
    energy = nn.Sequential(nn.Linear(dx, 8), nn.Tanh(), nn.Linear(8, 1)).double()
    big_pi = DecoupledEBLVM(energy, enc, sampler=Importance("data", ratio=r))
    p = GeneratorDensity(dec, latent_shape=dz, sigma=0.5)
    # the one-sample KL, as the hand-written terms below
    estimator = S(big_pi, p).minimize(enc, dec, name="lower").compile(closed_form=False)
    x = torch.randn(32, dx, dtype=DT)
    out = estimator(x)
    plan = estimator.plans["lower"]
    assert not plan.sampler_paid  # log Z cancels between KL(Π ‖ P) and KL(P ‖ Π)

    # by hand, on the round's samples: the Π terms are r' times data averages
    sp, sq = out.round.samples(big_pi), out.round.samples(p)
    assert torch.equal(sp["x"], x) and torch.equal(sp.weights, torch.full((32,), r, dtype=DT))

    def log_gen(s):
        resid = s["x"] - dec(s["z"])
        return (
            -0.5 * s["z"].square().sum(1)
            - dz / 2 * math.log(2 * math.pi)
            - 0.5 * resid.square().sum(1) / 0.25
            - dx * (math.log(0.5) + 0.5 * math.log(2 * math.pi))
        )

    def log_pi(s):  # without log Z, which cancels
        return energy(s["x"])[:, 0] + enc(s["x"]).log_prob(s["z"])

    by_hand = r * (log_pi(sp) - log_gen(sp)).mean() + (log_gen(sq) - log_pi(sq)).mean()
    torch.testing.assert_close(out.values["lower"], by_hand.detach())
    params = list(enc.parameters()) + list(dec.parameters())
    want = torch.autograd.grad(by_hand, params, retain_graph=True)
    got = torch.autograd.grad(out.losses["lower"], params)
    for w, g in zip(want, got):
        torch.testing.assert_close(g, w)


# ----------------------------------------------------------------------------------------
# Pyro NUTS
# ----------------------------------------------------------------------------------------
def test_nuts_matches_a_2d_gaussian_within_mc_error():
    from pyro.ops.stats import effective_sample_size

    pyro.set_rng_seed(15)
    cov = torch.tensor([[1.0, 0.6], [0.6, 0.5]], dtype=DT)
    mu = torch.tensor([1.0, -2.0], dtype=DT)
    f = Quadratic(mu, torch.linalg.inv(cov))
    n = 300
    x = MarginalEBM(f, sampler=NUTS(warmup=200, shape=(2,))).sample(Ev(n), n)["x"]
    assert x.shape == (n, 2) and f.mu.grad is None

    def check(series, truth, what):
        ess = effective_sample_size(series[None, :, None].float(), chain_dim=0, sample_dim=1).item()
        se = series.std().item() / math.sqrt(ess)
        assert abs(series.mean().item() - truth) <= Z * se, (
            f"{what}: {series.mean().item():.3f} vs {truth} (SE {se:.3f}, ESS {ess:.0f})"
        )

    c = x - mu
    for i in range(2):
        check(x[:, i], mu[i].item(), f"mean {i}")
        for j in range(i, 2):
            check(c[:, i] * c[:, j], cov[i, j].item(), f"cov {i}{j}")


# ----------------------------------------------------------------------------------------
# Plotting
# ----------------------------------------------------------------------------------------
def test_plots_write_png_files(tmp_path):
    from kldiv.plotting import plot_energy_2d, save_image_grid

    centres, std = gmm_parts()
    f = MixtureEnergy(centres, std)
    pts = centres[torch.arange(100) % 8] + std * torch.randn(100, 2, dtype=DT)
    for show in ("density", "energy"):
        path = tmp_path / f"landscape-{show}.png"
        plot_energy_2d(f, pts, show=show, path=path, resolution=60, title=show)
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 1000
    grid_path = tmp_path / "grid.png"
    grid = save_image_grid(torch.rand(10, 1, 28, 28) * 2 - 1, grid_path, nrow=5)
    assert grid.shape[0] == 3 and grid.min() >= 0 and grid.max() <= 1
    assert grid_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_energy_model_on_any_variable_is_sampled_and_trained_without_kldiv_knowing_its_class():
    """EnergyBased over a variable of the user's naming: Langevin draws it through target(), and maximum
    likelihood against data declared by a factor gets the gradient -E_data[grad f] + E_pi[grad f]."""
    from kldiv import KL, EnergyBased, Factor, FactoredDensity
    from kldiv.samplers import NoiseStart

    class Shifted(nn.Module):  # f_a(y) = -(y - a)^2 / 2: pi = N(a, 1)
        def __init__(self):
            super().__init__()
            self.a = nn.Parameter(torch.tensor(0.5, dtype=torch.float64))

        def forward(self, y):
            return -0.5 * (y[:, 0] - self.a).square()

    torch.manual_seed(0)
    f = Shifted()
    pi = EnergyBased(f, variables=("y",), sampler=Langevin(100, 0.2, init=NoiseStart("normal", shape={"y": (1,)})))
    data = FactoredDensity([Factor("y", input="data")], name="data")
    step = KL(data, pi).minimize(pi, name="ebm").compile()
    assert "paid for by a sampler" in step.explain()
    grads = []
    for _ in range(20):
        y = 2.0 + torch.randn(500, 1, dtype=torch.float64)
        grads.append(torch.autograd.grad(step(y).losses["ebm"], [f.a])[0].item())
        expected_part = -(y.mean().item() - 0.5)  # -E_data[y - a]; E_pi[y - a] = 0
        grads[-1] -= expected_part
    g = torch.tensor(grads)  # what is left: E_pi[y - a] by the chains, zero in mean
    assert abs(g.mean()) <= 4.5 * g.std() / len(g) ** 0.5 + 0.02, g


def test_langevin_chains_run_their_own_number_whatever_the_round_n():
    f = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 1)).double()
    pi = MarginalEBM(f, sampler=Langevin(2, 0.1, init="uniform", chains=7))
    step = KL(DataDensity(), pi).minimize(pi, name="ebm").compile()
    r = step.round(torch.randn(32, 2, dtype=torch.float64))
    r.loss("ebm")
    assert r.samples(pi)["x"].shape == (7, 2)
    assert "chains=7" in repr(pi.sampler)


@pytest.mark.parametrize("chains", [0, True, 2.5])
def test_langevin_chains_must_be_a_positive_integer(chains):
    with pytest.raises((TypeError, ValueError), match="chains"):
        Langevin(2, 0.1, chains=chains)


def test_langevin_chains_are_refused_for_a_start_at_a_generator():
    dec = nn.Linear(2, 3)
    p = GeneratorDensity(dec, latent_shape=2, sigma=0.5)
    with pytest.raises(ValueError, match="one per sample"):
        Langevin(2, 0.1, init=p, chains=5)
