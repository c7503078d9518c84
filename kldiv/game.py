r"""Players and games: who trains which networks, on which objective, in which direction.

A `Game` is a tuple of `Player`s. `Game.compile` hands it to the planner
(`kldiv.planner`), which decides per player how each summand is estimated, and
the runtime (`kldiv.estimator`), which evaluates the plans; the overview of the
compilation is the docstring of `kldiv.compiler`. This module does not import
either of them at import time: `Game.compile` imports the estimator when called.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Literal

import attrs
from torch import nn

from kldiv.algebra import Expression
from kldiv.densities import Density

if TYPE_CHECKING:
    from kldiv.estimator import Estimator

__all__ = ["Game", "Player"]


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


class _Namer:
    """Names networks after the densities that hold them (``"p.decoder"``)."""

    def __init__(self, densities: Iterable[Density]):
        self.names: dict[int, str] = {}
        for d in densities:
            for role, m in d.networks().items():
                self.names.setdefault(id(m), f"{d.name}.{role}")

    def __call__(self, modules: Iterable[nn.Module]) -> str:
        return ", ".join(sorted({self.names.get(id(m), type(m).__name__) for m in modules}))


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
        seen: dict[int, Density] = {}
        stack = list(densities)
        while stack:
            d = stack.pop(0)
            if id(d) in seen:
                continue
            seen[id(d)] = d
            stack.extend(d.sources())
        return tuple(seen.values())

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
        from kldiv.estimator import Estimator  # here, not at import time: the estimator imports this module

        return Estimator(self, values=values, closed_form=closed_form, baseline=baseline)
