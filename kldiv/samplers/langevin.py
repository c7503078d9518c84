"""The [`Langevin`][kldiv.samplers.Langevin] sampler: finite-step Langevin dynamics on an energy-based density."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from kldiv._checks import count, flag, positive_number
from kldiv.densities import Density, LatentEBM, Samples
from kldiv.densities.base import _gaussian_reference_log_prob, _per_sample
from kldiv.samplers.base import Sampler, _target
from kldiv.samplers.kernel import LangevinState, LogDensityFn, Position, StepSize, gaussian_reference, langevin_chain
from kldiv.samplers.starts import Start, _as_start

if TYPE_CHECKING:
    from kldiv.densities import Evaluator

__all__ = ["Langevin"]


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

    The MCMC-teaching recipe on CIFAR-10 (Xie et al. 2021, authors' code) samples
    ``MarginalEBM(f, reference=0.016)`` with ``Langevin(15, 0.002, init=generator, noise=False)``:
    the chains' target includes the density's Gaussian reference.

    Arguments:
        steps: the number of Langevin steps $T$.
        step_size: $\delta$, one number or one per variable (``{"x": 0.01, "z": 0.1}``).
        init: where chains start (see above).
        noise: add $\delta\epsilon_t$; ``False`` runs deterministic gradient ascent.
        sigma_ref: if given, add the Gaussian reference term
            $-\lVert v \rVert^2 / (2\sigma_{\rm ref}^2)$ over every variable of the
            chain: the chains then target $\pi'(v) \propto \exp f(v)\, \mathcal N(v; 0, \sigma_{\rm ref}^2 I)$.
            The reference has no parameters, so $\nabla_\alpha \log \pi' = \nabla_\alpha f - \nabla_\alpha \log Z'$ and
            maximum likelihood with this sampler fits $\pi'$.  Prefer the density's
            own ``reference`` (``MarginalEBM(f, reference=sigma)``): the model's log
            density, and so its anomaly score, then includes the term the chains
            follow.  A density with a reference refuses a sampler with one.
        clip_grad: clip each chain's gradient to this Euclidean norm.
        shape: shape of ``x`` or mapping variable → shape, for a noise start
            given by name (``x`` defaults to the data's shape; a latent EBM
            needs ``{"z": ...}``).
        generator: the ``torch.Generator`` of the noise (default: torch's global one).
        callback: ``callback(t, state)`` after every step ``t = 0..T``, for diagnostics.
        compile: run each step as one ``torch.compile``d function of the chains'
            state (see [`langevin_chain`][kldiv.samplers.langevin_chain]); the
            chains are the eager ones to rounding.
        chains: the number of chains, whatever the round's ``n`` (default:
            ``n``), for a start of their own (noise or persistent); a start
            at a generator's samples runs one chain per sample.  Chains from
            noise that pay for a share of an EBM's $\log Z$ beside
            amortised ones need only that share of their number.

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
        compile: bool = False,
        chains: int | None = None,
    ):
        steps = count("steps", steps)
        chains = None if chains is None else count("chains", chains, minimum=1)
        if isinstance(step_size, Mapping):
            if not step_size:
                raise ValueError("step_size must be a number or a non-empty mapping variable -> number, got {}")
            step_size = {v: positive_number(f"the step size of {v!r}", s) for v, s in step_size.items()}
        else:
            step_size = positive_number("step_size", step_size)
        sigma_ref = positive_number("sigma_ref", sigma_ref, optional=True)
        clip_grad = positive_number("clip_grad", clip_grad, optional=True)
        flag("noise", noise)
        flag("compile", compile)
        if shape is not None and not isinstance(init, str):
            raise ValueError("shape is for a start given by name; give it to the Start object instead")
        self.steps = steps
        self.step_size = step_size
        self.init = _as_start(init, shape)
        if chains is not None and self.init.sources():
            raise ValueError(f"chains is for a start of its own; chains from {self.init!r} run one per sample "
                             "of the start, as many as the round draws (its n)")
        self.chains = chains
        self.noise = noise
        self.sigma_ref = sigma_ref
        self.clip_grad = clip_grad
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got {generator!r}")
        if callback is not None and not callable(callback):
            raise TypeError(f"callback must be callable as callback(t, state) or None, got {callback!r}")
        self.generator = generator
        self.callback = callback
        self.compile = compile

    def __repr__(self) -> str:
        extra = "" if self.noise else ", noise=False"
        extra += "" if self.sigma_ref is None else f", sigma_ref={self.sigma_ref:g}"
        extra += "" if self.clip_grad is None else f", clip_grad={self.clip_grad:g}"
        extra += ", compile=True" if self.compile else ""
        extra += "" if self.chains is None else f", chains={self.chains}"
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
            compile=self.compile,
        )

    def _refuse_a_second_reference(self, density: Density) -> None:
        reference = getattr(density, "reference", None)
        if self.sigma_ref is not None and reference is not None:
            raise ValueError(f"{density.name} already has a Gaussian reference (sigma {reference:g}); "
                             f"a sampler with sigma_ref={self.sigma_ref:g} would add a second one: drop one of them")

    def sample(self, density: Density, ev: Evaluator, n: int) -> Samples:
        """Run the chains for ``density`` and return their final positions (detached)."""
        variables, energy = _target(density)
        self._refuse_a_second_reference(density)
        start, token = self.init.draw(variables, ev, self.chains or n, self.generator)
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
        noise, reference term (on $z$: a prior $\mathcal N(0, \sigma_{\rm ref}^2 I)$,
        or the density's own reference on $z$) and clipping.  The start ``init`` is not used: the chains start at ``z``
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
        reference = density.reference if isinstance(density, LatentEBM) else None
        if reference is not None:
            self._refuse_a_second_reference(density)
            f_xz = energy
            energy = lambda x_, z_: _per_sample(f_xz(x_, z_)) + _gaussian_reference_log_prob(z_, reference)  # noqa: E731
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
            compile=self.compile,
        ).detach()
