"""What a run writes as it goes, besides its checkpoints: `RunLog` keeps the
training clock (which continues across ``--resume``), appends the metrics
to ``metrics.jsonl`` (and, with ``--tensorboard``, to TensorBoard), shows a
tqdm progress bar or, without a terminal, prints progress lines, writes
image grids as PNG, and says at the end what the run wrote."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Container, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from kldiv.train.config import RunConfig


class RunLog:
    """A run's metrics, progress and images, written by rank 0 only.

    Arguments:
        out: the output directory.
        name: the recipe's name (the progress bar's and lines' label).
        cfg: the run's config, read for ``--steps`` and ``--tensorboard``.
        main: whether this process writes files (rank 0).
    """

    def __init__(self, out: Path, *, name: str, cfg: RunConfig, main: bool = True):
        self.out, self.name, self.cfg, self.main = out, name, cfg, main
        self.t0 = time.perf_counter()
        self.elapsed = 0.0  # training seconds before this process: the clock continues across --resume
        self.last_log = (self.t0, 0)  # (time, step) of the last metrics line
        self.loop_start: tuple[float, int] | None = None  # (time, step) when the batches began
        self.bar = None
        self.tb = None

    # --- the clock ----------------------------------------------------------------------
    def clock(self) -> float:
        """Seconds of training so far, across resumes."""
        return self.elapsed + time.perf_counter() - self.t0

    def restart(self, elapsed: float, step: int) -> None:
        """Continue the clock of a resumed run: ``elapsed`` seconds before this process, at ``step``."""
        self.elapsed = elapsed
        self.t0 = time.perf_counter()
        self.last_log = (self.t0, step)

    # --- metrics ------------------------------------------------------------------------
    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        """Append one JSON line ``{"step", "time", **metrics}`` to ``metrics.jsonl``."""
        if not self.main:
            return
        now = time.perf_counter()
        (then, last), self.last_log = self.last_log, (now, step)
        row = {"step": step, "time": round(self.clock(), 3)}
        if step > last:
            row["step_time"] = round((now - then) / (step - last), 6)
        row.update({k: (v if math.isfinite(v) else str(v)) for k, v in metrics.items()})
        with open(self.out / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps(row) + "\n")
        if self.cfg.tensorboard:
            if self.tb is None:
                try:
                    from torch.utils.tensorboard import SummaryWriter
                except ImportError as err:
                    raise ImportError("--tensorboard needs the tensorboard package: "
                                      "pip install 'kldiv[tensorboard]'") from err
                self.tb = SummaryWriter(str(self.out / "tensorboard"))
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, step)
            self.tb.flush()

    # --- progress -----------------------------------------------------------------------
    def start(self, step: int) -> None:
        """The batches begin at ``step``: open the progress bar (rank 0) and start the rate's clock."""
        if self.main:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.cfg.steps, initial=step, desc=self.name, dynamic_ncols=True,
                            disable=not sys.stderr.isatty() and os.environ.get("KLDIV_PROGRESS") != "1")
        self.loop_start = (time.perf_counter(), step)

    def progress_line(self, step: int, metrics: Mapping[str, float], players: Container[str] = ()) -> str:
        """``step / steps``, steps per second, time left and each player's value."""
        t0, s0 = self.loop_start or (self.t0, 0)
        rate = (step - s0) / max(time.perf_counter() - t0, 1e-9)
        left = (self.cfg.steps - step) / rate if rate > 0 else math.inf
        values = " ".join(f"{k} {v:.4g}" for k, v in metrics.items() if k in players)
        eta = f"{int(left // 60)}:{int(left % 60):02d}" if math.isfinite(left) else "?"
        return f"{self.name} {step}/{self.cfg.steps} | {rate:.2f} steps/s | {eta} left" + (
            f" | {values}" if values else "")

    def print_progress(self, step: int, metrics: Mapping[str, float], players: Container[str] = ()) -> None:
        """Without a progress bar on a terminal, print the progress line (a line a log file can hold)."""
        if self.bar is None or self.bar.disable:
            print(self.progress_line(step, metrics, players), flush=True)

    def tick(self, step: int, metrics: Mapping[str, float]) -> None:
        """Move the progress bar on by a step, showing the first metrics; close it after the last step."""
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix({k: f"{v:.3g}" for k, v in list(metrics.items())[:4]}, refresh=False)
            if step == self.cfg.steps:
                self.bar.close()

    # --- images -------------------------------------------------------------------------
    def save_images(self, name: str, images: Tensor, nrow: int = 10) -> Path | None:
        """Save images in [-1, 1] as a PNG grid ``<out>/<name>.png`` (rank 0)."""
        if not self.main:
            return None
        from torchvision.utils import save_image

        path = self.out / f"{name}.png"
        save_image(images.detach().float().cpu().clamp(-1, 1) * 0.5 + 0.5, path, nrow=nrow)
        return path

    def snapshot(self, generator: nn.Module, z: Tensor, encoder: nn.Module | None = None,
                 x: Tensor | None = None) -> None:
        """Write ``samples.png`` (``generator(z)``) and, with an encoder, ``reconstructions.png``
        (data rows above their reconstructions ``g(mu_q(x))``), networks in eval mode."""
        if not self.main:
            return
        nets = [m for m in (generator, encoder) if m is not None]
        modes = [m.training for m in nets]
        try:
            for m in nets:
                m.eval()
            with torch.no_grad():
                self.save_images("samples", generator(z))
                if encoder is not None and x is not None:
                    k = min(10, x.shape[0])  # images per row
                    x = x[: min(50, x.shape[0]) // k * k]
                    rec = generator(encoder(x).mean)
                    rows = torch.stack([x.unflatten(0, (-1, k)), rec.unflatten(0, (-1, k))], 1)
                    self.save_images("reconstructions", rows.flatten(0, 2), nrow=k)
        finally:
            for m, mode in zip(nets, modes):
                m.train(mode)

    # --- the end ------------------------------------------------------------------------
    def close(self, step: int) -> None:
        """Close TensorBoard's writer and say what the run wrote (rank 0)."""
        if self.tb is not None:
            self.tb.close()
            self.tb = None
        if self.main and self.out.exists():
            written = sorted(f.name for f in self.out.iterdir() if f.is_file() and not f.name.endswith(".tmp"))
            print(f"{self.name}: {step} steps; wrote {', '.join(written)} in {self.out}. "
                  f"Evaluate it with: python -m kldiv.evaluate {self.out}", flush=True)
