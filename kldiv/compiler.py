r"""Games over KL expressions and their compilation to Monte Carlo estimators.

A [`Game`][kldiv.Game] maps players to (objective, direction, networks).
[`Game.compile`][kldiv.Game.compile] turns it into an
[`Estimator`][kldiv.Estimator] in five steps:

1. **expand** each player's objective into contributions $c\,E_s[t]$;
2. **merge** equal (source, term) pairs, so that a term entering twice with
   opposite signs cancels (the entropy of $q$ in
   $\mathrm{KL}(q\|p) - \mathrm{KL}(q\|\pi)$); a term is keyed by the
   *marginal* of the variables it reads, so $E_s[t(x)]$ merges across all
   sources whose $x$ is the same data;
3. **collect sample-constant terms across sources**: $E_s[\log Z] = \log Z$
   for every $s$, which is why the divergence triangle needs no MCMC;
4. **check tractability per player**: every surviving term whose gradient
   with respect to the player's networks is not identically zero must be
   computable, and its source sampleable with samples that carry the
   gradient; ``log Z`` may instead be paid for by a sampler,
   $\nabla \log Z = E_\pi[\nabla f]$.  Otherwise compilation fails with an
   [`IntractableError`][kldiv.errors.IntractableError] naming the term, the
   divergence it came from and the player;
5. **build the estimator**: each step draws each sample set once and runs
   each network once per sample set, shared by all players, and returns one
   surrogate loss per player whose value is the estimate (up to the terms
   listed as constants) and whose gradient is the Monte Carlo gradient.

Whether a term's gradient is zero is decided from variables, not from
densities: $E_s[t]$ depends on a network through $t$ itself or through the
marginal, under $s$, of the variables $t$ reads.  So in
$\mathrm{KL}(q_{\rm data} q_\phi \,\|\, p_\psi q_\phi)$ the surviving terms read
only $x$, and the encoder, which enters only through $z$, gets no gradient.
"""

from __future__ import annotations

import itertools
from collections.abc import Hashable, Iterable, Mapping
from typing import Literal

import attrs
import torch
from torch import Tensor, nn

from kldiv.algebra import Contribution, Expression
from kldiv.densities import Density, EnergyBased, Samples, Term, prior_kl_term
from kldiv.errors import (
    CompileError,
    InputError,
    IntractableError,
    NonFiniteError,
    ShapeError,
    UnusedParametersError,
)

__all__ = ["Estimator", "Game", "Merged", "Plan", "Player", "Round", "StepOutput", "sample"]

_EPS = 1e-12


# ----------------------------------------------------------------------------------------
# Players and games
# ----------------------------------------------------------------------------------------
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
        return Estimator(self, values=values, closed_form=closed_form, baseline=baseline)


# ----------------------------------------------------------------------------------------
# Plans
# ----------------------------------------------------------------------------------------
@attrs.frozen(eq=False)
class Merged:
    r"""A merged summand $c\,E_s[t]$ and the contributions it came from.

    ``source`` is ``None`` for a sample-constant term ($E_s[t] = t$).
    """

    coef: float
    source: Density | None
    term: Term
    origins: tuple[tuple[float, str], ...]

    def label(self) -> str:
        """``E_q[f(x, z)]``, or the bare term for a sample-constant one."""
        if self.source is None:
            return self.term.label
        return f"E_{self.source.name}[{self.term.label}]"

    def origin_text(self) -> str:
        """Where the summand came from, per divergence, e.g. ``"+1 from KL(p ‖ π), −1 from −KL(q ‖ π)"``;
        a divergence whose own contributions cancel is said to cancel within."""
        per: dict[str, float] = {}
        for c, o in self.origins:
            per[o] = per.get(o, 0.0) + c
        alive = [f"{_signed(c)} from {o}" for o, c in per.items() if abs(c) >= _EPS]
        within = [o for o, c in per.items() if abs(c) < _EPS]
        return ", ".join(alive + ([f"cancels within {' and '.join(within)}"] if within else []))


def _signed(c: float) -> str:
    return ("−" if c < 0 else "+") + f"{abs(c):g}"


@attrs.frozen(eq=False)
class Plan:
    """What the compiler decided for one player.

    Attributes:
        player: the player.
        gradient: summands estimated and differentiated.
        value_only: estimable summands with no gradient for this player.
        constants: summands that cannot be estimated and carry no gradient
            for this player; the value is reported up to them.
        sampler_paid: ``log Z`` summands whose gradient a sampler pays for,
            with the density whose samples pay.
        cancelled: summands whose contributions summed to zero.
        fresh: per source, the networks whose gradient must flow through its samples.
        score: summands whose gradient reaches networks through the
            distribution of samples that carry no pathwise gradient, with the
            source's log-density terms whose gradient (the score) carries it.
    """

    player: Player
    gradient: tuple[Merged, ...]
    value_only: tuple[Merged, ...]
    constants: tuple[Merged, ...]
    sampler_paid: tuple[tuple[Merged, Density], ...]
    cancelled: tuple[Merged, ...]
    fresh: tuple[tuple[Density, frozenset[nn.Module]], ...]
    score: tuple[tuple[Merged, tuple[Term, ...]], ...] = ()


