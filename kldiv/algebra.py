r"""The algebra of KL divergences between joint densities.

An [`Expression`][kldiv.Expression] is a finite signed sum of divergences,

$$ \mathcal L = \sum_j c_j\, D_j, \qquad D_j \in \{\mathrm{KL}(a \,\|\, b),\ S(a, b)\}, $$

built with ``+``, ``-``, unary ``-`` and multiplication by a number.  Each
divergence expands, term by term, into expectations of log-density terms:

$$ \mathrm{KL}(a \,\|\, b) = \sum_{t \in a} E_a[t] - \sum_{t \in b} E_a[t], \qquad
   S(a, b) = \mathrm{KL}(a \,\|\, b) + \mathrm{KL}(b \,\|\, a). $$

That expansion ([`Expression.expand`][kldiv.Expression.expand]) is what the
compiler works on.

A divergence can weigh the factors of one variable apart from the rest,
as ``poutine.scale`` does to a Pyro site: with $a = a_x a_z$ and $b = b_x b_z$,

$$ \mathrm{KL}_{w}(a \,\|\, b) = E_a\Big[\sum_v w_v \big(\log a_v - \log b_v\big)\Big], $$

so ``KL(q, p, weights={"z": beta})`` is the $\beta$-VAE objective
$E_q[-\log p(x \mid z)] + \beta\, E_q\,\mathrm{KL}(q(z \mid x) \,\|\, p(z))$
(up to $E[\log q_{\rm data}]$).

A [`Game`][kldiv.Game] says who plays an expression: each
[`Player`][kldiv.Player] minimises or maximises one objective over some
networks (``L.maximize(pi).minimize(q, p)``).  `Game.compile` hands it to
the planner (`kldiv.planner`, per player how each summand is estimated) and
the runtime (`kldiv.estimator`), which read the players without importing
this module (see `kldiv.compiler`).

Examples:
    >>> import torch
    >>> from kldiv import KL, DataDensity, GeneratorDensity, LatentEBM
    >>> enc = torch.nn.Linear(3, 4)
    >>> q = DataDensity(enc)
    >>> p = GeneratorDensity(torch.nn.Linear(2, 3), latent_shape=2, sigma=1.0)
    >>> pi = LatentEBM(torch.nn.Bilinear(3, 2, 1))
    >>> print(KL(q, p) + KL(p, pi) - KL(q, pi))
    KL(q ‖ p) + KL(p ‖ π) − KL(q ‖ π)
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping
from typing import Literal

import attrs
from torch import nn

from kldiv.densities import Density, Term
from kldiv.densities.base import _densities_of, _Namer
from kldiv.errors import CompileError, VariableMismatchError
from kldiv.estimator import Estimator

__all__ = ["KL", "S", "Contribution", "Divergence", "Expression", "Game", "Player"]


@attrs.frozen(eq=False)
class Contribution:
    r"""One expanded summand $c\, E_{\rm source}[t]$ of an expression.

    Attributes:
        coef: the coefficient $c$ (the term's sign in its density included).
        source: the density the expectation is under.
        term: the log-density term $t$.
        origin: the signed divergence it came from, e.g. ``"−KL(q ‖ π)"``.
        owner: the density whose log density the term is a term of (a side
            of that divergence); a $\log Z$ is paid for by its owner's sampler.
    """

    coef: float
    source: Density
    term: Term
    origin: str
    owner: Density | None = None


@attrs.frozen(eq=False)
class Divergence:
    """A single divergence ``KL(a ‖ b)`` (``symmetric=False``) or ``S(a, b)``."""

    a: Density
    b: Density
    symmetric: bool = False
    weights: tuple[tuple[str, float], ...] = ()

    def __attrs_post_init__(self):
        for side in (self.a, self.b):
            if not isinstance(side, Density):
                raise TypeError(
                    f"{self._name} takes two kldiv densities, got {type(side).__name__}"
                )
        if set(self.a.variables) != set(self.b.variables):
            raise VariableMismatchError(
                f"{self._name}({self.a.name}, {self.b.name}): {self.a!r} is over "
                f"({', '.join(self.a.variables)}) but {self.b!r} is over "
                f"({', '.join(self.b.variables)}); a divergence compares two densities "
                "over the same variables"
            )
        for v, w in self.weights:
            if v not in self.a.variables:
                raise VariableMismatchError(
                    f"{self._name}({self.a.name}, {self.b.name}) weighs the factors of {v!r}, "
                    f"but the densities are over ({', '.join(self.a.variables)}); weigh one of those"
                )
            if not (isinstance(w, float) and math.isfinite(w) and w > 0):
                raise CompileError(
                    f"{self._name}({self.a.name}, {self.b.name}): the weight of {v!r} must be a "
                    f"finite positive number, got {w!r}"
                )
            for side in (self.a, self.b):
                joint = [t.label for t in side.terms() if t.factor is None and (v in t.reads or not t.reads)]
                if joint:
                    raise CompileError(
                        f"{self._name}({self.a.name}, {self.b.name}) weighs the factors of {v!r}, but "
                        f"{side.name} has terms that belong to no single variable's factor "
                        f"({', '.join(joint)}), so its log density does not split by variable; "
                        "drop the weights, or weigh a divergence between densities that factorise"
                    )

    @property
    def _name(self) -> str:
        return "S" if self.symmetric else "KL"

    @property
    def key(self) -> tuple:
        """Identity used to collect like divergences (``S`` is symmetric in its arguments)."""
        if self.symmetric:
            return ("S", frozenset({id(self.a), id(self.b)}), self.weights)
        return ("KL", id(self.a), id(self.b), self.weights)

    def _weights_text(self) -> str:
        return "".join(f"; {v}×{w:g}" for v, w in self.weights)

    def __str__(self) -> str:
        if self.symmetric:
            return f"S({self.a.name}, {self.b.name}{self._weights_text()})"
        return f"KL({self.a.name} ‖ {self.b.name}{self._weights_text()})"

    def latex(self) -> str:
        """The divergence in LaTeX."""
        sub = ", ".join(rf"{v} \times {w:g}" for v, w in self.weights)
        sub = f"_{{{sub}}}" if sub else ""
        if self.symmetric:
            return rf"S{sub}({self.a.latex}, {self.b.latex})"
        return rf"\mathrm{{KL}}{sub}({self.a.latex} \,\|\, {self.b.latex})"

    def expand(self, coef: float, origin: str) -> list[Contribution]:
        """The contributions of ``coef`` times this divergence."""
        if self.symmetric:
            forward = Divergence(self.a, self.b, weights=self.weights)
            backward = Divergence(self.b, self.a, weights=self.weights)
            return forward.expand(coef, f"{forward} in {origin}") + backward.expand(
                coef, f"{backward} in {origin}"
            )
        a, b = self.a, self.b
        w = dict(self.weights)
        out = [Contribution(coef * t.sign * w.get(t.factor, 1.0), a, t, origin, a) for t in a.terms()]
        out += [Contribution(-coef * t.sign * w.get(t.factor, 1.0), a, t, origin, b) for t in b.terms()]
        return out


def _format_coef(c: float, first: bool) -> tuple[str, str]:
    sign = "−" if c < 0 else ("" if first else "+")
    mag = abs(c)
    return sign, "" if mag == 1 else f"{mag:g}·"


def _not_a_bool(scalar: object, doing: str) -> None:
    """A coefficient is a number; ``True`` is a flag that Python would silently read as 1."""
    if isinstance(scalar, bool):
        raise CompileError(f"cannot {doing} {scalar!r}: an expression's coefficients must be finite real numbers, "
                           "not True or False")


def _no_constant(expr: object, doing: str, other: object) -> None:
    """An expression is a sum of divergences: a number or a tensor added to it is refused."""
    if isinstance(other, numbers.Number) or hasattr(other, "shape"):
        what = repr(other) if isinstance(other, numbers.Number) else f"a {type(other).__name__}"
        raise TypeError(f"cannot {doing} {what} and {expr}: an expression is a signed sum of KL and S terms, "
                        "and a constant changes no player's gradient; leave it out")
    raise TypeError(f"cannot {doing} {type(other).__name__} and {expr}: an expression is a signed sum of KL and S "
                    "terms, each built from two kldiv densities")


def _not_a_coefficient(expr: object, doing: str, scalar: object) -> None:
    """A coefficient is a real number: a tensor (even a 0-d one), a string or a density is refused."""
    hint = " (a 0-d tensor: pass float(t))" if hasattr(scalar, "shape") else ""
    raise TypeError(f"cannot {doing} {expr} by {type(scalar).__name__}{hint}: an expression's coefficients "
                    "are real numbers")


class Expression:
    r"""A signed sum $\sum_j c_j D_j$ of divergences between densities.

    Build one from [`KL`][kldiv.KL] and [`S`][kldiv.S] with ``+``, ``-`` and
    scalar ``*``; like divergences are collected and zero coefficients dropped.
    Turn one into a game with [`minimize`][kldiv.Expression.minimize] and
    [`maximize`][kldiv.Expression.maximize].
    """

    def __init__(self, items: Iterable[tuple[float, Divergence]] = ()):
        collected: dict[tuple, list] = {}
        for coef, div in items:
            if isinstance(coef, bool) or not isinstance(coef, numbers.Real) or not math.isfinite(coef):
                raise CompileError(
                    f"the coefficient of {div} is {coef!r}: an expression's coefficients must be finite real "
                    "numbers (check the scalar it was multiplied or divided by)"
                )
            entry = collected.setdefault(div.key, [0.0, div])
            entry[0] += float(coef)
        for c, d in collected.values():
            if not math.isfinite(c):
                raise CompileError(f"the coefficients of {d} sum to {c}: an expression's coefficients must be finite")
        self.items: tuple[tuple[float, Divergence], ...] = tuple(
            (c, d) for c, d in collected.values() if c != 0.0
        )

    # --- arithmetic -----------------------------------------------------------------
    def __add__(self, other: Expression) -> Expression:
        if not isinstance(other, Expression):
            if isinstance(other, numbers.Number) and other == 0:  # sum([...], 0), expr + 0
                return Expression(self.items)
            _no_constant(self, "add", other)
        return Expression(self.items + other.items)

    def __radd__(self, other: object) -> Expression:
        if isinstance(other, numbers.Number) and other == 0:  # sum([...]) starts at 0
            return Expression(self.items)
        _no_constant(self, "add", other)

    def __rsub__(self, other: object) -> Expression:
        _no_constant(self, "subtract", other)

    def __neg__(self) -> Expression:
        return Expression((-c, d) for c, d in self.items)

    def __sub__(self, other: Expression) -> Expression:
        if not isinstance(other, Expression):
            _no_constant(self, "subtract", other)
        return self + (-other)

    def __mul__(self, scalar: float) -> Expression:
        if not isinstance(scalar, numbers.Real):
            _not_a_coefficient(self, "multiply", scalar)
        _not_a_bool(scalar, f"multiply {self} by")
        return Expression((c * float(scalar), d) for c, d in self.items)

    __rmul__ = __mul__

    def __truediv__(self, scalar: float) -> Expression:
        if not isinstance(scalar, numbers.Real):
            _not_a_coefficient(self, "divide", scalar)
        _not_a_bool(scalar, f"divide {self} by")
        if scalar == 0:
            raise CompileError(f"cannot divide {self} by zero: an expression's coefficients must be finite")
        return self * (1.0 / float(scalar))

    # --- reading --------------------------------------------------------------------
    def __str__(self) -> str:
        if not self.items:
            return "0"
        parts = []
        for i, (c, d) in enumerate(self.items):
            sign, mag = _format_coef(c, first=i == 0)
            parts.append(f"{sign}{mag}{d}" if i == 0 else f"{sign} {mag}{d}")
        return " ".join(parts)

    def __repr__(self) -> str:
        return f"Expression({self})"

    def latex(self) -> str:
        """The expression in LaTeX, e.g. ``\\mathrm{KL}(q \\,\\|\\, p) + \\dots``."""
        if not self.items:
            return "0"
        out = ""
        for i, (c, d) in enumerate(self.items):
            mag = abs(c)
            coef = "" if mag == 1 else f"{mag:g}\\,"
            if i == 0:
                out += ("-" if c < 0 else "") + coef + d.latex()
            else:
                out += (" - " if c < 0 else " + ") + coef + d.latex()
        return out

    def _repr_latex_(self) -> str:
        return f"${self.latex()}$"

    def densities(self) -> tuple[Density, ...]:
        """Every density in the expression, in order of first appearance."""
        seen: dict[int, Density] = {}
        for _, d in self.items:
            for side in (d.a, d.b):
                seen.setdefault(id(side), side)
        return tuple(seen.values())

    def expand(self) -> list[Contribution]:
        """Every summand $c\\,E_s[t]$, before any merging or cancelling."""
        out: list[Contribution] = []
        for i, (c, d) in enumerate(self.items):
            sign, mag = _format_coef(c, first=True)
            out += d.expand(c, f"{sign}{mag}{d}")
        return out

    # --- games ----------------------------------------------------------------------
    def minimize(self, *over: Density | nn.Module, name: str | None = None) -> Game:
        """A game whose first player minimises this expression over ``over``.

        ``over`` names densities (their own networks, see
        [`Density.own_networks`][kldiv.Density.own_networks]) or networks.
        """
        return Game(objective=self).minimize(*over, name=name)

    def maximize(self, *over: Density | nn.Module, name: str | None = None) -> Game:
        """A game whose first player maximises this expression over ``over``."""
        return Game(objective=self).maximize(*over, name=name)


class KL(Expression):
    r"""The Kullback–Leibler divergence $\mathrm{KL}(a \,\|\, b) = E_a[\log a - \log b]$.

    With ``weights``, the factors of each named variable are scaled,
    $\mathrm{KL}_w(a \,\|\, b) = E_a[\sum_v w_v (\log a_v - \log b_v)]$: the
    $\beta$-VAE is ``KL(q, p, weights={"z": beta})``, and a KL averaged over
    the $d$ latent dimensions rather than summed, as some authors' code
    computes it, is ``weights={"z": 1 / d}``.

    Arguments:
        a: the density the expectation is under (it must be sampleable
            wherever a gradient needs its samples).
        b: a density over the same variables as ``a``.
        weights: per variable, a positive weight of its factors (default 1).

    Raises:
        VariableMismatchError: if ``a`` and ``b`` are over different variables,
            or a weight names a variable they are not over.
        CompileError: if a weighted variable shares a term with another
            (the $f(x, z)$ of a latent EBM), so the densities do not split by variable.

    Examples:
        >>> import torch
        >>> from kldiv import KL, DataDensity, GeneratorDensity
        >>> q = DataDensity(torch.nn.Linear(3, 4))
        >>> p = GeneratorDensity(torch.nn.Linear(2, 3), latent_shape=2, sigma=1.0)
        >>> print(KL(q, p, weights={"z": 0.5}))
        KL(q ‖ p; z×0.5)
    """

    def __init__(self, a: Density, b: Density, *, weights: Mapping[str, float] | None = None):
        super().__init__([(1.0, Divergence(a, b, weights=_weights(weights)))])


class S(Expression):
    r"""The symmetric divergence $S(a, b) = \mathrm{KL}(a \,\|\, b) + \mathrm{KL}(b \,\|\, a)$.

    Arguments:
        a: a density.
        b: a density over the same variables as ``a``.
        weights: per variable, a positive weight of its factors in both
            divergences (see [`KL`][kldiv.KL]).
    """

    def __init__(self, a: Density, b: Density, *, weights: Mapping[str, float] | None = None):
        super().__init__([(1.0, Divergence(a, b, symmetric=True, weights=_weights(weights)))])


def _weights(weights: Mapping[str, float] | None) -> tuple[tuple[str, float], ...]:
    """Canonical per-variable weights: sorted, weight-1 entries dropped."""
    if weights is None:
        return ()
    if not isinstance(weights, Mapping):
        raise TypeError(f"weights maps variable names to numbers, got {type(weights).__name__}")
    out = []
    for v, w in sorted(weights.items()):
        if not isinstance(w, numbers.Real) or isinstance(w, bool):
            raise TypeError(f"the weight of {v!r} must be a real number, got {type(w).__name__}")
        if float(w) != 1.0:
            out.append((str(v), float(w)))
    return tuple(out)


# --- games: who trains which networks, on which objective, in which direction ---------------

@attrs.frozen(eq=False)
class Player:
    """A set of networks that minimises or maximises one objective.

    Attributes:
        name: the player's name (keys of the losses a step returns).
        objective: the expression the player plays.
        direction: ``"min"`` or ``"max"``.
        networks: the networks whose parameters the player trains.
        named: the densities and networks the player was named by.
    """

    name: str
    objective: Expression
    direction: Literal["min", "max"]
    networks: tuple[nn.Module, ...]
    named: tuple[Density | nn.Module, ...] = ()

    @property
    def sign(self) -> float:
        """``+1`` for a minimiser, ``-1`` for a maximiser: loss = sign × objective."""
        return 1.0 if self.direction == "min" else -1.0

    def parameters(self) -> list[nn.Parameter]:
        """The trainable parameters of the player's networks, each once."""
        seen: dict[int, nn.Parameter] = {}
        for net in self.networks:
            for p in net.parameters():
                if p.requires_grad:
                    seen.setdefault(id(p), p)
        return list(seen.values())


def _networks_of(item: Density | nn.Module) -> tuple[nn.Module, ...]:
    if isinstance(item, Density):
        return item.own_networks()
    if isinstance(item, nn.Module):
        return (item,)
    raise TypeError(
        f"a player is named by densities or networks (nn.Module), got {type(item).__name__}"
    )


class Game:
    """A mapping player → (objective, direction, networks).

    The divergence triangle is one objective played by everyone:

    ```python
    game = triangle.minimize(p, q).maximize(pi)
    ```

    and a player with its own objective names it:

    ```python
    game = (L.minimize(p, name="generator")
             .minimize(q, objective=KL(q, p) + KL(q, pi), name="encoder")
             .maximize(pi, name="ebm"))
    ```

    Arguments:
        players: the players so far.
        objective: the default objective of players added without one.
    """

    def __init__(self, players: Iterable[Player] = (), *, objective: Expression | None = None):
        if isinstance(players, Expression):
            raise TypeError(f"Game takes players, not an objective: write ({players}).minimize(...) or "
                            "Game(objective=...).minimize(...)")
        given = players
        players = tuple(given) if isinstance(given, Iterable) and not isinstance(given, str) else None
        if players is None or not all(isinstance(p, Player) for p in players):
            got = type(given).__name__ if players is None else [type(p).__name__ for p in players]
            raise TypeError(f"Game takes Players (made by minimize and maximize), got {got}")
        if objective is not None and not isinstance(objective, Expression):
            raise TypeError(f"a game's objective is an Expression built from KL and S, got {type(objective).__name__}")
        self.players: tuple[Player, ...] = tuple(players)
        self.objective = objective
        names = [p.name for p in self.players]
        if len(set(names)) != len(names):
            raise ValueError(f"player names must be unique, got {names}")

    def _add(self, direction, over, objective, name) -> Game:
        objective = self.objective if objective is None else objective
        if not isinstance(objective, Expression):
            raise TypeError("a player needs an objective: an Expression built from KL and S")
        if not over:
            raise ValueError("name the densities or networks the player trains")
        if name is not None and (not isinstance(name, str) or not name):
            raise TypeError(f"a player's name is a non-empty string (the key of its loss), got {name!r}")
        networks: dict[int, nn.Module] = {}
        for item in over:
            for net in _networks_of(item):
                networks.setdefault(id(net), net)
        if name is None:
            namer = _Namer(objective.densities())
            name = "+".join(item.name if isinstance(item, Density) else namer([item]) for item in over)
        player = Player(name, objective, direction, tuple(networks.values()), tuple(over))
        return Game(self.players + (player,), objective=objective if self.objective is None else self.objective)

    def minimize(
        self, *over: Density | nn.Module, objective: Expression | None = None, name: str | None = None
    ) -> Game:
        """Add a player minimising ``objective`` (default: the game's) over ``over``."""
        return self._add("min", over, objective, name)

    def maximize(
        self, *over: Density | nn.Module, objective: Expression | None = None, name: str | None = None
    ) -> Game:
        """Add a player maximising ``objective`` (default: the game's) over ``over``."""
        return self._add("max", over, objective, name)

    def __getitem__(self, name: str) -> Player:
        for p in self.players:
            if p.name == name:
                return p
        raise KeyError(f"no player {name!r}; the players are {[p.name for p in self.players]}")

    def densities(self) -> tuple[Density, ...]:
        """Every density of every objective, and the densities they draw samples from."""
        # the densities players are named by come first: networks are named after them
        stack = [d for p in self.players for d in p.named if isinstance(d, Density)]
        stack += [d for p in self.players for d in p.objective.densities()]
        return self.densities_of(*stack)

    @staticmethod
    def densities_of(*densities: Density) -> tuple[Density, ...]:
        """``densities`` and, transitively, the densities they draw samples from."""
        return _densities_of(*densities)

    def compile(self, *, values: bool = True, closed_form: bool = True, baseline: bool = True) -> Estimator:
        r"""Compile to an [`Estimator`][kldiv.Estimator]; raises a
        [`CompileError`][kldiv.errors.CompileError] for what cannot be estimated.

        Arguments:
            values: by default, evaluate the terms that carry no gradient for
                a player, so that its value is the full estimate (up to the
                listed constants). ``False`` skips them: cheaper, and the value
                is then up to those terms too. A round can override it
                (`Estimator.round`'s ``values``).
            closed_form: replace $E_s[\log q(z \mid x) - \log \mathcal N(z; 0, I)]$
                by the closed-form KL where ``s`` draws $z$ from that $q$
                (as the VAE code of most papers does); ``False`` keeps the
                one-sample Monte Carlo difference.
            baseline: subtract the leave-one-out baseline in score-function
                estimates (unbiased either way); ``False`` uses the plain
                $E_s[t\,\nabla \log s]$, whose variance is larger — kept for
                comparison (`benchmarks/score_variance.py`).  The centred form
                an EBM source needs (its $\log Z$) always keeps it.
        """
        return Estimator(self, values=values, closed_form=closed_form, baseline=baseline)
