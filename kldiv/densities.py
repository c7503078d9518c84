r"""Joint densities over named variables, each written as a sum of named log-density terms.

A density in kldiv is not a number-producing function but a *description*:
it knows which variables it is over (``("x", "z")`` or ``("x",)``), how its
log density splits into additive terms, which networks each term depends on,
which variables each term reads, and whether the term can be computed at all.
The compiler (:mod:`kldiv.compiler`) reads these descriptions to cancel what
cancels and refuse what cannot be estimated.

| density | log-density terms |
| --- | --- |
| [`GeneratorDensity`][kldiv.GeneratorDensity] | $\log \mathcal N(z; 0, I) + \log p_\theta(x \mid z)$ |
| [`DataDensity`][kldiv.DataDensity] | $\log q_{\rm data}(x)$ (unknown) $+ \log q_\phi(z \mid x)$ |
| [`LatentEBM`][kldiv.LatentEBM] | $f_\alpha(x, z) - \log Z(\alpha)$ |
| [`MarginalEBM`][kldiv.MarginalEBM] | $f_\alpha(x) - \log Z(\alpha)$ |
| [`DecoupledEBLVM`][kldiv.DecoupledEBLVM] | $f_\psi(x) - \log Z(\psi) + \log q_\phi(z \mid x)$ |
| [`EnergyPrior`][kldiv.EnergyPrior] | $f_\alpha(z) + \log \mathcal N(z; 0, I) - \log Z(\alpha)$ |

A [`GeneratorDensity`][kldiv.GeneratorDensity] with an `EnergyPrior` is the
latent-space EBM prior model of Pang et al. (2020), $p_{\alpha,\theta}(x, z) =
p_\alpha(z)\, p_\theta(x \mid z)$: its terms are the prior's and the likelihood.

Sign convention: every energy network returns $f$, the *log* of the
unnormalised density ($f = -E$ for an energy $E$).
"""

from __future__ import annotations

import abc
import copy
import math
from collections.abc import Callable, Hashable, Mapping
from typing import TYPE_CHECKING, Literal, Protocol

import attrs
import torch
from torch import Tensor, nn
from torch.distributions import Distribution

if TYPE_CHECKING:
    from kldiv.samplers import Sampler

__all__ = [
    "DataDensity",
    "DecoupledEBLVM",
    "Density",
    "EnergyBased",
    "EnergyPrior",
    "Evaluator",
    "GeneratorDensity",
    "LatentEBM",
    "MarginalEBM",
    "Samples",
    "Term",
]

_LOG_2PI = math.log(2.0 * math.pi)
_NO_MODULES: frozenset[nn.Module] = frozenset()


class Evaluator(Protocol):
    """What a term or a sampler may ask of the step that evaluates it.

    The compiler's [`Round`][kldiv.compiler.Round] implements it: network calls
    are memoised (one forward pass per network and sample set), samples are
    drawn once per source, and inputs are the tensors given to the step.
    """

    device: torch.device
    dtype: torch.dtype

    def call(self, module: nn.Module, *args: Tensor) -> object:
        """``module(*args)``, evaluated once per round for the same inputs."""

    def input(self, name: str) -> Tensor:
        """The tensor given to the step under ``name`` (e.g. the data batch)."""

    def samples(self, density: Density) -> Samples:
        """This round's sample set drawn from ``density``."""


@attrs.frozen(eq=False)
class Samples:
    r"""A sample set: one tensor per variable, all with the same leading size $n$.

    An importance-weighted sample set carries ``weights`` $w_i$ (detached).
    With ``self_normalized=False`` an expectation is estimated by
    $\frac1n \sum_i w_i t_i$, otherwise by $\sum_i w_i t_i / \sum_i w_i$.
    """

    values: Mapping[str, Tensor]
    weights: Tensor | None = None
    self_normalized: bool = False

    def __getitem__(self, variable: str) -> Tensor:
        return self.values[variable]

    @property
    def n(self) -> int:
        """The number of samples."""
        return next(iter(self.values.values())).shape[0]

    def mean(self, t: Tensor) -> Tensor:
        """The Monte Carlo estimate of $E[t]$ from per-sample values ``t`` of shape ``(n,)``."""
        if self.weights is None:
            return t.mean()
        if self.self_normalized:
            return (self.weights * t).sum() / self.weights.sum()
        return (self.weights * t).mean()