def _merge(contributions: list[Contribution]) -> tuple[list[Merged], list[Merged]]:
    groups: dict[Hashable, list[Contribution]] = {}
    for c in contributions:
        where = None if not c.term.reads else c.source.marginal_key(c.term.reads)
        groups.setdefault((where, c.term.key), []).append(c)
    alive, cancelled = [], []
    for members in groups.values():
        coef = sum(c.coef for c in members)
        first = members[0]
        # members share the marginal of what the term reads: estimate it with any
        # of their sources, a sampleable one if there is one
        source = next((c.source for c in members if c.source.sampleable), first.source)
        merged = Merged(
            coef=coef,
            source=source if first.term.reads else None,
            term=first.term,
            origins=tuple((c.coef, c.origin) for c in members),
        )
        (cancelled if abs(coef) < _EPS else alive).append(merged)
    return alive, cancelled


class _Namer:
    """Names networks after the densities that hold them (``"p.decoder"``)."""

    def __init__(self, densities: Iterable[Density]):
        self.names: dict[int, str] = {}
        for d in densities:
            for role, m in d.networks().items():
                self.names.setdefault(id(m), f"{d.name}.{role}")

    def __call__(self, modules: Iterable[nn.Module]) -> str:
        return ", ".join(sorted({self.names.get(id(m), type(m).__name__) for m in modules}))


def _closed_form(alive: list[Merged]) -> list[Merged]:
    r"""Replace each pair $c\,E_s[\log q(z \mid x)] - c\,E_s[\log \mathcal N(z; 0, I)]$, where
    ``s`` draws $z$ from that $q$, by $c\,E_s[\mathrm{KL}(q(\cdot \mid x) \,\|\, \mathcal N(0, I))]$
    (closed form where one exists: same expectation, lower variance)."""
    out = list(alive)
    for m in alive:
        s = m.source
        if s is None or m not in out or s.drawn_from("z") is not m.term:
            continue
        partner = next(
            (
                o
                for o in out
                if o.source is s
                and o.term.key[0] in ("standard_normal", "prior")
                and o.term.reads == frozenset({"z"})
                and abs(o.coef + m.coef) < _EPS * max(1.0, abs(m.coef))
            ),
            None,
        )
        if partner is None:
            continue
        fused = Merged(
            coef=m.coef,
            source=s,
            term=prior_kl_term(m.term, partner.term),
            origins=m.origins,  # they sum to the fused coefficient
        )
        out[out.index(m)] = fused
        out.remove(partner)
    return out


def _plan(player: Player, payers: dict[int, Density], name: _Namer, closed_form: bool = True) -> Plan:
    r"""Decide, for one player, how each summand of its objective is estimated.

    With $\theta$ the player's networks, every merged summand $c\,E_s[t]$ is
    sorted by how $\nabla_\theta E_s[t]$ can be non-zero: through the term
    itself ($t$ uses a network of $\theta$) or through the samples
    ($s$'s marginal of the variables $t$ reads depends on one,
    `Density.dependence`). A summand with neither route is *value only*
    (estimable) or a *constant* (not computable; the value is up to it).
    Otherwise it must be estimable along the pathwise route: $t$ computable,
    $s$ sampleable, and every network of the sample route in
    `Density.pathwise` (the samples carry its gradient, reparameterised), so
    that $\nabla_\theta \frac1n \sum_i t(v_i)$ is unbiased — or, where the
    samples carry no gradient for some of those networks, along the
    *score-function* route, when $s$'s log density in them can be computed
    (`_score_route`); a $\log Z$
    summand instead is *sampler-paid*, $\nabla \log Z = E_\pi[\nabla f]$, when an
    energy-based density on the same network has a sampler. Anything else is
    an [`IntractableError`][kldiv.errors.IntractableError] naming the term,
    its divergence and the player; a network of the player that no surviving
    summand reaches is an
    [`UnusedParametersError`][kldiv.errors.UnusedParametersError].
    """
    theta = {id(m) for m in player.networks}
    alive, cancelled = _merge(player.objective.expand())
    if closed_form:
        alive = _closed_form(alive)
    gradient, value_only, constants, paid, score = [], [], [], [], []
    used: set[int] = set()
    fresh: dict[int, tuple[Density, set[nn.Module]]] = {}
    who = f"player {player.name!r} ({player.direction}imises {player.objective})"

    for m in alive:
        t, s = m.term, m.source
        via_term = [net for net in t.modules if id(net) in theta]
        via_samples = [net for net in s.dependence(t.reads) if id(net) in theta] if s is not None else []
        estimable = t.computable and (s is None or s.sampleable)
        if not via_term and not via_samples:
            (value_only if estimable else constants).append(m)
            continue
        used.update(id(net) for net in via_term + via_samples)
        if not t.computable:
            payer = payers.get(id(t.normalizes)) if t.normalizes is not None else None
            if payer is None:
                raise IntractableError(_intractable_message(who, m, via_term, via_samples, name))
            paid.append((m, payer))
            fresh.setdefault(id(payer), (payer, set()))
            continue
        if s is not None and not s.sampleable:
            raise IntractableError(
                f"{who}: {_signed(m.coef)} {m.label()} ({m.origin_text()}) depends on "
                f"{name(via_term + via_samples)} and needs samples from {s.name}, which "
                f"{s.describe_sampling()}. Attach a sampler to {s.name} "
                f"(e.g. {s.name}.with_sampler(Langevin(...))), or rewrite the objective so "
                f"that this player's gradient needs no expectation under {s.name}."
            )
        blocked = [net for net in via_samples if net not in s.pathwise(t.reads)]
        if blocked:
            route = _score_route(s, blocked, theta, t.reads)
            if route is None:
                raise IntractableError(
                    f"{who}: {_signed(m.coef)} {m.label()} ({m.origin_text()}) depends on "
                    f"{name(blocked)} through the distribution of the samples of {s.name} "
                    f"({', '.join(sorted(t.reads))}), but those samples carry no gradient "
                    f"({s.describe_sampling()}), and {s.name}'s log density in {name(blocked)} cannot "
                    f"be computed for a score-function estimate. Remove {name(blocked)} from this player, "
                    f"or give the player an objective whose gradient does not flow through {s.name}'s samples."
                )
            score.append((m, route))
            fresh.setdefault(id(s), (s, set()))[1].update(via_samples)  # samples of the current parameters
            continue
        gradient.append(m)
        if s is not None and via_samples:
            fresh.setdefault(id(s), (s, set()))[1].update(via_samples)
        elif s is not None:
            fresh.setdefault(id(s), (s, set()))

    unused = [net for net in player.networks if id(net) not in used]
    if unused:
        in_objective = {id(m) for d in player.objective.densities() for m in d.networks().values()}
        absent = [net for net in unused if id(net) not in in_objective]
        raise UnusedParametersError(
            f"{who}: its objective never depends on {name(unused)} — "
            + (
                "no density of the objective uses it"
                if absent
                else "every term that involves it cancels or is constant for this player"
            )
            + (f" (cancelled: {'; '.join(c.label() for c in cancelled)})" if cancelled else "")
            + ". Remove it from the player, or give the player an objective that trains it."
        )
    return Plan(
        player=player,
        gradient=tuple(gradient),
        value_only=tuple(value_only),
        constants=tuple(constants),
        sampler_paid=tuple(paid),
        cancelled=tuple(cancelled),
        fresh=tuple((d, frozenset(mods)) for d, mods in fresh.values()),
        score=tuple(score),
    )


