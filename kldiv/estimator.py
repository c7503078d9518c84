r"""The runtime: a compiled game's `Estimator` and the `Round`s it evaluates in.

Step 5 of the compilation (see `kldiv.compiler`): the `Estimator` holds the
game's networks and the planner's per-player plans (`kldiv.planner`); a
`Round` draws each sample set once and memoises network and term evaluations while
their parameters are unchanged; `_FirstRun` checks each one's shape and finiteness
the first time it runs; `sample` draws from a density outside any game.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Hashable, Iterable, Mapping

import attrs
import torch
from torch import Tensor, nn

from typing import TYPE_CHECKING

from kldiv._checks import flag
from kldiv.densities import Density, EnergyBased, FactoredDensity, Samples, Term
from kldiv.densities import base as _base
from kldiv.densities.base import _densities_of, _Namer
from kldiv.errors import CompileError, InputError, NameClashWarning, NonFiniteError, ShapeError
from kldiv.planner import Merged, Plan, _plan, _signed

if TYPE_CHECKING:  # a game compiles itself (Game.compile); the runtime only reads it
    from kldiv.algebra import Game

__all__ = ["Estimator", "Round", "StepOutput", "sample"]


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
        if not (isinstance(getattr(game, "players", None), tuple) and callable(getattr(game, "densities", None))):
            hint = (f": an expression is a game's objective, e.g. ({game}).minimize(<densities>)"
                    if callable(getattr(game, "minimize", None)) else "")
            raise TypeError(f"Estimator takes a Game, got {type(game).__name__}{hint}")
        if not game.players:
            raise CompileError("the game has no players; add one with minimize or maximize")
        super().__init__()
        self.game = game
        self.values = flag("values", values)
        self.baseline = flag("baseline", baseline)
        flag("closed_form", closed_form)
        densities = game.densities()
        _warn_name_clashes(densities)
        self._namer = _Namer(densities)
        self._inputs = _input_names(densities)
        payers: dict[Hashable, Density] = {}  # by the normalising constant they can pay for
        for d in densities:
            if isinstance(d, EnergyBased) and d.sampler is not None:
                payers.setdefault(d.log_normalizer.key, d)
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
        self._first = _FirstRun(self)  # the first-step checks, once per network, term and source

    def _runner(self, module: nn.Module, done: set[str]) -> nn.Module:
        """What a round runs for ``module``: its wrapper (`distribute`) while a player that
        trains it has yet to back-propagate in the round (``done``), else the module."""
        wrapper = self._wrappers.get(id(module))
        if wrapper is not None and not self._owners.get(id(module), frozenset()) <= done:
            return wrapper
        return module

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
        values = self.values if values is None else flag("values, whether the round evaluates value-only terms,", values)
        return Round(self, named, n=n, values=values)

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
            if ("inputs",) not in self._first.checked and not torch.isfinite(x).all():
                raise NonFiniteError(f"the step's input {name!r} holds NaN or infinite values; "
                                     "clean the batch before the step")
        if self._inputs is not None:
            unread = sorted(set(named) - self._inputs - {"data"})
            if unread:
                read = sorted(self._inputs) or ["data"]
                absent = [r for r in read if r not in named]
                raise InputError(
                    f"no density of this game reads the step's input{'s' if len(unread) > 1 else ''} "
                    f"{', '.join(map(repr, unread))}; they read {', '.join(map(repr, read))}"
                    + (f" (not given: {', '.join(map(repr, absent))})" if absent else "")
                    + " (a DataDensity's x: DataDensity(encoder, x='name')). Check the name, or drop the input"
                )
        if named:
            self._first.checked.add(("inputs",))

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
            lines += [f"  {s.name}: {s.describe_sampling()}" for s in _densities_of(*drawn)]
        every = [
            m
            for plan in self.plans.values()
            for m in itertools.chain(plan.gradient, plan.value_only, plan.constants, plan.cancelled)
        ] + [m for plan in self.plans.values() for m, _ in (*plan.sampler_paid, *plan.score)]
        width = max([28] + [len(m.label()) for m in every])
        cw = max([2] + [len(_signed(m.coef)) for m in every])  # the coefficients' column

        def rows(ms, tail=lambda m: m.origin_text()):
            return [f"    {_signed(m.coef):<{cw}} {m.label():<{width}} {tail(m)}" for m in ms]

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
                lines += [f"    {m.label():<{width + cw}} {m.origin_text()}" for m in plan.cancelled]
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

    Its one job is evaluating the plans on this batch; what it delegates: the
    first-step checks of each network, term and sample set (the estimator's
    `_FirstRun`), and which module a call runs through under
    ``DistributedDataParallel`` (`Estimator.distribute`).
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
        out = self.estimator._first.call(module, self.estimator._runner(module, self._done), args)
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
        self.estimator._first.samples(density, s)
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
        self.estimator._first.term(term, samples, out)
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
        for r in plan.score:
            m, route = r.summand, r.terms
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
            if self.estimator.baseline or r.centred:
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

    def backward(self, player: str, *, retain_graph: bool = True, scale=None) -> Tensor:
        """Compute ``player``'s loss (if not yet computed on the current parameters)
        and back-propagate it into that player's parameters only; returns the loss.

        ``scale`` (a function of the loss, such as ``torch.amp.GradScaler.scale``)
        back-propagates ``scale(loss)`` instead, for float16 loss scaling; the loss
        returned is the unscaled one."""
        loss = self.loss(player)
        self._backward(player, loss if scale is None else scale(loss), retain_graph)
        return loss

    def _backward(self, player: str, loss: Tensor, retain_graph: bool) -> None:
        params = self.estimator.parameters(player)
        if loss.requires_grad and params:
            torch.autograd.backward(loss, inputs=params, retain_graph=retain_graph)
        self._done.add(player)


def _warn_name_clashes(densities) -> None:
    """Warn when two densities of a game share a name: every label (`explain`, `Round.terms`,
    the logged metrics, the errors) names densities, so theirs would read as one."""
    seen: dict[str, Density] = {}
    for d in densities:
        other = seen.setdefault(d.name, d)
        if other is not d:
            warnings.warn(NameClashWarning(
                f"two densities of this game are named {d.name!r} (a {type(other).__name__} and a "
                f"{type(d).__name__}): explain(), the terms' labels in Round.terms and the logged metrics, "
                "and error messages cannot tell them apart, and a term of one takes the other's label. "
                f"Name one apart: {type(d).__name__}(..., name=...), or density.with_sampler(..., name=...)"
            ), stacklevel=4)  # the caller of Game.compile


class _FirstRun:
    """The checks a compiled game runs the first time it evaluates each network (on inputs
    of given shapes), each term and each source's samples, so that a wrong shape, a
    non-finite initialisation or a failing network is named where it happens; later
    evaluations skip them."""

    def __init__(self, estimator: Estimator):
        self.estimator = estimator
        self.checked: set[Hashable] = set()  # what passed: calls by shapes, terms, sources

    def call(self, module: nn.Module, run: nn.Module, args: tuple) -> object:
        """``run(*args)`` (``module`` or its wrapper); the first run on inputs of these
        shapes turns a failure into an error naming the network and what it was given."""
        seen = ("call", id(module), tuple(tuple(a.shape) if isinstance(a, Tensor) else None for a in args))
        if seen in self.checked:
            out = run(*args)
        else:  # the first run of a network on inputs of these shapes: a failure names it and what it was given
            try:
                out = run(*args)
            except (RuntimeError, ValueError, TypeError, IndexError) as err:
                if getattr(err, "from_network", False):  # a kldiv network refused its input: name which
                    pass
                elif isinstance(err, (ShapeError, NonFiniteError)) or type(err).__module__.startswith("kldiv"):
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
            self.checked.add(seen)
        return out

    def _where(self, term: Term) -> str:
        users = [
            name
            for name, plan in self.estimator.plans.items()
            if any(m.term is term for m in plan.gradient + plan.value_only + tuple(m for m, _ in plan.score))
            or any(payer.energy_term is term for _, payer in plan.sampler_paid)
        ]
        nets = self.estimator._namer(term.modules) or "no network"
        return f"{term.label} (network {nets}; used by {', '.join(repr(u) for u in users) or 'no player'})"

    def term(self, term: Term, samples: Samples | None, out: object) -> None:
        """Check a term's first output: one finite number per sample."""
        if id(term) in self.checked:
            return
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
        self.checked.add(id(term))

    def samples(self, density: Density, s: Samples) -> None:
        """Check a source's first samples: one row per sample, the declared latent shape, finite."""
        if id(density) in self.checked:
            return
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
        self.checked.add(id(density))


