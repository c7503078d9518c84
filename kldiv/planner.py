r"""The planner: for each player, how each summand of its objective is estimated.

Steps 2 to 4 of the compilation (see `kldiv.compiler`), as pure decisions on
densities and terms, with no tensors: `_merge` merges equal (source, term)
pairs, so that opposite contributions cancel; `_closed_form` fuses a Gaussian
prior's pair of terms into its closed-form KL; and `_plan` sorts what survives
into one `Plan` per player, or raises the error that names what cannot be
estimated. The runtime (`kldiv.estimator`) reads the plans; this module imports
neither it nor the algebra (`kldiv.algebra`), whose players and contributions it reads.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import TYPE_CHECKING

import attrs
from torch import nn

from kldiv.densities import Density, Term, prior_kl_term
from kldiv.densities.base import _Namer
from kldiv.errors import IntractableError, UnusedParametersError

if TYPE_CHECKING:  # the planner reads the algebra's objects; it never builds them
    from kldiv.algebra import Contribution, Player

__all__ = ["Merged", "Plan", "ScoreRoute"]

_EPS = 1e-12


@attrs.frozen(eq=False)
class Merged:
    r"""A merged summand $c\,E_s[t]$ and the contributions it came from.

    ``source`` is ``None`` for a sample-constant term ($E_s[t] = t$).
    """

    coef: float
    source: Density | None
    term: Term
    origins: tuple[tuple[float, str], ...]
    members: tuple[Contribution, ...] = ()

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
class ScoreRoute:
    r"""A summand $c\,E_s[t]$ whose gradient reaches networks through the distribution of
    samples that carry no pathwise gradient, and how it is estimated:

    $$ \nabla E_s[t] = E_s\big[(t - b)\, \nabla \log s + \nabla t\big], $$

    with the leave-one-out baseline $b$ (any $b$ independent of the sample keeps it
    unbiased).

    Attributes:
        summand: the merged summand.
        terms: the source's log-density terms whose gradient is the score
            $\nabla \log s$ (only those upstream of $t$ when the source's order is known).
        centred: whether the baseline is needed for the estimate to exist, not only
            to cut its variance: the source has a $\log Z$, which the score cannot
            compute but which drops out of $E_s[(t - b)\,\nabla \log s]$ (a centred
            covariance); kept even where the game is compiled with ``baseline=False``.
    """

    summand: Merged
    terms: tuple[Term, ...]
    centred: bool

    def __iter__(self):  # (summand, terms), as the plans' other pairs unpack
        return iter((self.summand, self.terms))


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
            distribution of samples that carry no pathwise gradient
            ([`ScoreRoute`][kldiv.compiler.ScoreRoute]s: the summand, the
            source's terms whose gradient is the score, and whether it must be centred).
    """

    player: Player
    gradient: tuple[Merged, ...]
    value_only: tuple[Merged, ...]
    constants: tuple[Merged, ...]
    sampler_paid: tuple[tuple[Merged, Density], ...]
    cancelled: tuple[Merged, ...]
    fresh: tuple[tuple[Density, frozenset[nn.Module]], ...]
    score: tuple[ScoreRoute, ...] = ()


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
            members=tuple(members),
        )
        (cancelled if abs(coef) < _EPS else alive).append(merged)
    return alive, cancelled


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


def _plan(player: Player, payers: dict[Hashable, Density], name: _Namer, closed_form: bool = True) -> Plan:
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
            shares = _payments(m, payers) if t.normalizes is not None else None
            if shares is None:
                raise IntractableError(_intractable_message(who, m, via_term, via_samples, name))
            for share, payer in shares:
                paid.append((share, payer))
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
            centred = any(k.normalizes is not None for k in s.terms())  # log Z must drop out
            score.append(ScoreRoute(m, route, centred))
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


def _payments(m: Merged, payers: dict[Hashable, Density]) -> list[tuple[Merged, Density]] | None:
    r"""Who pays for the surviving $\log Z$ summand ``m``, $\nabla \log Z = E_\pi[\nabla f]$, and how much.

    Each contribution is paid for by the sampler of the density it is a term
    of (its owner); one whose owner has no sampler, by another density of the
    game with the same normalising constant and a sampler. The contributions
    with one payer are summed: a game whose EBM has one sampler pays once, and
    ``0.9·KL(q ‖ π) + 0.1·KL(q ‖ π')``, with $\pi'$ the same EBM with another
    sampler (chains from noise, say), pays 0.9 with $\pi$'s samples and 0.1
    with $\pi'$'s. What cancels still cancels, whatever samples would have
    paid for it: where the payers' sums have both signs, those of the smaller
    side are cancelled against the larger, which pays the net coefficient in
    proportion to its sums. ``None`` if some contribution has no payer.
    """
    groups: dict[int, tuple[Density, list[Contribution]]] = {}
    for c in m.members:
        own = c.owner
        payer = own if getattr(own, "sampler", None) is not None and _key(own) == m.term.key \
            else payers.get(m.term.key)
        if payer is None:
            return None
        groups.setdefault(id(payer), (payer, []))[1].append(c)
    if not groups:  # a summand built by hand, without its contributions
        payer = payers.get(m.term.key)
        return None if payer is None else [(m, payer)]
    if len(groups) == 1:
        return [(m, next(iter(groups.values()))[0])]
    sums = [(payer, sum(c.coef for c in cs)) for payer, cs in groups.values()]
    side = 1.0 if m.coef > 0 else -1.0
    majority = sum(c for _, c in sums if c * side > 0)
    shares = [(payer, c * m.coef / majority) for payer, c in sums if c * side > 0]
    if len(shares) == 1:
        return [(m, shares[0][0])]
    return [
        (attrs.evolve(m, coef=coef, origins=tuple((c.coef, c.origin) for c in groups[id(payer)][1]),
                      members=tuple(groups[id(payer)][1])), payer)
        for payer, coef in shares
    ]


def _key(d: Density | None) -> Hashable:
    z = getattr(d, "log_normalizer", None)
    return None if z is None else z.key


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
