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

The plots of these metrics (``plot_energy_histograms``,
``plot_precision_recall``) live in `kldiv.plotting` and are importable from
here too; they are written with matplotlib's Agg canvas, without touching
pyplot's global state.
"""

from __future__ import annotations

import importlib.util  # noqa: F401  (kldiv.metrics.importlib, as before the split)

# in the order of the concepts (and of the API page): the types of the inputs, reconstruction,
# scores, detection, Fréchet distances, then the plots, which live in kldiv.plotting
from kldiv.metrics._common import ArrayLike, Images
from kldiv.metrics.reconstruction import ReconstructionError, reconstruction_error
from kldiv.metrics.scores import marginal_ebm_scores, latent_ebm_scores, negative_elbo_scores, generator_joint_scores
from kldiv.metrics.detection import ood_auroc, precision_recall, anomaly_auprc
from kldiv.metrics.frechet import (
    gaussian_statistics,
    gaussian_frechet_distance,
    frechet_distance,
    MNISTClassifier,
    load_mnist_classifier,
    mnist_classifier_features,
    mnist_frechet_distance,
    FID_WEIGHTS_FILENAME,
    inception_features,
    inception_fid,
    _to_uint8_rgb,  # private, imported by the tests as kldiv.metrics._to_uint8_rgb
)
from kldiv.plotting import plot_energy_histograms, plot_precision_recall

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
