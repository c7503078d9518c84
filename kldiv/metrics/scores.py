"""OOD and anomaly scores of energy-based models and VAEs: higher means more anomalous."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from kldiv._checks import count, network, positive_number
from kldiv.densities.base import _gaussian_reference_log_prob
from kldiv.metrics._common import Images, _batches, _device_of, _evaluation_mode, _run

if TYPE_CHECKING:
    from kldiv.densities import Density
    from kldiv.samplers import Langevin

__all__ = ["generator_joint_scores", "latent_ebm_scores", "marginal_ebm_scores", "negative_elbo_scores"]

# --------------------------------------------------------------------------- #
# Scores of energy-based models
# --------------------------------------------------------------------------- #


def _flat_scores(f: object, n: int, what: str) -> Tensor:
    if not isinstance(f, Tensor):
        raise TypeError(f"{what} must return a tensor, got {type(f).__name__}")
    if f.shape not in ((n,), (n, 1)):
        raise ValueError(f"{what} must return shape ({n},) or ({n}, 1), got {tuple(f.shape)}")
    return f.reshape(n)


def _negated_scores(
    f: Callable[[Tensor], Tensor],
    images: Images,
    batch_size: int,
    device: torch.device | str | None,
    *modules: nn.Module,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """``-f(x)`` per image, batched, without gradients, with ``modules`` in eval mode, as ``dtype``.

    ``device`` defaults to that of the first module's parameters (the energy network).
    """
    dev = _device_of(modules[0], device)
    out = []
    with torch.no_grad(), _evaluation_mode(*modules):
        for x in _batches(images, batch_size):
            x = x.to(dev)
            f_x = _flat_scores(_run(f, x, "the score"), x.shape[0], "the energy network")
            out.append(-f_x.detach().to(dtype).cpu())
    if not out:
        raise ValueError("no images to score")
    return torch.cat(out)


def marginal_ebm_scores(
    energy: nn.Module,
    images: Images,
    *,
    batch_size: int = 500,
    device: torch.device | str | None = None,
    reference: float | None = None,
) -> Tensor:
    r"""OOD / anomaly scores of a marginal EBM: the energy $s(x) = E(x) = -f(x)$.

    For an EBM on $x$ alone, $\pi(x) \propto \exp f(x)$, the (unnormalised)
    negative log likelihood is the energy, and images the model finds
    unlikely get a high score. This is the score of the divergence-triangle
    EBM (Han et al. 2019), of the MCMC-teaching EBM (Xie et al. 2021) and the
    "negative free energy" AUROC of the decoupled EBLVM (Kan et al. 2022, Table 4:
    its marginal $\exp(-E_\psi(v))$ is a marginal EBM).  For an EBM with a Gaussian
    reference, $\pi(x) \propto \exp f(x)\, \mathcal N(x; 0, \sigma^2 I)$ (the
    MCMC-teaching EBM), the negative log density is
    $s(x) = -f(x) - \log \mathcal N(x; 0, \sigma^2 I)$, summed in float64.

    The network is run batched, without gradients, in eval mode (batch norm
    uses its running statistics and spectral norm does no power iteration);
    each submodule's train/eval flag is restored afterwards.

    Arguments:
        energy: network $x \mapsto f(x)$ (the *log* unnormalised density),
            returning shape ``(n,)`` or ``(n, 1)``.
        images: a tensor ``(n, C, H, W)`` or an iterable of batches (a ``DataLoader``).
        batch_size: batch size when ``images`` is a tensor.
        device: where to run; default the device of ``energy``'s parameters.
        reference: the $\sigma$ of the model's Gaussian reference, if it has one
            (a [`MarginalEBM`][kldiv.MarginalEBM]'s ``reference``).

    Returns:
        The scores, a float tensor of shape ``(n,)`` on the CPU; higher means more anomalous.
        With a reference they are float64 (their scale is about $\lVert x\rVert^2 / 2\sigma^2$).

    References:
        Kan et al., *Bi-level Doubly Variational Learning for Energy-based Latent
        Variable Models*, CVPR 2022, Table 4. [arXiv:2203.14702](https://arxiv.org/abs/2203.14702)
    """
    network("energy", energy)
    if reference is None:
        return _negated_scores(energy, images, batch_size, device, energy)
    sigma = positive_number("reference", reference)

    def log_density(x: Tensor) -> Tensor:
        f = _flat_scores(energy(x), x.shape[0], "the energy network")
        return f.double() + _gaussian_reference_log_prob(x.double(), sigma)

    return _negated_scores(log_density, images, batch_size, device, energy, dtype=torch.float64)


def latent_ebm_scores(
    energy: nn.Module,
    encoder: nn.Module,
    images: Images,
    *,
    batch_size: int = 500,
    device: torch.device | str | None = None,
) -> Tensor:
    r"""OOD / anomaly scores of a latent EBM: the energy at the encoder mean, $s(x) = -f(x, \mu_\phi(x))$.

    A latent EBM $\pi(x, z) \propto \exp f(x, z)$ scores an image by the
    energy of the pair it forms with its inferred latent vector: "the training
    image, together with its inferred latent factor, should form the local
    energy minima" (Han et al. 2020, §5.3). The latent vector is the mean of
    the inference model, $\mu_\phi(x) = \mathbb E_{q_\phi(z \mid x)}[z]$.

    Both networks run batched, without gradients, in eval mode; each
    submodule's train/eval flag is restored afterwards.

    Arguments:
        energy: network $(x, z) \mapsto f(x, z)$, returning shape ``(n,)`` or ``(n, 1)``.
        encoder: network $x \mapsto q_\phi(z \mid x)$, a torch/pyro distribution with a ``mean``.
        images: a tensor ``(n, C, H, W)`` or an iterable of batches (a ``DataLoader``).
        batch_size: batch size when ``images`` is a tensor.
        device: where to run; default the device of ``energy``'s parameters.

    Returns:
        The scores, a float tensor of shape ``(n,)`` on the CPU; higher means more anomalous.

    References:
        Han et al., *Joint Training of Variational Auto-Encoder and Latent
        Energy-Based Model*, CVPR 2020, §5.3–5.4. [arXiv:2006.06059](https://arxiv.org/abs/2006.06059)
    """

    def at_encoder_mean(x: Tensor) -> Tensor:
        q = encoder(x)
        if not isinstance(q, Distribution):
            raise TypeError(
                "the encoder must return a torch/pyro distribution over z (with a .mean), "
                f"got {type(q).__name__}"
            )
        return energy(x, q.mean)

    network("energy", energy)
    network("encoder", encoder)
    return _negated_scores(at_encoder_mean, images, batch_size, device, energy, encoder)


def negative_elbo_scores(
    generator: nn.Module,
    encoder: nn.Module,
    images: Images,
    *,
    sigma: float,
    samples: int = 1,
    batch_size: int = 500,
    device: torch.device | str | None = None,
    seed: int = 0,
) -> Tensor:
    r"""OOD / anomaly scores of a VAE: the negative ELBO, an upper bound on $-\log p(x)$.

    $$ s(x) = \mathbb E_{q_\phi(z \mid x)}\Big[\tfrac{1}{2\sigma^2}\lVert x - g(z)\rVert^2\Big]
              + \tfrac{D}{2}\log(2\pi\sigma^2) + \mathrm{KL}\big(q_\phi(z \mid x) \,\Vert\, N(0, I)\big), $$

    the first term by ``samples`` reparameterised draws of $z$ from a seeded
    generator (the same scores on every call), the KL in closed form from the
    encoder's ``mean`` and ``stddev`` (a diagonal Gaussian).  This is the
    score of the VAE baselines of Han et al. 2020 (Tables 3 and 4).

    Arguments:
        generator: network $z \mapsto g(z)$, the decoder mean, images ``(n, C, H, W)``.
        encoder: network $x \mapsto q_\phi(z \mid x)$, a diagonal-Gaussian distribution.
        images: a tensor ``(n, C, H, W)`` or an iterable of batches.
        sigma: the decoder's observation noise.
        samples: draws of $z$ per image for the reconstruction term.
        batch_size: batch size when ``images`` is a tensor.
        device: where to run; default the device of ``generator``'s parameters.
        seed: seed of the draws of $z$.

    Returns:
        The scores, a float tensor of shape ``(n,)`` on the CPU, in nats; higher means more anomalous.
    """
    network("generator", generator)
    network("encoder", encoder)
    sigma = positive_number("sigma", sigma)
    samples = count("samples", samples, minimum=1)
    dev = _device_of(generator, device)
    g = torch.Generator(device="cpu").manual_seed(seed)

    def negative_elbo(x: Tensor) -> Tensor:
        q = encoder(x)
        if not isinstance(q, Distribution):
            raise TypeError(f"the encoder must return a torch/pyro distribution over z, got {type(q).__name__}")
        mu, sd = q.mean, q.stddev
        kl = 0.5 * (mu.square() + sd.square() - 1 - 2 * sd.log()).flatten(1).sum(1)
        sse = torch.zeros(x.shape[0], device=dev)
        for _ in range(samples):
            z = mu + sd * torch.randn(mu.shape, generator=g).to(dev)
            sse += (x - generator(z)).flatten(1).square().sum(1) / samples
        d = x[0].numel()
        return 0.5 * sse / sigma**2 + 0.5 * d * math.log(2 * math.pi * sigma**2) + kl

    out = []
    with torch.no_grad(), _evaluation_mode(generator, encoder):
        for x in _batches(images, batch_size):
            x = x.to(dev)
            out.append(_run(negative_elbo, x, "the negative ELBO").float().cpu())
    if not out:
        raise ValueError("no images to score")
    return torch.cat(out)


def generator_joint_scores(
    density: Density,
    encoder: nn.Module,
    images: Images,
    *,
    batch_size: int = 500,
    device: torch.device | str | None = None,
    posterior: Langevin | None = None,
) -> Tensor:
    r"""OOD / anomaly scores of a generator density: its log joint at the inferred latent vector, negated.

    $$ s(x) = -\log p(x, \mu_\phi(x)), \qquad \mu_\phi(x) = \mathbb E_{q_\phi(z \mid x)}[z], $$

    up to the terms the density cannot compute (`Density.uncomputed`: $\log Z$
    for an [`EnergyPrior`][kldiv.EnergyPrior], a constant that does not change
    the ranking).  For a generator with a latent-space EBM prior this is
    $\frac{1}{2\sigma^2}\lVert x - g(\mu)\rVert^2 - f_\alpha(\mu) + \frac12\lVert\mu\rVert^2$
    plus constants: the unnormalised log joint of the image and its inferred
    latent vector, the decision function of Pang et al. (2020, §5.4), with the
    encoder's mean in place of their posterior Langevin samples.

    With ``posterior`` (a [`Langevin`][kldiv.samplers.Langevin] sampler), the
    latent vector is instead that sampler's chain on the posterior
    $p(z \mid x) \propto p(x, z)$ started at the encoder's mean (an amortised
    start), and the score is $-\log p(x, z_T)$: Pang et al.'s decision
    function with their posterior chain (their code: 20 steps of size 0.1,
    with noise), the encoder saving it the walk from $\mathcal N(0, I)$.  Seed
    the sampler (``seed=``) for scores that repeat.

    Arguments:
        density: a density over ``("x", "z")``, e.g. a
            [`GeneratorDensity`][kldiv.GeneratorDensity] (with any prior).
        encoder: network $x \mapsto q_\phi(z \mid x)$, a distribution with a ``mean``.
        images: a tensor ``(n, C, H, W)`` or an iterable of batches.
        batch_size: batch size when ``images`` is a tensor.
        device: where to run; default the device of ``encoder``'s parameters.
        posterior: a Langevin sampler whose posterior chain refines the encoder's mean
            (its steps, step size and noise); ``None`` scores at the mean itself.

    Returns:
        The scores, a float tensor of shape ``(n,)`` on the CPU; higher means more anomalous.
    """
    from kldiv.densities import Density

    if not isinstance(density, Density):
        raise TypeError(f"density must be a kldiv Density over (x, z), e.g. a GeneratorDensity, "
                        f"got {type(density).__name__}")
    network("encoder", encoder)
    if tuple(density.variables) != ("x", "z"):
        raise ValueError(f"generator_joint_scores needs a density over (x, z), got {density!r}")
    if posterior is not None and not callable(getattr(posterior, "posterior", None)):
        raise TypeError(f"posterior must be a Langevin sampler (with a posterior chain), got {posterior!r}")
    if getattr(posterior, "sigma_ref", None) is not None:
        raise ValueError(f"the posterior sampler has sigma_ref={posterior.sigma_ref:g}, a second prior on z: "
                         f"log p(x, z) already holds the density's prior; drop sigma_ref")

    def joint(x: Tensor, z: Tensor) -> Tensor:
        return density.log_prob({"x": x, "z": z})

    def at_encoder_mean(x: Tensor) -> Tensor:
        q = encoder(x)
        if not isinstance(q, Distribution):
            raise TypeError(f"the encoder must return a torch/pyro distribution over z, got {type(q).__name__}")
        z = q.mean
        if posterior is not None:
            z = posterior.posterior(joint, x, z)
        return joint(x, z)

    return _negated_scores(at_encoder_mean, images, batch_size, device, encoder, *density.networks().values())
