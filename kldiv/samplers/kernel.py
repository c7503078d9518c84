r"""The Langevin kernel on its own: an explicit state, one step, and a chain driver.

In the style of BlackJAX: a [`LangevinState`][kldiv.samplers.LangevinState]
made by [`langevin_init`][kldiv.samplers.langevin_init], advanced by
[`langevin_step`][kldiv.samplers.langevin_step] (or moved without evaluation
by [`langevin_move`][kldiv.samplers.langevin_move]), and a driver
[`langevin_chain`][kldiv.samplers.langevin_chain] whose per-step diagnostics
are a [`LangevinInfo`][kldiv.samplers.LangevinInfo].  The target is any
function of the positions and the randomness an optional ``torch.Generator``.

This module imports only torch (and the standard library), not the rest of
kldiv, so the kernel can be used without densities or a compiler.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import NamedTuple, Union

import torch
from torch import Tensor

from kldiv._checks import count, positive_number

__all__ = [
    "LangevinInfo",
    "LangevinState",
    "LogDensityFn",
    "Position",
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
        # imported here, on the error path only, so that the kernel imports nothing of kldiv
        from kldiv.errors import ShapeError

        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ShapeError(f"{what} must give one value per chain, shape ({n},) or ({n}, 1), got {got}")
    return out


def _step(name: str, value: object) -> float:
    # a step size: a finite number > 0 (a one-element tensor too)
    if isinstance(value, Tensor) and value.numel() == 1:
        value = value.item()
    return positive_number(name, value)


def _step_sizes(step_size: StepSize, keys: tuple[str, ...] | None) -> tuple[float, ...]:
    if isinstance(step_size, Mapping):
        if keys is None:
            raise TypeError("a step size per variable needs a position with one tensor per variable")
        missing = [k for k in keys if k not in step_size]
        if missing:
            raise KeyError(f"no step size for {missing}; got step sizes for {sorted(step_size)}")
        return tuple(_step(f"the step size of {k!r}", step_size[k]) for k in keys)
    return (_step("step_size", step_size),) * (1 if keys is None else len(keys))


def _checked_start(position: Position) -> None:
    # once per chain: floating tensors with one batch size, and finite (a NaN start stays NaN)
    keys, tensors = _leaves(position)
    names = ["position"] if keys is None else [f"position[{k!r}]" for k in keys]
    for name, t in zip(names, tensors):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a tensor (n, ...), got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor to move along a gradient, got {t.dtype}")
        if t.dim() == 0 or t.shape[0] != tensors[0].shape[0]:
            raise ValueError(f"every position needs the same number of chains (n, ...) first; {name} "
                             f"has shape {tuple(t.shape)}")
        if not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise ValueError(f"{name} has {bad} non-finite values (NaN or inf): a chain started there stays there")


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


class LangevinInfo(NamedTuple):
    r"""Per-step diagnostics of a batch of Langevin chains, from [`langevin_chain`][kldiv.samplers.langevin_chain].

    For the states $v_0, \dots, v_T$ of $n$ chains after $t = 0, \dots, T$ steps,

    $$ \bar\ell_t = \frac1n \sum_{i=1}^n \log p\big(v_t^{(i)}\big), \qquad
       \bar g_t = \frac1n \sum_{i=1}^n \big\lVert \nabla_v \log p\big(v_t^{(i)}\big) \big\rVert, $$

    the norm being Euclidean jointly over every variable of the position and
    taken before any ``clip_grad``.  A rising $\bar\ell_t$ that levels off is
    the usual sign that the chains have reached the high-density region;
    $\bar g_t$ shows how hard a ``clip_grad`` bites.

    Attributes:
        mean_log_density: $\bar\ell_t$, shape ``(steps + 1,)`` (detached, on the chains' device).
        mean_grad_norm: $\bar g_t$, shape ``(steps + 1,)`` (detached, on the chains' device).

    Examples:
        >>> import torch
        >>> from kldiv.samplers import langevin_chain
        >>> log_p = lambda x: -0.5 * x.square().sum(1)          # N(0, I), up to a constant
        >>> g = torch.Generator().manual_seed(0)
        >>> x, info = langevin_chain(torch.full((500, 2), 3.0), log_p, steps=50, step_size=0.5,
        ...                          generator=g, info=True)
        >>> info.mean_log_density.shape, info.mean_grad_norm.shape
        (torch.Size([51]), torch.Size([51]))
        >>> info.mean_log_density[0].item(), round(info.mean_grad_norm[0].item(), 4)  # at (3, 3)
        (-9.0, 4.2426)
        >>> bool(info.mean_log_density[-1] > -2)               # stationary: E[-|x|²/2] ≈ -1.07
        True
        >>> torch.equal(info.mean_log_density[-1], log_p(x).mean())  # the last entry is the final state
        True
    """

    mean_log_density: Tensor
    mean_grad_norm: Tensor


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
    scale = 0.5 / positive_number("sigma", sigma) ** 2

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
    for t in tensors:
        if not (isinstance(t, Tensor) and t.is_floating_point()):
            raise TypeError("a position must be floating-point tensors to move along a gradient, got "
                            + (str(t.dtype) if isinstance(t, Tensor) else type(t).__name__))
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
    deltas, clip = _step_sizes(step_size, keys), positive_number("clip_grad", clip_grad, optional=True)
    eps = _noise(xs, generator) if noise else None
    with torch.no_grad():
        out = _moved(xs, gs, deltas, eps, clip)
    return _rebuild(keys, out)


def _noise(xs: tuple[Tensor, ...], generator: torch.Generator | None) -> tuple[Tensor, ...]:
    # the Langevin noise, one draw per variable in the position's order: the stream a chain consumes
    return tuple(torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype) for x in xs)


def _moved(
    xs: tuple[Tensor, ...],
    gs: tuple[Tensor, ...],
    deltas: tuple[float, ...],
    eps: tuple[Tensor, ...] | None,
    clip_grad: float | None,
) -> tuple[Tensor, ...]:
    # v' = v + (d^2 / 2) grad + d eps per variable: the move of langevin_move and of the compiled step
    if clip_grad is not None:
        gs = _clip(gs, clip_grad)
    out = []
    for i, (x, g, d) in enumerate(zip(xs, gs, deltas)):
        new = torch.add(x, g, alpha=0.5 * d * d)
        out.append(new if eps is None else new.add(eps[i], alpha=d))
    return tuple(out)


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


def _fused_step(
    log_density: LogDensityFn,
    keys: tuple[str, ...] | None,
    xs: tuple[Tensor, ...],
    gs: tuple[Tensor, ...],
    eps: tuple[Tensor, ...] | None,
    deltas: tuple[float, ...],
    clip_grad: float | None,
) -> tuple[tuple[Tensor, ...], Tensor, tuple[Tensor, ...]]:
    # One move and the evaluation of its end point, as one function of the state: what
    # `langevin_chain(compile=True)` hands to torch.compile.  The same arithmetic as
    # langevin_move followed by langevin_init, with the gradient taken by torch.func.grad
    # (which torch.compile traces) instead of torch.autograd.grad (which it cannot).
    new = _moved(xs, gs, deltas, eps, clip_grad)
    n = xs[0].shape[0]

    def total(leaves):
        logp = _per_sample(log_density(_rebuild(keys, leaves)), n, "the log density")
        return logp.sum(), logp

    grads, logp = torch.func.grad(total, has_aux=True)(new)
    # detached: the gradient is a function of the energy's parameters, which no chain differentiates
    return tuple(v.detach() for v in new), logp.detach(), tuple(g.detach() for g in grads)


_compiled_step = None


def _compiled() -> Callable:
    # compiled once per process; torch.compile then caches a graph per energy network and shape
    global _compiled_step
    if _compiled_step is None:
        _compiled_step = torch.compile(_fused_step, dynamic=False)
    return _compiled_step


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
    info: bool = False,
    compile: bool = False,
) -> Position | tuple[Position, LangevinInfo]:
    r"""Run ``steps`` Langevin steps from ``position`` and return the final positions.

    Each step costs one evaluation of $\log p$ and its gradient; the final
    position is not evaluated unless a ``callback`` asks for its state or
    ``info`` is true (then one evaluation more, $T + 1$ in all).

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
        info: also return a [`LangevinInfo`][kldiv.samplers.LangevinInfo]: the
            mean log density and mean gradient norm of the chains after each of
            ``t = 0, ..., steps`` steps, from the states the chain evaluates
            anyway, plus one evaluation of the final state.
        compile: run each step (the move, then the log density and its gradient
            at the new position) as one ``torch.compile``d function of the state.
            The noise is drawn outside it, from the same ``generator`` in the same
            order, so the chains are the eager ones to rounding.  The first call
            for an energy network compiles (seconds); later calls with the same
            network, shapes and step size reuse the graph.  Whether it is faster
            depends on the device and the network: `benchmarks/langevin.py
            --compile` measures it.

    Returns:
        The positions after $T$ steps (detached), with the structure of ``position``;
        with ``info=True``, the pair ``(positions, info)``.
    """
    steps = count("steps", steps)
    _checked_start(position)
    _step_sizes(step_size, _leaves(position)[0])
    positive_number("clip_grad", clip_grad, optional=True)
    evaluate_last = callback is not None or info
    if steps == 0 and not evaluate_last:
        keys, tensors = _leaves(position)
        return _rebuild(keys, tuple(t.detach() for t in tensors))
    means: list[Tensor] = []
    norms: list[Tensor] = []

    def observe(t: int, state: LangevinState) -> None:
        if info:
            means.append(state.log_density.mean())
            _, grads = _leaves(state.grad)
            norms.append(sum(g.flatten(1).square().sum(1) for g in grads).sqrt().mean())
        if callback is not None:
            callback(t, state)

    state = langevin_init(position, log_density)
    observe(0, state)
    if compile:
        keys, _ = _leaves(position)
        deltas = _step_sizes(step_size, keys)
        fused = _compiled()
        clip = None if clip_grad is None else float(clip_grad)
    for t in range(1, steps + 1):
        if t == steps and not evaluate_last:
            return langevin_move(state, step_size, noise=noise, clip_grad=clip_grad, generator=generator)
        if not compile:
            position = langevin_move(state, step_size, noise=noise, clip_grad=clip_grad, generator=generator)
            state = langevin_init(position, log_density)
        else:
            _, xs = _leaves(state.position)
            _, gs = _leaves(state.grad)
            eps = _noise(xs, generator) if noise else None  # outside the compiled step: the eager stream
            new, logp, grads = fused(log_density, keys, xs, gs, eps, deltas, clip)
            state = LangevinState(_rebuild(keys, new), logp, _rebuild(keys, grads))
        observe(t, state)
    if info:
        return state.position, LangevinInfo(torch.stack(means), torch.stack(norms))
    return state.position
