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
[`langevin_chain`][kldiv.samplers.langevin_chain].  Nothing is global: the
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

import abc
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Literal, NamedTuple, Union

import torch
from torch import Tensor, nn

from kldiv.densities import Density, LatentEBM, Samples
from kldiv.errors import ShapeError

if TYPE_CHECKING:
    from kldiv.densities import Evaluator

__all__ = [
    "AmortizedStart",
    "Importance",
    "Langevin",
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

Position = Union[Tensor, Mapping[str, Tensor]]
"""A chain's position: one tensor ``(n, ...)``, or one per variable (``{"x": ..., "z": ...}``)."""

LogDensityFn = Callable[[Position], Tensor]
"""``log_density(position) -> (n,)``: the unnormalised log density of each chain."""

StepSize = Union[float, Mapping[str, float]]


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
# Positions: one tensor or one tensor per variable
# ----------------------------------------------------------------------------------------
def _leaves(position: Position) -> tuple[tuple[str, ...] | None, tuple[Tensor, ...]]:
    if isinstance(position, Tensor):
        return None, (position,)
    keys = tuple(position)
    return keys, tuple(position[k] for k in keys)


def _rebuild(keys: tuple[str, ...] | None, tensors) -> Position:
    if keys is None:
        (t,) = tensors
        return t
    return dict(zip(keys, tensors))


def _per_sample(out: Tensor, n: int, what: str) -> Tensor:
    if isinstance(out, Tensor) and out.dim() == 2 and out.shape[1] == 1:
        out = out[:, 0]
    if not isinstance(out, Tensor) or tuple(out.shape) != (n,):
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ShapeError(f"{what} must give one value per chain, shape ({n},) or ({n}, 1), got {got}")
    return out


def _step_sizes(step_size: StepSize, keys: tuple[str, ...] | None) -> tuple[float, ...]:
    if isinstance(step_size, Mapping):
        if keys is None:
            raise TypeError("a step size per variable needs a position with one tensor per variable")
        missing = [k for k in keys if k not in step_size]
        if missing:
            raise KeyError(f"no step size for {missing}; got step sizes for {sorted(step_size)}")
        return tuple(float(step_size[k]) for k in keys)
    return (float(step_size),) * (1 if keys is None else len(keys))


# ----------------------------------------------------------------------------------------
# The Langevin kernel
# ----------------------------------------------------------------------------------------
class LangevinState(NamedTuple):
    r"""The state of a batch of Langevin chains.

    Attributes:
        position: the chains' positions $v$: a tensor ``(n, ...)`` or a mapping
            of such tensors (one per variable, e.g. ``x`` and ``z``).
        log_density: $\log p(v)$ of each chain, shape ``(n,)`` (detached).
        grad: $\nabla_v \log p(v)$, with the structure of ``position`` (detached).
    """

    position: Position
    log_density: Tensor
    grad: Position


def gaussian_reference(log_density: LogDensityFn, sigma: float) -> LogDensityFn:
    r"""Add a Gaussian reference term to a log density.

    $$ \log p(v) = f(v) - \frac{\lVert v \rVert^2}{2\sigma^2}, $$

    the sum running over every variable of the position.  This is the
    reference distribution $\mathcal N(0, \sigma^2 I)$ of the MCMC-teaching
    code (Xie et al. 2021, ``sigma_ref``), which keeps the chains bounded.

    Arguments:
        log_density: $v \mapsto f(v)$, shape ``(n,)``.
        sigma: the reference standard deviation $\sigma > 0$.

    Returns:
        $v \mapsto \log p(v)$.
    """
    if not float(sigma) > 0:
        raise ValueError(f"sigma must be positive, got {sigma!r}")
    scale = 0.5 / float(sigma) ** 2

    def with_reference(position: Position) -> Tensor:
        out = log_density(position)
        _, tensors = _leaves(position)
        for t in tensors:
            out = out - scale * t.flatten(1).square().sum(1)
        return out

    return with_reference


def langevin_init(position: Position, log_density: LogDensityFn) -> LangevinState:
    r"""Evaluate the log density and its gradient at ``position``.

    The gradient is taken with ``torch.autograd.grad`` of
    $\sum_i \log p(v_i)$ with respect to the positions only: nothing
    accumulates in the ``.grad`` of the energy's parameters, and it works
    inside an outer ``torch.no_grad()``.  A variable the log density does not
    read gets a zero gradient.

    Arguments:
        position: a tensor ``(n, ...)`` or a mapping of tensors with the same ``n``.
        log_density: $v \mapsto \log p(v)$ up to a constant, shape ``(n,)`` or ``(n, 1)``.

    Returns:
        The [`LangevinState`][kldiv.samplers.LangevinState] at ``position``.
    """
    keys, tensors = _leaves(position)
    n = tensors[0].shape[0]
    with torch.enable_grad():
        leaves = tuple(t.detach().requires_grad_(True) for t in tensors)
        logp = _per_sample(log_density(_rebuild(keys, leaves)), n, "the log density")
        if logp.requires_grad:
            grads = torch.autograd.grad(logp.sum(), leaves, allow_unused=True)
        else:
            grads = (None,) * len(leaves)
    grads = tuple(torch.zeros_like(t) if g is None else g for t, g in zip(leaves, grads))
    return LangevinState(
        _rebuild(keys, tuple(t.detach() for t in leaves)), logp.detach(), _rebuild(keys, grads)
    )


def _clip(grads: tuple[Tensor, ...], max_norm: float) -> tuple[Tensor, ...]:
    # per-sample norm of the joint gradient over every variable
    sq = sum(g.flatten(1).square().sum(1) for g in grads)  # (n,)
    scale = (max_norm / (sq.sqrt() + 1e-12)).clamp(max=1.0)
    return tuple(g * scale.view(-1, *([1] * (g.dim() - 1))) for g in grads)


def langevin_move(
    state: LangevinState,
    step_size: StepSize,
    *,
    noise: bool = True,
    clip_grad: float | None = None,
    generator: torch.Generator | None = None,
) -> Position:
    r"""The next position of a Langevin step, without evaluating it.

    $$ v' = v + \frac{\delta^2}{2}\, \nabla_v \log p(v) + \delta\, \epsilon,
       \qquad \epsilon \sim \mathcal N(0, I). $$

    Arguments:
        state: the current state.
        step_size: $\delta$, one number or one per variable (``{"x": 0.01, "z": 0.1}``).
        noise: add $\delta\epsilon$; ``False`` gives gradient ascent on
            $\log p$ with rate $\delta^2/2$ (as the MCMC-teaching code runs).
        clip_grad: if given, each chain's gradient (jointly over all
            variables) is rescaled to Euclidean norm at most ``clip_grad``.
        generator: the random number generator of $\epsilon$ (default: torch's global one).

    Returns:
        The new position, with the structure of ``state.position``.
    """
    keys, xs = _leaves(state.position)
    _, gs = _leaves(state.grad)
    if clip_grad is not None:
        gs = _clip(gs, float(clip_grad))
    deltas = _step_sizes(step_size, keys)
    out = []
    with torch.no_grad():
        for x, g, d in zip(xs, gs, deltas):
            new = torch.add(x, g, alpha=0.5 * d * d)
            if noise:
                eps = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
                new.add_(eps, alpha=d)
            out.append(new)
    return _rebuild(keys, out)


def langevin_step(
    state: LangevinState,
    log_density: LogDensityFn,
    step_size: StepSize,
    *,
    noise: bool = True,
    clip_grad: float | None = None,
    generator: torch.Generator | None = None,
) -> LangevinState:
    r"""One step of (unadjusted) Langevin dynamics.

    $$ v_{t+1} = v_t + \frac{\delta^2}{2}\, \nabla_v \log p(v_t) + \delta\, \epsilon_t,
       \qquad \epsilon_t \sim \mathcal N(0, I), $$

    the Euler–Maruyama discretisation of the Langevin diffusion whose
    stationary law is $p$ (Welling & Teh 2011, without the data subsampling).
    There is no Metropolis correction, so for $\delta > 0$ the chain's
    stationary law is only close to $p$: for $p = \mathcal N(\mu, s^2)$ it is
    $\mathcal N(\mu, s^2 / (1 - \delta^2 / (4 s^2)))$.

    Arguments:
        state: the current state (from [`langevin_init`][kldiv.samplers.langevin_init]).
        log_density: $v \mapsto \log p(v)$, the same function as at ``init``.
        step_size: $\delta$, one number or one per variable.
        noise: add the noise $\delta\epsilon_t$ (``False``: deterministic gradient ascent).
        clip_grad: clip each chain's gradient to this Euclidean norm (jointly over variables).
        generator: the random number generator of $\epsilon_t$.

    Returns:
        The state at $v_{t+1}$.

    References:
        Welling & Teh, *Bayesian Learning via Stochastic Gradient Langevin
        Dynamics*, ICML 2011.
    """
    position = langevin_move(state, step_size, noise=noise, clip_grad=clip_grad, generator=generator)
    return langevin_init(position, log_density)


def langevin_chain(
    position: Position,
    log_density: LogDensityFn,
    steps: int,
    step_size: StepSize,
    *,
    noise: bool = True,
    clip_grad: float | None = None,
    generator: torch.Generator | None = None,
    callback: Callable[[int, LangevinState], None] | None = None,
) -> Position:
    r"""Run ``steps`` Langevin steps from ``position`` and return the final positions.

    Each step costs one evaluation of $\log p$ and its gradient; the final
    position is not evaluated unless a ``callback`` asks for its state.

    Arguments:
        position: the initial positions, a tensor ``(n, ...)`` or a mapping of them.
        log_density: $v \mapsto \log p(v)$, shape ``(n,)``.
        steps: the number of steps $T \ge 0$.
        step_size: $\delta$, one number or one per variable.
        noise: add the Langevin noise.
        clip_grad: per-chain gradient norm clip.
        generator: the random number generator of the noise.
        callback: ``callback(t, state)`` called with the state after ``t`` steps,
            for ``t = 0, ..., steps`` (diagnostics, e.g. the mean log density per step).

    Returns:
        The positions after $T$ steps (detached), with the structure of ``position``.
    """
    steps = int(steps)
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if steps == 0 and callback is None:
        keys, tensors = _leaves(position)
        return _rebuild(keys, tuple(t.detach() for t in tensors))
    state = langevin_init(position, log_density)
    if callback is not None:
        callback(0, state)
    for t in range(1, steps + 1):
        position = langevin_move(state, step_size, noise=noise, clip_grad=clip_grad, generator=generator)
        if t == steps and callback is None:
            return position
        state = langevin_init(position, log_density)
        if callback is not None:
            callback(t, state)
    return state.position


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


def _as_shapes(shape, what: str) -> dict[str, tuple[int, ...]] | None:
    if shape is None:
        return None
    if isinstance(shape, Mapping):
        return {k: ((int(s),) if isinstance(s, int) else tuple(int(i) for i in s)) for k, s in shape.items()}
    if isinstance(shape, int):
        return {"x": (int(shape),)}
    if isinstance(shape, (tuple, list)):
        return {"x": tuple(int(i) for i in shape)}
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
        if not high > low:
            raise ValueError(f"need low < high, got [{low}, {high}]")
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
        if int(capacity) < 1:
            raise ValueError(f"capacity must be positive, got {capacity}")
        if not 0.0 <= float(reinit) <= 1.0:
            raise ValueError(f"reinit must be a probability, got {reinit}")
        self.capacity = int(capacity)
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


# ----------------------------------------------------------------------------------------
# Samplers
# ----------------------------------------------------------------------------------------
class Langevin(Sampler):
    r"""Finite-step Langevin dynamics on an energy-based density.

    $$ v_{t+1} = v_t + \frac{\delta^2}{2}\, \nabla_v \log p(v_t) + \delta\,\epsilon_t,
       \qquad \log p(v) = f(v) \;\Big[ - \frac{\lVert v\rVert^2}{2\sigma_{\rm ref}^2} \Big], $$

    for $t = 0, \dots, T-1$, from a start $v_0$, returning $v_T$ (detached).
    What $v$ is depends on the density the sampler is attached to:

    | density | chain over | energy |
    | --- | --- | --- |
    | [`MarginalEBM`][kldiv.MarginalEBM] | $x$ | $f(x)$ |
    | [`LatentEBM`][kldiv.LatentEBM] | $(x, z)$ jointly | $f(x, z)$ |
    | [`DecoupledEBLVM`][kldiv.DecoupledEBLVM] | $x$ (the density then draws $z \sim q_\phi(z \mid x)$) | $f(x)$ |
    | [`EnergyPrior`][kldiv.EnergyPrior] | $z$ | $f(z) + \log \mathcal N(z; 0, I)$ |

    Starts (``init``):

    * ``"uniform"`` (default): $v_0 \sim \mathcal U[-1, 1]$ elementwise;
      ``"normal"``: $v_0 \sim \mathcal N(0, I)$ — see [`NoiseStart`][kldiv.samplers.NoiseStart]
      for other ranges;
    * ``"persistent"`` or a [`PersistentStart`][kldiv.samplers.PersistentStart]:
      a replay buffer with re-initialisation (Du & Mordatch 2019);
    * a density, e.g. a [`GeneratorDensity`][kldiv.GeneratorDensity], or an
      [`AmortizedStart`][kldiv.samplers.AmortizedStart]: start at this round's
      generator samples $g(\hat z)$ (or $(g(\hat z), \hat z)$ for a latent
      EBM) — the ancestral Langevin sampler of Xie et al. (2021).  The
      generator is one of the sampler's `sources`, so the compiler draws it.

    Posterior sampling $z \sim \pi(z \mid x) \propto \exp f(x, z)$ for a latent
    EBM, with $x$ held fixed, is [`posterior`][kldiv.samplers.Langevin.posterior].

    The MCMC-teaching recipe on CIFAR-10 (Xie et al. 2021, authors' code) is
    ``Langevin(15, 0.002, init=generator, noise=False, sigma_ref=0.016)``.

    Arguments:
        steps: the number of Langevin steps $T$.
        step_size: $\delta$, one number or one per variable (``{"x": 0.01, "z": 0.1}``).
        init: where chains start (see above).
        noise: add $\delta\epsilon_t$; ``False`` runs deterministic gradient ascent.
        sigma_ref: if given, add the Gaussian reference term
            $-\lVert v \rVert^2 / (2\sigma_{\rm ref}^2)$ over every variable of the
            chain: the chains then target $\pi'(v) \propto \exp f(v)\, \mathcal N(v; 0, \sigma_{\rm ref}^2 I)$.
            The reference has no parameters, so $\nabla_\alpha \log \pi' = \nabla_\alpha f - \nabla_\alpha \log Z'$ and
            maximum likelihood with this sampler fits $\pi'$ — the EBM of the
            MCMC-teaching paper, whose model includes the reference.
        clip_grad: clip each chain's gradient to this Euclidean norm.
        shape: shape of ``x`` or mapping variable → shape, for a noise start
            given by name (``x`` defaults to the data's shape; a latent EBM
            needs ``{"z": ...}``).
        generator: the ``torch.Generator`` of the noise (default: torch's global one).
        callback: ``callback(t, state)`` after every step ``t = 0..T``, for diagnostics.

    References:
        Welling & Teh, *Bayesian Learning via Stochastic Gradient Langevin
        Dynamics*, ICML 2011.
        Du & Mordatch, *Implicit Generation and Generalization in Energy-Based
        Models*, NeurIPS 2019, [arXiv:1903.08689](https://arxiv.org/abs/1903.08689).
        Xie, Zheng & Li, *Learning Energy-Based Model with Variational
        Auto-Encoder as Amortized Sampler*, AAAI 2021,
        [arXiv:2012.14936](https://arxiv.org/abs/2012.14936).

    Examples:
        >>> import torch
        >>> from kldiv import KL, DataDensity, MarginalEBM
        >>> from kldiv.samplers import Langevin
        >>> f = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.SiLU(), torch.nn.Linear(16, 1))
        >>> pi = MarginalEBM(f, sampler=Langevin(20, 0.1, init="persistent"))
        >>> estimator = KL(DataDensity(), pi).minimize(pi).compile()   # maximum likelihood
    """

    def __init__(
        self,
        steps: int,
        step_size: StepSize,
        *,
        init: str | Density | Start = "uniform",
        noise: bool = True,
        sigma_ref: float | None = None,
        clip_grad: float | None = None,
        shape: int | tuple[int, ...] | Mapping[str, int | tuple[int, ...]] | None = None,
        generator: torch.Generator | None = None,
        callback: Callable[[int, LangevinState], None] | None = None,
    ):
        if int(steps) < 0:
            raise ValueError(f"steps must be >= 0, got {steps}")
        sizes = step_size.values() if isinstance(step_size, Mapping) else (step_size,)
        if not all(float(s) > 0 for s in sizes):
            raise ValueError(f"step sizes must be positive, got {step_size!r}")
        if sigma_ref is not None and not float(sigma_ref) > 0:
            raise ValueError(f"sigma_ref must be positive, got {sigma_ref!r}")
        if clip_grad is not None and not float(clip_grad) > 0:
            raise ValueError(f"clip_grad must be positive, got {clip_grad!r}")
        if shape is not None and not isinstance(init, str):
            raise ValueError("shape is for a start given by name; give it to the Start object instead")
        self.steps = int(steps)
        self.step_size = dict(step_size) if isinstance(step_size, Mapping) else float(step_size)
        self.init = _as_start(init, shape)
        self.noise = bool(noise)
        self.sigma_ref = None if sigma_ref is None else float(sigma_ref)
        self.clip_grad = None if clip_grad is None else float(clip_grad)
        self.generator = generator
        self.callback = callback

    def __repr__(self) -> str:
        extra = "" if self.noise else ", noise=False"
        extra += "" if self.sigma_ref is None else f", sigma_ref={self.sigma_ref:g}"
        extra += "" if self.clip_grad is None else f", clip_grad={self.clip_grad:g}"
        return f"Langevin({self.steps}, {self.step_size}, init={self.init!r}{extra})"

    def sources(self) -> tuple[Density, ...]:
        return self.init.sources()

    def _log_density(self, f: LogDensityFn) -> LogDensityFn:
        return f if self.sigma_ref is None else gaussian_reference(f, self.sigma_ref)

    def _run(self, position: Position, log_density: LogDensityFn, callback) -> Position:
        return langevin_chain(
            position,
            self._log_density(log_density),
            self.steps,
            self.step_size,
            noise=self.noise,
            clip_grad=self.clip_grad,
            generator=self.generator,
            callback=callback,
        )

    def sample(self, density: Density, ev: Evaluator, n: int) -> Samples:
        """Run the chains for ``density`` and return their final positions (detached)."""
        variables, energy = _target(density)
        start, token = self.init.draw(variables, ev, n, self.generator)
        final = self._run(start, energy, self.callback)
        self.init.update(token, final)
        return Samples({v: final[v].detach() for v in variables})

    def posterior(
        self,
        density: Density | nn.Module,
        x: Tensor,
        z: Tensor,
        *,
        callback: Callable[[int, LangevinState], None] | None = None,
    ) -> Tensor:
        r"""Langevin over $z$ with $x$ held fixed: samples of $\pi(z \mid x) \propto \exp f(x, z)$.

        $$ z_{t+1} = z_t + \frac{\delta^2}{2}\, \nabla_z f(x, z_t) + \delta\,\epsilon_t, $$

        with the sampler's steps, step size (the ``"z"`` entry of a mapping),
        noise, reference term (on $z$: a prior $\mathcal N(0, \sigma_{\rm ref}^2 I)$)
        and clipping.  The start ``init`` is not used: the chains start at ``z``
        (e.g. $z \sim \mathcal N(0, I)$, or an encoder's $z \sim q_\phi(z \mid x)$).

        Arguments:
            density: a [`LatentEBM`][kldiv.LatentEBM], or its energy network $(x, z) \mapsto f(x, z)$.
            x: the conditioning $x$, shape ``(n, ...)``.
            z: the initial $z$, shape ``(n, ...)``.
            callback: ``callback(t, state)`` after every step, the state being over $z$.

        Returns:
            $z_T$, shape of ``z`` (detached).
        """

        energy = density.energy if isinstance(density, LatentEBM) else density
        if not isinstance(energy, nn.Module) and not callable(energy):
            raise TypeError(f"posterior needs a LatentEBM or an energy f(x, z), got {density!r}")
        x = x.detach()
        step = self.step_size["z"] if isinstance(self.step_size, Mapping) else self.step_size
        return langevin_chain(
            z,
            self._log_density(lambda z_: energy(x, z_)),
            self.steps,
            step,
            noise=self.noise,
            clip_grad=self.clip_grad,
            generator=self.generator,
            callback=callback,
        ).detach()


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

        if not isinstance(proposal, (str, Density)):
            raise TypeError(f"proposal must be an input name or a Density, got {type(proposal).__name__}")
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
        if int(thin) < 1:
            raise ValueError(f"thin must be >= 1, got {thin}")
        self.warmup = int(warmup)
        self.thin = int(thin)
        self.shapes = _as_shapes(shape, "NUTS")
        self.initial = None if initial is None else dict(initial)
        self.hmc_steps = None if hmc_steps is None else int(hmc_steps)
        self.step_size = float(step_size)
        self.target_accept = float(target_accept)
        self.max_tree_depth = int(max_tree_depth)
        self.full_mass = bool(full_mass)

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
