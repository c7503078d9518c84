"""Checkpoints: `save_checkpoint` (atomic writes), `load_checkpoint` (weights only,
a corrupt or foreign file named and left as it is), the random generators'
state they carry, and `Checkpoints`, which does a `Run`'s part: its
``checkpoint.pt`` and ``config.json``, the check that ``--out`` belongs to
this recipe, the state a checkpoint holds, ``--keep``, and ``--resume``."""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import pickle
import random
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from kldiv.errors import CheckpointError

if TYPE_CHECKING:
    from kldiv.train.run import Run


def save_checkpoint(path: str | Path, state: Mapping) -> None:
    """Write ``state`` to ``path`` atomically: a temporary file in the same
    directory, flushed to disk, then renamed over the old checkpoint, so a
    process killed mid-write leaves the previous checkpoint intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for orphan in path.parent.glob(glob.escape(path.name) + ".*.tmp"):  # left by a writer that was killed
        orphan.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(dict(state), fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would hide the checkpoint from a teammate
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint with ``weights_only=True`` (tensors and plain containers only).

    Raises:
        FileNotFoundError: there is no file at ``path``.
        CheckpointError: the file is truncated or corrupt, or holds objects
            other than tensors and plain containers (code, which kldiv never
            runs); the file is left as it is.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}; start without --resume, or point --out at the run")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, AttributeError) as err:
        if "unsupported global" in str(err).lower():  # the pickle names a function or class to call
            raise CheckpointError(
                f"{path} holds objects other than tensors and plain containers, which could run code when "
                "loaded; kldiv loads weights only. It was left as it is: use a checkpoint written by a kldiv "
                "recipe, or start afresh in another --out."
            ) from None
        raise CheckpointError(
            f"{path} cannot be read: it is truncated or corrupt ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else 'no detail'}). It was left as it is: move it away "
            "and start afresh, or resume from a copy of an earlier checkpoint."
        ) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not a checkpoint dictionary. It was left "
                              "as it is: point --out at a kldiv run, or move the file away.")
    return state


def _rng_state() -> dict:
    _, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": torch.from_numpy(keys.astype(np.int64)),
        "numpy_rest": [int(pos), int(has_gauss), float(cached)],
        "python": list(random.getstate()[1]),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    pos, has_gauss, cached = state["numpy_rest"]
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate((3, tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _match_layouts(optimizer: torch.optim.Optimizer) -> None:
    """Give every per-parameter state tensor of the parameter's shape (Adam's moments)
    the parameter's memory format: a checkpoint written with ``--channels-last`` holds
    channels-last moments, which ``load_state_dict`` keeps as they are."""
    for p, st in optimizer.state.items():
        for key, v in st.items():
            if isinstance(v, Tensor) and v.shape == p.shape and v.stride() != p.stride():
                st[key] = torch.empty_like(p, dtype=v.dtype).copy_(v)  # empty_like keeps p's strides


class Checkpoints:
    """A run's checkpoints: ``<out>/checkpoint.pt``, written atomically on schedule
    (`Run.save`), ``config.json`` beside it, and ``--resume``.

    Arguments:
        run: the run whose networks, optimisers, schedulers, step, metrics and
            clock the checkpoints hold; they are read when a checkpoint is
            written or resumed, so they are what `Run.attach` registered.
    """

    def __init__(self, run: Run):
        self.run = run
        self.path = run.out / "checkpoint.pt"
        self.last_saved: int | None = None  # the step of the last checkpoint written in this process

    def check_out_dir(self) -> None:
        """Refuse, before anything is written, an ``--out`` whose checkpoint belongs to another recipe."""
        if not self.path.exists():
            return
        state = load_checkpoint(self.path)  # a corrupt file is named and left as it is
        theirs = state.get("recipe")
        if theirs != self.run.name:
            raise CheckpointError(
                f"{self.path} is a checkpoint of {theirs!r}, not of {self.run.name!r}; it was left as "
                "it is. Give this run another --out, or move that checkpoint away."
            )

    def write_config(self) -> None:
        """``config.json``: the resolved configuration, the versions, and the commit when there is one."""
        import subprocess

        import kldiv

        run = self.run
        try:
            commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(kldiv.__file__).parent, text=True,
                                    capture_output=True, timeout=10).stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            commit = None
        record = {"recipe": run.name, "config": dataclasses.asdict(run.cfg), "kldiv": kldiv.__version__,
                  "torch": torch.__version__, "commit": commit, "argv": sys.argv}
        tmp = run.out / "config.json.tmp"
        tmp.write_text(json.dumps(record, indent=2) + "\n")
        os.replace(tmp, run.out / "config.json")

    def state(self) -> dict:
        """What a checkpoint holds: ``{networks, optimizers, schedulers, extra, config, recipe,
        architecture, step, elapsed, metrics, rng}``, ``ema, ema_updates`` with ``--ema`` and
        ``scalers`` (the loss scales) with ``--amp fp16``."""
        run = self.run
        return {
            "networks": {k: m.state_dict() for k, m in run.networks.items()},
            "optimizers": {k: o.state_dict() for k, o in run.optimizers.items()},
            "schedulers": {k: s.state_dict() for k, s in run.schedulers.items()},
            "extra": {k: s.state_dict() for k, s in run.extra_state.items()},
            "config": dataclasses.asdict(run.cfg),
            "recipe": run.name,
            "architecture": {k: [path, kw] for k, (path, kw) in run.architecture.items()},
            "step": run.step,
            "elapsed": run.runlog.clock(),
            "metrics": dict(run.metrics),
            "rng": _rng_state(),
            **({"scalers": {k: sc.state_dict() for k, sc in run.scalers.items()}} if run.scalers else {}),
            **({"ema": {k: a.module.state_dict() for k, a in run.ema.items()},
                "ema_updates": {k: int(a.n_averaged) for k, a in run.ema.items()}} if run.ema else {}),
        }

    def save(self) -> None:
        """Write the checkpoint (rank 0 only), atomically; with ``--keep N`` also
        keep it as ``checkpoint-STEP.pt`` and remove the numbered ones older than the last N."""
        run = self.run
        if not run.is_main:
            return
        save_checkpoint(self.path, self.state())
        if run.cfg.keep:
            numbered = run.out / f"checkpoint-{run.step:08d}.pt"
            numbered.unlink(missing_ok=True)
            try:
                os.link(self.path, numbered)  # the same bytes, no copy
            except OSError:
                import shutil

                shutil.copy2(self.path, numbered)
            for old in sorted(run.out.glob("checkpoint-[0-9]*.pt"))[: -run.cfg.keep]:
                old.unlink(missing_ok=True)

    def resume(self) -> None:
        """Load the checkpoint into the run: weights, optimiser moments (with this run's
        learning rates), schedulers, extra state, ``--ema`` averages, step, metrics, clock
        and random generators."""
        run = self.run
        state = load_checkpoint(self.path, map_location=run.device)
        for k, m in run.networks.items():
            m.load_state_dict(state["networks"][k])
        for k, o in run.optimizers.items():
            # The optimiser's moments come back; its learning rates are the command
            # line's (times any decay accrued), so a run can resume with a lower rate.
            fresh = [g["lr"] for g in o.param_groups]
            o.load_state_dict(state["optimizers"][k])
            _match_layouts(o)  # moments saved in the other memory format take this run's
            for g, lr in zip(o.param_groups, fresh):
                decayed = g["lr"] / g["initial_lr"] if g.get("initial_lr") else 1.0
                g["initial_lr"], g["lr"] = lr, lr * decayed
        for k, s in run.schedulers.items():
            s.load_state_dict(state["schedulers"][k])
        for k, s in run.extra_state.items():
            s.load_state_dict(state["extra"][k])
        for k, sc in run.scalers.items():  # --amp fp16; a checkpoint written without it starts a fresh scale
            if k in state.get("scalers", {}):
                sc.load_state_dict(state["scalers"][k])
        if run.ema:
            if "ema" not in state:
                raise ValueError(f"{self.path} was written without --ema: resume without it, "
                                 "or start a new run with it")
            for k, a in run.ema.items():
                a.module.load_state_dict(state["ema"][k])
                a.n_averaged.fill_(state["ema_updates"][k])
        run.step = int(state["step"])
        run.metrics = dict(state["metrics"])
        run.runlog.restart(float(state.get("elapsed", 0.0)), run.step)
        if run.world == 1:
            _set_rng_state({k: (v.cpu() if isinstance(v, Tensor) else v) for k, v in state["rng"].items()})
        else:  # the checkpoint holds rank 0's generators; move every rank on by the step
            seed = run.cfg.seed + 1_000_003 * run.rank + 7919 * run.step
            torch.manual_seed(seed)
