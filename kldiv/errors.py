"""The errors kldiv raises, each a subclass of a built-in error users already catch, and the
one warning it gives (`NameClashWarning`)."""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "CompileError",
    "InputError",
    "IntractableError",
    "NameClashWarning",
    "NonFiniteError",
    "NotSampleableError",
    "ShapeError",
    "UnusedParametersError",
    "VariableMismatchError",
]


class VariableMismatchError(TypeError):
    """``KL(a, b)`` or ``S(a, b)`` between densities over different variables."""


class CompileError(ValueError):
    """A game that cannot be turned into a Monte Carlo estimator."""


class IntractableError(CompileError):
    """A player's gradient needs a term that kldiv may not compute or cannot sample."""


class UnusedParametersError(CompileError):
    """A player owns a network that its objective never depends on."""


class NotSampleableError(RuntimeError):
    """Samples were requested from a density that has no way to draw them."""


class ShapeError(ValueError):
    """A network returned an output of the wrong shape (checked at the first step), or one of
    `kldiv.nn`'s networks was given an input of a shape it was not built for."""


class NonFiniteError(FloatingPointError):
    """A network output or a loss is NaN or infinite."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: corrupt, carrying code, or another run's; it is left untouched."""


class InputError(TypeError, ValueError):
    """A step's input that no network can take: not a tensor, empty, of the wrong dtype or device."""


class NameClashWarning(UserWarning):
    """Two densities of one game share a name, so its labels cannot tell them apart."""
