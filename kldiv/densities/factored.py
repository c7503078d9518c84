r"""Directed densities declared by their factors, with the structure the compiler reads derived.

A directed density is a product of factors, one per variable, each drawn
given the variables before it:

$$ p(v_1, \dots, v_K) = \prod_{k=1}^K p(v_k \mid \mathrm{pa}_k), \qquad \mathrm{pa}_k \subseteq \{v_1, \dots, v_{k-1}\}. $$

A [`Factor`][kldiv.Factor] says where its variable comes from — a step
input (the data, whose density is unknown), a fixed distribution, a
network that maps its parents to a ``torch`` / ``pyro`` distribution, or
another density's sampler (an energy-based prior) — and whether its samples
are reparameterised.  The papers' own densities are declared this way:
[`GeneratorDensity`][kldiv.GeneratorDensity] is the factors $z$ (a fixed
prior or an [`EnergyPrior`][kldiv.EnergyPrior]) and $x \mid z$ (the
decoder); [`DataDensity`][kldiv.DataDensity] is $x$ (the data) and
$z \mid x$ (the encoder).  A
[`FactoredDensity`][kldiv.FactoredDensity] is built from the factors alone:
its log-density terms are the factors' log probabilities, and everything the
compiler asks of a density is derived from the graph instead of declared by
hand —

* `dependence(reads)`: the networks of the factors of ``reads`` and of their
  ancestors (the marginal of ``reads`` depends on exactly those);
* `pathwise(reads)`: the networks whose gradient the samples of ``reads``
  carry, through reparameterised factors only: a sample drawn by
  ``rsample`` carries its own network's and its parents' gradients, one drawn
  by ``sample`` carries none;
* `marginal_key(reads)`: densities whose ``reads`` and ancestors come from the
  same parameter-free factors (the same data input, the same fixed prior),
  or from the same density's sampler, share the marginal, so their
  expectations merge;
* `networks`, `own_networks`, `sources`, `sampleable`;
* `order`, `drawn_from`, `sample` (ancestral), `describe_sampling`, `log_prob`.

So a user's density cannot declare a dependence wrongly (the failure
`tests/test_structure.py` guards against), and takes a few lines.  A
subclass may give a factor its own terms (`_factor_terms`: a faster or
shared form of the same log density) and its own draw (`_draw`); the
structure stays derived.

Examples:
    >>> import torch
    >>> import pyro.distributions as dist
    >>> from kldiv import KL, DataDensity, Factor, FactoredDensity
    >>> class Location(torch.nn.Module):            # a learned prior mean: p(z) = N(m, I)
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.m = torch.nn.Parameter(torch.zeros(2))
    ...     def forward(self):
    ...         return dist.Normal(self.m, 1.0).to_event(1)
    >>> class Pixels(torch.nn.Module):              # p(x | z) = N(Wz, 0.5^2 I)
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.lin = torch.nn.Linear(2, 3)
    ...     def forward(self, z):
    ...         return dist.Normal(self.lin(z), 0.5).to_event(1)
    >>> prior, decoder = Location(), Pixels()
    >>> p = FactoredDensity([Factor("z", prior), Factor("x", decoder, parents=("z",))], name="p")
    >>> p.dependence(frozenset({"x"})) == {prior, decoder}, p.pathwise(frozenset({"z"})) == {prior}
    (True, True)
    >>> [t.label for t in p.terms()]
    ['log p(z)', 'log p(x|z)']
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import attrs
import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from kldiv.densities.base import Density, Evaluator, Samples, Term, _per_sample

__all__ = ["Factor", "FactoredDensity"]

_NONE: frozenset[nn.Module] = frozenset()


@attrs.frozen(eq=False)
class Factor:
    r"""One factor $p(v \mid \mathrm{pa})$ of a [`FactoredDensity`][kldiv.FactoredDensity].

    Exactly one of ``network``, ``distribution``, ``input`` and ``density``
    says where the variable comes from.

    Attributes:
        variable: the variable the factor draws, e.g. ``"z"``.
        network: a module mapping the parents' tensors (in the order of
            ``parents``; no argument for a parentless factor) to a
            distribution over the variable, with batch shape ``(n,)`` (or
            ``()`` for a parentless factor, then drawn ``n`` times).
        parents: the variables the network reads; each must come earlier.
        distribution: a fixed (parameter-free) distribution over one sample
            of the variable, batch shape ``()``.
        input: the name of a step input the variable is taken from (the data
            batch ``"data"``), or a density whose samples are taken *as data*
            (detached: the samples of an EBM's sampler, Xie et al. 2021); its
            density is unknown, so the compiler accepts its term only where no
            player's gradient needs it.
        density: a density over this one variable that draws it with its own
            sampler (an [`EnergyPrior`][kldiv.EnergyPrior]); its terms are the
            factor's, its networks are this density's too, and its samples
            carry no pathwise gradient.
        reparameterized: draw by ``rsample`` (samples carry gradients) or, if
            ``False``, by ``sample`` (no pathwise gradient: the compiler takes
            the score-function route through this factor).
        name: the network's role in messages (default: the variable).
    """

    variable: str
    network: nn.Module | None = None
    parents: tuple[str, ...] = attrs.field(default=(), converter=lambda ps: (ps,) if isinstance(ps, str) else tuple(ps))
    distribution: Distribution | None = None
    input: str | Density | None = None
    reparameterized: bool = True
    name: str | None = None
    density: Density | None = None

    def __attrs_post_init__(self):
        if not isinstance(self.variable, str) or not self.variable:
            raise TypeError(f"a factor's variable is a non-empty name, got {self.variable!r}")
        given = [k for k in _KINDS if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                f"the factor of {self.variable!r} needs exactly one of network, distribution, input or density, "
                f"got {given or 'none'}"
            )
        if not isinstance(self.reparameterized, bool):
            raise TypeError(f"reparameterized, of the factor of {self.variable!r}, must be True or False, "
                            f"got {self.reparameterized!r}")
        if self.input is not None and (not isinstance(self.input, (str, Density)) or self.input == ""):
            got = repr(self.input) if isinstance(self.input, str) else type(self.input).__name__
            raise TypeError(f"the input of the factor of {self.variable!r} is a step input's name or a density, "
                            f"got {got}")
        if self.density is not None:
            if not isinstance(self.density, Density):
                raise TypeError(f"the density of the factor of {self.variable!r} must be a Density, "
                                f"got {type(self.density).__name__}")
            if tuple(self.density.variables) != (self.variable,):
                raise ValueError(f"the density {self.density.name} of the factor of {self.variable!r} must be over "
                                 f"{self.variable!r} alone, not {self.density.variables}")
        if self.network is not None and not isinstance(self.network, nn.Module):
            raise TypeError(f"the network of the factor of {self.variable!r} must be an nn.Module, "
                            f"got {type(self.network).__name__}")
        if self.distribution is not None:
            if not isinstance(self.distribution, Distribution):
                raise TypeError(f"the distribution of the factor of {self.variable!r} must be a torch/pyro "
                                f"distribution, got {type(self.distribution).__name__}")
            if tuple(self.distribution.batch_shape) != ():
                raise ValueError(f"the distribution of the factor of {self.variable!r} must have batch shape () "
                                 f"(use .to_event), got {tuple(self.distribution.batch_shape)}")
        if not all(isinstance(p, str) and p for p in self.parents):
            raise TypeError(f"the parents of the factor of {self.variable!r} are variable names, got {self.parents!r}")
        if self.variable in self.parents:
            raise ValueError(f"the factor of {self.variable!r} cannot be its own parent")
        if self.name is not None and not isinstance(self.name, str):
            raise TypeError(f"the name of the factor of {self.variable!r} is a string, got {self.name!r}")
        if self.network is None and self.parents:
            raise ValueError(f"the factor of {self.variable!r} has parents {self.parents} but no network to read them")

    @property
    def kind(self) -> str:
        """``"network"``, ``"distribution"``, ``"input"`` or ``"density"``."""
        return next(k for k in _KINDS if getattr(self, k) is not None)


_KINDS = ("network", "distribution", "input", "density")


class FactoredDensity(Density):
    r"""A directed density declared by its factors; its structure is derived (see the module).

    Arguments:
        factors: one [`Factor`][kldiv.Factor] per variable, in the order they are drawn.
        name: short name for printing.
        latex: the name in LaTeX (default: ``name``).
    """

    def __init__(self, factors: Sequence[Factor], *, name: str = "p", latex: str | None = None):
        super().__init__(name, latex)
        factors = tuple(factors)
        if not factors or not all(isinstance(f, Factor) for f in factors):
            raise TypeError("a FactoredDensity needs a non-empty sequence of Factor objects")
        seen: list[str] = []
        for f in factors:
            if f.variable in seen:
                raise ValueError(f"{name}: two factors draw {f.variable!r}")
            late = [p for p in f.parents if p not in seen]
            if late:
                raise ValueError(
                    f"{name}: the factor of {f.variable!r} reads {late}, which no earlier factor draws; "
                    "give the factors in the order they are drawn"
                )
            seen.append(f.variable)
        self.factors = factors
        self._by_variable = {f.variable: f for f in factors}
        self.variables = tuple(seen)
        self.order = self.variables
        self._terms_of = {f.variable: tuple(self._factor_terms(f)) for f in factors}
        self._terms = tuple(t for f in factors for t in self._terms_of[f.variable])

    # --- the terms ------------------------------------------------------------------------
    def _factor_terms(self, f: Factor) -> tuple[Term, ...]:
        r"""The log-density terms of one factor: $\log p(v \mid \mathrm{pa})$ (for a density
        factor, that density's terms).  A subclass may give a faster or shared form of
        the same function; the structure does not depend on it."""
        v, parents = f.variable, f.parents
        given = f"|{', '.join(parents)}" if parents else ""
        if f.kind == "input":
            origin = f.input if isinstance(f.input, str) else f.input.name
            return (Term(
                key=("data", f.input),
                label=f"log q_{origin}({v})",
                latex=rf"\log q_{{\rm {origin}}}({v})",
                reads=frozenset({v}),
                computable=False,
                reason=f"the density of the data ({v} from {origin!r}) is unknown",
                factor=v,
            ),)
        if f.kind == "density":
            return f.density.terms()
        if f.kind == "distribution":
            d = f.distribution
            return (Term(  # the key of a GeneratorDensity's fixed prior: the same function, and a closed-form KL
                key=("prior", d),
                label=f"log {self.name}({v})",
                latex=rf"\log {self.latex}({v})",
                reads=frozenset({v}),
                evaluate=lambda ev, s: d.log_prob(s[v]),
                factor=v,
            ),)
        net = f.network

        def evaluate(ev: Evaluator, s: Samples) -> Tensor:
            return _per_sample(self._distribution(ev, f, s.values).log_prob(s[v]))

        return (Term(
            key=("factor", net, v, parents),
            label=f"log {self.name}({v}{given})",
            latex=rf"\log {self.latex}({v}{given})",
            reads=frozenset({v, *parents}),
            modules=(net,),
            evaluate=evaluate,
            factor=v,
        ),)

    def terms(self) -> tuple[Term, ...]:
        return self._terms

    def _distribution(self, ev: Evaluator, f: Factor, values: Mapping[str, Tensor]) -> Distribution:
        """The distribution a network factor gives its variable, given the parents in ``values``."""
        d = ev.call(f.network, *(values[p] for p in f.parents))
        if not isinstance(d, Distribution):
            raise TypeError(f"the network of the factor of {f.variable!r} in {self.name} must return a torch/pyro "
                            f"distribution, got {type(d).__name__}")
        return d

    # --- the structure, derived -----------------------------------------------------------
    def _closure(self, reads: frozenset[str]) -> list[Factor]:
        """The factors of ``reads`` and of all their ancestors, in drawing order."""
        todo, keep = [v for v in reads if v in self._by_variable], set()
        while todo:
            v = todo.pop()
            if v not in keep:
                keep.add(v)
                todo.extend(self._by_variable[v].parents)
        return [f for f in self.factors if f.variable in keep]

    def _carries(self, v: str) -> frozenset[nn.Module]:
        """The networks whose gradient a sample of ``v`` carries: its own and its parents',
        through reparameterised network factors only."""
        f = self._by_variable[v]
        if f.kind != "network" or not f.reparameterized:
            return _NONE
        return frozenset({f.network}.union(*(self._carries(p) for p in f.parents)))

    def _factor_networks(self, f: Factor) -> frozenset[nn.Module]:
        """The networks the factor's distribution depends on."""
        if f.kind == "network":
            return frozenset({f.network})
        if f.kind == "density":
            return f.density.dependence(frozenset({f.variable}))
        return _NONE  # a fixed distribution, or data: nothing to train

    def networks(self) -> dict[str, nn.Module]:
        """The factors' networks by role (the factor's ``name``, else its variable), then those
        of the densities drawn from (an energy-based prior's ``"prior"``)."""
        out = {f.name or f.variable: f.network for f in self.factors if f.kind == "network"}
        for f in self.factors:
            if f.kind == "density":
                out.update(f.density.networks())
        return out

    def own_networks(self) -> tuple[nn.Module, ...]:
        nets = [f.network for f in self.factors if f.kind == "network"]
        nets += [m for f in self.factors if f.kind == "density" for m in f.density.own_networks()]
        return tuple(dict.fromkeys(nets))

    def dependence(self, reads: frozenset[str]) -> frozenset[nn.Module]:
        return frozenset().union(*(self._factor_networks(f) for f in self._closure(reads)))

    def pathwise(self, reads: frozenset[str]) -> frozenset[nn.Module]:
        return frozenset().union(*(self._carries(v) for v in reads if v in self._by_variable))

    def marginal_key(self, reads: frozenset[str]) -> Hashable:
        closure = self._closure(reads)
        if len(closure) == 1 and closure[0].kind == "density":  # the prior's sampler draws it: its marginal
            return closure[0].density.marginal_key(frozenset({closure[0].variable}))
        if closure and all(f.kind in ("input", "distribution") for f in closure):  # parameter-free: shared
            keys = tuple((f.variable, t.key) for f in closure for t in self._terms_of[f.variable])
            if len(keys) == 1:
                return keys[0][1]  # the marginal any density with this data input or fixed prior has
            return ("factors", keys)
        return super().marginal_key(reads)

    def drawn_from(self, variable: str) -> Term | None:
        f = self._by_variable.get(variable)
        # the closed-form KL against a prior evaluates the encoder on x: only for a factor z | x
        if f is not None and f.kind == "network" and f.parents == ("x",) and variable == "z":
            (term,) = self._terms_of[variable]
            return term
        return None

    @property
    def sampleable(self) -> bool:
        return all(f.density.sampleable for f in self.factors if f.kind == "density")

    def sources(self) -> tuple[Density, ...]:
        return tuple(dict.fromkeys(
            d for f in self.factors for d in (f.density, f.input) if isinstance(d, Density)
        ))

    # --- sampling ---------------------------------------------------------------------------
    def sample(self, ev: Evaluator, n: int) -> Samples:
        values: dict[str, Tensor] = {}
        inputs = [f for f in self.factors if f.kind == "input"]
        for f in inputs:  # the rows of the inputs fix the number of samples
            values[f.variable] = self._draw(ev, f, values, n)
        if inputs:
            n = values[inputs[0].variable].shape[0]
        for f in self.factors:
            if f.kind != "input":
                values[f.variable] = self._draw(ev, f, values, n)
        return Samples({v: values[v] for v in self.variables})

    def _draw(self, ev: Evaluator, f: Factor, values: Mapping[str, Tensor], n: int) -> Tensor:
        """Draw the factor's variable given the variables in ``values`` (``n`` rows)."""
        if f.kind == "input":
            if isinstance(f.input, str):
                return ev.input(f.input)
            return ev.samples(f.input)[f.variable].detach()  # samples taken as data
        if f.kind == "density":  # this round's samples of the density, drawn once by its sampler
            return ev.samples(f.density)[f.variable].detach()
        if f.kind == "distribution":
            d, shape = f.distribution, (n,)
        else:
            d = self._distribution(ev, f, values)
            shape = (n,) if tuple(d.batch_shape) == () else ()
        if not f.reparameterized:
            with torch.no_grad():
                out = d.sample(shape)
        elif d.has_rsample:
            out = d.rsample(shape)
        else:
            raise TypeError(
                f"the factor of {f.variable!r} in {self.name} gives a {type(d).__name__}, which cannot be "
                "reparameterised; declare it Factor(..., reparameterized=False) and the compiler "
                "estimates gradients through it by the score function"
            )
        if f.kind == "distribution":  # a fixed distribution lives where it was built
            out = out.to(device=ev.device)
        return out

    def describe_sampling(self) -> str:
        parts = []
        for f in self.factors:
            if f.kind == "input":
                parts.append(f"{f.variable} from input {f.input!r}" if isinstance(f.input, str)
                             else f"{f.variable} from samples of {f.input.name} (detached)")
                continue
            if f.kind == "density":
                parts.append(f"{f.variable} ~ {f.density.name}({f.variable}) ({f.density.describe_sampling()})")
                continue
            given = f"|{', '.join(f.parents)}" if f.parents else ""
            how = "reparameterised" if f.reparameterized else "not reparameterised: score-function gradients"
            parts.append(f"{f.variable} ~ {self.name}({f.variable}{given}) ({how})")
        return ", ".join(parts)
