"""Where [`Langevin`][kldiv.samplers.Langevin] chains start: noise, a replay buffer, or a generator."""

from __future__ import annotations

import abc
import math
import numbers
from collections.abc import Mapping
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor

from kldiv._checks import count, positive_number
from kldiv.densities import Density
from kldiv.densities.base import _as_shape

if TYPE_CHECKING:
    from kldiv.densities import Evaluator

__all__ = ["AmortizedStart", "NoiseStart", "PersistentStart", "Start"]


def _as_shapes(shape, what: str) -> dict[str, tuple[int, ...]] | None:
    """The shape (without the batch dimension) of each variable a start draws, each size at least 1."""
    if shape is None:
        return None
    if isinstance(shape, Mapping):
        for k in shape:
            if not isinstance(k, str) or not k:
                raise TypeError(f"{what}: shape maps variable names to shapes, got the key {k!r}")
        return {k: _as_shape(s, f"{what}: the shape of {k!r}") for k, s in shape.items()}
    if isinstance(shape, (numbers.Integral, tuple, list, torch.Size)) and not isinstance(shape, bool):
        return {"x": _as_shape(shape, f"{what}: shape")}
    raise TypeError(f"{what}: shape must be an int, a tuple, or a mapping variable -> shape, got {shape!r}")


def _shape_of(shapes: dict[str, tuple[int, ...]] | None, variable: str, ev: Evaluator) -> tuple[int, ...]:
    if shapes is not None and variable in shapes:
        return shapes[variable]
    if variable == "x":
        try:
            return tuple(ev.input("data").shape[1:])
        except KeyError:
            pass
    raise ValueError(
        f"the shape of {variable!r} (without the batch dimension) is needed to start chains "
        f"from noise; give shape={{'{variable}': (...)}}"
        + (" (the shape of x is otherwise taken from the input 'data')" if variable == "x" else "")
    )


def _device_of(ev: Evaluator, generator: torch.Generator | None) -> torch.device:
    return ev.device if generator is None else generator.device


# ----------------------------------------------------------------------------------------
# Where chains start
# ----------------------------------------------------------------------------------------
class Start(abc.ABC):
    """Where [`Langevin`][kldiv.samplers.Langevin] chains start.

    Subclasses must implement exactly `draw`; a start that keeps the chains'
    final positions overrides `update`, one that uses another density's
    samples overrides `sources`.
    """

    @abc.abstractmethod
    def draw(
        self, variables: tuple[str, ...], ev: Evaluator, n: int, generator: torch.Generator | None
    ) -> tuple[dict[str, Tensor], object]:
        """``n`` initial positions of ``variables`` (detached) and a token for `update`."""

    def update(self, token: object, final: Mapping[str, Tensor]) -> None:
        """Receive the chains' final positions (``token`` from `draw`)."""

    def sources(self) -> tuple[Density, ...]:
        """Densities whose samples the start uses."""
        return ()


