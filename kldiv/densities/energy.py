r"""Energy-based densities $\pi(v) = \exp f(v) / Z$: the public base `EnergyBased` and the
models with their variables fixed (`LatentEBM`, `MarginalEBM`, `DecoupledEBLVM`, `EnergyPrior`)."""

from __future__ import annotations

import copy
from collections.abc import Callable, Hashable, Mapping
from typing import TYPE_CHECKING

from torch import Tensor, nn

from kldiv._checks import network, positive_number
from kldiv.densities.base import (_NO_MODULES, Density, Evaluator, Samples, Term, _as_shape,
                                  _gaussian_reference_log_prob, _gaussian_reference_term, _per_sample, _rsample,
                                  _standard_normal_log_prob, _standard_normal_term, conditional_term)

if TYPE_CHECKING:
    from kldiv.samplers import Sampler

__all__ = ["DecoupledEBLVM", "EnergyBased", "EnergyPrior", "LatentEBM", "MarginalEBM"]


def _as_sampler(sampler: object, owner: str, *, optional: bool = True) -> Sampler | None:
    """``sampler`` if it is a kldiv sampler (or ``None`` when ``optional``), else a TypeError naming it.

    A sampler is recognised by the interface of `kldiv.samplers.Sampler`, ``sample`` and
    ``sources`` (the samplers sit above the densities and are not imported here)."""
    if sampler is None and optional:
        return sampler
    if sampler is not None and all(callable(getattr(sampler, m, None)) for m in ("sample", "sources")):
        return sampler
    raise TypeError(f"the sampler of {owner} must be a kldiv.samplers.Sampler (e.g. Langevin(steps, step_size))"
                    f"{' or None' if optional else ''}, got {sampler!r}")


