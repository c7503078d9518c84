"""The sampler interface, and what a sampler samples for an energy-based density."""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from torch import Tensor

from kldiv.densities import Density, Samples

if TYPE_CHECKING:
    from kldiv.densities import Evaluator

__all__ = ["Sampler"]


class Sampler(abc.ABC):
    """Draws (detached, possibly weighted) samples from a density it is attached to.

    Subclasses must implement exactly `sample`; a sampler that starts from or
    reweights another density's samples also overrides `sources`.
    """

    @abc.abstractmethod
    def sample(self, density: Density, ev: Evaluator, n: int) -> Samples:
        """``n`` samples of ``density``'s variables (detached)."""

    def sources(self) -> tuple[Density, ...]:
        """Densities whose samples this sampler uses."""
        return ()


# ----------------------------------------------------------------------------------------
# What a sampler samples: the variables and the energy of an energy-based density
# ----------------------------------------------------------------------------------------
def _target(density: Density) -> tuple[tuple[str, ...], Callable[[Mapping[str, Tensor]], Tensor]]:
    """The variables a sampler draws for ``density`` and its unnormalised log density of them."""
    target = getattr(density, "target", None)
    if target is None:
        raise TypeError(
            "samplers draw from energy-based densities (LatentEBM, MarginalEBM, DecoupledEBLVM, "
            f"EnergyPrior: a density with a target()), got {density!r}"
        )
    return target()