def _score_route(
    s: Density, blocked: list[nn.Module], theta: set[int], reads: frozenset[str] = frozenset()
) -> tuple[Term, ...] | None:
    r"""The terms of ``s``'s log density whose gradient is the score for ``blocked``, or ``None``.

    $\nabla_\theta E_s[t] = E_s[\nabla_\theta t + (t - b)\,\nabla_\theta \log s(v)]$ for
    any baseline $b$ independent of the sample: the score route exists when
    every term of $\log s$ that involves a blocked network can be computed,
    except a $\log Z$, which the centred form cancels ($\nabla \log Z$ is
    the same for every sample, and $E_s[t - b] = 0$ with a leave-one-out $b$),
    and when those terms reach no other network of the player (whose gradient
    would then be counted twice).

    Rao–Blackwellised where the structure allows: with the source's sampling
    order known (`Density.order`), the score of a factor whose variable is
    drawn after every variable $t$ reads is left out, since
    $E[t\,\nabla \log s(v_k \mid \mathrm{pa}_k)] = 0$ when $t$ does not depend on
    $v_k$ or anything drawn from it; only the factors upstream of the term remain.
    """
    blocked_ids = {id(net) for net in blocked}
    route = []
    for term in s.terms():
        touches = {id(net) for net in term.modules} | ({id(term.normalizes)} if term.normalizes is not None else set())
        if not touches & blocked_ids:
            continue
        if not (term.computable and term.evaluate is not None):
            if term.normalizes is not None and id(term.normalizes) in blocked_ids:
                continue  # log Z: centred away
            return None
        if {id(net) for net in term.modules} & theta - blocked_ids:
            return None
        route.append(term)
    covered = {id(net) for term in route for net in term.modules}
    if not (route and blocked_ids <= covered):
        return None
    kept = tuple(term for term in route if not _downstream(s, term, reads))
    return kept or tuple(route)


def _downstream(s: Density, term: Term, reads: frozenset[str]) -> bool:
    """Whether ``term`` is the factor of a variable ``s`` draws after every variable in ``reads``."""
    order = s.order
    if order is None or term.factor is None or term.factor in reads or term.factor not in order:
        return False
    return bool(reads) and all(r in order and order.index(term.factor) > order.index(r) for r in reads)


def _intractable_message(who, m: Merged, via_term, via_samples, name: _Namer) -> str:
    t, s = m.term, m.source
    if t.normalizes is not None:
        return (
            f"{who}: {_signed(m.coef)} {t.label} survives ({m.origin_text()}) and its "
            f"gradient with respect to {name(via_term)} is E[∇f] under the normalised "
            f"density, which needs samples from it; {t.reason}. Attach a sampler to the "
            "energy-based density (e.g. .with_sampler(Langevin(...))), or add the term that "
            "cancels log Z (as − KL(p ‖ π) does in the divergence triangle)."
        )
    routes = []
    if via_term:
        routes.append(f"on {name(via_term)} through the term itself")
    if via_samples:
        reads = ", ".join(sorted(t.reads))
        routes.append(f"on {name(via_samples)} through the samples of {s.name} ({reads})")
    return (
        f"{who}: {_signed(m.coef)} {m.label()} ({m.origin_text()}) depends "
        f"{' and '.join(routes)}, and {t.label} cannot be computed: "
        f"{t.reason}. kldiv drops such a term only where no player's gradient needs it "
        "(e.g. log q_data(x) under the data's own samples, as in KL(q ‖ ·)); remove the "
        "divergence that brings it in, or reverse it."
    )


