r"""The linear-Gaussian oracle: a world in which every KL of every expression is analytic.

With Gaussian data $q_{\rm data}(x) = \mathcal N(m, S)$, a linear-Gaussian encoder
$q_\phi(z \mid x) = \mathcal N(Ax + c, \operatorname{diag} e^{2s})$, a linear decoder
$g(z) = Wz + b$ with observation noise $\sigma$, and quadratic energies
$f(v) = -\tfrac12 v^\top \Lambda v + h^\top v$ ($\Lambda = LL^\top + \epsilon I$), every
source is a Gaussian over the joint variable $v = [x; z]$ and every log-density term
is a quadratic form $t(v) = v^\top M v + a^\top v + c_0$. Hence

$$ E_{\mathcal N(\mu, \Sigma)}[t] = \operatorname{tr}(M\Sigma) + \mu^\top M \mu + a^\top \mu + c_0, $$

a differentiable function (float64 torch) of every parameter. The value of an
expression is $\sum_k c_k E_{s_k}[t_k]$ over its expansion, and its gradient
with respect to a network is autograd of that value.

This module computes those expectations from its own formulas: it reads an
expression's expansion only to enumerate the summands (coefficient, source,
term), never the compiler's merging or tractability decisions.

Sources over ``x`` alone are embedded in the joint space with a zero ``z`` block;
their terms never read ``z``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import attrs
import pyro.distributions as pdist
import torch
from torch import Tensor, nn

from kldiv import (
    DataDensity,
    DecoupledEBLVM,
    Density,
    Expression,
    GeneratorDensity,
    LatentEBM,
    MarginalEBM,
    Samples,
    Term,
)
from kldiv.samplers import Sampler

__all__ = [
    "ExactGaussianSampler",
    "Gaussian",
    "LinearGaussianEncoder",
    "LinearGaussianWorld",
    "Quadratic",
    "QuadraticEnergy",
    "analytic_gradient",
    "mc_threshold",
]

DTYPE = torch.float64
_LOG_2PI = math.log(2.0 * math.pi)


# ----------------------------------------------------------------------------------------
# Gaussians and quadratic forms
# ----------------------------------------------------------------------------------------
@attrs.frozen(eq=False)
class Gaussian:
    r"""$\mathcal N(\mu, \Sigma)$ over the joint variable $v = [x; z]$."""

    mean: Tensor  # (D,)
    cov: Tensor  # (D, D)


@attrs.frozen(eq=False)
class Quadratic:
    r"""$t(v) = v^\top M v + a^\top v + c$ with $M$ symmetric."""

    M: Tensor  # (D, D)
    a: Tensor  # (D,)
    c: Tensor  # ()

    def __call__(self, v: Tensor) -> Tensor:
        """Per-row values on ``v`` of shape ``(n, D)``."""
        return ((v @ self.M) * v).sum(-1) + v @ self.a + self.c

    def expectation(self, g: Gaussian) -> Tensor:
        r"""$\operatorname{tr}(M\Sigma) + \mu^\top M\mu + a^\top\mu + c$."""
        return (self.M * g.cov).sum() + g.mean @ self.M @ g.mean + self.a @ g.mean + self.c


# ----------------------------------------------------------------------------------------
# Networks
# ----------------------------------------------------------------------------------------
class LinearGaussianEncoder(nn.Module):
    r"""$x \mapsto q(z \mid x) = \mathcal N(Ax + c, \operatorname{diag} e^{2s})$, a pyro
    ``Normal(loc, scale).to_event(1)`` with batch shape ``(n,)``."""

    def __init__(self, dx: int, dz: int):
        super().__init__()
        self.A = nn.Parameter(torch.zeros(dz, dx, dtype=DTYPE))
        self.c = nn.Parameter(torch.zeros(dz, dtype=DTYPE))
        self.log_scale = nn.Parameter(torch.zeros(dz, dtype=DTYPE))

    def forward(self, x: Tensor) -> pdist.Distribution:
        loc = x @ self.A.T + self.c  # (n, Dz)
        return pdist.Normal(loc, self.log_scale.exp().expand_as(loc)).to_event(1)


class QuadraticEnergy(nn.Module):
    r"""$f(v) = -\tfrac12 v^\top\Lambda v + h^\top v$, $\Lambda = LL^\top + \epsilon I$, over
    ``v = cat(args)``; the normalised density is $\mathcal N(\Lambda^{-1}h, \Lambda^{-1})$."""

    def __init__(self, dim: int, eps: float = 0.5):
        super().__init__()
        self.dim = dim
        self.eps = eps
        self.L = nn.Parameter(torch.zeros(dim, dim, dtype=DTYPE))
        self.h = nn.Parameter(torch.zeros(dim, dtype=DTYPE))

    def precision(self) -> Tensor:
        return self.L @ self.L.T + self.eps * torch.eye(self.dim, dtype=DTYPE)

    def forward(self, *vs: Tensor) -> Tensor:
        v = torch.cat(vs, dim=1)  # (n, dim)
        return -0.5 * ((v @ self.precision()) * v).sum(1) + v @ self.h  # (n,)

    def gaussian(self) -> tuple[Tensor, Tensor]:
        r"""Mean $\Lambda^{-1}h$ and covariance $\Lambda^{-1}$ of $\exp f / Z$."""
        cov = torch.linalg.inv(self.precision())
        cov = 0.5 * (cov + cov.T)
        return cov @ self.h, cov

    def log_normalizer(self) -> Tensor:
        r"""$\log Z = \tfrac d2\log 2\pi - \tfrac12\log\det\Lambda
        + \tfrac12 h^\top\Lambda^{-1}h$."""
        lam = self.precision()
        return (
            0.5 * self.dim * _LOG_2PI
            - 0.5 * torch.logdet(lam)
            + 0.5 * self.h @ torch.linalg.solve(lam, self.h)
        )


class ExactGaussianSampler(Sampler):
    r"""Draws detached samples from the exact Gaussian $\exp f / Z$ of a quadratic energy.

    Works for a `LatentEBM` (returns ``x`` and ``z``), a `MarginalEBM` and a
    `DecoupledEBLVM` (returns ``x``; the density draws ``z`` from its encoder).
    """

    def __init__(self, dx: int):
        self.dx = dx

    def sample(self, density: Density, ev, n: int) -> Samples:
        energy = density.energy
        with torch.no_grad():
            mean, cov = energy.gaussian()
            chol = torch.linalg.cholesky(cov)
            eps = torch.randn(n, energy.dim, dtype=ev.dtype, device=ev.device)
            v = mean.to(ev.dtype) + eps @ chol.T.to(ev.dtype)  # (n, dim)
        if energy.dim == self.dx:
            return Samples({"x": v})
        return Samples({"x": v[:, : self.dx], "z": v[:, self.dx :]})

    def __repr__(self) -> str:
        return "ExactGaussianSampler()"


# ----------------------------------------------------------------------------------------
# The world
# ----------------------------------------------------------------------------------------
def _randn(*shape: int, scale: float = 1.0) -> Tensor:
    return scale * torch.randn(*shape, dtype=DTYPE)


class LinearGaussianWorld:
    """Networks, densities and analytic expectations of one linear-Gaussian oracle.

    Densities: ``q = DataDensity(encoder)``, ``q0 = DataDensity()``,
    ``p = GeneratorDensity(decoder)``, ``pi = LatentEBM(latent_energy)``,
    ``mu = MarginalEBM(marginal_energy)`` and ``Pi = DecoupledEBLVM(·, encoder)``,
    whose energy is the marginal energy when ``shared`` (then ``Pi``'s x-marginal
    is ``mu``) and a network of its own (``decoupled_energy``) otherwise.

    Parameters are drawn from torch's global generator: seed it first.

    Arguments:
        dx, dz: dimensions of ``x`` and ``z``.
        sigma: the decoder's observation noise.
        shared: whether ``Pi`` uses the marginal energy network.
        samplers: attach an `ExactGaussianSampler` to the three energy-based densities.
        score_function: draw ``q``'s ``z`` and ``p``'s ``x`` without a pathwise gradient, so
            that the compiler takes the score-function route through them (same
            expectations, larger variance).
    """

    def __init__(
        self, dx: int, dz: int, *, sigma: float = 0.8, shared: bool = True, samplers: bool = False,
        score_function: bool = False,
    ):
        self.dx, self.dz, self.D = dx, dz, dx + dz
        self.sigma = float(sigma)
        # the data distribution: N(m, S) (plain tensors: it has no parameters)
        self.data_mean = _randn(dx)
        B = _randn(dx, dx)
        self.data_cov = B @ B.T / dx + 0.5 * torch.eye(dx, dtype=DTYPE)
        self._data_chol = torch.linalg.cholesky(self.data_cov)

        self.encoder = LinearGaussianEncoder(dx, dz)
        self.decoder = nn.Linear(dz, dx, dtype=DTYPE)
        self.latent_energy = QuadraticEnergy(dx + dz)
        self.marginal_energy = QuadraticEnergy(dx)
        self.decoupled_energy = self.marginal_energy if shared else QuadraticEnergy(dx)
        self.shared = shared
        self.randomize()

        sampler = ExactGaussianSampler(dx) if samplers else None
        pathwise = not score_function
        self.q = DataDensity(self.encoder, reparameterized=pathwise, name="q")
        self.q0 = DataDensity(name="q0")
        self.p = GeneratorDensity(self.decoder, latent_shape=dz, sigma=self.sigma, reparameterized=pathwise, name="p")
        self.pi = LatentEBM(self.latent_energy, sampler=sampler, name="π")
        self.mu = MarginalEBM(self.marginal_energy, sampler=sampler, name="μ")
        if shared:
            self.Pi = DecoupledEBLVM(self.mu, self.encoder, name="Π")
        else:
            self.Pi = DecoupledEBLVM(
                self.decoupled_energy, self.encoder, sampler=sampler, name="Π"
            )
        self.sampleable = {id(self.q), id(self.q0), id(self.p)}
        if samplers:
            self.sampleable |= {id(self.pi), id(self.mu), id(self.Pi)}
        self._quadratics = self._term_table()

    # --- parameters -------------------------------------------------------------------
    @property
    def networks(self) -> dict[str, nn.Module]:
        """The trainable networks, by role."""
        nets = {
            "encoder": self.encoder,
            "decoder": self.decoder,
            "latent energy": self.latent_energy,
            "marginal energy": self.marginal_energy,
        }
        if not self.shared:
            nets["decoupled energy"] = self.decoupled_energy
        return nets

    def handles(self) -> dict[str, Density]:
        """For each network, a density whose `own_networks` is exactly that network."""
        out = {
            "encoder": self.q,
            "decoder": self.p,
            "latent energy": self.pi,
            "marginal energy": self.mu,
        }
        if not self.shared:
            out["decoupled energy"] = self.Pi
        return out

    def parameters(self) -> list[nn.Parameter]:
        seen: dict[int, nn.Parameter] = {}
        for net in self.networks.values():
            for p in net.parameters():
                seen.setdefault(id(p), p)
        return list(seen.values())

    @torch.no_grad()
    def randomize(self) -> None:
        """Draw fresh parameters for every network (a new point of parameter space)."""
        dx, dz = self.dx, self.dz
        self.encoder.A.copy_(_randn(dz, dx, scale=0.5))
        self.encoder.c.copy_(_randn(dz, scale=0.5))
        self.encoder.log_scale.copy_(torch.rand(dz, dtype=DTYPE) * 0.8 - 0.5)
        self.decoder.weight.copy_(_randn(dx, dz, scale=0.7))
        self.decoder.bias.copy_(_randn(dx, scale=0.5))
        energies = (self.latent_energy, self.marginal_energy, self.decoupled_energy)
        for f in {id(n): n for n in energies}.values():
            f.L.copy_(_randn(f.dim, f.dim, scale=0.5))
            f.h.copy_(_randn(f.dim, scale=0.5))

    def sample_data(self, n: int) -> Tensor:
        r"""A batch ``(n, Dx)`` from $q_{\rm data} = \mathcal N(m, S)$."""
        return self.data_mean + torch.randn(n, self.dx, dtype=DTYPE) @ self._data_chol.T

    # --- joint Gaussians of the sources ---------------------------------------------------
    def _with_encoder(self, mean_x: Tensor, cov_x: Tensor) -> Gaussian:
        A, c = self.encoder.A, self.encoder.c
        var_z = torch.diag(torch.exp(2 * self.encoder.log_scale))
        mean = torch.cat([mean_x, A @ mean_x + c])
        cov = torch.cat(
            [
                torch.cat([cov_x, cov_x @ A.T], 1),
                torch.cat([A @ cov_x, A @ cov_x @ A.T + var_z], 1),
            ],
            0,
        )
        return Gaussian(mean, cov)

    def _x_only(self, mean_x: Tensor, cov_x: Tensor) -> Gaussian:
        zeros = torch.zeros(self.dz, dtype=DTYPE)
        return Gaussian(torch.cat([mean_x, zeros]), torch.block_diag(cov_x, torch.diag(zeros)))

    def joint(self, source: Density) -> Gaussian:
        """The Gaussian of ``source`` over $[x; z]$ (zero ``z`` block for a density over ``x``)."""
        if source is self.q:
            return self._with_encoder(self.data_mean, self.data_cov)
        if source is self.q0:
            return self._x_only(self.data_mean, self.data_cov)
        if source is self.p:
            W, b, s2 = self.decoder.weight, self.decoder.bias, self.sigma**2
            I_x, I_z = torch.eye(self.dx, dtype=DTYPE), torch.eye(self.dz, dtype=DTYPE)
            mean = torch.cat([b, torch.zeros(self.dz, dtype=DTYPE)])
            cov = torch.cat([torch.cat([W @ W.T + s2 * I_x, W], 1), torch.cat([W.T, I_z], 1)], 0)
            return Gaussian(mean, cov)
        if source is self.pi:
            return Gaussian(*self.latent_energy.gaussian())
        if source is self.mu:
            return self._x_only(*self.marginal_energy.gaussian())
        if source is self.Pi:
            return self._with_encoder(*self.decoupled_energy.gaussian())
        raise KeyError(f"{source!r} is not a density of this world")

    # --- log-density terms as quadratic forms ----------------------------------------------
    def _selectors(self) -> tuple[Tensor, Tensor]:
        eye = torch.eye(self.D, dtype=DTYPE)
        return eye[: self.dx], eye[self.dx :]  # Px (Dx, D), Pz (Dz, D)

    def _term_table(self) -> dict[int, tuple[str, object]]:
        """Map each term object of each density to (kind, network)."""
        table: dict[int, tuple[str, object]] = {}

        def put(density: Density, kinds: Iterable[tuple[str, object]]):
            terms = density.terms()
            kinds = list(kinds)
            assert len(terms) == len(kinds), (density, [t.label for t in terms])
            for t, k in zip(terms, kinds):
                table[id(t)] = k

        put(self.q, [("data", None), ("conditional", self.encoder)])
        put(self.q0, [("data", None)])
        put(self.p, [("prior", None), ("likelihood", self.decoder)])
        put(self.pi, [("energy", self.latent_energy), ("log Z", self.latent_energy)])
        put(self.mu, [("energy", self.marginal_energy), ("log Z", self.marginal_energy)])
        put(
            self.Pi,
            [
                ("energy", self.decoupled_energy),
                ("log Z", self.decoupled_energy),
                ("conditional", self.encoder),
            ],
        )
        return table

    def kind(self, term: Term) -> str:
        return self._quadratics[id(term)][0]

    def quadratic(self, term: Term) -> Quadratic:
        """The term as a quadratic form over $v = [x; z]$ (log Z as a constant)."""
        kind, net = self._quadratics[id(term)]
        D, dx, dz = self.D, self.dx, self.dz
        Px, Pz = self._selectors()
        zero_a, zero_c = torch.zeros(D, dtype=DTYPE), torch.zeros((), dtype=DTYPE)
        if kind == "prior":
            c = torch.tensor(-0.5 * dz * _LOG_2PI, dtype=DTYPE)
            return Quadratic(-0.5 * Pz.T @ Pz, zero_a, c)
        if kind == "likelihood":
            W, b, s2 = self.decoder.weight, self.decoder.bias, self.sigma**2
            R = Px - W @ Pz  # x - W z, (Dx, D)
            c = -0.5 * b @ b / s2 - dx * (math.log(self.sigma) + 0.5 * _LOG_2PI)
            return Quadratic(-0.5 * R.T @ R / s2, R.T @ b / s2, c)
        if kind == "conditional":
            A, c_e, s = self.encoder.A, self.encoder.c, self.encoder.log_scale
            prec = torch.diag(torch.exp(-2 * s))
            Q = Pz - A @ Px  # z - A x, (Dz, D)
            c = -0.5 * c_e @ prec @ c_e - s.sum() - 0.5 * dz * _LOG_2PI
            return Quadratic(-0.5 * Q.T @ prec @ Q, Q.T @ prec @ c_e, c)
        if kind == "data":
            prec = torch.linalg.inv(self.data_cov)
            m = self.data_mean
            c = -0.5 * m @ prec @ m - 0.5 * torch.logdet(2 * math.pi * self.data_cov)
            return Quadratic(-0.5 * Px.T @ prec @ Px, Px.T @ prec @ m, c)
        if kind == "energy":
            P = Px if net.dim == dx else torch.eye(D, dtype=DTYPE)
            return Quadratic(-0.5 * P.T @ net.precision() @ P, P.T @ net.h, zero_c)
        if kind == "log Z":
            return Quadratic(torch.zeros(D, D, dtype=DTYPE), zero_a, net.log_normalizer())
        raise AssertionError(kind)

    # --- expressions ------------------------------------------------------------------
    def estimable(self, source: Density, term: Term) -> bool:
        """Whether kldiv may estimate $E_s[t]$: $t$ computable and $s$ sampleable."""
        return self.kind(term) not in ("data", "log Z") and id(source) in self.sampleable

    def analytic(self, expression: Expression) -> tuple[Tensor, Tensor]:
        """``(value, N)``: the analytic value of ``expression`` and the part of it that
        kldiv may not estimate (non-computable terms, or unsampleable sources)."""
        total = torch.zeros((), dtype=DTYPE)
        hidden = torch.zeros((), dtype=DTYPE)
        for contribution in expression.expand():
            e = contribution.coef * self.quadratic(contribution.term).expectation(
                self.joint(contribution.source)
            )
            total = total + e
            if not self.estimable(contribution.source, contribution.term):
                hidden = hidden + e
        return total, hidden

    def gradient_scale(
        self, expression: Expression, params: list[nn.Parameter], *, hidden_only: bool = False
    ) -> float:
        r"""$\sum_k |c_k|\,\|\nabla E_{s_k}[t_k]\|$ over the summands (only the
        non-estimable ones if ``hidden_only``): the magnitude against which a vanishing
        gradient of their sum is judged (float64 round-off is relative to it)."""
        scale = 0.0
        for contribution in expression.expand():
            if hidden_only and self.estimable(contribution.source, contribution.term):
                continue
            e = self.quadratic(contribution.term).expectation(self.joint(contribution.source))
            scale += abs(contribution.coef) * float(analytic_gradient(e, params).norm())
        return scale


def analytic_gradient(value: Tensor, params: list[nn.Parameter]) -> Tensor:
    """The gradient of ``value`` w.r.t. ``params``, flattened and concatenated
    (zeros where ``value`` does not depend on a parameter)."""
    if not params:
        return torch.zeros(0, dtype=DTYPE)
    if not value.requires_grad:
        return torch.cat([torch.zeros_like(p).flatten() for p in params])
    grads = torch.autograd.grad(value, params, allow_unused=True, retain_graph=True)
    return torch.cat(
        [(torch.zeros_like(p) if g is None else g).flatten() for p, g in zip(params, grads)]
    )


def mc_threshold(components: int, *, steps: int, family_alpha: float = 1e-6) -> float:
    """Student-t quantile for a two-sided test of each of ``components`` means of
    ``steps`` i.i.d. estimates, Bonferroni-corrected to a family-wise level ``family_alpha``."""
    from scipy.stats import t

    alpha = family_alpha / max(components, 1)
    return float(t.ppf(1.0 - alpha / 2.0, df=steps - 1))