class NoiseStart(Start):
    r"""Chains start from noise, independently of everything else.

    * ``"uniform"``: $v \sim \mathcal U[\mathrm{low}, \mathrm{high}]$ elementwise
      (default $[-1, 1]$, the range of images; the MCMC-teaching paper's start);
    * ``"normal"``: $v \sim \mathcal N(0, \mathrm{scale}^2 I)$.

    Arguments:
        distribution: ``"uniform"`` or ``"normal"``.
        shape: the shape of one sample of ``x`` (a tuple), or a mapping
            variable → shape (``{"x": (2,), "z": (4,)}``).  The shape of ``x``
            defaults to that of the step's input ``"data"``; ``z`` has no default.
        low: lower end of the uniform.
        high: upper end of the uniform.
        scale: standard deviation of the normal.
    """

    def __init__(
        self,
        distribution: Literal["uniform", "normal"] = "uniform",
        *,
        shape: int | tuple[int, ...] | Mapping[str, int | tuple[int, ...]] | None = None,
        low: float = -1.0,
        high: float = 1.0,
        scale: float = 1.0,
    ):
        if distribution not in ("uniform", "normal"):
            raise ValueError(f"distribution must be 'uniform' or 'normal', got {distribution!r}")
        low, high = float(low), float(high)
        if not (math.isfinite(low) and math.isfinite(high) and high > low):
            raise ValueError(f"need finite low < high, got [{low}, {high}]")
        scale = positive_number("scale", scale)
        self.distribution = distribution
        self.shapes = _as_shapes(shape, "NoiseStart")
        self.low, self.high, self.scale = float(low), float(high), float(scale)

    def __repr__(self) -> str:
        if self.distribution == "uniform":
            return f"uniform[{self.low:g}, {self.high:g}]"
        return f"normal(0, {self.scale:g}²)"

    def draw(self, variables, ev, n, generator):
        device = _device_of(ev, generator)
        out = {}
        for v in variables:
            shape = (n, *_shape_of(self.shapes, v, ev))
            if self.distribution == "uniform":
                t = torch.rand(shape, generator=generator, device=device, dtype=ev.dtype)
                t = t.mul_(self.high - self.low).add_(self.low)
            else:
                t = torch.randn(shape, generator=generator, device=device, dtype=ev.dtype).mul_(self.scale)
            out[v] = t.to(ev.device)
        return out, None


class PersistentStart(Start):
    r"""Chains start where earlier chains stopped: a replay buffer.

    The buffer holds ``capacity`` positions, filled with noise at the first
    draw.  Each draw takes ``n`` of them at random (without replacement when
    ``n <= capacity``), replaces each by fresh noise with probability
    ``reinit``, and after the chains have run the final positions are written
    back to the same slots.  With ``reinit=0`` this is persistent contrastive
    divergence (Tieleman 2008); Du & Mordatch (2019) use a buffer of 10,000
    and re-initialise 5% of the chains.

    The buffer is state: one `PersistentStart` per model being trained.

    Arguments:
        capacity: number of positions kept.
        reinit: probability that a drawn chain restarts from noise.
        noise: the noise start (``"uniform"``, ``"normal"`` or a
            [`NoiseStart`][kldiv.samplers.NoiseStart]) used to fill the buffer and to restart chains.
        shape: the shape of ``x`` or a mapping variable → shape, for a noise
            start given by name.

    References:
        Du & Mordatch, *Implicit Generation and Generalization in Energy-Based
        Models*, NeurIPS 2019, [arXiv:1903.08689](https://arxiv.org/abs/1903.08689).
    """

    def __init__(
        self,
        capacity: int = 10_000,
        reinit: float = 0.05,
        noise: Literal["uniform", "normal"] | NoiseStart = "uniform",
        *,
        shape: int | tuple[int, ...] | Mapping[str, int | tuple[int, ...]] | None = None,
    ):
        capacity = count("capacity", capacity, minimum=1)
        if isinstance(reinit, bool) or not isinstance(reinit, numbers.Real) or not 0.0 <= float(reinit) <= 1.0:
            raise ValueError(f"reinit must be a probability in [0, 1], got {reinit!r}")
        if not isinstance(noise, (NoiseStart, str)):
            raise TypeError(f"noise must be 'uniform', 'normal' or a NoiseStart, got {noise!r}")
        self.capacity = capacity
        self.reinit = float(reinit)
        self.noise = noise if isinstance(noise, NoiseStart) else NoiseStart(noise, shape=shape)
        self.buffer: dict[str, Tensor] | None = None

    def __repr__(self) -> str:
        return f"persistent(capacity={self.capacity}, reinit={self.reinit:g}, noise={self.noise!r})"

    def draw(self, variables, ev, n, generator):
        if self.buffer is None or set(self.buffer) != set(variables):
            self.buffer, _ = self.noise.draw(variables, ev, self.capacity, generator)
        device = _device_of(ev, generator)
        if n <= self.capacity:
            index = torch.randperm(self.capacity, generator=generator, device=device)[:n]
        else:
            index = torch.randint(self.capacity, (n,), generator=generator, device=device)
        out = {}
        for v in variables:
            self.buffer[v] = self.buffer[v].to(device=ev.device, dtype=ev.dtype)
            out[v] = self.buffer[v][index.to(ev.device)]
        if self.reinit > 0:
            restart = torch.rand(n, generator=generator, device=device) < self.reinit
            k = int(restart.sum())
            if k:
                fresh, _ = self.noise.draw(variables, ev, k, generator)
                where = restart.nonzero()[:, 0].to(ev.device)
                for v in variables:
                    out[v][where] = fresh[v]
        return out, index.to(ev.device)

    def update(self, token, final):
        for v, t in final.items():
            self.buffer[v][token] = t.detach().to(self.buffer[v].dtype)

    def state_dict(self) -> dict[str, object]:
        """The buffer (``None`` before the first draw), for a checkpoint."""
        buffer = None if self.buffer is None else {v: t.detach().cpu() for v, t in self.buffer.items()}
        return {"capacity": self.capacity, "buffer": buffer}

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        """Restore the buffer saved by `state_dict` (moved to the step's device at the next draw)."""
        if int(state["capacity"]) != self.capacity:
            raise ValueError(
                f"the saved buffer holds {state['capacity']} positions, this one {self.capacity}"
            )
        buffer = state["buffer"]
        self.buffer = None if buffer is None else {v: t.clone() for v, t in buffer.items()}


