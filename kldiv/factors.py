r"""Directed densities declared by their factors, with the structure the compiler reads derived.

A directed density is a product of factors, one per variable, each drawn
given the variables before it:

$$ p(v_1, \dots, v_K) = \prod_{k=1}^K p(v_k \mid \mathrm{pa}_k), \qquad \mathrm{pa}_k \subseteq \{v_1, \dots, v_{k-1}\}. $$

A [`Factor`][kldiv.Factor] says where its variable comes from — a step
input (the data, whose density is unknown), a fixed distribution, or a
network that maps its parents to a ``torch`` / ``pyro`` distribution — and
whether its samples are reparameterised.  A
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
  same parameter-free factors (the same data input, the same fixed prior)
  share the marginal, so their expectations merge;
* `order`, `drawn_from`, `sample` (ancestral), `describe_sampling`, `log_prob`.

So a user's density cannot declare a dependence wrongly (the failure
`tests/test_structure.py` guards against), and takes a few lines.

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

from kldiv.densities import Density, Evaluator, Samples, Term, _per_sample

__all__ = ["Factor", "FactoredDensity"]

_NONE: frozenset[nn.Module] = frozenset()


@attrs.frozen(eq=False)
class Factor:
    r"""One factor $p(v \mid \mathrm{pa})$ of a [`FactoredDensity`][kldiv.FactoredDensity].

    Exactly one of ``network``, ``distribution`` and ``input`` says where the
    variable comes from.

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
            batch ``"data"``); its density is unknown, so the compiler accepts
            its term only where no player's gradient needs it.
        reparameterized: draw by ``rsample`` (samples carry gradients) or, if
            ``False``, by ``sample`` (no pathwise gradient: the compiler takes
            the score-function route through this factor).
        name: the network's role in messages (default: the variable).
    """

    variable: str
    network: nn.Module | None = None
    parents: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    distribution: Distribution | None = None
    input: str | None = None
    reparameterized: bool = True
    name: str | None = None

    def __attrs_post_init__(self):
        given = [k for k in ("network", "distribution", "input") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                f"the factor of {self.variable!r} needs exactly one of network, distribution or input, "
                f"got {given or 'none'}"
            )
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
        if self.network is None and self.parents:
            raise ValueError(f"the factor of {self.variable!r} has parents {self.parents} but no network to read them")

    @property
    def kind(self) -> str:
        """``"network"``, ``"distribution"`` or ``"input"``."""
        return "network" if self.network is not None else "distribution" if self.distribution is not None else "input"


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
        self._terms = tuple(self._term(f) for f in factors)
        self._term_of = {f.variable: t for f, t in zip(factors, self._terms)}

    # --- the terms ------------------------------------------------------------------------
    def _term(self, f: Factor) -> Term:
        v, parents = f.variable, f.parents
        given = f"|{', '.join(parents)}" if parents else ""
        if f.kind == "input":
            return Term(
                key=("data", f.input),
                label=f"log q_{f.input}({v})",
                latex=rf"\log q_{{\rm {f.input}}}({v})",
                reads=frozenset({v}),
                computable=False,
                reason=f"the density of the input {f.input!r} is unknown",
                factor=v,
            )
        if f.kind == "distribution":
            d = f.distribution
            return Term(  # the key of a GeneratorDensity's fixed prior: the same function, and a closed-form KL
                key=("prior", d),
                label=f"log {self.name}({v})",
                latex=rf"\log {self.latex}({v})",
                reads=frozenset({v}),
                evaluate=lambda ev, s: d.log_prob(s[v]),
                factor=v,
            )
        net = f.network

        def evaluate(ev: Evaluator, s: Samples) -> Tensor:
            return _per_sample(self._distribution(ev, f, s.values).log_prob(s[v]))

        return Term(
            key=("factor", net, v, parents),
            label=f"log {self.name}({v}{given})",
            latex=rf"\log {self.latex}({v}{given})",
            reads=frozenset({v, *parents}),
            modules=(net,),
            evaluate=evaluate,
            factor=v,
        )

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
        f = self._by_variable[v]
        if f.kind == "input" or not f.reparameterized:
            return _NONE
        own = {f.network} if f.network is not None else set()
        return frozenset(own.union(*(self._carries(p) for p in f.parents)))

    def networks(self) -> dict[str, nn.Module]:
        return {f.name or f.variable: f.network for f in self.factors if f.network is not None}

    def own_networks(self) -> tuple[nn.Module, ...]:
        return tuple(dict.fromkeys(f.network for f in self.factors if f.network is not None))

    def dependence(self, reads: frozenset[str]) -> frozenset[nn.Module]:
        return frozenset(f.network for f in self._closure(reads) if f.network is not None)

    def pathwise(self, reads: frozenset[str]) -> frozenset[nn.Module]:
        return frozenset().union(*(self._carries(v) for v in reads if v in self._by_variable))

    def marginal_key(self, reads: frozenset[str]) -> Hashable:
        closure = self._closure(reads)
        if closure and all(f.kind != "network" for f in closure):  # parameter-free: shared with any density
            keys = tuple((f.variable, self._term_of[f.variable].key) for f in closure)
            if len(keys) == 1 and keys[0][1][0] == "data":
                return keys[0][1]  # the marginal a DataDensity of the same input has
            return ("factors", keys)
        return super().marginal_key(reads)

    def drawn_from(self, variable: str) -> Term | None:
        f = self._by_variable.get(variable)
        # the closed-form KL against a prior evaluates the encoder on x: only for a factor z | x
        if f is not None and f.kind == "network" and f.parents == ("x",) and variable == "z":
            return self._term_of[variable]
        return None

    @property
    def sampleable(self) -> bool:
        return True

    # --- sampling ---------------------------------------------------------------------------
    def sample(self, ev: Evaluator, n: int) -> Samples:
        values: dict[str, Tensor] = {}
        inputs = [f for f in self.factors if f.kind == "input"]
        for f in inputs:  # the rows of the inputs fix the number of samples
            values[f.variable] = ev.input(f.input)
        if inputs:
            n = values[inputs[0].variable].shape[0]
        for f in self.factors:
            if f.kind == "input":
                continue
            if f.kind == "distribution":
                d, shape = f.distribution, (n,)
            else:
                d = self._distribution(ev, f, values)
                shape = (n,) if tuple(d.batch_shape) == () else ()
            if not f.reparameterized:
                with torch.no_grad():
                    values[f.variable] = d.sample(shape)
            elif d.has_rsample:
                values[f.variable] = d.rsample(shape)
            else:
                raise TypeError(
                    f"the factor of {f.variable!r} in {self.name} gives a {type(d).__name__}, which cannot be "
                    "reparameterised; declare it Factor(..., reparameterized=False) and the compiler "
                    "estimates gradients through it by the score function"
                )
            if f.kind == "distribution":  # a fixed distribution lives where it was built
                values[f.variable] = values[f.variable].to(device=ev.device)
        return Samples({v: values[v] for v in self.variables})

    def describe_sampling(self) -> str:
        parts = []
        for f in self.factors:
            if f.kind == "input":
                parts.append(f"{f.variable} from input {f.input!r}")
                continue
            given = f"|{', '.join(f.parents)}" if f.parents else ""
            how = "reparameterised" if f.reparameterized else "not reparameterised: score-function gradients"
            parts.append(f"{f.variable} ~ {self.name}({f.variable}{given}) ({how})")
        return ", ".join(parts)
