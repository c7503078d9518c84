"""Samplers: what lets the compiler estimate what the algebra cannot cancel."""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kldiv.densities import Density, Evaluator, Samples

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