class EnergyBased(Density):
    r"""An energy-based density on any network: $\pi(v) = \exp f(v) / Z$ over the variables ``variables``.

    Log-density terms: $f(v)$ (the network called on the variables in the
    order given) and $-\log Z$, which the compiler cancels where the
    expression allows and otherwise pays for with the attached sampler
    ($\nabla \log Z = E_\pi[\nabla f]$).  With a ``reference`` $\sigma$ the
    density is $\pi(v) = \exp f(v)\, \mathcal N(v; 0, \sigma^2 I) / Z$, an
    exponential tilting of a Gaussian (the EBM of Xie et al. 2021): one more
    term $\log \mathcal N(v; 0, \sigma^2 I)$ per variable, with no
    parameters, so it changes no gradient of the energy, but it is part of
    every sampler's target and of the model's log density (its anomaly
    score).  Every sampler draws from it through
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
        reference: the standard deviation $\sigma > 0$ of a Gaussian
            reference $\mathcal N(0, \sigma^2 I)$ on every variable the energy
            reads; ``None`` (default) for none.

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
        reference: float | None = None,
    ):
        super().__init__(name, latex)
        if variables is not None:
            variables = tuple(variables)
            if not variables or not all(isinstance(v, str) for v in variables) or len(set(variables)) != len(variables):
                raise ValueError(f"variables must be distinct variable names, got {variables!r}")
            self.variables = self._energy_reads = variables
        elif not self._energy_reads:
            raise TypeError("EnergyBased needs the variables its energy reads: EnergyBased(f, variables=('x',))")
        self.energy = network(f"the energy of {type(self).__name__}", energy)
        self.sampler = _as_sampler(sampler, type(self).__name__)
        self.reference = _as_reference(reference)
        self.reference_terms = () if self.reference is None else tuple(
            _gaussian_reference_term(v, self.reference) for v in self._energy_reads)
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
            # the integral depends on the energy, the reference and the variables it is over
            key=("log_normalizer", energy, self.reference, self._energy_reads),
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

    def with_sampler(self, sampler: Sampler, *, name: str | None = None):
        r"""A copy of this density that draws its samples with ``sampler`` (named ``name``, default:
        this density's name). The copy is the same model: its energy, reference and $\log Z$ are
        this density's, so a $\log Z$ cancels between the two, and what survives of each is paid
        for by each one's own sampler. Name the copy when both are in one game: every term,
        payment and message is labelled by density name, and two densities named alike read
        as one (compiling such a game warns, `kldiv.errors.NameClashWarning`)."""
        new = copy.copy(self)
        new.sampler = _as_sampler(sampler, type(self).__name__, optional=False)
        if name is not None:
            Density.__init__(new, name)
        return new

    @property
    def sampleable(self) -> bool:
        return self.sampler is not None

    def sources(self) -> tuple[Density, ...]:
        return () if self.sampler is None else tuple(self.sampler.sources())

    def target(self) -> tuple[tuple[str, ...], Callable[[Mapping[str, Tensor]], Tensor]]:
        r"""The variables a sampler draws and the unnormalised log density it targets,
        $v \mapsto f(v)$ (plus any parameter-free base term, such as the reference), as a
        function of a mapping variable → tensor; what [`Langevin`][kldiv.samplers.Langevin] runs on."""
        energy, reads, sigma = self.energy, self._energy_reads, self.reference
        if sigma is None:
            return reads, lambda v: energy(*(v[k] for k in reads))
        return reads, lambda v: _per_sample(energy(*(v[k] for k in reads))) + sum(
            _gaussian_reference_log_prob(v[k], sigma) for k in reads)

    def marginal_key(self, reads: frozenset[str]) -> Hashable:
        # exp f(x) / Z: a MarginalEBM and every DecoupledEBLVM on the same energy
        # network share the marginal of x, whatever their samplers (and every
        # density with the same EnergyPrior shares the marginal of z).
        if len(self._energy_reads) == 1 and reads == set(self._energy_reads):
            return ("energy_marginal", id(self.energy), self.reference)
        return super().marginal_key(reads)

    def own_networks(self) -> tuple[nn.Module, ...]:
        return (self.energy,)

    def terms(self) -> tuple[Term, ...]:
        return (self.energy_term, *self.reference_terms, self.log_normalizer)

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
        reference: optional $\sigma$ of a Gaussian reference on $x$ and $z$:
            $\pi(x, z) \propto \exp f(x, z)\, \mathcal N(x; 0, \sigma^2 I)\, \mathcal N(z; 0, \sigma^2 I)$.
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
        reference: float | None = None,
    ):
        super().__init__(energy, sampler, name, latex, reference=reference)


class MarginalEBM(EnergyBased):
    r"""An energy-based model on $x$ alone, $\pi_\alpha(x) = \exp f_\alpha(x) / Z(\alpha)$.

    With a ``reference`` $\sigma$, $\pi_\alpha(x) = \exp f_\alpha(x)\, \mathcal N(x; 0, \sigma^2 I) / Z(\alpha)$:
    the descriptor of MCMC teaching (Xie et al. 2021; $\sigma = 0.016$ in the
    authors' code), whose reference keeps the Langevin chains bounded.

    Arguments:
        energy: network $x \mapsto f(x)$ of shape ``(n,)`` or ``(n, 1)``.
        sampler: optional [`Sampler`][kldiv.samplers.Sampler] drawing from $\pi$.
        name: short name for printing.
        latex: the name in LaTeX (default: ``name``).
        reference: optional $\sigma > 0$ of the Gaussian reference.

    Examples:
        >>> import torch
        >>> from kldiv import MarginalEBM
        >>> pi = MarginalEBM(torch.nn.Linear(3, 1), reference=0.5)
        >>> [t.label for t in pi.terms()]
        ['f(x)', 'log N(x; 0, 0.5²I)', 'log Z(π)']
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
        reference: float | None = None,
    ):
        super().__init__(energy, sampler, name, latex, reference=reference)


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
            (whose sampler, if any, then draws $x$, and whose reference it keeps).
        encoder: the encoder network $x \mapsto q_\phi(z \mid x)$.
        sampler: optional sampler for $x$ (overrides the marginal's).
        name: short name for printing.
        latex: the name in LaTeX (default: ``name``).
        reference: optional $\sigma$ of a Gaussian reference on $x$ (see
            [`MarginalEBM`][kldiv.MarginalEBM]); given with a `MarginalEBM`, it must be the marginal's.
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
        reference: float | None = None,
    ):
        if isinstance(energy, MarginalEBM):
            if reference is not None and _as_reference(reference) != energy.reference:
                raise ValueError(f"reference={reference!r} differs from the MarginalEBM's own "
                                 f"({energy.reference!r}); give it to one of them")
            sampler = energy.sampler if sampler is None else sampler
            reference = energy.reference
            energy = energy.energy
        network("the encoder of DecoupledEBLVM", encoder)
        super().__init__(energy, sampler, name, latex, reference=reference)
        self.encoder = encoder
        self.conditional = conditional_term(encoder)

    def terms(self) -> tuple[Term, ...]:
        return (self.energy_term, *self.reference_terms, self.log_normalizer, self.conditional)

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


def _as_reference(sigma) -> float | None:
    """A reference standard deviation: ``None``, or a finite number > 0 (refused by name otherwise)."""
    return positive_number("reference", sigma, optional=True)


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

