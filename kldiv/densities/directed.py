r"""The directed densities of the papers: the generator $p_\theta(x, z) = p(z)\, p_\theta(x \mid z)$
and the data density $q_\phi(x, z) = q_{\rm data}(x)\, q_\phi(z \mid x)$."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Literal

import attrs
import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from kldiv._checks import flag, network
from kldiv.densities.base import (_LOG_2PI, Density, Evaluator, Samples, Term, _as_shape, _rsample,
                                  _standard_normal_term, conditional_term)
from kldiv.densities.energy import EnergyPrior
from kldiv.densities.factored import Factor, FactoredDensity

__all__ = ["DataDensity", "GeneratorDensity"]


class GeneratorDensity(FactoredDensity):
    r"""The generator (top-down) density $p_\theta(x, z) = p(z)\, p_\theta(x \mid z)$.

    $$ z \sim \mathcal N(0, I), \qquad x = g_\theta(z) + \sigma \epsilon,\ \epsilon \sim \mathcal N(0, I). $$

    Log-density terms: $\log \mathcal N(z; 0, I)$ and
    $\log \mathcal N(x; g_\theta(z), \sigma^2 I)$, or the decoder's own
    ``log_prob`` when it returns a distribution (then leave ``sigma=None``).

    A ``prior`` replaces $\mathcal N(0, I)$: a parameter-free distribution
    over $z$ (its ``log_prob`` is the term $\log p(z)$), or an
    [`EnergyPrior`][kldiv.EnergyPrior] $p_\alpha(z) \propto \exp f_\alpha(z)\,
    \mathcal N(z; 0, I)$, whose terms $f_\alpha(z) + \log \mathcal N(z; 0, I) - \log Z(\alpha)$
    then stand for $\log p(z)$ (Pang et al. 2020). With an energy-based prior,
    $z$ is drawn by the prior's sampler (detached) and the density also owns
    the prior's energy network (``networks()["prior"]``): a player named by
    this density trains both; name the networks to train them apart.

    It is the [`FactoredDensity`][kldiv.FactoredDensity] of two factors, $z$
    (the prior: a fixed distribution, or the `EnergyPrior`'s sampler) and
    $x \mid z$ (the decoder), so what the compiler reads of it (dependence,
    pathwise gradients, marginals) is derived from them.  Samples are drawn
    ancestrally and reparameterised, so $x$ carries the gradient of $\theta$.  The papers draw synthesis samples without the
    observation noise, $\tilde x \approx g_\theta(z)$ (Han et al. 2020, §4.6);
    that is ``synthesis="mean"``, which changes the *sampler* of the source,
    not the density: expectations under ``p`` are then taken over $x = g(z)$.

    Arguments:
        decoder: network $z \mapsto g(z)$, or $z \mapsto$ a distribution over $x$.
        latent_shape: shape of $z$ (an int for a vector).
        sigma: observation noise $\sigma$ (``None`` if the decoder returns a distribution).
        synthesis: ``"sample"`` ($x = g(z) + \sigma\epsilon$) or ``"mean"`` ($x = g(z)$).
        prior: the distribution of $z$ (default $\mathcal N(0, I)$), or an `EnergyPrior`.
        reparameterized: ``False`` draws $x$ without a pathwise gradient (detached), so the
            compiler estimates the decoder's gradient through $x$ by the score function of
            $\log p_\theta(x \mid z)$ (needs ``synthesis="sample"``): for observation models
            without ``rsample``, and to compare the two estimators.
        name: short name for printing.
        latex: the name in LaTeX (default: ``name``).

    Examples:
        >>> import torch
        >>> from kldiv import GeneratorDensity
        >>> p = GeneratorDensity(torch.nn.Linear(2, 3), latent_shape=2, sigma=0.5)
        >>> [t.label for t in p.terms()]
        ['log N(z; 0, I)', 'log N(x; g(z), σ²I)']
    """

    def __init__(
        self,
        decoder: nn.Module,
        *,
        latent_shape: int | tuple[int, ...],
        sigma: float | None = None,
        synthesis: Literal["sample", "mean"] = "sample",
        prior: Distribution | EnergyPrior | None = None,
        reparameterized: bool = True,
        name: str = "p",
        latex: str | None = None,
    ):
        if synthesis not in ("sample", "mean"):
            raise ValueError(f"synthesis must be 'sample' or 'mean', got {synthesis!r}")
        reparameterized = flag("reparameterized", reparameterized)
        if not reparameterized and synthesis == "mean":
            raise ValueError(
                "reparameterized=False estimates the decoder's gradient by the score of p(x|z), which "
                "needs x drawn from p(x|z): use synthesis='sample'"
            )
        if sigma is not None:
            try:
                if isinstance(sigma, (bool, str, bytes)):
                    raise TypeError
                sigma = float(sigma)
            except (TypeError, ValueError, RuntimeError):
                raise TypeError(f"sigma, the observation noise, must be a number, got {sigma!r}") from None
            if not (math.isfinite(sigma) and sigma > 0):
                raise ValueError(f"sigma, the observation noise, must be positive and finite, got {sigma!r}")
        network("decoder", decoder)
        latent_shape = _as_shape(latent_shape)
        if isinstance(prior, EnergyPrior):
            if prior.latent_shape != latent_shape:
                raise ValueError(
                    f"the energy-based prior {prior.name} is over z of shape {prior.latent_shape}, "
                    f"but latent_shape is {latent_shape}"
                )
            z = Factor("z", density=prior)
        elif prior is None:
            z = Factor("z", distribution=_standard_normal(latent_shape))
        else:
            if not isinstance(prior, Distribution):
                raise TypeError(
                    "prior must be a torch/pyro distribution over z or an EnergyPrior, "
                    f"got {type(prior).__name__}"
                )
            if tuple(prior.batch_shape) != () or tuple(prior.event_shape) != latent_shape:
                raise ValueError(
                    f"prior must have batch shape () and event shape latent_shape {latent_shape} "
                    f"(use .to_event), got batch {tuple(prior.batch_shape)}, event {tuple(prior.event_shape)}"
                )
            z = Factor("z", distribution=prior)
        self.decoder = decoder
        self.latent_shape = latent_shape
        self.sigma = None if sigma is None else float(sigma)
        self.synthesis = synthesis
        self.reparameterized = reparameterized
        self.prior = prior
        x = Factor("x", decoder, parents=("z",), reparameterized=reparameterized, name="decoder")
        super().__init__((z, x), name=name, latex=latex)
        self.variables = ("x", "z")  # the order of the papers' p(x, z); drawn z first (``order``)

    # --- the factors' terms and draws (the structure is FactoredDensity's) -------------------
    def _factor_terms(self, f: Factor) -> tuple[Term, ...]:
        if f.variable == "x":
            return (
                Term(
                    key=("likelihood", self.decoder, self.sigma),
                    label="log N(x; g(z), σ²I)" if self.sigma is not None else "log p(x|z)",
                    latex=r"\log p_\theta(x \mid z)",
                    reads=frozenset({"x", "z"}),
                    modules=(self.decoder,),
                    evaluate=self._log_likelihood,
                    factor="x",
                ),
            )
        if self.prior is None:
            return (_standard_normal_term(self.latent_shape),)
        if f.kind == "density":
            return f.density.terms()
        prior = self.prior
        return (
            Term(
                key=("prior", prior),
                label="log p(z)",
                latex=r"\log p(z)",
                reads=frozenset({"z"}),
                evaluate=lambda ev, s: prior.log_prob(s["z"]),
                factor="z",
            ),
        )

    def _distribution_or_mean(self, ev: Evaluator, z: Tensor) -> Tensor | Distribution:
        out = ev.call(self.decoder, z)
        if isinstance(out, Distribution):
            if self.sigma is not None:
                raise TypeError(
                    f"the decoder of {self!r} returns a distribution, so sigma must be None"
                )
            return out
        if self.sigma is None:
            raise TypeError(
                f"the decoder of {self!r} returns a tensor (the mean g(z)); "
                "give sigma, the observation noise, to make it a density"
            )
        return out

    def _log_likelihood(self, ev: Evaluator, s: Samples) -> Tensor:
        x = s["x"]
        out = self._distribution_or_mean(ev, s["z"])
        if isinstance(out, Distribution):
            return out.log_prob(x)
        sigma = self.sigma
        resid = (x - out).flatten(1)  # (n, D)
        d = resid.shape[1]
        return -0.5 * resid.square().sum(1) / sigma**2 - d * (math.log(sigma) + 0.5 * _LOG_2PI)

    def _draw(self, ev: Evaluator, f: Factor, values: Mapping[str, Tensor], n: int) -> Tensor:
        if f.variable == "z":
            if self.prior is None:
                return torch.randn((n, *self.latent_shape), device=ev.device, dtype=ev.dtype)
            if f.kind == "distribution":  # a parameter-free prior: no gradient to carry, with or without rsample
                return self.prior.sample((n,)).to(device=ev.device, dtype=ev.dtype)
            return super()._draw(ev, f, values, n)  # the energy-based prior's sampler, detached
        out = self._distribution_or_mean(ev, values["z"])
        if not self.reparameterized:  # x ~ p(x|z) without a pathwise gradient
            with torch.no_grad():
                return out.sample() if isinstance(out, Distribution) else out + self.sigma * torch.randn_like(out)
        if isinstance(out, Distribution):
            if self.synthesis == "mean":
                return out.mean
            if out.has_rsample:
                return out.rsample()
            raise TypeError(
                f"the decoder of {self!r} returns a {type(out).__name__}, which has no "
                "reparameterised sampler; kldiv needs pathwise samples of x. Use "
                "synthesis='mean' or a reparameterisable observation model"
            )
        return out if self.synthesis == "mean" else out + self.sigma * torch.randn_like(out)

    def describe_sampling(self) -> str:
        if isinstance(self.prior, EnergyPrior):
            z = f"z ~ {self.prior.name}(z) ({self.prior.describe_sampling()})"
        else:
            z = "z ~ N(0, I)" if self.prior is None else "z ~ p(z)"
        if self.synthesis == "mean":
            return f"{z}, x = g(z) (noise-free synthesis)"
        if not self.reparameterized:
            return f"{z}, x ~ p(x|z) (not reparameterised: score-function gradients)"
        return f"{z}, x ~ p(x|z) (reparameterised)"


def _standard_normal(latent_shape: tuple[int, ...]) -> Distribution:
    r"""$\mathcal N(0, I)$ over ``latent_shape``, the default prior's factor (its term and draw
    are `GeneratorDensity`'s own, faster forms)."""
    base = torch.distributions.Normal(torch.zeros(latent_shape), torch.ones(latent_shape))
    return torch.distributions.Independent(base, len(latent_shape))


class DataDensity(FactoredDensity):
    r"""The data (bottom-up) density $q_\phi(x, z) = q_{\rm data}(x)\, q_\phi(z \mid x)$.

    $x$ is drawn from a source given to the step (by default the input
    ``"data"``: the mini-batch), then $z \sim q_\phi(z \mid x)$ by
    reparameterisation.  $\log q_{\rm data}(x)$ is unknown: it can never be
    computed, so the compiler accepts it only where no player's gradient needs
    it (e.g. $E_q[\log q_{\rm data}(x)]$ with $x$ from the data).

    ``x`` may instead be another density (e.g. an EBM with a Langevin sampler,
    as in Xie et al. 2021): its samples are then *treated as data*, detached,
    with an unknown density that depends on no parameter.

    Without an encoder the density is over ``x`` alone.  Like the generator, it
    is a [`FactoredDensity`][kldiv.FactoredDensity]: the factors $x$ (an input)
    and $z \mid x$ (the encoder), its structure derived from them.

    Arguments:
        encoder: network $x \mapsto$ a ``pyro.distributions`` distribution over
            $z$ with batch shape ``(n,)`` (use ``.to_event``), or ``None``.
        x: name of the step input holding the data, or a density to draw $x$ from.
        name: short name for printing.
        latex: the name in LaTeX (default: ``name``).

    Examples:
        >>> from kldiv import DataDensity
        >>> DataDensity().variables
        ('x',)
    """

    def __init__(
        self,
        encoder: nn.Module | None = None,
        *,
        x: str | Density = "data",
        reparameterized: bool = True,
        name: str = "q",
        latex: str | None = None,
    ):
        if not isinstance(x, (str, Density)) or (isinstance(x, str) and not x):
            raise TypeError(f"x must be an input name or a Density, got {x!r}" if isinstance(x, str)
                            else f"x must be an input name or a Density, got {type(x).__name__}")
        network("encoder", encoder, optional=True)
        self.encoder = encoder
        self.reparameterized = flag("reparameterized", reparameterized)
        self.x_source = x
        factors = [Factor("x", input=x)]
        if encoder is not None:
            factors.append(Factor("z", encoder, parents=("x",), reparameterized=self.reparameterized, name="encoder"))
        super().__init__(factors, name=name, latex=latex)

    def _factor_terms(self, f: Factor) -> tuple[Term, ...]:
        if f.variable == "z":  # the key every density with this encoder shares (a DecoupledEBLVM's too)
            return (conditional_term(self.encoder, self.name),)
        (data,) = super()._factor_terms(f)
        return (attrs.evolve(data, latex=r"\log q_{\rm data}(x)"),)

    def _draw(self, ev: Evaluator, f: Factor, values: Mapping[str, Tensor], n: int) -> Tensor:
        if f.variable == "x":
            return super()._draw(ev, f, values, n)
        dist = ev.call(self.encoder, values["x"])
        if not self.reparameterized:
            if not isinstance(dist, Distribution):
                _rsample(dist, self)  # names the wrong return type
            return dist.sample()
        return _rsample(dist, self)

    def describe_sampling(self) -> str:
        origin = (
            f"input {self.x_source!r}"
            if isinstance(self.x_source, str)
            else f"samples of {self.x_source.name} (detached)"
        )
        if self.encoder is None:
            return f"x from {origin}"
        how = "reparameterised" if self.reparameterized else "not reparameterised: score-function gradients"
        return f"x from {origin}, z ~ q(z|x) ({how})"
