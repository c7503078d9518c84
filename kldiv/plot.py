"""Training curves of a run: ``python -m kldiv.plot RUN_DIR``.

Reads the run's ``metrics.jsonl`` and draws one panel per player — its
value, and the summands `kldiv.Round.terms` logged for it — against the
step, into ``RUN_DIR/curves.png``; a last panel shows the step time.
Values logged as strings (``"nan"``, ``"inf"``) are left out of the curves.

    python -m kldiv.plot runs/latent_ebm
    python -m kldiv.plot runs/latent_ebm --out curves.png --terms
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

__all__ = ["main", "plot_run", "read_metrics"]


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The rows of a run's ``metrics.jsonl``, in order."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"no metrics.jsonl in {run_dir}: point at a run directory a recipe wrote")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    steps, values = [], []
    for r in rows:
        v = r.get(key)
        if isinstance(v, (int, float)) and math.isfinite(v):
            steps.append(r["step"])
            values.append(float(v))
    return steps, values


def plot_run(run_dir: str | Path, out: str | Path | None = None, *, terms: bool = False) -> Path:
    """Draw the curves of a run; returns the PNG's path.

    Arguments:
        run_dir: the run's directory (holding ``metrics.jsonl``).
        out: where to write the figure (default ``RUN_DIR/curves.png``).
        terms: also draw each player's logged summands (``player/E_q[...]``).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = read_metrics(run_dir)
    if not rows:
        raise ValueError(f"{run_dir}/metrics.jsonl is empty: the run logged nothing yet")
    keys = list(dict.fromkeys(k for r in rows for k in r))
    players = [k for k in keys if "/" not in k and k not in ("step", "time", "step_time")
               and any(isinstance(r.get(k), (int, float)) for r in rows)]
    panels = [*players, "step_time"] if any("step_time" in r for r in rows) else players
    fig = Figure(figsize=(4.2 * len(panels), 3.2))
    FigureCanvasAgg(fig)
    for i, name in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        ax.plot(*_series(rows, name), label=name if name != "step_time" else "seconds per step", lw=1.5)
        if terms and name != "step_time":
            for k in keys:
                rest = k.split("/", 1)[1] if k.startswith(f"{name}/") else None
                if rest is not None and not rest.startswith(("lr", "grad_norm")):
                    ax.plot(*_series(rows, k), label=k.split("/", 1)[1], lw=0.8, alpha=0.8)
        ax.set_title(name if name != "step_time" else "step time", fontsize=10)
        ax.set_xlabel("step")
        ax.legend(fontsize=6)
    fig.tight_layout()
    path = Path(out) if out is not None else Path(run_dir) / "curves.png"
    fig.savefig(path, dpi=100)
    return path


def main(argv=None) -> Path:
    ap = argparse.ArgumentParser(prog="python -m kldiv.plot", description=__doc__.splitlines()[0],
                                 allow_abbrev=False)
    ap.add_argument("run_dir", help="a recipe's output directory (holding metrics.jsonl)")
    ap.add_argument("--out", default=None, help="the PNG to write (default RUN_DIR/curves.png)")
    ap.add_argument("--terms", action="store_true", help="also draw each player's logged summands")
    args = ap.parse_args(argv)
    path = plot_run(args.run_dir, args.out, terms=args.terms)
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
