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
   $\nabla \log Z = E_\pi[\nabla f]$, each divergence's share by the
   sampler of its own density (two copies of one EBM with different
   samplers have one $\log Z$, which cancels between them, and pay for
   what survives each with its own chains).  Otherwise compilation fails with an
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

# The code lives in layers, each importing only the ones below it in this list (no
# import circle, not even through a function-local import):
#   kldiv.algebra    Expression, KL, S; Game, Player           (step 1; Game.compile)
#   kldiv.estimator  Estimator, Round, StepOutput, sample      (step 5; the runtime)
#   kldiv.planner    Merged, Plan, _merge, _closed_form, _plan (steps 2-4; no tensors)
#   kldiv.densities  densities, terms, _Namer (naming networks after densities)
# The planner and the runtime read the algebra's players and games without importing it.
# This module re-exports the public names and the private helpers that used to be
# defined here, so that `kldiv.compiler.X` keeps working. Patching a name here does not
# change what those modules call: patch it in the module that defines it.

from __future__ import annotations

from kldiv.estimator import Estimator, Round, StepOutput, sample
from kldiv.estimator import _Entry, _NoGame, _versions  # noqa: F401
from kldiv.algebra import Game, Player
from kldiv.algebra import _networks_of  # noqa: F401
from kldiv.densities.base import _Namer  # noqa: F401
from kldiv.planner import Merged, Plan, ScoreRoute
from kldiv.planner import (  # noqa: F401
    _EPS,
    _closed_form,
    _downstream,
    _intractable_message,
    _merge,
    _plan,
    _score_route,
    _signed,
)

__all__ = ["Estimator", "Game", "Merged", "Plan", "Player", "Round", "ScoreRoute", "StepOutput", "sample"]
