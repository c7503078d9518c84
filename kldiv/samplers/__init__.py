r"""Samplers: what lets the compiler estimate what the algebra cannot cancel.

When $\log Z$ survives for a player that trains an energy network, its
gradient is an expectation under the normalised model,

$$ \nabla_\alpha \log Z(\alpha) = E_{\pi_\alpha}\big[\nabla_\alpha f_\alpha(v)\big], $$

so the compiler needs samples from $\pi_\alpha \propto \exp f_\alpha$.  A
[`Sampler`][kldiv.samplers.Sampler] attached to an energy-based density
provides them:

| sampler | draws | reference |
| --- | --- | --- |
| [`Langevin`][kldiv.samplers.Langevin] | finite-step (unadjusted) Langevin dynamics from noise, a persistent buffer, or a generator | Welling & Teh 2011; Du & Mordatch 2019; Xie et al. 2021 |
| [`Importance`][kldiv.samplers.Importance] | another source's samples with importance weights | Kan et al. 2022, eq. 15 |
| [`NUTS`][kldiv.samplers.NUTS] | Pyro's NUTS or HMC (low-dimensional reference sampler) | Hoffman & Gelman 2014 |

The Langevin *kernel* is also available on its own, in the style of
BlackJAX: an explicit state ([`LangevinState`][kldiv.samplers.LangevinState])
with [`langevin_init`][kldiv.samplers.langevin_init] and
[`langevin_step`][kldiv.samplers.langevin_step], and a driver
[`langevin_chain`][kldiv.samplers.langevin_chain] (with per-step diagnostics,
[`LangevinInfo`][kldiv.samplers.LangevinInfo]).  Nothing is global: the
randomness comes from an optional ``torch.Generator``, the target from a
function of the positions.

Examples:
    >>> import torch
    >>> from kldiv.samplers import langevin_chain
    >>> log_p = lambda x: -0.5 * x.square().sum(1)          # N(0, I), up to a constant
    >>> g = torch.Generator().manual_seed(0)
    >>> x = langevin_chain(torch.zeros(1000, 2), log_p, steps=200, step_size=0.5, generator=g)
    >>> x.shape, round(x.var().item(), 1)                  # ULA: 1 / (1 - 0.5**2 / 4) ≈ 1.07
    (torch.Size([1000, 2]), 1.1)
"""


from __future__ import annotations

from kldiv.samplers.base import Sampler
from kldiv.samplers.importance import Importance
from kldiv.samplers.kernel import (  # Position, LogDensityFn, StepSize: type aliases, kept importable here
    LangevinInfo,
    LangevinState,
    LogDensityFn,
    Position,
    StepSize,
    gaussian_reference,
    langevin_chain,
    langevin_init,
    langevin_move,
    langevin_step,
)
from kldiv.samplers.langevin import Langevin
from kldiv.samplers.nuts import NUTS
from kldiv.samplers.starts import AmortizedStart, NoiseStart, PersistentStart, Start

__all__ = [
    "AmortizedStart",
    "Importance",
    "Langevin",
    "LangevinInfo",
    "LangevinState",
    "NUTS",
    "NoiseStart",
    "PersistentStart",
    "Sampler",
    "Start",
    "gaussian_reference",
    "langevin_chain",
    "langevin_init",
    "langevin_move",
    "langevin_step",
]