class _NoGame:
    """What a [`Round`][kldiv.Round] reads of an estimator, for drawing samples outside a game."""

    def __init__(self, density: Density):
        self._networks = {id(m): m for d in _densities_of(density) for m in d.networks().values()}
        self._wrappers: dict[int, nn.Module] = {}
        self._owners: dict[int, frozenset[str]] = {}
        self._first = _FirstRun(self)
        self._namer = _Namer(_densities_of(density))
        self.plans: dict[str, Plan] = {}

    _runner = Estimator._runner


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
    if not isinstance(density, Density):
        raise TypeError(f"sample draws from a Density, got {type(density).__name__}")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise InputError(f"n, the number of samples, must be a positive int, got {n!r}")
    bad = [k for k, v in inputs.items() if not isinstance(v, Tensor)]
    if bad:
        raise InputError(f"the inputs {bad} of sample must be tensors (sample({density.name}, data=x))")
    return Round(_NoGame(density), inputs, n=n).samples(density)


_base._outside_a_game = sample  # p.sample(n, **inputs) outside a game (`Density.sample`)


def _input_names(densities: Iterable[Density]) -> frozenset[str] | None:
    """The named step inputs the densities read (a DataDensity's ``x``), or ``None`` when a density
    of a kind defined outside kldiv could read inputs of its own."""
    names: set[str] = set()
    for d in densities:
        if isinstance(d, FactoredDensity):
            names.update(f.input for f in d.factors if f.kind == "input" and isinstance(f.input, str))
        elif not isinstance(d, EnergyBased):
            return None
    return frozenset(names)