# ----------------------------------------------------------------------------------------
# The estimator
# ----------------------------------------------------------------------------------------
class Estimator(nn.Module):
    """A compiled game: call it on a batch to get one surrogate loss per player.

    An ``nn.Module`` holding the game's networks (``estimator.networks``, by
    the names `explain` uses with ``_`` for ``.``), so ``.to()``,
    ``state_dict()``, ``.train()`` / ``.eval()`` and ``parameters()`` act on
    all of them; `player_parameters` gives one player's, for its optimiser
    (``parameters("name")`` is the same).

    ``estimator(x)`` is one *simultaneous* step: samples drawn once, networks
    run once per sample set, every player's loss built from the same
    evaluations.  For a *sequential* schedule (the papers' Algorithm 1) open a
    [`Round`][kldiv.Round] and update players one at a time: samples are
    drawn once per round, and a network evaluation is reused until the
    parameters it used change.

    Examples:
        >>> import torch
        >>> from kldiv import KL, DataDensity, GeneratorDensity
        >>> from kldiv.nn import GaussianEncoder, Generator
        >>> q = DataDensity(GaussianEncoder((1, 8, 8), 2, width=4))
        >>> p = GeneratorDensity(Generator(2, (1, 8, 8), width=4), latent_shape=2, sigma=0.5)
        >>> estimator = KL(q, p).minimize(q, p, name="vae").compile()
        >>> opt = torch.optim.Adam(estimator.parameters("vae"), lr=1e-3)
        >>> out = estimator(torch.randn(8, 1, 8, 8))   # one simultaneous step
        >>> out.backward()                       # each player's gradient into its own parameters
        >>> opt.step()
        >>> sorted(out.losses)
        ['vae']
    """

    def __init__(self, game: Game, *, values: bool = True, closed_form: bool = True, baseline: bool = True):
        if not game.players:
            raise CompileError("the game has no players; add one with minimize or maximize")
        super().__init__()
        self.game = game
        self.values = values
        self.baseline = bool(baseline)
        densities = game.densities()
        self._namer = _Namer(densities)
        payers: dict[int, Density] = {}
        for d in densities:
            if isinstance(d, EnergyBased) and d.sampler is not None:
                payers.setdefault(id(d.energy), d)
        self.plans: dict[str, Plan] = {
            p.name: _plan(p, payers, self._namer, closed_form) for p in game.players
        }
        self._networks = {id(m): m for d in densities for m in d.networks().values()}
        # the shape of z that each prior declares: every source's z must agree with it
        self._declared = {"z": (d.latent_shape, d.name) for d in densities if isinstance(getattr(d, "latent_shape", None), tuple)}
        self._owners: dict[int, frozenset[str]] = {}
        for p in game.players:
            for m in p.networks:
                self._owners[id(m)] = self._owners.get(id(m), frozenset()) | {p.name}
        self._wrappers: dict[int, nn.Module] = {}
        self._player_params = {name: plan.player.parameters() for name, plan in self.plans.items()}
        self.networks = nn.ModuleDict()
        for m in self._networks.values():
            key = self._namer([m]).replace(".", "_")
            while key in self.networks:
                key += "_"
            self.networks[key] = m
        # terms and sources whose first output passed the shape and finiteness checks
        self._checked: set[Hashable] = set()

    def distribute(self, wrappers: Mapping[nn.Module, nn.Module]) -> None:
        """Route forward passes through wrappers such as ``DistributedDataParallel``.

        ``wrappers`` maps a network of the game to its wrapper. Within a round a
        network runs through its wrapper while one of the players that train it
        has yet to back-propagate (so every wrapped forward is followed by
        exactly one backward into its parameters, as DDP requires), and
        directly afterwards.
        """
        self._wrappers = {id(m): w for m, w in wrappers.items()}

    # --- stepping -------------------------------------------------------------------
    def round(
        self,
        inputs: Tensor | Mapping[str, Tensor] | None = None,
        *,
        n: int | None = None,
        values: bool | None = None,
        **named: Tensor,
    ) -> Round:
        """Open a round on one batch: ``inputs`` is the data tensor (input ``"data"``)
        or a mapping of named inputs; ``n`` is the number of samples drawn from
        sources without data (default: the batch size).

        ``values`` says whether the round evaluates the summands that carry
        no gradient for a player, so that `Round.value` is the full estimate
        (default: as compiled). A training loop asks for them only on the
        steps it logs: the gradients are the same, and a sequential round
        then runs no network just to compute a number nobody reads."""
        if isinstance(inputs, Tensor):
            named = {"data": inputs, **named}
        elif isinstance(inputs, Mapping):
            named = {**dict(inputs), **named}
        elif inputs is not None:
            raise InputError(f"a step takes a tensor batch or a mapping of named tensors, got {type(inputs).__name__}")
        self._check_inputs(named)
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise InputError(f"n, the number of samples, must be a positive int, got {n!r}")
        return Round(self, named, n=n, values=self.values if values is None else bool(values))

    def _check_inputs(self, named: Mapping[str, object]) -> None:
        """Refuse a batch no network can take, before any network runs: its type,
        emptiness, dtype and device on every round, its finiteness on the first."""
        ref = next((q for m in self._networks.values() for q in m.parameters()), None)
        for name, x in named.items():
            if not isinstance(x, Tensor):
                raise InputError(f"the step's input {name!r} must be a tensor, got {type(x).__name__}")
            if x.ndim == 0 or x.shape[0] == 0:
                raise InputError(f"the step's input {name!r} is empty (shape {tuple(x.shape)}): "
                                 "give a batch of at least one row")
            if not x.dtype.is_floating_point:
                raise InputError(
                    f"the step's input {name!r} has dtype {x.dtype}; the densities take floating-point "
                    "tensors (images in [-1, 1]: x.float() / 127.5 - 1 for uint8 pixels)"
                )
            if ref is not None and x.dtype != ref.dtype:
                raise InputError(f"the step's input {name!r} is {x.dtype} and the networks are {ref.dtype}: "
                                f"convert it with x.to({ref.dtype})")
            if ref is not None and x.device != ref.device:
                raise InputError(f"the step's input {name!r} is on {x.device} and the networks on "
                                 f"{ref.device}: move it with x.to({str(ref.device)!r})")
            if ("inputs",) not in self._checked and not torch.isfinite(x).all():
                raise NonFiniteError(f"the step's input {name!r} holds NaN or infinite values; "
                                     "clean the batch before the step")
        if named:
            self._checked.add(("inputs",))

    def forward(
        self,
        inputs: Tensor | Mapping[str, Tensor] | None = None,
        *,
        n: int | None = None,
        players: Iterable[str] | None = None,
        **named: Tensor,
    ) -> StepOutput:
        """One simultaneous step (``estimator(x)``): every player's loss from one shared evaluation."""
        r = self.round(inputs, n=n, **named)
        names = list(self.plans) if players is None else list(players)
        losses = {name: r.loss(name) for name in names}
        return StepOutput(losses, {name: r.value(name) for name in names}, r)

    # --- reading --------------------------------------------------------------------
    def explain(self) -> str:
        """Per player: the terms it estimates, the constants, what cancelled, and
        what a sampler pays for."""
        drawn = [
            m.source
            for plan in self.plans.values()
            for m in itertools.chain(plan.gradient, plan.value_only)
            if m.source is not None
        ]
        drawn += [payer for plan in self.plans.values() for _, payer in plan.sampler_paid]
        drawn += [m.source for plan in self.plans.values() for m, _ in plan.score]
        lines = []
        if drawn:  # with what they draw from: a Langevin start, the x of a DataDensity
            lines.append("samples per step:")
            lines += [f"  {s.name}: {s.describe_sampling()}" for s in Game.densities_of(*drawn)]
        every = [
            m
            for plan in self.plans.values()
            for m in itertools.chain(plan.gradient, plan.value_only, plan.constants, plan.cancelled)
        ] + [m for plan in self.plans.values() for m, _ in (*plan.sampler_paid, *plan.score)]
        width = max([28] + [len(m.label()) for m in every])

        def rows(ms, tail=lambda m: m.origin_text()):
            return [f"    {_signed(m.coef)} {m.label():<{width}} {tail(m)}" for m in ms]

        for plan in self.plans.values():
            p = plan.player
            lines.append("")
            lines.append(
                f"player {p.name!r} {p.direction}imises {p.objective} over {self._namer(p.networks)}"
            )
            if plan.gradient:
                lines += ["  gradient from:", *rows(plan.gradient)]
            if plan.score:
                routes = {id(m): ", ".join(k.label for k in r) for m, r in plan.score}
                lines.append("  gradient by the score function (samples without a pathwise gradient; "
                             "leave-one-out baseline):")
                lines += rows([m for m, _ in plan.score], lambda m: f"score of {routes[id(m)]}; {m.origin_text()}")
            if plan.value_only:
                lines += ["  in the value only (no gradient for this player):", *rows(plan.value_only)]
            if plan.sampler_paid:
                payers = {id(m): payer.name for m, payer in plan.sampler_paid}
                lines.append("  paid for by a sampler (gradient E_π[∇f]; value omitted):")
                lines += rows([m for m, _ in plan.sampler_paid],
                              lambda m: f"samples of {payers[id(m)]}; {m.origin_text()}")
            if plan.constants:
                lines.append("  constants (cannot be computed, no gradient; value is up to them):")
                lines += rows(plan.constants)
            if plan.cancelled:
                lines.append("  cancelled:")
                lines += [f"    {m.label():<{width + 2}} {m.origin_text()}" for m in plan.cancelled]
        return "\n".join(lines).lstrip("\n")

    def player_parameters(self, player: str) -> list[nn.Parameter]:
        """The trainable parameters of ``player`` (for its optimiser), as at compile time."""
        try:
            return self._player_params[player]
        except KeyError:
            raise KeyError(f"no player {player!r}; the players are {list(self.plans)}") from None

    def parameters(self, player: str | bool = True, recurse: bool = True):  # type: ignore[override]
        """``parameters("name")``: that player's parameters, as `player_parameters`;
        ``parameters()``: every network's, as any ``nn.Module``'s."""
        if isinstance(player, str):
            return self.player_parameters(player)
        return super().parameters(recurse=bool(player) and recurse)