@attrs.frozen(eq=False)
class Term:
    r"""One additive term of a log density.

    Attributes:
        key: identity of the term. Two terms with equal keys are the same
            function of the same variables (e.g. the ``log q(z|x)`` of a
            `DataDensity` and of a `DecoupledEBLVM` sharing one encoder), so
            their expectations under one source merge.
        label: plain-text form, e.g. ``"f(x, z)"``.
        latex: LaTeX form, e.g. ``r"f_\\alpha(x, z)"``.
        reads: the variables the term reads; empty for a sample-constant term
            such as ``log Z``, whose expectation is the same under any source.
        modules: the networks whose parameters the term depends on directly.
        computable: whether kldiv can evaluate the term (``log Z`` and
            ``log q_data`` cannot).
        reason: why the term cannot be computed, for error messages.
        evaluate: ``evaluate(ev, samples) -> Tensor`` of shape ``(n,)``;
            ``None`` for a term that cannot be computed.
        normalizes: for ``log Z``, the energy network it normalises.
        sign: the sign with which the term enters its log density
            (``-1`` for ``log Z``, ``+1`` for every other term).
        factor: the variable whose factor of the density the term belongs
            to (``"z"`` for $\log p(z)$ or $\log q_\phi(z \mid x)$, ``"x"``
            for $\log p_\theta(x \mid z)$ or the energy of a marginal EBM);
            ``None`` for a term of a joint that does not factorise, such as
            $f(x, z)$. A divergence weighted per variable
            ([`KL`][kldiv.KL]``(a, b, weights={"z": beta})``) scales the terms
            of that variable's factors.
    """

    key: Hashable
    label: str
    latex: str
    reads: frozenset[str]
    modules: tuple[nn.Module, ...] = ()
    computable: bool = True
    reason: str = ""
    evaluate: Callable[[Evaluator, Samples], Tensor] | None = None
    normalizes: nn.Module | None = None
    sign: float = 1.0
    factor: str | None = None


class Density(abc.ABC):
    """A joint density over named variables, as a sum of [`Term`][kldiv.Term]s.

    Subclasses must implement exactly: `variables`, `terms`, `networks`,
    `own_networks`, `dependence`, and, if they can be sampled, `sample` and
    `pathwise`. Densities are compared by identity.

    Arguments:
        name: short name used when printing expressions (``"q"``, ``"p"``, ``"π"``).
        latex: the name in LaTeX.
    """

    variables: tuple[str, ...]
    order: tuple[str, ...] | None = None
    """The order in which `sample` draws the variables, each given those before it
    (``("z", "x")`` for a generator), or ``None`` if unknown or not sequential (an EBM's
    joint chain). With it, the score-function route keeps only the factors upstream of a
    term (Rao–Blackwellisation); without it, every factor's score is kept (still unbiased)."""

    def __init__(self, name: str, latex: str | None = None):
        self.name = name
        self.latex = name if latex is None else latex

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r} over {', '.join(self.variables)})"

    @abc.abstractmethod
    def terms(self) -> tuple[Term, ...]:
        """The log density as a tuple of additive terms."""

    @abc.abstractmethod
    def networks(self) -> dict[str, nn.Module]:
        """Every network the density uses, by role (``{"decoder": g}``)."""

    @abc.abstractmethod
    def own_networks(self) -> tuple[nn.Module, ...]:
        """The networks a player named by this density trains."""

    @abc.abstractmethod
    def dependence(self, reads: frozenset[str]) -> frozenset[nn.Module]:
        """Networks on which the marginal of the variables ``reads`` depends."""

    def pathwise(self, reads: frozenset[str]) -> frozenset[nn.Module]:
        """Networks through which this density's samples of ``reads`` carry gradients."""
        return _NO_MODULES

    def marginal_key(self, reads: frozenset[str]) -> Hashable:
        """Identity of the marginal of ``reads`` under this density's samples.

        Two sources with equal keys draw ``reads`` from the same distribution,
        so $E_s[t]$ merges across them. By default only the density itself.
        """
        return ("density", id(self))

    @property
    def sampleable(self) -> bool:
        """Whether the density can draw its own samples."""
        return False

    def sources(self) -> tuple[Density, ...]:
        """The densities whose samples this one's samples are made from (a sampler's start,
        the data density's ``x``, a generator's energy-based prior); the compiler draws them too."""
        return ()

    def drawn_from(self, variable: str) -> Term | None:
        r"""The term whose distribution this density's samples of ``variable`` are
        drawn from, given the variables drawn before it (``log q(z|x)`` for the
        ``z`` of a `DataDensity`); ``None`` if they are drawn some other way.

        The compiler uses it to replace $E_s[\log q(z \mid x) - \log \mathcal N(z; 0, I)]$
        by the closed-form $E_x\,\mathrm{KL}(q(\cdot \mid x) \,\|\, \mathcal N(0, I))$
        when $z$ is drawn from that very $q$.
        """
        return None

    def sample(self, ev: Evaluator, n: int) -> Samples:
        """Draw ``n`` samples of every variable (reparameterised where possible)."""
        from kldiv.errors import NotSampleableError

        raise NotSampleableError(f"{self!r} cannot be sampled; attach a sampler to it")

    def describe_sampling(self) -> str:
        """One line saying how samples are drawn, for `explain`."""
        return "cannot be sampled"

    def log_prob(self, values: Mapping[str, Tensor], **inputs: Tensor) -> Tensor:
        r"""The log density of ``values``, one number per row, up to the terms kldiv cannot compute.

        The sum of the density's computable terms, each with its sign: exact
        for a `GeneratorDensity`; up to $\log Z$ for an energy-based density
        (the unnormalised $f$, plus $\log q(z \mid x)$ for a `DecoupledEBLVM`);
        up to $\log q_{\rm data}(x)$ for a `DataDensity`
        ($\log q_\phi(z \mid x)$ alone).  `uncomputed` names what is left out.

        Arguments:
            values: a tensor per variable of the density, with a common
                leading size (the number of rows).
            **inputs: the step inputs the terms read, if any.

        Examples:
            >>> import torch
            >>> from kldiv import GeneratorDensity
            >>> p = GeneratorDensity(torch.nn.Linear(2, 3), latent_shape=2, sigma=1.0)
            >>> p.log_prob({"x": torch.zeros(4, 3), "z": torch.zeros(4, 2)}).shape
            torch.Size([4])
        """
        missing = [v for v in self.variables if v not in values]
        if missing:
            raise ValueError(f"{self!r}.log_prob needs a value for every variable; missing {missing}")
        sizes = {v: t.shape[0] for v, t in values.items() if isinstance(t, Tensor) and t.ndim}
        if len(set(sizes.values())) != 1 or len(sizes) != len(values):
            raise ValueError(f"{self!r}.log_prob takes tensors with one common number of rows, got {sizes}")
        s = Samples({v: values[v] for v in self.variables})
        ev = _DirectEvaluator(inputs, s)
        total = torch.zeros(s.n, dtype=ev.dtype, device=ev.device)
        for t in self.terms():
            if t.computable and t.evaluate is not None:
                out = t.evaluate(ev, s)
                total = total + t.sign * (_per_sample(out) if out.dim() else out.expand(s.n))
        return total

    def uncomputed(self) -> tuple[str, ...]:
        """The labels of the terms `log_prob` leaves out (``log Z``, ``log q_data(x)``)."""
        return tuple(t.label for t in self.terms() if not (t.computable and t.evaluate is not None))


