"""Reconstruction error: RMSE per pixel and summed squared error per image."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from kldiv.metrics._common import _finite

__all__ = ["ReconstructionError", "reconstruction_error"]

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
    _finite(images, "the images")
    _finite(reconstructions, "the reconstructions")
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