class AmortizedStart(Start):
    r"""Chains start at this round's samples of a generator (ancestral Langevin).

    $$ \hat z \sim \mathcal N(0, I), \quad \hat x = g(\hat z), \qquad \tilde x_0 = \hat x, $$

    then Langevin revises $\tilde x$ (Xie et al. 2021).  The start reads the
    compiler's samples of the generator for the current round (detached), so
    the same $(\hat x, \hat z)$ serve the other terms that use them.  For a
    [`LatentEBM`][kldiv.LatentEBM] the joint chain starts at $(g(\hat z), \hat z)$.

    Arguments:
        generator: a sampleable density with the variables being sampled
            (usually a [`GeneratorDensity`][kldiv.GeneratorDensity]; use
            ``synthesis="mean"`` for the papers' noise-free $\hat x = g(\hat z)$).

    References:
        Xie, Zheng & Li, *Learning Energy-Based Model with Variational
        Auto-Encoder as Amortized Sampler*, AAAI 2021,
        [arXiv:2012.14936](https://arxiv.org/abs/2012.14936).
    """

    def __init__(self, generator: Density):

        if not isinstance(generator, Density):
            raise TypeError(
                f"an amortised start needs a density to draw from, got {type(generator).__name__}"
            )
        self.generator = generator

    def __repr__(self) -> str:
        return f"amortized({self.generator.name})"

    def draw(self, variables, ev, n, generator):
        s = ev.samples(self.generator)
        missing = [v for v in variables if v not in s.values]
        if missing:
            raise TypeError(
                f"the amortised start {self.generator!r} has no samples of {missing}; a chain "
                f"over ({', '.join(variables)}) needs a start over the same variables"
            )
        if s.n != n:
            raise ValueError(f"the amortised start gave {s.n} samples, the sampler needs {n}")
        return {v: s[v].detach() for v in variables}, None

    def sources(self):
        return (self.generator,)


def _as_start(init, shape) -> Start:
    if isinstance(init, Start):
        return init
    if isinstance(init, Density):
        return AmortizedStart(init)
    if init in ("uniform", "normal"):
        return NoiseStart(init, shape=shape)
    if init == "persistent":
        return PersistentStart(shape=shape)
    raise ValueError(
        "init must be 'uniform', 'normal', 'persistent', a density to start from (a "
        f"GeneratorDensity), or a Start; got {init!r}"
    )