class _DirectEvaluator:
    """The `Evaluator` of `Density.log_prob`: networks run as they are, on given values."""

    def __init__(self, inputs: Mapping[str, Tensor], samples: Samples):
        first = next(iter(samples.values.values()))
        self.device, self.dtype = first.device, first.dtype
        self._inputs, self._samples = dict(inputs), samples

    def call(self, module: nn.Module, *args: Tensor) -> object:
        return module(*args)

    def input(self, name: str) -> Tensor:
        try:
            return self._inputs[name]
        except KeyError:
            raise KeyError(f"log_prob needs the input {name!r}; pass it as log_prob(values, {name}=...)") from None

    def samples(self, density: Density) -> Samples:
        return self._samples


def _standard_normal_log_prob(z: Tensor) -> Tensor:
    # (n, *latent) -> (n,)
    flat = z.flatten(1)
    return -0.5 * (flat.square().sum(1) + flat.shape[1] * _LOG_2PI)


def _standard_normal_term(latent_shape: tuple[int, ...]) -> Term:
    r"""The term $\log \mathcal N(z; 0, I)$: one key for every density with it, so they merge
    (and the compiler pairs it with an encoder into the closed-form KL)."""
    return Term(
        key=("standard_normal", latent_shape),
        label="log N(z; 0, I)",
        latex=r"\log \mathcal{N}(z; 0, I)",
        reads=frozenset({"z"}),
        evaluate=lambda ev, s: _standard_normal_log_prob(s["z"]),
        factor="z",
    )


def _per_sample(out: Tensor) -> Tensor:
    """Accept an ``(n,)`` or ``(n, 1)`` network output; leave anything else for validation."""
    if out.dim() == 2 and out.shape[1] == 1:
        return out[:, 0]
    return out


def _as_shape(shape: int | tuple[int, ...]) -> tuple[int, ...]:
    return (int(shape),) if isinstance(shape, int) else tuple(int(s) for s in shape)


