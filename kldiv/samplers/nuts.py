"""The [`NUTS`][kldiv.samplers.NUTS] sampler: Pyro's NUTS or HMC, a low-dimensional reference sampler."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from kldiv._checks import count, flag, positive_number
from kldiv.densities import Density, Samples
from kldiv.samplers.base import Sampler, _target
from kldiv.samplers.kernel import _per_sample
from kldiv.samplers.starts import _as_shapes, _shape_of

if TYPE_CHECKING:
    from kldiv.densities import Evaluator

__all__ = ["NUTS"]


class NUTS(Sampler):
    r"""Pyro's No-U-Turn sampler (or HMC) on a low-dimensional energy-based density.

    Samples $v \sim \pi(v) \propto \exp f(v)$ by Hamiltonian Monte Carlo with
    potential energy $U(v) = -f(v)$, via ``pyro.infer.mcmc.NUTS`` (Hoffman &
    Gelman 2014) — or ``pyro.infer.mcmc.HMC`` with ``hmc_steps`` leapfrog
    steps — with step size and mass matrix adapted during ``warmup``.
    One chain is run for every call to `sample` (warm-up
    included), one energy evaluation per leapfrog step: a *reference*
    sampler for toys and tests, not a training sampler.  Its randomness is
    torch's global generator (``pyro.set_rng_seed``).

    Arguments:
        warmup: warm-up (adaptation) iterations, discarded.
        thin: keep every ``thin``-th draw.
        shape: the shape of ``x`` or a mapping variable → shape (as for
            [`NoiseStart`][kldiv.samplers.NoiseStart]; ``x`` defaults to the data's shape).
        initial: initial position, a mapping variable → tensor of one
            sample's shape (default: zeros).
        hmc_steps: if given, run HMC with this many leapfrog steps instead of NUTS.
        step_size: the initial leapfrog step size.
        target_accept: target acceptance probability of the step-size adaptation.
        max_tree_depth: NUTS's maximal tree depth.
        full_mass: adapt a dense mass matrix (whitens correlated targets; the
            default, as the sampler is meant for a few dimensions) rather than a diagonal one.

    References:
        Hoffman & Gelman, *The No-U-Turn Sampler: Adaptively Setting Path
        Lengths in Hamiltonian Monte Carlo*, JMLR 2014,
        [arXiv:1111.4246](https://arxiv.org/abs/1111.4246).
    """

    def __init__(
        self,
        *,
        warmup: int = 200,
        thin: int = 1,
        shape: int | tuple[int, ...] | Mapping[str, int | tuple[int, ...]] | None = None,
        initial: Mapping[str, Tensor] | None = None,
        hmc_steps: int | None = None,
        step_size: float = 0.5,
        target_accept: float = 0.8,
        max_tree_depth: int = 10,
        full_mass: bool = True,
    ):
        self.warmup = count("warmup", warmup)
        self.thin = count("thin", thin, minimum=1)
        self.shapes = _as_shapes(shape, "NUTS")
        if initial is not None and not isinstance(initial, Mapping):
            raise TypeError(f"initial must be a mapping variable -> tensor or None, got {initial!r}")
        self.initial = None if initial is None else dict(initial)
        self.hmc_steps = None if hmc_steps is None else count("hmc_steps", hmc_steps, minimum=1)
        self.step_size = positive_number("step_size", step_size)
        target_accept = positive_number("target_accept", target_accept)
        if not target_accept < 1:
            raise ValueError(f"target_accept must be a probability in (0, 1), got {target_accept!r}")
        self.target_accept = target_accept
        self.max_tree_depth = count("max_tree_depth", max_tree_depth, minimum=1)
        self.full_mass = flag("full_mass", full_mass)

    def __repr__(self) -> str:
        kind = "NUTS" if self.hmc_steps is None else f"HMC({self.hmc_steps} steps)"
        return f"{kind}(warmup={self.warmup}, thin={self.thin})"

    def sample(self, density: Density, ev: Evaluator, n: int) -> Samples:
        """One Pyro chain: ``warmup`` iterations, then ``n * thin`` draws thinned to ``n``."""
        from pyro.infer.mcmc import HMC, MCMC
        from pyro.infer.mcmc import NUTS as PyroNUTS

        variables, energy = _target(density)
        if self.initial is not None:
            initial = {
                v: torch.as_tensor(self.initial[v], device=ev.device, dtype=ev.dtype) for v in variables
            }
        else:
            initial = {
                v: torch.zeros(_shape_of(self.shapes, v, ev), device=ev.device, dtype=ev.dtype)
                for v in variables
            }

        def potential(params: Mapping[str, Tensor]) -> Tensor:
            f = energy({v: params[v].unsqueeze(0) for v in variables})
            return -_per_sample(f, 1, "the energy")[0]

        if self.hmc_steps is None:
            kernel = PyroNUTS(
                potential_fn=potential,
                step_size=self.step_size,
                target_accept_prob=self.target_accept,
                max_tree_depth=self.max_tree_depth,
                full_mass=self.full_mass,
            )
        else:
            kernel = HMC(
                potential_fn=potential,
                step_size=self.step_size,
                num_steps=self.hmc_steps,
                target_accept_prob=self.target_accept,
                full_mass=self.full_mass,
            )
        mcmc = MCMC(
            kernel,
            num_samples=n * self.thin,
            warmup_steps=self.warmup,
            initial_params=initial,
            disable_progbar=True,
        )
        with torch.enable_grad():
            mcmc.run()
        draws = mcmc.get_samples()
        return Samples({v: draws[v][:: self.thin].detach().to(ev.dtype) for v in variables})
