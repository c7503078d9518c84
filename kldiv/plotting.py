r"""Pictures of energy-based models and their samples, written as PNG files.

* [`plot_energy_2d`][kldiv.plotting.plot_energy_2d]: the landscape of a 2-D
  energy-based model — its normalised density $\exp f(x) / \sum_{\rm grid} \exp f\,\Delta$,
  its log density $f$, or its energy $-f$ — evaluated on a grid, with samples
  drawn over it;
* [`save_image_grid`][kldiv.plotting.save_image_grid]: a grid of image
  samples (``torchvision.utils.make_grid``), saved with ``save_image``;
* [`plot_energy_histograms`][kldiv.plotting.plot_energy_histograms] and
  [`plot_precision_recall`][kldiv.plotting.plot_precision_recall]: the
  pictures of the detection metrics of `kldiv.metrics` (histograms of OOD
  scores, the precision–recall curve with its AUPRC), also importable from
  `kldiv.metrics`.

Figures are drawn on matplotlib's Agg canvas directly (no ``pyplot``, no
global backend switch), so plotting works on machines without a display and
leaves matplotlib's global state alone.

Examples:
    >>> import torch, tempfile, os
    >>> from kldiv.plotting import plot_energy_2d
    >>> f = lambda x: -0.5 * x.square().sum(1)
    >>> path = os.path.join(tempfile.mkdtemp(), "gauss.png")
    >>> fig = plot_energy_2d(f, torch.randn(200, 2), path=path, resolution=50)
    >>> os.path.getsize(path) > 0
    True
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor, nn

from kldiv._checks import count

if TYPE_CHECKING:
    from kldiv.metrics._common import ArrayLike

__all__ = ["energy_grid", "plot_energy_2d", "plot_energy_histograms", "plot_precision_recall", "save_image_grid"]

Bounds = tuple[float, float, float, float]


def _log_density_fn(model) -> Callable[[Tensor], Tensor]:
    """$x \\mapsto f(x)$ of shape ``(n,)`` from a network, a callable or a density with ``.energy``."""
    energy = getattr(model, "energy", model)
    if not callable(energy):
        raise TypeError(f"expected an energy network, a callable or a density with .energy, got {model!r}")

    def f(x: Tensor) -> Tensor:
        out = energy(x)
        if out.dim() == 2 and out.shape[1] == 1:
            out = out[:, 0]
        return out

    return f


def _reference(model) -> tuple[torch.device, torch.dtype]:
    energy = getattr(model, "energy", model)
    if isinstance(energy, nn.Module):
        p = next(iter(energy.parameters()), None)
        if p is not None:
            return p.device, p.dtype
    return torch.device("cpu"), torch.get_default_dtype()


def energy_grid(
    model,
    bounds: Bounds = (-4.0, 4.0, -4.0, 4.0),
    resolution: int = 200,
    *,
    batch_size: int = 16_384,
) -> tuple[Tensor, Tensor, Tensor]:
    r"""Evaluate a 2-D log density $f$ on a regular grid.

    Arguments:
        model: a network $x \mapsto f(x)$ (``(n, 2) -> (n,)`` or ``(n, 1)``), any
            such callable, or a density with an ``energy`` (a
            [`MarginalEBM`][kldiv.MarginalEBM]).
        bounds: ``(x_min, x_max, y_min, y_max)``.
        resolution: grid points per axis.
        batch_size: grid points evaluated per forward pass.

    Returns:
        ``(xs, ys, f)``: the axes, shapes ``(resolution,)``, and $f$ on the grid,
        shape ``(resolution, resolution)`` indexed ``[y, x]`` (CPU, detached).
    """
    resolution = count("resolution", resolution, minimum=2)
    batch_size = count("batch_size", batch_size, minimum=1)
    x0, x1, y0, y1 = _checked_bounds(bounds)
    f = _log_density_fn(model)
    device, dtype = _reference(model)
    xs = torch.linspace(x0, x1, resolution, device=device, dtype=dtype)
    ys = torch.linspace(y0, y1, resolution, device=device, dtype=dtype)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    points = torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=1)  # (R*R, 2)
    with torch.no_grad():
        values = torch.cat([f(chunk) for chunk in points.split(batch_size)])
    return xs.cpu(), ys.cpu(), values.reshape(resolution, resolution).cpu()


def _checked_bounds(bounds: object) -> tuple[float, float, float, float]:
    try:
        x0, x1, y0, y1 = (float(b) for b in bounds)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise ValueError(f"bounds must be four numbers (x_min, x_max, y_min, y_max), got {bounds!r}") from None
    if not all(np.isfinite([x0, x1, y0, y1])) or not (x0 < x1 and y0 < y1):
        raise ValueError(f"bounds must be finite with x_min < x_max and y_min < y_max, got {bounds!r}")
    return x0, x1, y0, y1


def _bounds_from(samples: Tensor | None, margin: float = 0.1) -> Bounds:
    if samples is None or samples.shape[0] == 0:
        return (-4.0, 4.0, -4.0, 4.0)
    lo = samples.min(0).values
    hi = samples.max(0).values
    pad = (hi - lo).clamp(min=1e-3) * margin
    lo, hi = (lo - pad).tolist(), (hi + pad).tolist()
    return (lo[0], hi[0], lo[1], hi[1])


def plot_energy_2d(
    model,
    samples: Tensor | None = None,
    *,
    show: Literal["density", "log_density", "energy"] = "density",
    bounds: Bounds | None = None,
    resolution: int = 200,
    path: str | os.PathLike | None = None,
    title: str | None = None,
    ax=None,
    max_points: int = 5_000,
) -> Figure:
    r"""The landscape of a 2-D energy-based model, with samples over it.

    ``show`` picks what is drawn on the grid $\{x_{ij}\}$ of cell area $\Delta$:

    * ``"density"``: $\exp f(x_{ij}) / \sum_{kl} \exp f(x_{kl})\, \Delta$, the model's
      density normalised on the grid;
    * ``"log_density"``: $f(x_{ij})$;
    * ``"energy"``: $E = -f(x_{ij})$.

    Arguments:
        model: a network $x \mapsto f(x)$, a callable, or a density with an ``energy``.
        samples: points ``(n, 2)`` drawn over the landscape (e.g. Langevin samples).
        show: ``"density"``, ``"log_density"`` or ``"energy"``.
        bounds: ``(x_min, x_max, y_min, y_max)``; default: around ``samples``, else $[-4, 4]^2$.
        resolution: grid points per axis.
        path: if given, the figure is saved there as PNG.
        title: the axes' title.
        ax: draw into these matplotlib axes instead of a new figure.
        max_points: draw at most this many samples (the first ones).

    Returns:
        The matplotlib ``Figure``.
    """
    if show not in ("density", "log_density", "energy"):
        raise ValueError(f"show must be 'density', 'log_density' or 'energy', got {show!r}")
    if samples is not None:
        samples = samples.detach().reshape(samples.shape[0], -1).cpu().float()
        if samples.shape[1] != 2:
            raise ValueError(f"samples must be 2-D points, shape (n, 2), got {tuple(samples.shape)}")
    if bounds is None:
        bounds = _bounds_from(samples)
    xs, ys, f = energy_grid(model, bounds, resolution)
    f = f.double()
    if show == "density":
        cell = float((xs[1] - xs[0]) * (ys[1] - ys[0])) if resolution > 1 else 1.0
        z = torch.softmax(f.reshape(-1), 0).reshape(f.shape) / cell
        label = "density (normalised on the grid)"
    elif show == "log_density":
        z, label = f, "log density f"
    else:
        z, label = -f, "energy −f"
    if ax is None:
        fig = Figure(figsize=(5, 4.4), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(1, 1, 1)
    else:
        fig = ax.figure
    mesh = ax.pcolormesh(xs.numpy(), ys.numpy(), z.numpy(), shading="auto", cmap="viridis")
    fig.colorbar(mesh, ax=ax, label=label)
    if samples is not None:
        pts = samples[:max_points].numpy()
        ax.scatter(pts[:, 0], pts[:, 1], s=3, c="white", edgecolors="none", alpha=0.7)
    ax.set_xlim(bounds[0], bounds[1])
    ax.set_ylim(bounds[2], bounds[3])
    ax.set_aspect("equal")
    if title is not None:
        ax.set_title(title)
    if path is not None:
        fig.savefig(os.fspath(path), format="png", bbox_inches="tight")
    return fig


def save_image_grid(
    images: Tensor,
    path: str | os.PathLike,
    *,
    nrow: int = 8,
    value_range: tuple[float, float] | None = (-1.0, 1.0),
    padding: int = 2,
) -> Tensor:
    r"""Save a batch of images as one PNG grid.

    Arguments:
        images: tensor ``(n, C, H, W)`` (C = 1 or 3), or ``(n, H, W)`` for grey images.
        path: where to write the PNG.
        nrow: images per row.
        value_range: the range mapped to black…white (kldiv's images live in
            $[-1, 1]$); values outside are clipped.  ``None``: each grid is
            scaled to its own min and max.
        padding: pixels between images.

    Returns:
        The grid, a tensor ``(3, H', W')`` in $[0, 1]$.
    """
    from torchvision.utils import make_grid, save_image

    if not isinstance(images, Tensor):
        raise TypeError(f"images must be a tensor (n, C, H, W), got {type(images).__name__}")
    nrow, padding = count("nrow", nrow, minimum=1), count("padding", padding)
    if value_range is not None:
        low, high = (float(v) for v in value_range)
        if not (np.isfinite([low, high]).all() and low < high):
            raise ValueError(f"value_range must be finite with low < high, got {value_range!r}")
    images = images.detach().cpu().float()
    if images.dim() == 3:
        images = images.unsqueeze(1)
    if images.dim() != 4:
        raise ValueError(f"images must be (n, C, H, W) or (n, H, W), got {tuple(images.shape)}")
    if images.shape[0] == 0:
        raise ValueError("images is empty: there is nothing to draw")
    if images.shape[1] not in (1, 3):
        raise ValueError(f"images must have 1 or 3 channels, got {images.shape[1]} (shape {tuple(images.shape)})")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    grid = make_grid(
        images, nrow=nrow, padding=padding, normalize=True, value_range=value_range, scale_each=False
    )
    save_image(grid, os.fspath(path))
    return grid


# --------------------------------------------------------------------------- #
# Plots of the detection metrics (kldiv.metrics)
# --------------------------------------------------------------------------- #


def _new_figure(width: float, height: float) -> Figure:
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
    from kldiv.metrics._common import _as_1d  # here, not at the top: kldiv.metrics imports this module

    bins = count("bins", bins, minimum=1)
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
    from kldiv.metrics._common import _as_1d  # here, not at the top: kldiv.metrics imports this module
    from kldiv.metrics.detection import _binary_labels, anomaly_auprc, precision_recall

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
