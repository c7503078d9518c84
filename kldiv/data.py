r"""Data sets: images scaled to $[-1, 1]$, the MNIST anomaly split, and 2-D toys.

| name | images | where from |
| --- | --- | --- |
| ``"digits"`` | 1,797 8×8 grey digits, resized or padded | scikit-learn, embedded (no download) |
| ``"mnist"``, ``"fashion-mnist"`` | 28×28 grey, 60,000 + 10,000 | ``torchvision.datasets.MNIST`` / ``FashionMNIST`` |
| ``"cifar10"`` | 32×32 colour, 50,000 + 10,000 | ``torchvision.datasets.CIFAR10`` |
| ``"svhn"`` | 32×32 colour, 73,257 + 26,032 | ``torchvision.datasets.SVHN`` |
| ``"celeba"`` | aligned faces, resized and center-cropped to 64 (or 32) | ``torchvision.datasets.CelebA`` |

Every image data set yields ``(x, label)`` with ``x`` a float tensor of shape
``(C, H, W)`` in $[-1, 1]$: a pixel $u \in \{0, \dots, 255\}$ becomes
$x = 2u/255 - 1$.  Real data sets are read with torchvision's own classes
from ``root`` in torchvision's layout; nothing is downloaded unless
``download=True`` (the ``--download`` flag of a script).  A missing data set
raises [`DatasetNotFoundError`][kldiv.data.DatasetNotFoundError], which names
the folder looked in.

Examples:
    >>> from kldiv.data import load_dataset
    >>> train = load_dataset("digits", image_size=16)
    >>> x, y = train[0]
    >>> x.shape, bool(x.min() >= -1 and x.max() <= 1)
    (torch.Size([1, 16, 16]), True)
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import attrs
import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from kldiv._checks import count

__all__ = [
    "DATASETS",
    "TOY_2D",
    "AnomalySplit",
    "anomaly_split",
    "DatasetNotFoundError",
    "ImageTensorDataset",
    "digits_dataset",
    "infinite_batches",
    "load_dataset",
    "mnist_anomaly_split",
    "toy_2d",
]

DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10", "svhn", "celeba")
"""The names [`load_dataset`][kldiv.data.load_dataset] accepts."""


class DatasetNotFoundError(FileNotFoundError):
    """A data set's files are not under the given root (or fail torchvision's integrity check)."""


# ----------------------------------------------------------------------------------------
# In-memory image data sets
# ----------------------------------------------------------------------------------------
class ImageTensorDataset(Dataset):
    r"""Images held in memory, served as float tensors in $[-1, 1]$ with their labels.

    ``uint8`` images are stored as they are (a quarter of the memory of
    floats) and scaled on access, $x = 2u/255 - 1$; floating-point images
    must already be in $[-1, 1]$ and are served unchanged.

    Arguments:
        images: tensor of shape ``(N, C, H, W)``, ``uint8`` or floating point.
        labels: tensor of shape ``(N,)``.

    ``dataset[i]`` is ``(x, label)`` with ``x`` of shape ``(C, H, W)``, ``float32``.
    """

    def __init__(self, images: Tensor, labels: Tensor):
        if images.dim() != 4:
            raise ValueError(f"images must have shape (N, C, H, W), got {tuple(images.shape)}")
        if labels.shape != (images.shape[0],):
            raise ValueError(
                f"labels must have shape ({images.shape[0]},), got {tuple(labels.shape)}"
            )
        self.images = images
        self.labels = labels

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return _to_unit(self.images[index]), self.labels[index]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def tensors(self) -> tuple[Tensor, Tensor]:
        """All images as one float tensor ``(N, C, H, W)`` in $[-1, 1]$, and the labels ``(N,)``."""
        return _to_unit(self.images), self.labels


def _to_unit(images: Tensor) -> Tensor:
    """uint8 in 0..255 → float32 in [-1, 1]; float images pass through."""
    if images.dtype == torch.uint8:
        return images.to(torch.float32) / 127.5 - 1.0
    return images.to(torch.float32)


def _resize_uint8(images: Tensor, size: int, chunk: int = 4096) -> Tensor:
    """Bilinear (antialiased) resize of uint8 images ``(N, C, H, W)`` to ``size``×``size``, kept uint8."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    out = torch.empty((images.shape[0], images.shape[1], size, size), dtype=torch.uint8)
    for i in range(0, images.shape[0], chunk):
        block = images[i : i + chunk].to(torch.float32)  # (b, C, H, W)
        block = F.interpolate(block, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        out[i : i + chunk] = block.round().clamp(0, 255).to(torch.uint8)
    return out


def _as_nchw_uint8(data: np.ndarray | Tensor, layout: str) -> Tensor:
    """A torchvision data array as a uint8 tensor ``(N, C, H, W)``."""
    t = torch.as_tensor(np.asarray(data))
    if layout == "n h w":
        return rearrange(t, "n h w -> n 1 h w").contiguous()
    if layout == "n h w c":
        return rearrange(t, "n h w c -> n c h w").contiguous()
    return t.contiguous()  # already "n c h w"


# ----------------------------------------------------------------------------------------
# The embedded default: scikit-learn's digits
# ----------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[Tensor, Tensor]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.as_tensor(bunch.images, dtype=torch.float32) / 8.0 - 1.0  # (N, 8, 8): 2v/16 - 1
    images = rearrange(images, "n h w -> n 1 h w")  # (N, 1, 8, 8)
    return images, torch.as_tensor(bunch.target, dtype=torch.long)


def digits_dataset(
    image_size: int = 8,
    train: bool | None = True,
    *,
    mode: Literal["resize", "pad"] = "resize",
    test_fraction: float = 0.2,
    seed: int = 0,
) -> ImageTensorDataset:
    r"""scikit-learn's 8×8 handwritten digits, in $[-1, 1]$, at a chosen size; no download.

    The 1,797 images of ``sklearn.datasets.load_digits`` (values $0..16$) are
    scaled to $x = 2v/16 - 1$ and brought to ``image_size`` either by bilinear
    interpolation (``mode="resize"``) or by padding with the background value
    $-1$ around the centered 8×8 image (``mode="pad"``).

    The split is deterministic: ``numpy.random.RandomState(seed).permutation(1797)``;
    the first ``round(test_fraction · 1797)`` indices (359 by default) are the
    test set, the rest the training set.

    Arguments:
        image_size: side of the output images (8, 16, 28, 32, ...).
        train: ``True`` for the training part, ``False`` for the test part,
            ``None`` for all 1,797 images.
        mode: ``"resize"`` or ``"pad"``.
        test_fraction: the fraction of images in the test part.
        seed: the seed of the split.

    Returns:
        An [`ImageTensorDataset`][kldiv.data.ImageTensorDataset] of
            ``(x, digit)``, ``x`` of shape ``(1, image_size, image_size)``.
    """
    size = count("image_size", image_size, minimum=1)
    if not (isinstance(test_fraction, (int, float)) and not isinstance(test_fraction, bool)
            and 0 < test_fraction < 1):
        raise ValueError(f"test_fraction must be a fraction in (0, 1), got {test_fraction!r}")
    images, labels = _digits_arrays()  # (N, 1, 8, 8) in [-1, 1], (N,)
    if mode == "resize":
        if size != 8:
            images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    elif mode == "pad":
        if size < 8:
            raise ValueError(f"mode='pad' needs image_size >= 8, got {size}")
        before = (size - 8) // 2
        after = size - 8 - before
        images = F.pad(images, (before, after, before, after), value=-1.0)
    else:
        raise ValueError(f"mode must be 'resize' or 'pad', got {mode!r}")
    images = images.clamp(-1.0, 1.0).contiguous()
    if train is not None:
        n = images.shape[0]
        perm = torch.as_tensor(np.random.RandomState(seed).permutation(n))
        n_test = int(round(test_fraction * n))
        keep = perm[n_test:] if train else perm[:n_test]
        images, labels = images[keep], labels[keep]
    return ImageTensorDataset(images, labels)


# ----------------------------------------------------------------------------------------
# Real data sets through torchvision
# ----------------------------------------------------------------------------------------
_TITLES = {
    "mnist": "MNIST",
    "fashion-mnist": "Fashion-MNIST",
    "cifar10": "CIFAR-10",
    "svhn": "SVHN",
    "celeba": "CelebA",
}


def _canonical(name: str) -> str:
    key = name.lower().replace("_", "").replace("-", "")
    aliases = {
        "digits": "digits",
        "mnist": "mnist",
        "fashionmnist": "fashion-mnist",
        "fmnist": "fashion-mnist",
        "cifar10": "cifar10",
        "cifar": "cifar10",
        "svhn": "svhn",
        "celeba": "celeba",
    }
    if key not in aliases:
        raise ValueError(f"unknown data set {name!r}; choose from {', '.join(DATASETS)}")
    return aliases[key]


def _where(name: str, root: Path, train: bool) -> Path:
    """The file or folder torchvision reads ``name`` from."""
    if name == "mnist":
        return root / "MNIST" / "raw"
    if name == "fashion-mnist":
        return root / "FashionMNIST" / "raw"
    if name == "cifar10":
        return root / "cifar-10-batches-py"
    if name == "svhn":
        return root / ("train_32x32.mat" if train else "test_32x32.mat")
    return root / "celeba"


def _open(name: str, cls, root: Path, download: bool, is_train: bool, **kwargs):
    """Construct a torchvision data set, turning its 'not found' into a DatasetNotFoundError."""
    try:
        return cls(root=str(root), download=download, **kwargs)
    except RuntimeError as err:
        text = str(err).lower()
        if "not found" not in text and "corrupted" not in text:
            raise
        where = _where(name, root, is_train).resolve()
        raise DatasetNotFoundError(
            f"{_TITLES[name]} was not found under {where} (missing or corrupted files; "
            f"torchvision said: {err}). Pass download=True (the --download flag) to fetch it "
            f"into {root.resolve()}, or point root (--data-root) at a folder that holds it."
        ) from err


def load_dataset(
    name: str,
    root: str | Path = "data",
    train: bool = True,
    download: bool = False,
    image_size: int | None = None,
) -> Dataset:
    r"""One entry point for every image data set; items are ``(x, label)``, $x \in [-1, 1]$.

    Arguments:
        name: one of ``"digits"``, ``"mnist"``, ``"fashion-mnist"``, ``"cifar10"``,
            ``"svhn"``, ``"celeba"`` (case, ``-`` and ``_`` are ignored).
        root: the folder holding the data in torchvision's layout (ignored for
            ``"digits"``).
        train: the training split (``False``: the test split; for CelebA the
            ``"test"`` partition).
        download: let torchvision fetch missing files (needs internet).
        image_size: the side of the output images; ``None`` keeps the native
            size (8 for digits, 28 for (Fashion-)MNIST, 32 for CIFAR-10 and
            SVHN, 64 for CelebA).  Resizing is bilinear and antialiased;
            CelebA is resized on its short side, then center-cropped.

    Returns:
        For ``"celeba"``, a ``torchvision.datasets.CelebA`` whose items are
            ``(x, attributes)`` (images are decoded on access); otherwise an
            [`ImageTensorDataset`][kldiv.data.ImageTensorDataset] in memory.

    Raises:
        DatasetNotFoundError: the files are not under ``root`` and ``download`` is ``False``.
    """
    key = _canonical(name)
    if image_size is not None:
        image_size = count("image_size", image_size, minimum=1)
    if key == "digits":
        return digits_dataset(8 if image_size is None else image_size, train=train)
    import torchvision.datasets as tvd

    root = Path(root)
    if key in ("mnist", "fashion-mnist"):
        cls = tvd.MNIST if key == "mnist" else tvd.FashionMNIST
        ds = _open(key, cls, root, download, train, train=train)
        images, labels = _as_nchw_uint8(ds.data, "n h w"), torch.as_tensor(ds.targets, dtype=torch.long)
    elif key == "cifar10":
        ds = _open(key, tvd.CIFAR10, root, download, train, train=train)
        images, labels = _as_nchw_uint8(ds.data, "n h w c"), torch.as_tensor(ds.targets, dtype=torch.long)
    elif key == "svhn":
        ds = _open(key, tvd.SVHN, root, download, train, split="train" if train else "test")
        images, labels = _as_nchw_uint8(ds.data, "n c h w"), torch.as_tensor(ds.labels, dtype=torch.long)
    else:
        import torchvision.transforms as T

        size = 64 if image_size is None else int(image_size)
        transform = T.Compose(
            [
                T.Resize(size, antialias=True),
                T.CenterCrop(size),
                T.ToTensor(),
                T.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
            ]
        )
        return _open(key, tvd.CelebA, root, download, train, split="train" if train else "test",
                     transform=transform)
    if image_size is not None:
        images = _resize_uint8(images, int(image_size))
    return ImageTensorDataset(images, labels)


# ----------------------------------------------------------------------------------------
# The MNIST hold-out-digit anomaly split
# ----------------------------------------------------------------------------------------
@attrs.frozen(eq=False)
class AnomalySplit:
    """The MNIST hold-out-digit anomaly split (see [`mnist_anomaly_split`][kldiv.data.mnist_anomaly_split]).

    Attributes:
        held_out: the anomalous digit.
        train: normal images only, items ``(x, digit)``.
        test: items ``(x, is_anomaly)`` with ``is_anomaly`` 1 for the held-out digit, 0 otherwise.
        test_labels: the anomaly labels of ``test``, shape ``(N_test,)``, ``long``.
        test_digits: the digits of ``test``, shape ``(N_test,)``.
        train_index: positions of the training images in the 70,000-image pool.
        test_index: positions of the test images in the pool.
    """

    held_out: int
    train: ImageTensorDataset
    test: ImageTensorDataset
    test_labels: Tensor
    test_digits: Tensor
    train_index: Tensor
    test_index: Tensor

    def held_out_shares(self) -> tuple[float, float]:
        """The held-out class's share of the test images, and of all the images the split holds
        (training and test; on MNIST's pooled protocol, all 70,000 of MNIST).

        On the MNIST protocol a third of the test set is the held-out digit, against about a
        tenth of MNIST; `kldiv.metrics.anomaly_auprc`'s ``anomaly_share`` takes either.
        """
        anomalies = int(self.test_labels.sum())
        return anomalies / len(self.test), anomalies / (len(self.train) + len(self.test))


def mnist_anomaly_split(
    root: str | Path,
    held_out: int,
    *,
    download: bool = False,
    seed: int = 42,
    train_fraction: float = 0.8,
    image_size: int | None = None,
) -> AnomalySplit:
    r"""MNIST with one digit held out as the anomaly (Kumar et al. 2019; Han et al. 2020, Table 4).

    The protocol, exactly:

    1. pool all 70,000 images: the 60,000 training images then the 10,000
       test images, in torchvision's order;
    2. the normal images are the pool entries whose digit is not ``held_out``,
       in pool order; let $N$ be their number;
    3. ``rng = numpy.random.RandomState(seed)`` (seed 42), ``perm = rng.permutation(N)``;
    4. with $k = \lfloor 0.8 N \rfloor$ (``int(train_fraction * N)``), the
       training set is the normal images ``perm[:k]``;
    5. the test set is the normal images ``perm[k:]`` followed by every image
       of the held-out digit (in pool order), then shuffled by the *same*
       ``rng``'s next ``rng.permutation(len(test))``.

    Test label 1 marks an anomaly (the held-out digit).  The score is the
    energy; the metric the area under the precision–recall curve.

    Arguments:
        root: the folder holding ``MNIST/raw`` (torchvision's layout).
        held_out: the anomalous digit, 0..9.
        download: let torchvision fetch missing files.
        seed: the seed of the shuffle.
        train_fraction: the fraction of normal images used for training.
        image_size: resize the images (bilinear); ``None`` keeps 28×28.

    Returns:
        An [`AnomalySplit`][kldiv.data.AnomalySplit].
    """
    held_out = count("held_out", held_out)
    if not held_out <= 9:
        raise ValueError(f"held_out must be a digit 0..9, got {held_out!r}")
    if not (isinstance(train_fraction, (int, float)) and not isinstance(train_fraction, bool)
            and 0 < train_fraction < 1):
        raise ValueError(f"train_fraction must be a fraction in (0, 1), got {train_fraction!r}")
    parts = [
        load_dataset("mnist", root, train=t, download=download, image_size=image_size)
        for t in (True, False)
    ]
    images = torch.cat([p.images for p in parts])  # (70000, 1, H, W) uint8
    digits = torch.cat([p.labels for p in parts])  # (70000,)
    pool = np.arange(images.shape[0])
    is_anomaly = (digits == held_out).numpy()
    normal, anomalous = pool[~is_anomaly], pool[is_anomaly]
    rng = np.random.RandomState(seed)
    normal = normal[rng.permutation(len(normal))]
    k = int(train_fraction * len(normal))
    test = np.concatenate([normal[k:], anomalous])
    test = test[rng.permutation(len(test))]
    train_index, test_index = torch.as_tensor(normal[:k]), torch.as_tensor(test)
    test_labels = (digits[test_index] == held_out).long()
    return AnomalySplit(
        held_out=held_out,
        train=ImageTensorDataset(images[train_index], digits[train_index]),
        test=ImageTensorDataset(images[test_index], test_labels),
        test_labels=test_labels,
        test_digits=digits[test_index],
        train_index=train_index,
        test_index=test_index,
    )


def anomaly_split(
    name: str,
    root: str | Path,
    held_out: int,
    *,
    download: bool = False,
    image_size: int | None = None,
) -> AnomalySplit:
    r"""One class held out as the anomaly, for any labelled data set.

    For ``"mnist"`` this is [`mnist_anomaly_split`][kldiv.data.mnist_anomaly_split],
    the protocol of the anomaly-detection papers (80% of the pooled normal
    images for training).  For the other labelled sets (``"digits"``,
    ``"fashion-mnist"``, ``"cifar10"``, ``"svhn"``) it keeps the set's own
    train / test split: the training set is the training images of every
    other class, the test set every test image, labelled 1 for the held-out
    class (in the test split's order).

    Arguments:
        name: the data set (see [`load_dataset`][kldiv.data.load_dataset]).
        root: the folder holding it (ignored for ``"digits"``).
        held_out: the anomalous class, one of the set's labels.
        download: let torchvision fetch missing files.
        image_size: resize the images; ``None`` keeps their size.

    Raises:
        ValueError: ``held_out`` is not one of the set's classes, or the set
            (CelebA) has no single class per image.
    """
    key = _canonical(name)
    if key == "mnist":
        return mnist_anomaly_split(root, held_out, download=download, image_size=image_size)
    if key == "celeba":
        raise ValueError("celeba has attributes, not one class per image: it has no hold-out-class split")
    train, test = (load_dataset(key, root, train=t, download=download, image_size=image_size) for t in (True, False))
    classes = sorted(set(train.labels.tolist()))
    if held_out not in classes:
        raise ValueError(f"held_out must be one of {key}'s classes {classes[0]}..{classes[-1]}, got {held_out!r}")
    keep = train.labels != held_out
    labels = (test.labels == held_out).long()
    return AnomalySplit(
        held_out=int(held_out),
        train=ImageTensorDataset(train.images[keep], train.labels[keep]),
        test=ImageTensorDataset(test.images, labels),
        test_labels=labels,
        test_digits=test.labels,
        train_index=torch.nonzero(keep).flatten(),
        test_index=torch.arange(len(test.labels)),
    )


# ----------------------------------------------------------------------------------------
# Toy 2-D data
# ----------------------------------------------------------------------------------------
TOY_2D = ("8gaussians", "rings", "checkerboard", "moons", "swissroll", "pinwheel")
"""The names [`toy_2d`][kldiv.data.toy_2d] accepts."""

_TOY_ALIASES = {
    "8gaussians": "8gaussians",
    "eightgaussians": "8gaussians",
    "gaussians": "8gaussians",
    "rings": "rings",
    "2rings": "rings",
    "tworings": "rings",
    "circles": "rings",
    "concentriccircles": "rings",
    "checkerboard": "checkerboard",
    "moons": "moons",
    "2moons": "moons",
    "twomoons": "moons",
    "swissroll": "swissroll",
    "pinwheel": "pinwheel",
}


def _uniform(n: int, g: torch.Generator | None) -> Tensor:
    return torch.rand(n, generator=g)


def _normal(shape: tuple[int, ...], g: torch.Generator | None) -> Tensor:
    return torch.randn(shape, generator=g)


def _polar(r: Tensor, theta: Tensor) -> Tensor:
    return torch.stack([r * torch.cos(theta), r * torch.sin(theta)], dim=1)  # (n, 2)


def _eight_gaussians(n: int, g) -> Tensor:
    k = torch.randint(0, 8, (n,), generator=g)
    centers = _polar(torch.full((n,), 2.0), k * (2 * math.pi / 8))
    return centers + 0.2 * _normal((n, 2), g)


def _rings(n: int, g) -> Tensor:
    r = 1.0 + torch.randint(0, 2, (n,), generator=g).float()  # radius 1 or 2
    return _polar(r, 2 * math.pi * _uniform(n, g)) + 0.08 * _normal((n, 2), g)


def _checkerboard(n: int, g) -> Tensor:
    # a 4×4 board on [-2, 2]²; points fill the cells whose row + column is even
    x1 = 4 * _uniform(n, g) - 2
    col = torch.floor(x1)
    x2 = torch.floor(2 * _uniform(n, g)) * 2 - 2 + _uniform(n, g)  # in [-2,-1) or [0, 1)
    x2 = x2 + torch.remainder(col, 2)  # shift by one row on odd columns
    return torch.stack([x1, x2], dim=1)


def _moons(n: int, g) -> Tensor:
    t = math.pi * _uniform(n, g)
    lower = torch.randint(0, 2, (n,), generator=g).bool()
    x = torch.where(lower, 1 - torch.cos(t), torch.cos(t))
    y = torch.where(lower, 0.5 - torch.sin(t), torch.sin(t))
    return torch.stack([x, y], dim=1) + 0.05 * _normal((n, 2), g)


def _swissroll(n: int, g) -> Tensor:
    t = 1.5 * math.pi * (1 + 2 * _uniform(n, g))
    return _polar(t, t) + 0.4 * _normal((n, 2), g)


def _pinwheel(n: int, g) -> Tensor:
    arms = 5
    k = torch.randint(0, arms, (n,), generator=g)
    radial = 1.0 + 0.3 * _normal((n,), g)
    tangential = 0.08 * _normal((n,), g)
    theta = k * (2 * math.pi / arms) + 0.8 * radial  # each arm curls with the radius
    c, s = torch.cos(theta), torch.sin(theta)
    return torch.stack([c * radial - s * tangential, s * radial + c * tangential], dim=1)


# raw sampler, its mean, one isotropic scale (sqrt of the mean per-axis variance),
# from the closed forms or 2·10⁶ samples: (raw - mean) / scale has per-axis variance ≈ 1
_TOYS = {
    "8gaussians": (_eight_gaussians, (0.0, 0.0), 1.428),
    "rings": (_rings, (0.0, 0.0), 1.121),
    "checkerboard": (_checkerboard, (0.0, 0.0), 1.155),
    "moons": (_moons, (0.5, 0.25), 0.707),
    "swissroll": (_swissroll, (2.0, 0.212), 6.80),
    "pinwheel": (_pinwheel, (0.0, 0.0), 0.740),
}


def toy_2d(
    name: str, n: int, *, seed: int | None = None, generator: torch.Generator | None = None
) -> Tensor:
    r"""Samples from a 2-D toy distribution, roughly standardised.

    | name | distribution |
    | --- | --- |
    | ``"8gaussians"`` | 8 Gaussians (std 0.2) on a circle of radius 2 |
    | ``"rings"`` | two concentric circles of radii 1 and 2, noise 0.08 |
    | ``"checkerboard"`` | uniform on the 8 black cells of a 4×4 board |
    | ``"moons"`` | two interleaved half circles, noise 0.05 |
    | ``"swissroll"`` | the spiral $t(\cos t, \sin t)$, $t \in [1.5\pi, 4.5\pi]$, noise 0.4 |
    | ``"pinwheel"`` | five curled arms |

    Each is centered and divided by one fixed scale (the same on both axes,
    so shapes are kept), making the per-axis variance about 1.

    Arguments:
        name: one of the names above (also ``"circles"``, ``"two_moons"``, ...).
        n: the number of samples.
        seed: seed of a fresh ``torch.Generator`` (ignored if ``generator`` is given).
        generator: the random number generator; with neither, torch's global one.

    Returns:
        A float32 tensor of shape ``(n, 2)``.
    """
    key = name.lower().replace("_", "").replace("-", "").replace(" ", "")
    if key not in _TOY_ALIASES:
        raise ValueError(f"unknown toy data set {name!r}; choose from {', '.join(TOY_2D)}")
    if generator is None and seed is not None:
        generator = torch.Generator().manual_seed(int(seed))
    n = count("n", n, minimum=1)
    sampler, mean, scale = _TOYS[_TOY_ALIASES[key]]
    raw = sampler(n, generator)  # (n, 2)
    return ((raw - torch.tensor(mean)) / scale).to(torch.float32)


# ----------------------------------------------------------------------------------------
# Batches
# ----------------------------------------------------------------------------------------
def infinite_batches(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool = True,
    drop_last: bool = True,
    seed: int | None = 0,
    with_labels: bool = False,
    device: torch.device | str | None = None,
    **loader_kwargs: Any,
) -> Iterator[Tensor | tuple[Tensor, ...]]:
    """Batches from ``dataset`` forever, epoch after epoch, reshuffled each epoch.

    Arguments:
        dataset: a data set whose items are ``(x, label)`` (or a bare ``x``).
        batch_size: the batch size.
        shuffle: reshuffle every epoch.
        drop_last: drop the last incomplete batch of each epoch (keeps batch statistics even).
        seed: seed of the shuffling generator (``None``: torch's global one).
        with_labels: yield the whole collated item (``(x, label)``) instead of ``x`` alone.
        device: move each batch there.
        **loader_kwargs: passed on to ``torch.utils.data.DataLoader`` (e.g. ``num_workers``).

    Returns:
        An iterator of ``x`` batches (``(n, C, H, W)``), or of whole collated items.
    """
    batch_size = count("batch_size", batch_size, minimum=1)
    if len(dataset) == 0:  # type: ignore[arg-type]
        raise ValueError("the data set is empty: there is nothing to draw batches from")
    g = None if seed is None else torch.Generator().manual_seed(int(seed))
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last, generator=g, **loader_kwargs
    )
    if len(loader) == 0:
        n = len(dataset)  # type: ignore[arg-type]
        raise ValueError(f"the data set has {n} items, fewer than one batch of {batch_size}")
    while True:
        for batch in loader:
            if not with_labels and isinstance(batch, (list, tuple)):
                batch = batch[0]
            if device is not None:
                batch = (
                    batch.to(device)
                    if isinstance(batch, Tensor)
                    else type(batch)(b.to(device) if isinstance(b, Tensor) else b for b in batch)
                )
            yield batch
