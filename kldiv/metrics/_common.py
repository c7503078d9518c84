"""What the metrics share: the types of their inputs, batching, eval mode, and 1-D score arrays."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TypeAlias

import numpy as np
import torch
from torch import Tensor, nn

from kldiv._checks import torch_device

Images: TypeAlias = Tensor | Iterable[Tensor | tuple | list]
"""A tensor ``(n, C, H, W)`` or an iterable of such batches (or of ``(images, ...)`` tuples)."""

ArrayLike: TypeAlias = Tensor | np.ndarray | Iterable[float]


def _batches(data: Images, batch_size: int) -> Iterator[Tensor]:
    """Yield image batches from a tensor (split along dim 0) or an iterable of batches."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if isinstance(data, Tensor):
        if data.ndim == 0:
            raise ValueError("expected a batch of images of shape (n, ...), got a scalar tensor")
        if data.shape[0] == 0:
            raise ValueError(f"no images to score: got a tensor of shape {tuple(data.shape)}")
        _finite(data, "the images")
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
        _finite(item, "a batch of the images")
        yield item


def _finite(x: Tensor, what: str) -> None:
    """Refuse images holding NaN or inf: every score of them would be meaningless."""
    if x.is_floating_point() or x.is_complex():
        bad = int((~torch.isfinite(x)).sum())
        if bad:
            raise ValueError(f"{bad} non-finite values (NaN or inf) in {what}: a score or error of them would be NaN")


def _run(f, x: Tensor, what: str):
    """``f(x)``, with a failure of the networks on these images (their shape, most often) named
    before the network's own error, which stays on the exception as ``network_error``."""
    from kldiv.errors import ShapeError

    try:
        return f(x)
    except torch.OutOfMemoryError:
        raise  # not the images' shape: torch's own message says what to do
    except (RuntimeError, ShapeError) as err:
        # a density's log_prob names its failing term in a ShapeError; the images' shape still leads
        network = getattr(err, "network_error", err)
        exc = ShapeError(f"{what} failed on images of shape {tuple(x.shape)} {x.dtype}: {type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else ''}. Check that the images have the shape "
                         "and range the networks were trained on.")
        exc.network_error = network
        raise exc from None


def _device_of(module: nn.Module | None, device: torch.device | str | None) -> torch.device:
    if device is not None:
        return torch_device("device", device)
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