@attrs.frozen(eq=False)
class StepOutput:
    """What one simultaneous step returns.

    Attributes:
        losses: per player, the surrogate loss to minimise: its value is
            ``sign × estimate`` and its gradient the Monte Carlo gradient.
        values: per player, the estimate of its objective (detached), up to
            the constants `Estimator.explain` lists.
        round: the round the step ran in.
    """

    losses: dict[str, Tensor]
    values: dict[str, Tensor]
    round: Round

    def backward(self) -> None:
        """Back-propagate each player's loss into that player's parameters only.

        A parameter trained by two players would receive the sum of their
        gradients in its one ``.grad``; kldiv's rule is that each player's
        optimiser steps with that player's gradient alone, so this refuses
        such a game: back-propagate per player with `Round.backward` and step
        in between, or use `kldiv.train.Run.update_all`, which keeps the
        gradients apart.

        Raises:
            CompileError: two players of the step train the same parameter.
        """
        names = list(self.losses)
        est = self.round.estimator
        owner: dict[int, str] = {}
        for name in names:
            for q in est.parameters(name):
                other = owner.setdefault(id(q), name)
                if other != name:
                    raise CompileError(
                        f"players {other!r} and {name!r} both train a parameter of "
                        f"{est._namer([m for m in est._networks.values() if any(q is t for t in m.parameters())])}: "
                        "StepOutput.backward would sum their gradients in one .grad. Back-propagate each "
                        "player with round.backward(name) and step its optimiser before the next, or use "
                        "kldiv.train.Run.update_all, which steps each optimiser with its own player's gradient."
                    )
        for i, name in enumerate(names):
            self.round._backward(name, self.losses[name], retain_graph=i < len(names) - 1)


