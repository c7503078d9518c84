"""The [`Importance`][kldiv.samplers.Importance] sampler: another source's samples with importance weights."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor

from kldiv.densities import Density, Samples
from kldiv.samplers.base import Sampler, _target
from kldiv.samplers.kernel import _per_sample

if TYPE_CHECKING:
    from kldiv.densities import Evaluator

__all__ = ["Importance"]


class Importance(Sampler):
    r"""Importance-weighted samples: another source's samples, reweighted towards the EBM.

    $$ E_\pi[t(v)] \approx \frac1n \sum_{i=1}^n r(v_i)\, t(v_i), \qquad v_i \sim \rho,
       \quad r = \pi / \rho, $$

    where $\rho$ is the proposal: the data batch (an input name, default
    ``"data"``) or a sampleable density (its samples, detached).  The ratio
    $r$ is one of

    * a number $r'$: every weight equals $r'$.  BiDVL (Kan et al. 2022, eq. 15)
      estimates $\mathrm{KL}(\Pi \,\|\, P)$ on data samples with $r' = 0.05$
      at 32×32; an expectation under $\Pi$ is then $r'$ times the data average;
    * a callable $r(v)$ with the energy's arguments ($r(x)$, or $r(x, z)$ for a
      latent EBM) returning ``(n,)``: per-sample ratios (detached);
    * ``"self-normalized"``: $w_i \propto \exp f(v_i)$ normalised over the
      batch, $E_\pi[t] \approx \sum_i w_i t_i / \sum_i w_i$ — exact as $n \to \infty$
      when the proposal's density is uniform (the data batch seen as a
      uniform empirical measure).  Only for an input proposal.

    With a constant $r' \ne 1$ the weights do not sum to $n$, while the
    compiler still cancels $\log Z$ exactly: the *value* of an objective then
    depends on the level of $f$ (adding $c$ to $f$ moves each expectation
    under the EBM by $r' c$, not $c$). Gradients with respect to networks
    other than the energy are unaffected; compare values across runs only at
    the same $r'$.

    Arguments:
        proposal: the name of a step input, or a density to draw from.
        ratio: a number, a callable, or ``"self-normalized"``.

    `sample` returns [`Samples`][kldiv.Samples] with ``weights``, as many as
    the proposal gives (the whole data batch for an input proposal).

    References:
        Kan, Lü, Wang, Zhang, Zhu, Huang, Guo & Snoussi, *Bi-level Doubly
        Variational Learning for Energy-based Latent Variable Models*, CVPR
        2022, eq. 15, [arXiv:2203.14702](https://arxiv.org/abs/2203.14702).
    """

    def __init__(
        self,
        proposal: str | Density = "data",
        ratio: float | Callable[..., Tensor] | Literal["self-normalized"] = 1.0,
    ):

        if not isinstance(proposal, (str, Density)) or (isinstance(proposal, str) and not proposal):
            raise TypeError("proposal must be an input name or a Density, got "
                            + (repr(proposal) if isinstance(proposal, str) else type(proposal).__name__))
        if isinstance(ratio, str):
            if ratio not in ("self-normalized", "self-normalised"):
                raise ValueError(f"ratio must be a number, a callable or 'self-normalized', got {ratio!r}")
            if isinstance(proposal, Density):
                raise ValueError(
                    "a self-normalized ratio exp f(v) assumes a uniform proposal (the data batch); "
                    f"the density of {proposal!r} is not uniform. Give a ratio r(v) = π(v)/ρ(v) instead"
                )
            ratio = "self-normalized"
        elif not callable(ratio):
            ratio = float(ratio)
            if not ratio >= 0:
                raise ValueError(f"a constant ratio must be >= 0, got {ratio}")
        self.proposal = proposal
        self.ratio = ratio

    def __repr__(self) -> str:
        proposal = repr(self.proposal) if isinstance(self.proposal, str) else self.proposal.name
        ratio = self.ratio if not callable(self.ratio) else getattr(self.ratio, "__name__", "r")
        return f"Importance({proposal}, ratio={ratio})"

    def sources(self) -> tuple[Density, ...]:
        return () if isinstance(self.proposal, str) else (self.proposal,)

    def sample(self, density: Density, ev: Evaluator, n: int) -> Samples:
        """The proposal's samples of ``density``'s variables, with their weights."""
        variables, energy = _target(density)
        if isinstance(self.proposal, str):
            if variables != ("x",):
                raise TypeError(
                    f"an input proposal ({self.proposal!r}) gives x only, but {density!r} is "
                    f"over ({', '.join(variables)}); use a density over the same variables as proposal"
                )
            values = {"x": ev.input(self.proposal).detach()}
        else:
            s = ev.samples(self.proposal)
            missing = [v for v in variables if v not in s.values]
            if missing:
                raise TypeError(f"the proposal {self.proposal!r} has no samples of {missing}")
            values = {v: s[v].detach() for v in variables}
        ref = values[variables[0]]
        m = ref.shape[0]
        if self.ratio == "self-normalized":
            # memoised, so the compiler's f(x) on these samples reuses this forward pass
            f = _per_sample(ev.call(density.energy, *(values[v] for v in variables)), m, "the energy")
            f = f.detach()
            weights = torch.exp(f - f.max())
            return Samples(values, weights=weights, self_normalized=True)
        if callable(self.ratio):
            with torch.no_grad():
                r = self.ratio(*(values[v] for v in variables))
            weights = _per_sample(torch.as_tensor(r), m, "the ratio r(v)").detach().to(ref.dtype)
        else:
            weights = torch.full((m,), self.ratio, device=ref.device, dtype=ref.dtype)
        return Samples(values, weights=weights)