class GeneratorDensity(Density):
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

    Samples are drawn ancestrally and reparameterised, so $x$ carries the
    gradient of $\theta$.  The papers draw synthesis samples without the
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

    variables = ("x", "z")
    order = ("z", "x")

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
        super().__init__(name, latex)
        if synthesis not in ("sample", "mean"):
            raise ValueError(f"synthesis must be 'sample' or 'mean', got {synthesis!r}")
        self.reparameterized = bool(reparameterized)
        if not self.reparameterized and synthesis == "mean":
            raise ValueError(
                "reparameterized=False estimates the decoder's gradient by the score of p(x|z), which "
                "needs x drawn from p(x|z): use synthesis='sample'"
            )
        if sigma is not None and not float(sigma) > 0:
            raise ValueError(f"sigma must be positive, got {sigma!r}")
        self.decoder = decoder
        self.latent_shape = _as_shape(latent_shape)
        self.sigma = None if sigma is None else float(sigma)
        self.synthesis = synthesis
        if prior is not None and not isinstance(prior, EnergyPrior):
            if not isinstance(prior, Distribution):
                raise TypeError(
                    "prior must be a torch/pyro distribution over z or an EnergyPrior, "
                    f"got {type(prior).__name__}"
                )
            if tuple(prior.batch_shape) != () or tuple(prior.event_shape) != self.latent_shape:
                raise ValueError(
                    f"prior must have batch shape () and event shape latent_shape {self.latent_shape} "
                    f"(use .to_event), got batch {tuple(prior.batch_shape)}, event {tuple(prior.event_shape)}"
                )
        self.prior = prior
        if isinstance(prior, EnergyPrior):
            if prior.latent_shape != self.latent_shape:
                raise ValueError(
                    f"the energy-based prior {prior.name} is over z of shape {prior.latent_shape}, "
                    f"but latent_shape is {self.latent_shape}"
                )
            z_terms = prior.terms()
        elif prior is None:
            z_terms = (_standard_normal_term(self.latent_shape),)
        else:
            z_terms = (
                Term(
                    key=("prior", prior),
                    label="log p(z)",
                    latex=r"\log p(z)",
                    reads=frozenset({"z"}),
                    evaluate=lambda ev, s: prior.log_prob(s["z"]),
                    factor="z",
                ),
            )
        self._terms = (
            *z_terms,
            Term(
                key=("likelihood", decoder, self.sigma),
                label="log N(x; g(z), σ²I)" if self.sigma is not None else "log p(x|z)",
                latex=r"\log p_\theta(x \mid z)",
                reads=frozenset({"x", "z"}),
                modules=(decoder,),
                evaluate=self._log_likelihood,
                factor="x",
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

    def terms(self) -> tuple[Term, ...]:
        return self._terms

    def _energy_prior(self) -> EnergyPrior | None:
        return self.prior if isinstance(self.prior, EnergyPrior) else None

    def networks(self) -> dict[str, nn.Module]:
        ebm = self._energy_prior()
        return {"decoder": self.decoder} if ebm is None else {"decoder": self.decoder, "prior": ebm.energy}

    def own_networks(self) -> tuple[nn.Module, ...]:
        ebm = self._energy_prior()
        return (self.decoder,) if ebm is None else (self.decoder, ebm.energy)

    def dependence(self, reads: frozenset[str]) -> frozenset[nn.Module]:
        ebm = self._energy_prior()
        out = {self.decoder} if "x" in reads else set()
        if ebm is not None and reads & {"x", "z"}:  # x = g(z) inherits z's dependence on the prior
            out.add(ebm.energy)
        return frozenset(out)

    def pathwise(self, reads: frozenset[str]) -> frozenset[nn.Module]:
        # z ~ N(0, I) or a fixed prior carries no parameter; z from a sampler carries no gradient
        return frozenset({self.decoder}) if "x" in reads and self.reparameterized else _NO_MODULES

    def marginal_key(self, reads: frozenset[str]) -> Hashable:
        if reads == {"z"}:
            ebm = self._energy_prior()
            return self._terms[0].key if ebm is None else ebm.marginal_key(reads)
        return super().marginal_key(reads)

    @property
    def sampleable(self) -> bool:
        ebm = self._energy_prior()
        return ebm is None or ebm.sampleable

    def sources(self) -> tuple[Density, ...]:
        ebm = self._energy_prior()
        return () if ebm is None else (ebm,)

    def sample(self, ev: Evaluator, n: int) -> Samples:
        ebm = self._energy_prior()
        if ebm is not None:  # this round's prior samples, drawn once by the prior's sampler
            z = ev.samples(ebm)["z"].detach()
        elif self.prior is None:
            z = torch.randn((n, *self.latent_shape), device=ev.device, dtype=ev.dtype)
        else:  # a parameter-free prior: no gradient to carry, whether or not it has rsample
            z = self.prior.sample((n,)).to(device=ev.device, dtype=ev.dtype)
        out = self._distribution_or_mean(ev, z)
        if not self.reparameterized:  # x ~ p(x|z) without a pathwise gradient
            with torch.no_grad():
                x = out.sample() if isinstance(out, Distribution) else out + self.sigma * torch.randn_like(out)
            return Samples({"x": x, "z": z})
        if isinstance(out, Distribution):
            if self.synthesis == "mean":
                x = out.mean
            elif out.has_rsample:
                x = out.rsample()
            else:
                raise TypeError(
                    f"the decoder of {self!r} returns a {type(out).__name__}, which has no "
                    "reparameterised sampler; kldiv needs pathwise samples of x. Use "
                    "synthesis='mean' or a reparameterisable observation model"
                )
        elif self.synthesis == "mean":
            x = out
        else:
            x = out + self.sigma * torch.randn_like(out)
        return Samples({"x": x, "z": z})

    def describe_sampling(self) -> str:
        ebm = self._energy_prior()
        if ebm is not None:
            z = f"z ~ {ebm.name}(z) ({ebm.describe_sampling()})"
        else:
            z = "z ~ N(0, I)" if self.prior is None else "z ~ p(z)"
        if self.synthesis == "mean":
            return f"{z}, x = g(z) (noise-free synthesis)"
        if not self.reparameterized:
            return f"{z}, x ~ p(x|z) (not reparameterised: score-function gradients)"
        return f"{z}, x ~ p(x|z) (reparameterised)"


class DataDensity(Density):
    r"""The data (bottom-up) density $q_\phi(x, z) = q_{\rm data}(x)\, q_\phi(z \mid x)$.

    $x$ is drawn from a source given to the step (by default the input
    ``"data"``: the mini-batch), then $z \sim q_\phi(z \mid x)$ by
    reparameterisation.  $\log q_{\rm data}(x)$ is unknown: it can never be
    computed, so the compiler accepts it only where no player's gradient needs
    it (e.g. $E_q[\log q_{\rm data}(x)]$ with $x$ from the data).

    ``x`` may instead be another density (e.g. an EBM with a Langevin sampler,
    as in Xie et al. 2021): its samples are then *treated as data*, detached,
    with an unknown density that depends on no parameter.

    Without an encoder the density is over ``x`` alone.

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
        super().__init__(name, latex)
        if not isinstance(x, (str, Density)):
            raise TypeError(f"x must be an input name or a Density, got {type(x).__name__}")
        self.encoder = encoder
        self.reparameterized = bool(reparameterized)
        self.x_source = x
        self.variables = ("x",) if encoder is None else ("x", "z")
        self.order = self.variables  # x from the data, then z ~ q(z|x)
        origin = x if isinstance(x, str) else x.name
        data = Term(
            key=("data", x),
            label="log q_data(x)" if isinstance(x, str) else f"log q_{origin}(x)",
            latex=r"\log q_{\rm data}(x)",
            reads=frozenset({"x"}),
            computable=False,
            reason=f"the density of the data (x from {origin!r}) is unknown",
            factor="x",
        )
        self._terms = (data,) if encoder is None else (data, conditional_term(encoder, name))

    def terms(self) -> tuple[Term, ...]:
        return self._terms

    def networks(self) -> dict[str, nn.Module]:
        return {} if self.encoder is None else {"encoder": self.encoder}

    def own_networks(self) -> tuple[nn.Module, ...]:
        return () if self.encoder is None else (self.encoder,)

    def dependence(self, reads: frozenset[str]) -> frozenset[nn.Module]:
        return frozenset({self.encoder}) if "z" in reads else _NO_MODULES

    def pathwise(self, reads: frozenset[str]) -> frozenset[nn.Module]:
        return self.dependence(reads) if self.reparameterized else _NO_MODULES

    def marginal_key(self, reads: frozenset[str]) -> Hashable:
        if reads == {"x"}:  # x is the data, whatever the encoder
            source = self.x_source if isinstance(self.x_source, str) else id(self.x_source)
            return ("data", source)
        return super().marginal_key(reads)

    @property
    def sampleable(self) -> bool:
        return True

    def sources(self) -> tuple[Density, ...]:
        return (self.x_source,) if isinstance(self.x_source, Density) else ()

    def drawn_from(self, variable: str) -> Term | None:
        return self._terms[1] if variable == "z" and self.encoder is not None else None

    def sample(self, ev: Evaluator, n: int) -> Samples:
        if isinstance(self.x_source, str):
            x = ev.input(self.x_source)
        else:
            x = ev.samples(self.x_source)["x"].detach()
        if self.encoder is None:
            return Samples({"x": x})
        dist = ev.call(self.encoder, x)
        if not self.reparameterized:
            if not isinstance(dist, Distribution):
                _rsample(dist, self)  # names the wrong return type
            return Samples({"x": x, "z": dist.sample()})
        return Samples({"x": x, "z": _rsample(dist, self)})

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


def conditional_term(encoder: nn.Module, name: str = "q") -> Term:
    """The term $\\log q_\\phi(z \\mid x)$ of an encoder; shared by every density using it
    (its key is the encoder), labelled ``log <name>(z|x)``."""

    def evaluate(ev: Evaluator, s: Samples) -> Tensor:
        dist = ev.call(encoder, s["x"])
        if not isinstance(dist, Distribution):
            raise TypeError(
                f"an encoder must return a torch/pyro distribution over z, got {type(dist).__name__}"
            )
        return dist.log_prob(s["z"])

    return Term(
        key=("conditional", encoder),
        label=f"log {name}(z|x)",
        latex=r"\log q_\phi(z \mid x)",
        reads=frozenset({"x", "z"}),
        modules=(encoder,),
        evaluate=evaluate,
        factor="z",
    )


def prior_kl_term(conditional: Term, prior: Term) -> Term:
    r"""The term $\mathrm{KL}(q_\phi(\cdot \mid x) \,\|\, \mathcal N(0, I))$ that replaces
    $\log q_\phi(z \mid x) - \log \mathcal N(z; 0, I)$ under a source drawing $z$ from $q_\phi$.

    Evaluated in closed form (``torch.distributions.kl_divergence``) when the
    encoder's distribution has one against a standard normal — a diagonal
    Normal does — and otherwise as the one-sample difference it replaces, so
    its expectation is the same either way and only its variance changes.
    """
    (encoder,) = conditional.modules
    given = prior.key[1] if prior.key[0] == "prior" else None  # a GeneratorDensity's own prior

    def evaluate(ev: Evaluator, s: Samples) -> Tensor:
        q = ev.call(encoder, s["x"])
        z = s["z"]
        if not isinstance(q, Distribution):
            raise TypeError(
                f"an encoder must return a torch/pyro distribution over z, got {type(q).__name__}"
            )
        event = z.dim() - 1
        if tuple(q.event_shape) == tuple(z.shape[1:]):
            if given is None:
                base = torch.distributions.Normal(torch.zeros_like(z), torch.ones_like(z))
                target = torch.distributions.Independent(base, event) if event else base
            else:
                target = given.expand(q.batch_shape)
            try:
                return torch.distributions.kl_divergence(q, target)
            except NotImplementedError:
                pass
        log_q = q.log_prob(z)
        if log_q.dim() != 1:  # not one value per sample: left for the first-step shape check to name
            return log_q
        return log_q - (_standard_normal_log_prob(z) if given is None else given.log_prob(z))

    return Term(
        key=("prior_kl", conditional.key, prior.key),
        label=f"KL({conditional.label.removeprefix('log ')} ‖ {'N(0, I)' if given is None else 'p(z)'})",
        latex=r"\mathrm{KL}(q_\phi(\cdot \mid x) \,\|\, " + (r"\mathcal{N}(0, I))" if given is None else "p(z))"),
        reads=frozenset({"x", "z"}),
        modules=conditional.modules,
        evaluate=evaluate,
        factor="z",
    )


def _rsample(dist: object, owner: Density) -> Tensor:
    if not isinstance(dist, Distribution):
        raise TypeError(
            f"the encoder of {owner!r} must return a torch/pyro distribution over z, "
            f"got {type(dist).__name__}"
        )
    if not dist.has_rsample:
        raise TypeError(
            f"the encoder of {owner!r} returns a {type(dist).__name__}, which cannot be "
            "reparameterised; kldiv draws z by rsample() so that gradients reach the encoder. For a "
            "discrete z, give DataDensity(encoder, reparameterized=False): the compiler then estimates "
            "the encoder's gradient by the score function"
        )
    return dist.rsample()


class EnergyBased(Density):
    r"""An energy-based density on any network: $\pi(v) = \exp f(v) / Z$ over the variables ``variables``.

    Log-density terms: $f(v)$ (the network called on the variables in the
    order given) and $-\log Z$, which the compiler cancels where the
    expression allows and otherwise pays for with the attached sampler
    ($\nabla \log Z = E_\pi[\nabla f]$).  Every sampler draws from it through
    `target`, so an energy model written outside kldiv is sampled like the
    built-in ones; `LatentEBM`, `MarginalEBM`, `DecoupledEBLVM` and
    `EnergyPrior` are this class with their variables fixed (and, for the last
    two, an encoder or a base term added).

    Arguments:
        energy: network $v \mapsto f(v)$ of shape ``(n,)`` or ``(n, 1)``.
        sampler: optional [`Sampler`][kldiv.samplers.Sampler] drawing from $\pi$.
        name: short name for printing.
        latex: the name in LaTeX (default: ``name``).
        variables: the variables the energy reads, e.g. ``("x",)`` or
            ``("x", "z")``; fixed by the subclasses.

    Examples:
        >>> import torch
        >>> from kldiv import EnergyBased
        >>> from kldiv.samplers import Langevin
        >>> f = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.SiLU(), torch.nn.Linear(8, 1))
        >>> pi = EnergyBased(f, variables=("y",), sampler=Langevin(10, 0.1, init="normal", shape={"y": 3}))
        >>> [t.label for t in pi.terms()], pi.sampleable
        (['f(y)', 'log Z(π)'], True)
    """

    _energy_reads: tuple[str, ...] = ()

    def __init__(
        self,
        energy: nn.Module,
        sampler: Sampler | None = None,
        name: str = "π",
        latex: str | None = None,
        *,
        variables: tuple[str, ...] | None = None,
    ):
        super().__init__(name, latex)
        if variables is not None:
            variables = tuple(variables)
            if not variables or not all(isinstance(v, str) for v in variables) or len(set(variables)) != len(variables):
                raise ValueError(f"variables must be distinct variable names, got {variables!r}")
            self.variables = self._energy_reads = variables
        elif not self._energy_reads:
            raise TypeError("EnergyBased needs the variables its energy reads: EnergyBased(f, variables=('x',))")
        self.energy = energy
        self.sampler = sampler
        reads = frozenset(self._energy_reads)
        args = ", ".join(self._energy_reads)
        # exp f(x) / Z is the x-factor of a MarginalEBM or a DecoupledEBLVM, exp f(z) N(z) / Z the
        # z-factor of an EnergyPrior; f(x, z) factorises no further
        factor = self._energy_reads[0] if len(self._energy_reads) == 1 else None
        self.energy_term = Term(
            key=("energy", energy),
            label=f"f({args})",
            latex=rf"f({args})",
            reads=reads,
            modules=(energy,),
            evaluate=lambda ev, s: _per_sample(
                ev.call(energy, *(s[v] for v in self._energy_reads))
            ),
            factor=factor,
        )
        self.log_normalizer = Term(
            key=("log_normalizer", energy),
            label=f"log Z({name})",
            latex=rf"\log Z_{{{self.latex}}}",
            reads=frozenset(),
            modules=(energy,),
            computable=False,
            reason=f"the normalising constant of {name} is an intractable integral",
            normalizes=energy,
            sign=-1.0,
            factor=factor,
        )

    _energy_reads: tuple[str, ...]

    def with_sampler(self, sampler: Sampler):
        """A copy of this density that draws its samples with ``sampler``."""
        new = copy.copy(self)
        new.sampler = sampler
        return new

    @property
    def sampleable(self) -> bool:
        return self.sampler is not None

    def sources(self) -> tuple[Density, ...]:
        return () if self.sampler is None else tuple(self.sampler.sources())

    def target(self) -> tuple[tuple[str, ...], Callable[[Mapping[str, Tensor]], Tensor]]:
        r"""The variables a sampler draws and the unnormalised log density it targets,
        $v \mapsto f(v)$ (plus any parameter-free base term), as a function of a mapping
        variable → tensor; what [`Langevin`][kldiv.samplers.Langevin] runs on."""
        energy, reads = self.energy, self._energy_reads
        return reads, lambda v: energy(*(v[k] for k in reads))

    def marginal_key(self, reads: frozenset[str]) -> Hashable:
        # exp f(x) / Z: a MarginalEBM and every DecoupledEBLVM on the same energy
        # network share the marginal of x, whatever their samplers (and every
        # density with the same EnergyPrior shares the marginal of z).
        if len(self._energy_reads) == 1 and reads == set(self._energy_reads):
            return ("energy_marginal", id(self.energy))
        return super().marginal_key(reads)

    def own_networks(self) -> tuple[nn.Module, ...]:
        return (self.energy,)

    def terms(self) -> tuple[Term, ...]:
        return (self.energy_term, self.log_normalizer)

    def networks(self) -> dict[str, nn.Module]:
        return {"energy": self.energy}

    def dependence(self, reads: frozenset[str]) -> frozenset[nn.Module]:
        return frozenset({self.energy}) if reads else _NO_MODULES

    def sample(self, ev: Evaluator, n: int) -> Samples:
        if self.sampler is None:
            return super().sample(ev, n)
        return self.sampler.sample(self, ev, n)

    def describe_sampling(self) -> str:
        if self.sampler is None:
            return "cannot be sampled (no sampler attached)"
        return f"sampled by {self.sampler!r} (samples detached)"


class LatentEBM(EnergyBased):
    r"""A latent energy-based model $\pi_\alpha(x, z) = \exp f_\alpha(x, z) / Z(\alpha)$.

    Log-density terms: $f_\alpha(x, z)$ and $-\log Z(\alpha)$.  $\log Z$ reads no
    variable, so the compiler cancels it across sources (the divergence
    triangle, Han et al. 2020, eq. 10); where it survives, the gradient
    $\nabla_\alpha \log Z = E_\pi[\nabla_\alpha f]$ needs a sampler.

    Arguments:
        energy: network $(x, z) \mapsto f(x, z)$ of shape ``(n,)`` or ``(n, 1)``.
        sampler: optional [`Sampler`][kldiv.samplers.Sampler] drawing from $\pi$.
        name: short name for printing.
        latex: the name in LaTeX (default: ``name``).
    """

    variables = ("x", "z")
    _energy_reads = ("x", "z")

    def __init__(
        self,
        energy: nn.Module,
        *,
        sampler: Sampler | None = None,
        name: str = "π",
        latex: str | None = r"\pi",
    ):
        super().__init__(energy, sampler, name, latex)


class MarginalEBM(EnergyBased):
    r"""An energy-based model on $x$ alone, $\pi_\alpha(x) = \exp f_\alpha(x) / Z(\alpha)$.

    Arguments:
        energy: network $x \mapsto f(x)$ of shape ``(n,)`` or ``(n, 1)``.
        sampler: optional [`Sampler`][kldiv.samplers.Sampler] drawing from $\pi$.
        name: short name for printing.
        latex: the name in LaTeX (default: ``name``).
    """

    variables = ("x",)
    _energy_reads = ("x",)

    def __init__(
        self,
        energy: nn.Module,
        *,
        sampler: Sampler | None = None,
        name: str = "π",
        latex: str | None = r"\pi",
    ):
        super().__init__(energy, sampler, name, latex)


class DecoupledEBLVM(EnergyBased):
    r"""The decoupled energy-based latent-variable model $\Pi(x, z) = \pi_\psi(x)\, q_\phi(z \mid x)$.

    A marginal EBM $\pi_\psi(x) = \exp f_\psi(x) / Z(\psi)$ times an encoder
    borrowed from a [`DataDensity`][kldiv.DataDensity] (Kan et al. 2022, eq. 8;
    the $\Pi$ of Han et al. 2019).  Log-density terms: $f_\psi(x)$,
    $-\log Z(\psi)$ and $\log q_\phi(z \mid x)$ — the last is the *same* term as
    the data density's, so in $\mathrm{KL}(q_{\rm data} q_\phi \,\|\, \pi_\psi q_\phi)$
    it cancels and the encoder gets no gradient.

    As a player, a `DecoupledEBLVM` trains its energy network only; name the
    encoder (or its `DataDensity`) to train that too.

    Arguments:
        energy: a network $x \mapsto f(x)$, or a [`MarginalEBM`][kldiv.MarginalEBM]
            (whose sampler, if any, then draws $x$).
        encoder: the encoder network $x \mapsto q_\phi(z \mid x)$.
        sampler: optional sampler for $x$ (overrides the marginal's).
        name: short name for printing.
        latex: the name in LaTeX (default: ``name``).
    """

    variables = ("x", "z")
    order = ("x", "z")  # x by the sampler, then z ~ q(z|x)
    _energy_reads = ("x",)

    def __init__(
        self,
        energy: nn.Module | MarginalEBM,
        encoder: nn.Module,
        *,
        sampler: Sampler | None = None,
        name: str = "Π",
        latex: str | None = r"\Pi",
    ):
        if isinstance(energy, MarginalEBM):
            sampler = energy.sampler if sampler is None else sampler
            energy = energy.energy
        super().__init__(energy, sampler, name, latex)
        self.encoder = encoder
        self.conditional = conditional_term(encoder)

    def terms(self) -> tuple[Term, ...]:
        return (self.energy_term, self.log_normalizer, self.conditional)

    def networks(self) -> dict[str, nn.Module]:
        return {"energy": self.energy, "encoder": self.encoder}

    def dependence(self, reads: frozenset[str]) -> frozenset[nn.Module]:
        if "z" in reads:
            return frozenset({self.energy, self.encoder})
        return frozenset({self.energy}) if reads else _NO_MODULES

    def pathwise(self, reads: frozenset[str]) -> frozenset[nn.Module]:
        return frozenset({self.encoder}) if "z" in reads else _NO_MODULES

    def drawn_from(self, variable: str) -> Term | None:
        return self.conditional if variable == "z" and self.sampler is not None else None

    def sample(self, ev: Evaluator, n: int) -> Samples:
        if self.sampler is None:
            return super().sample(ev, n)
        xs = self.sampler.sample(self, ev, n)
        x = xs["x"]
        z = _rsample(ev.call(self.encoder, x), self)
        return Samples({"x": x, "z": z}, weights=xs.weights, self_normalized=xs.self_normalized)

    def describe_sampling(self) -> str:
        if self.sampler is None:
            return "cannot be sampled (no sampler attached)"
        return f"x by {self.sampler!r} (detached), z ~ q(z|x) (reparameterised)"


class EnergyPrior(EnergyBased):
    r"""An energy-based prior on the latent vector (Pang, Han, Nijkamp, Zhu & Wu, NeurIPS 2020).

    $$ p_\alpha(z) = \frac{1}{Z(\alpha)} \exp f_\alpha(z)\, \mathcal N(z; 0, I), $$

    an exponential tilting of the standard normal by an energy network on $z$.
    Log-density terms: $f_\alpha(z)$, $\log \mathcal N(z; 0, I)$ and
    $-\log Z(\alpha)$.  Give it to a [`GeneratorDensity`][kldiv.GeneratorDensity]
    as its ``prior``: $p_{\alpha,\theta}(x, z) = p_\alpha(z)\, p_\theta(x \mid z)$.
    In $\mathrm{KL}(q \,\|\, p_{\alpha,\theta})$ the $\log Z$ survives for the
    prior's player, so its gradient $\nabla_\alpha \log Z = E_{p_\alpha}[\nabla_\alpha f_\alpha(z)]$
    needs samples of the prior: attach a sampler (short-run Langevin on $z$
    from $\mathcal N(0, I)$, whose target includes the base $\log \mathcal N(z; 0, I)$).
    Where $z$ is drawn from an encoder, the compiler pairs the base term with
    $\log q_\phi(z \mid x)$ into the closed-form $\mathrm{KL}(q_\phi(\cdot \mid x) \,\|\, \mathcal N(0, I))$,
    leaving $-E_q[f_\alpha(z)] + \log Z(\alpha)$ as the prior's correction.

    Arguments:
        energy: network $z \mapsto f(z)$ of shape ``(n,)`` or ``(n, 1)``.
        latent_shape: the shape of $z$ (an int for a vector).
        sampler: optional [`Sampler`][kldiv.samplers.Sampler] drawing from $p_\alpha$,
            e.g. ``Langevin(60, 0.4, init="normal", shape={"z": latent_shape})``
            (the short-run prior sampler of Pang et al.).
        name: short name for printing.
        latex: the name in LaTeX.

    Examples:
        >>> import torch
        >>> from kldiv import EnergyPrior, GeneratorDensity
        >>> from kldiv.samplers import Langevin
        >>> f = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.SiLU(), torch.nn.Linear(8, 1))
        >>> prior = EnergyPrior(f, 2, sampler=Langevin(20, 0.4, init="normal", shape={"z": 2}))
        >>> p = GeneratorDensity(torch.nn.Linear(2, 3), latent_shape=2, sigma=0.3, prior=prior)
        >>> [t.label for t in p.terms()]
        ['f(z)', 'log N(z; 0, I)', 'log Z(p_α)', 'log N(x; g(z), σ²I)']

    References:
        Pang, Han, Nijkamp, Zhu & Wu, *Learning Latent Space Energy-Based Prior
        Model*, NeurIPS 2020, [arXiv:2006.08205](https://arxiv.org/abs/2006.08205).
    """

    variables = ("z",)
    order = ("z",)
    _energy_reads = ("z",)

    def __init__(
        self,
        energy: nn.Module,
        latent_shape: int | tuple[int, ...],
        *,
        sampler: Sampler | None = None,
        name: str = "p_α",
        latex: str | None = r"p_\alpha",
    ):
        super().__init__(energy, sampler, name, latex)
        self.latent_shape = _as_shape(latent_shape)
        self.base_term = _standard_normal_term(self.latent_shape)  # the generator's N(0, I) term

    def terms(self) -> tuple[Term, ...]:
        return (self.energy_term, self.base_term, self.log_normalizer)

    def target(self) -> tuple[tuple[str, ...], Callable[[Mapping[str, Tensor]], Tensor]]:
        energy = self.energy
        return ("z",), lambda v: _per_sample(energy(v["z"])) + _standard_normal_log_prob(v["z"])

    def networks(self) -> dict[str, nn.Module]:
        return {"prior": self.energy}