@attrs.define(eq=False)
class _Entry:
    keep: tuple  # the objects whose ids form the key, kept alive
    versions: tuple
    out: object


def _versions(params: list[nn.Parameter]) -> tuple[int, ...]:
    return tuple(p._version for p in params)


class Round:
    """One batch's evaluations, shared by every player computed in it.

    Implements the [`Evaluator`][kldiv.densities.Evaluator] protocol that
    terms and samplers use.  Within a round each source is sampled once, and
    each network evaluation (``call``) and term evaluation is memoised on its
    inputs and reused as long as the parameters it used are unchanged (their
    in-place version counters), so a sequential schedule re-runs only what an
    earlier player's update made stale. Samples are not redrawn after an update
    unless a later player needs gradients through them (the papers' Algorithm 1
    draws them once per iteration), so the value of a later player mixes
    samples drawn before the update with parameters after it.
    """

    def __init__(self, estimator: Estimator, inputs: Mapping[str, Tensor], *, n: int | None,
                 values: bool = True):
        self.estimator = estimator
        self.values = values
        self.inputs = dict(inputs)
        first = next(iter(self.inputs.values()), None)
        if n is None:
            if first is None:
                raise ValueError("give the number of samples n: the step has no data to take it from")
            n = first.shape[0]
        self.n = int(n)
        if first is not None:
            self.device, self.dtype = first.device, first.dtype
        else:
            ref = next((p for m in estimator._networks.values() for p in m.parameters()), None)
            self.device = ref.device if ref is not None else torch.device("cpu")
            self.dtype = ref.dtype if ref is not None else torch.get_default_dtype()
        self._params: dict[int, list[nn.Parameter]] = {}
        self._calls: dict[tuple, _Entry] = {}
        self._samples: dict[int, _Entry] = {}
        self._terms: dict[tuple, _Entry] = {}
        self._values: dict[str, Tensor] = {}
        self._term_values: dict[str, dict[Merged, Tensor]] = {}
        self._done: set[str] = set()  # players that have back-propagated in this round

    # --- the Evaluator protocol ---------------------------------------------------------
    def _params_of(self, module: nn.Module) -> list[nn.Parameter]:
        params = self._params.get(id(module))
        if params is None:
            params = self._params[id(module)] = list(module.parameters())
        return params

    def call(self, module: nn.Module, *args: Tensor) -> object:
        """``module(*args)``, memoised while the module's parameters are unchanged."""
        key = (id(module),) + tuple(id(a) for a in args)
        versions = _versions(self._params_of(module))
        hit = self._calls.get(key)
        if hit is not None and hit.versions == versions:
            return hit.out
        wrapper = self.estimator._wrappers.get(id(module))
        run = (wrapper if wrapper is not None and not self.estimator._owners.get(id(module), frozenset()) <= self._done
               else module)
        seen = ("call", id(module), tuple(tuple(a.shape) if isinstance(a, Tensor) else None for a in args))
        if seen in self.estimator._checked:
            out = run(*args)
        else:  # the first run of a network on inputs of these shapes: a failure names it and what it was given
            try:
                out = run(*args)
            except (RuntimeError, ValueError, TypeError, IndexError) as err:
                if isinstance(err, (ShapeError, NonFiniteError)) or type(err).__module__.startswith("kldiv"):
                    raise
                name = self.estimator._namer([module])
                if isinstance(err, ValueError) and str(err).startswith("Expected parameter"):
                    exc: Exception = NonFiniteError(
                        f"network {name} gave a distribution with invalid parameters (NaN, inf or out of "
                        f"range) when first run: {str(err).splitlines()[0]}. Check its initialisation."
                    )
                    exc.network_error = err  # the original, for debugging; not printed before kldiv's message
                    raise exc from None
                given = ", ".join(f"{tuple(a.shape)} {a.dtype}" if isinstance(a, Tensor) else type(a).__name__
                                  for a in args)
                expects = "; ".join(f"{k} {getattr(module, k)}" for k in ("image_shape", "latent_dim")
                                    if hasattr(module, k))
                exc = ShapeError(
                    f"network {name} failed when first run, on inputs {given}"
                    + (f" (it was built for {expects})" if expects else "")
                    + f": {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}. Check that the "
                    "batch's shape and the latent sizes of the encoder, the decoder and latent_shape agree."
                )
                exc.network_error = err  # the original, for debugging; not printed before kldiv's message
                raise exc from None
            self.estimator._checked.add(seen)
        self._calls[key] = _Entry((module, args), versions, out)
        return out

    def input(self, name: str) -> Tensor:
        """The input ``name`` given to the step."""
        try:
            return self.inputs[name]
        except KeyError:
            raise KeyError(
                f"this step needs the input {name!r} (a DataDensity draws x from it); "
                f"call the estimator with {name}=<tensor>; it got {sorted(self.inputs)}"
            ) from None

    def samples(self, density: Density, fresh_for: frozenset[nn.Module] = frozenset()) -> Samples:
        """This round's samples from ``density``; redrawn only if a network in
        ``fresh_for`` changed since they were drawn (their graph would be stale)."""
        hit = self._samples.get(id(density))
        if hit is not None and all(
            _versions(self._params_of(m)) == hit.versions[i]
            for i, m in enumerate(hit.keep[1])
            if m in fresh_for
        ):
            return hit.out
        nets = tuple(density.pathwise(frozenset(density.variables)))
        versions = tuple(_versions(self._params_of(m)) for m in nets)
        s = density.sample(self, self.n)
        if id(density) not in self.estimator._checked:
            self._check_samples(density, s)
            self.estimator._checked.add(id(density))
        self._samples[id(density)] = _Entry((density, nets), versions, s)
        return s

    # --- terms and losses ---------------------------------------------------------------
    def term(self, term: Term, samples: Samples | None) -> Tensor:
        """Per-sample values of ``term`` on ``samples`` (memoised)."""
        key = (id(term), id(samples))
        versions = tuple(_versions(self._params_of(m)) for m in term.modules)
        hit = self._terms.get(key)
        if hit is not None and hit.versions == versions:
            return hit.out
        out = term.evaluate(self, samples)
        if id(term) not in self.estimator._checked:
            self._check_term(term, samples, out)
            self.estimator._checked.add(id(term))
        self._terms[key] = _Entry((term, samples), versions, out)
        return out

    def _expectation(self, m: Merged, samples: dict[int, Samples]) -> Tensor:
        if m.source is None:
            return self.term(m.term, None)
        s = samples[id(m.source)]
        return s.mean(self.term(m.term, s))

    def _compute(self, name: str) -> tuple[Tensor, Tensor]:
        plan = self.estimator.plans[name]
        samples = {id(d): self.samples(d, mods) for d, mods in plan.fresh}
        for m in plan.value_only if self.values else ():
            if m.source is not None and id(m.source) not in samples:
                samples[id(m.source)] = self.samples(m.source)
        surrogate = torch.zeros((), device=self.device, dtype=self.dtype)
        terms: dict[Merged, Tensor] = {}  # labelled only when read (Round.terms), off the step's path
        for m in plan.gradient:
            e = self._expectation(m, samples)
            terms[m] = e.detach()
            surrogate = surrogate + m.coef * e
        for m, route in plan.score:
            smp = samples[id(m.source)]
            if smp.weights is not None:
                raise CompileError(f"{m.label()}: the score-function route needs unweighted samples of "
                                   f"{m.source.name}, which are importance-weighted")
            t = self.term(m.term, smp)
            n = t.shape[0]
            if n < 2:
                raise InputError(f"{m.label()} is estimated by the score function, whose leave-one-out "
                                 "baseline needs at least 2 samples per round")
            log_s = sum(k.sign * self.term(k, smp) for k in route)
            centred = any(k.normalizes is not None for k in m.source.terms())  # log Z must drop out
            if self.estimator.baseline or centred:
                baseline = (t.sum() - t) / (n - 1)  # leave-one-out: unbiased, and log Z drops out
            else:
                baseline = torch.zeros_like(t)
            terms[m] = t.mean().detach()
            surrogate = surrogate + m.coef * (t + (t - baseline).detach() * (log_s - log_s.detach())).mean()
        value = surrogate.detach()
        if self.values:
            for m in plan.value_only:
                e = self._expectation(m, samples).detach()
                terms[m] = e
                value = value + m.coef * e
        self._term_values[name] = terms
        for m, payer in plan.sampler_paid:
            s = samples[id(payer)]
            f = s.mean(self.term(payer.energy_term, s))
            surrogate = surrogate + m.coef * (f - f.detach())  # ∇ log Z = E_π[∇f]
        loss = plan.player.sign * (value + (surrogate - surrogate.detach()))
        return loss, value

    def loss(self, player: str) -> Tensor:
        """The surrogate loss of ``player`` on the current parameters."""
        if player not in self.estimator.plans:
            raise KeyError(f"no player {player!r}; the players are {list(self.estimator.plans)}")
        loss, self._values[player] = self._compute(player)
        return loss

    def value(self, player: str) -> Tensor:
        """The estimate of ``player``'s objective from its last `loss` in this round."""
        return self._values[player]

    def terms(self, player: str) -> dict[str, Tensor]:
        """The summands of ``player``'s last `value`, before their coefficients, by the
        labels `Estimator.explain` gives them (``"E_q[log N(x; g(z), σ²I)]"``); the
        value-only ones only in a round that computes values."""
        return {m.label(): v for m, v in self._term_values[player].items()}

    def backward(self, player: str, *, retain_graph: bool = True) -> Tensor:
        """Compute ``player``'s loss (if not yet computed on the current parameters)
        and back-propagate it into that player's parameters only; returns the loss."""
        loss = self.loss(player)
        self._backward(player, loss, retain_graph)
        return loss

    def _backward(self, player: str, loss: Tensor, retain_graph: bool) -> None:
        params = self.estimator.parameters(player)
        if loss.requires_grad and params:
            torch.autograd.backward(loss, inputs=params, retain_graph=retain_graph)
        self._done.add(player)

    # --- first-step validation ------------------------------------------------------------
    def _where(self, term: Term) -> str:
        users = [
            name
            for name, plan in self.estimator.plans.items()
            if any(m.term is term for m in plan.gradient + plan.value_only + tuple(m for m, _ in plan.score))
            or any(payer.energy_term is term for _, payer in plan.sampler_paid)
        ]
        nets = self.estimator._namer(term.modules) or "no network"
        return f"{term.label} (network {nets}; used by {', '.join(repr(u) for u in users) or 'no player'})"

    def _check_term(self, term: Term, samples: Samples | None, out: object) -> None:
        expected = () if samples is None else (samples.n,)
        if not isinstance(out, Tensor) or tuple(out.shape) != expected:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ShapeError(
                f"{self._where(term)} must give one scalar per sample, shape {expected}, "
                f"but gave {got} when first evaluated. An energy network returns (n,) or "
                "(n, 1); an encoder returns a distribution with batch shape (n,) (use .to_event(1) "
                "on a diagonal Normal)."
            )
        if not torch.isfinite(out).all():
            raise NonFiniteError(
                f"{self._where(term)} is not finite (NaN or inf) when first evaluated; check "
                "the network's initialisation and the scale of its inputs."
            )

    def _check_samples(self, density: Density, s: Samples) -> None:
        for v, t in s.values.items():
            if t.shape[0] != s.n:
                raise ShapeError(f"samples of {density.name}: {v} has {t.shape[0]} rows, expected {s.n}")
            shape, owner = getattr(self.estimator, "_declared", {}).get(v, (None, None))
            if shape is not None and tuple(t.shape[1:]) != shape:
                raise ShapeError(
                    f"{density.name} draws {v} of shape {tuple(t.shape[1:])} per sample "
                    f"({density.describe_sampling()}), but {owner} declares latent_shape {shape}: "
                    "give the encoder, the decoder and latent_shape the same latent size."
                )
            if not torch.isfinite(t).all():
                raise NonFiniteError(
                    f"samples of {v} from {density.name} ({density.describe_sampling()}) are not "
                    "finite when first drawn; check the network that produces them and the inputs."
                )


class _NoGame:
    """What a [`Round`][kldiv.Round] reads of an estimator, for drawing samples outside a game."""

    def __init__(self, density: Density):
        self._networks = {id(m): m for d in Game.densities_of(density) for m in d.networks().values()}
        self._wrappers: dict[int, nn.Module] = {}
        self._owners: dict[int, frozenset[str]] = {}
        self._checked: set[Hashable] = set()
        self._namer = _Namer(Game.densities_of(density))
        self.plans: dict[str, Plan] = {}


def sample(density: Density, n: int | None = None, **inputs: Tensor) -> Samples:
    """Draw ``n`` samples of every variable of ``density`` outside any game.

    An energy-based density draws with its sampler; a `DataDensity` takes
    ``x`` from the named inputs (``sample(q, data=x)``). Samples of densities
    with parameters carry their gradients (reparameterised), as in a step.

    Examples:
        >>> import torch
        >>> from kldiv import GeneratorDensity, sample
        >>> p = GeneratorDensity(torch.nn.Linear(2, 3), latent_shape=2, sigma=0.1)
        >>> s = sample(p, 5)
        >>> s["x"].shape, s["z"].shape
        (torch.Size([5, 3]), torch.Size([5, 2]))
    """
    return Round(_NoGame(density), inputs, n=n).samples(density)
