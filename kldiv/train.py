"""The training loop every recipe shares.

A recipe keeps its paper's algorithm in view and leaves the plumbing here:

- a `@dataclass` config filled from the command line ([`parse_config`][kldiv.train.parse_config]);
- the device (CUDA when present), ``--amp bf16`` autocast, ``--compile`` and
  ``--channels-last`` (convolutional networks and image batches in NHWC memory);
- batches that are a deterministic function of (seed, step), so a resumed run
  sees exactly the batches an uninterrupted one would;
- self-describing checkpoints ``{networks, optimizers, schedulers, config,
  step, metrics, rng}`` written atomically and loaded with ``weights_only=True``;
- a non-finite loss or gradient stops the run before the update, naming the
  player and the step, with the last good checkpoint intact;
- metrics as JSON lines, images as PNG, a tqdm progress bar;
- several processes through ``torchrun``: each player's networks wrapped in
  ``DistributedDataParallel``, each rank seeded apart and fed its own slice of
  every global batch, only rank 0 writing.

A recipe's loop (Algorithm 1 of Han et al. 2020):

```python
run = Run(cfg, name="latent_ebm")
...
run.attach(step, networks, optimizers, schedulers)
for x in run.batches(dataset):
    r = step.round(x)
    for player in ("ebm", "encoder", "generator"):
        run.update(r, player)
    run.end_step()
```
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import math
import os
import pickle
import random
import sys
import tempfile
import time
import types
import typing
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler

from kldiv.compiler import Estimator, Round
from kldiv.errors import CheckpointError, NonFiniteError

__all__ = [
    "Run",
    "compile_network",
    "build_networks",
    "RunConfig",
    "StepBatchSampler",
    "load_checkpoint",
    "parse_config",
    "save_checkpoint",
]


# ----------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------
def option(default, help: str, **kw):
    """A dataclass field with a command-line help text."""
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: default, metadata={"help": help, **kw})
    return dataclasses.field(default=default, metadata={"help": help, **kw})


@dataclasses.dataclass
class RunConfig:
    """Options every recipe shares (a recipe subclasses it with its paper's defaults)."""

    data: str = option("digits", "data set (digits is embedded)",
                       choices=("digits", "mnist", "fashion-mnist", "cifar10", "svhn", "celeba"))
    data_root: str = option("data", "where the data set's files are (torchvision layout)")
    download: bool = option(False, "download the data set into --data-root if missing")
    image_size: int = option(0, "resize images to this size (0: the data set's own)")
    hold_out: int = option(-1, "train without this class, the anomaly (kldiv.data.anomaly_split; -1: every class)")
    batch_size: int = option(100, "mini-batch size per process")
    steps: int = option(1000, "number of training rounds (one update of every player each)")
    seed: int = option(0, "random seed")
    out: str = option("", "output directory (default runs/<recipe>)")
    device: str = option("auto", "auto (CUDA when present), cpu, cuda, cuda:1, ...")
    amp: str = option("none", "mixed precision: none or bf16", choices=("none", "bf16"))
    compile: bool = option(False, "compile the networks with torch.compile")
    channels_last: bool = option(False, "keep the convolutional networks' weights and the image batches in the "
                                 "channels-last (NHWC) memory format (the values and the checkpoints are the "
                                 "same either way; benchmarks/recipe_speed.py measures the speed)")
    resume: bool = option(False, "continue from the checkpoint in --out")
    log_every: int = option(50, "write metrics every this many steps")
    sample_every: int = option(500, "write sample grids every this many steps")
    checkpoint_every: int = option(500, "write a checkpoint every this many steps")
    clip_grad: float = option(0.0, "clip every player's gradient norm at this value before its update (0: off)")
    max_loss: float = option(1e12, "stop, as on a NaN, when a player's loss exceeds this in magnitude "
                             "(a diverging run; 0: no bound)")
    ema: float = option(0.0, "also keep an exponential moving average of every network's weights with this decay "
                        "(e.g. 0.999; buffers are the live network's); checkpointed, and what kldiv.evaluate "
                        "scores (0: off)")
    num_workers: int = option(0, "data-loading worker processes")
    keep: int = option(0, "also keep the last N checkpoints as checkpoint-STEP.pt beside checkpoint.pt (0: none)")
    tensorboard: bool = option(False, "also write the metrics for TensorBoard into --out/tensorboard "
                               "(pip install 'kldiv[tensorboard]')")

    def __post_init__(self):
        """Refuse values no run can use, naming the flag."""
        at_least = {"batch_size": 1, "steps": 0, "log_every": 1, "sample_every": 1, "checkpoint_every": 1,
                    "image_size": 0, "hold_out": -1, "num_workers": 0, "keep": 0}
        for name, low in at_least.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"--{name.replace('_', '-')} must be an integer >= {low}, got {value!r}")
        for name in ("clip_grad", "max_loss"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"--{name.replace('_', '-')} must be a finite number >= 0 (0: off), got {value!r}")
        if not (0 <= self.ema < 1):
            raise ValueError(f"--ema is the decay of the moving average, in (0, 1) (0: off); got {self.ema!r}")


def parse_config(cls: type, argv: list[str] | None = None, presets: Mapping[str, Mapping] | None = None):
    """Fill the dataclass ``cls`` from the command line (``--batch-size 64``, ``--no-compile``).

    ``presets`` maps a data set name to option values that replace the
    dataclass defaults for that data set (e.g. small networks for the
    embedded digits on a CPU); an option given on the command line always wins.
    """
    parser = argparse.ArgumentParser(
        description=(cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else None, allow_abbrev=False
    )
    hints = typing.get_type_hints(cls)
    fields = dataclasses.fields(cls)
    for f in fields:
        flag = "--" + f.name.replace("_", "-")
        kind = hints[f.name]
        meta = dict(f.metadata)
        help_ = meta.pop("help", "")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        # the value the run will use: the default, or a data set's preset
        shown = f"default: {default}" + "".join(
            f"; with --data {data}: {values[f.name]}" for data, values in (presets or {}).items() if f.name in values
        )
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                                help=f"{help_} ({shown})")
        else:
            parser.add_argument(flag, type=kind, default=argparse.SUPPRESS, help=f"{help_} ({shown})", **meta)
    parser.add_argument("--config", default=None, metavar="FILE",
                        help="a TOML or JSON file of options by name (batch_size = 64), or a run's config.json; "
                             "the command line overrides it")
    given = vars(parser.parse_args(argv))
    path = given.pop("config", None)
    try:
        if path is not None:
            given = {**_read_config(path, fields, hints), **given}
        cfg = cls(**given)
        preset = dict((presets or {}).get(cfg.data, {}))
        unknown = set(preset) - {f.name for f in fields}
        if unknown:
            raise TypeError(f"preset for {cfg.data!r} sets unknown options {sorted(unknown)}")
        return dataclasses.replace(cfg, **{k: v for k, v in preset.items() if k not in given})
    except ValueError as err:
        parser.error(str(err))


def _read_config(path: str, fields, hints) -> dict:
    """Options from a TOML or JSON file (a run's ``config.json`` too), checked against the fields."""
    import tomllib

    file = Path(path)
    if not file.is_file():
        raise ValueError(f"--config {path}: no such file")
    try:
        data = tomllib.loads(file.read_text()) if file.suffix == ".toml" else json.loads(file.read_text())
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"--config {path} is not valid {'TOML' if file.suffix == '.toml' else 'JSON'}: {err}") from None
    if isinstance(data.get("config"), dict) and "recipe" in data:  # a run's config.json
        data = {k: v for k, v in data["config"].items() if k != "resume"}
    names = {f.name for f in fields}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"--config {path} sets options this recipe does not have: {unknown}")
    out = {}
    for k, v in data.items():
        kind = hints[k]
        ok = isinstance(v, bool) if kind is bool else (
            isinstance(v, (int, float)) and not isinstance(v, bool) if kind is float else
            isinstance(v, kind) and not isinstance(v, bool))
        if not ok:
            raise ValueError(f"--config {path}: {k} must be {kind.__name__}, got {v!r}")
        out[k] = kind(v)
    return out


def build_networks(architecture: Mapping[str, tuple[str, Mapping]]) -> dict[str, nn.Module]:
    """Build networks from ``{name: ("kldiv.nn.Generator", {constructor arguments})}``.

    Checkpoints store this mapping, so a run can be rebuilt from its checkpoint
    alone (``python -m kldiv.evaluate RUN_DIR``). Only classes of the
    ``kldiv`` package are accepted.
    """
    import importlib

    nets = {}
    for name, (path, kwargs) in architecture.items():
        module, _, cls = path.rpartition(".")
        if not module.startswith("kldiv."):
            raise ValueError(f"network {name!r}: only kldiv classes can be rebuilt, got {path}")
        nets[name] = getattr(importlib.import_module(module), cls)(**kwargs)
    return nets


# ----------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------
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


# ----------------------------------------------------------------------------------------
# Batches
# ----------------------------------------------------------------------------------------
class StepBatchSampler(Sampler[list[int]]):
    """Index batches that are a function of (seed, step): exact resumption for free.

    Step ``t`` belongs to epoch ``t // steps_per_epoch``; each epoch is a fresh
    permutation drawn from ``seed + epoch``; the global batch of ``batch_size ×
    world`` indices is cut into per-rank slices, so ``world`` processes see
    together exactly what one process sees with a ``world`` times larger batch.
    """

    def __init__(self, n: int, batch_size: int, *, seed: int, start: int, stop: int, rank: int = 0, world: int = 1):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.start, self.stop, self.rank, self.world = start, stop, rank, world
        self.global_batch = batch_size * world
        if self.global_batch > n:
            raise ValueError(f"a global batch of {self.global_batch} is larger than the data set ({n})")
        self.steps_per_epoch = n // self.global_batch

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __iter__(self) -> Iterator[list[int]]:
        perm, epoch = None, -1
        for t in range(self.start, self.stop):
            e, i = divmod(t, self.steps_per_epoch)
            if e != epoch:
                g = torch.Generator().manual_seed(self.seed * 100_003 + e)
                perm, epoch = torch.randperm(self.n, generator=g), e
            lo = i * self.global_batch + self.rank * self.batch_size
            yield perm[lo : lo + self.batch_size].tolist()


def _images(item) -> Tensor:
    return item[0] if isinstance(item, (tuple, list)) else item


def _collate(items) -> Tensor:
    return torch.stack([_images(it) for it in items])


# ----------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------
def _spectral_norms(net: nn.Module) -> list[tuple[nn.Module, nn.Module]]:
    """The (layer, spectral-norm parametrisation) pairs of ``net`` (torch's ``spectral_norm``)."""
    from torch.nn.utils import parametrize

    out = []
    for m in net.modules():
        if parametrize.is_parametrized(m, "weight"):
            out += [(m, p) for p in m.parametrizations.weight if hasattr(p, "_u") and hasattr(p, "_v")]
    return out


class _Compiled(nn.Module):
    """A network compiled by `compile_network`: the compiled module, with the power iteration
    of its spectral norms run eagerly before each call in training mode."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.compiled = torch.compile(net)
        object.__setattr__(self, "_net", net)  # the same module, not registered twice
        self._norms = _spectral_norms(net)
        for _, p in self._norms:  # no power iteration inside the graph: it would update u and v in place
            p.eval()
            p.train = types.MethodType(lambda self, mode=True: self, p)

    @torch.no_grad()
    def _power_iteration(self) -> None:
        # torch's step (u from v, then v from u), into new tensors: a graph that saved the
        # old ones for its backward pass keeps them unchanged
        for layer, p in self._norms:
            w = layer.parametrizations.weight.original
            w = w.movedim(p.dim, 0).flatten(1) if w.ndim > 1 else w
            u, v = p._u, p._v
            for _ in range(p.n_power_iterations):
                u = torch.nn.functional.normalize(torch.mv(w, v), dim=0, eps=p.eps)
                v = torch.nn.functional.normalize(torch.mv(w.H, u), dim=0, eps=p.eps)
            p._buffers["_u"], p._buffers["_v"] = u, v

    def forward(self, *args, **kwargs):
        if self._net.training:
            self._power_iteration()
        return self.compiled(*args, **kwargs)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._net, name)


def compile_network(net: nn.Module) -> nn.Module:
    """``torch.compile`` a network for kldiv's rounds, spectral normalisation included.

    In training mode torch's spectral norm runs a power-iteration step in
    every forward pass, updating its vectors $u, v$ in place; compiled, that
    update is part of the graph, and a round that runs the network several
    times before back-propagating finds the vectors an earlier pass saved
    modified.  Here the parametrisations stay in eval mode inside the graph
    (they read $u, v$) and the same power-iteration step runs eagerly before
    each call in training mode, into new tensors, so every pass sees the
    vectors it was computed with — the eager semantics, one step per call.
    A round also back-propagates several players through one graph
    (``retain_graph=True``), which compiled backward passes with donated
    buffers refuse, so donated buffers are turned off
    (``torch._functorch.config.donated_buffer``). That setting is global: it
    is also read when a backward graph is compiled, lazily inside
    ``backward()``, and by cached graphs, so it cannot be scoped to these
    networks' calls.

    Returns a module that calls the compiled network; its parameters,
    buffers and other attributes are the network's.
    """
    import torch._functorch.config

    torch._functorch.config.donated_buffer = False
    return _Compiled(net)


class Run:
    """One training run: device, processes, output directory, checkpoints, logs.

    Arguments:
        cfg: the recipe's config (a [`RunConfig`][kldiv.train.RunConfig] subclass).
        name: the recipe's name (default output directory ``runs/<name>``).
    """

    def __init__(self, cfg: RunConfig, *, name: str):
        self.cfg = cfg
        self.name = name
        self.rank, self.world, local = 0, 1, 0
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            import torch.distributed as dist

            local = int(os.environ.get("LOCAL_RANK", "0"))
            cuda = torch.cuda.is_available() and cfg.device in ("auto", "cuda")
            if cuda:
                torch.cuda.set_device(local)
            if not dist.is_initialized():
                dist.init_process_group("nccl" if cuda else "gloo")
            self.rank, self.world = dist.get_rank(), dist.get_world_size()
        if cfg.device != "auto":
            try:
                wanted = torch.device(cfg.device)
            except RuntimeError:
                raise ValueError(f"--device {cfg.device!r} is not a device: use auto, cpu, cuda or cuda:N") from None
            if wanted.type == "cuda" and not torch.cuda.is_available():
                raise ValueError(f"--device {cfg.device} asks for a GPU, and torch sees none here "
                                 "(torch.cuda.is_available() is False): use --device cpu or auto")
            if wanted.type == "cuda" and wanted.index is not None and wanted.index >= torch.cuda.device_count():
                raise ValueError(f"--device {cfg.device}: there are {torch.cuda.device_count()} GPUs here")
        if cfg.device == "auto":
            self.device = torch.device(f"cuda:{local}" if torch.cuda.is_available() else "cpu")
        elif cfg.device == "cuda" and self.world > 1:
            self.device = torch.device(f"cuda:{local}")
        else:
            self.device = torch.device(cfg.device)
        self.out = Path(cfg.out or Path("runs") / name)
        self.checkpoint_path = self.out / "checkpoint.pt"
        self.step = 0
        self.metrics: dict[str, float] = {}
        seed = cfg.seed + 1_000_003 * self.rank  # each rank samples its own noise
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        random.seed(seed)
        self._t0 = time.perf_counter()
        self._bar = None
        self._last_saved: int | None = None
        self._elapsed = 0.0  # training seconds before this process: the clock continues across --resume
        self._last_log = (self._t0, 0)
        self._check_out_dir()
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)

    def _write_config(self) -> None:
        """``config.json``: the resolved configuration, the versions, and the commit when there is one."""
        import subprocess

        import kldiv

        try:
            commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(kldiv.__file__).parent, text=True,
                                    capture_output=True, timeout=10).stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            commit = None
        record = {"recipe": self.name, "config": dataclasses.asdict(self.cfg), "kldiv": kldiv.__version__,
                  "torch": torch.__version__, "commit": commit, "argv": sys.argv}
        tmp = self.out / "config.json.tmp"
        tmp.write_text(json.dumps(record, indent=2) + "\n")
        os.replace(tmp, self.out / "config.json")

    def _check_out_dir(self) -> None:
        """Refuse, before anything is written, an ``--out`` whose checkpoint belongs to another recipe."""
        if not self.checkpoint_path.exists():
            return
        state = load_checkpoint(self.checkpoint_path)  # a corrupt file is named and left as it is
        theirs = state.get("recipe")
        if theirs != self.name:
            raise CheckpointError(
                f"{self.checkpoint_path} is a checkpoint of {theirs!r}, not of {self.name!r}; it was left as "
                "it is. Give this run another --out, or move that checkpoint away."
            )

    @property
    def is_main(self) -> bool:
        """Whether this process writes files (rank 0)."""
        return self.rank == 0

    # --- data and networks --------------------------------------------------------------
    def dataset(self, train: bool = True) -> Dataset:
        """The config's data set: ``--data``, ``--data-root``, ``--download``, ``--image-size``.

        With ``--hold-out C`` the training set lacks class ``C`` and the test
        set is labelled 1 for it (`kldiv.data.anomaly_split`)."""
        from kldiv.data import anomaly_split, load_dataset

        cfg = self.cfg
        size = cfg.image_size or None
        if cfg.hold_out >= 0:
            split = anomaly_split(cfg.data, cfg.data_root, cfg.hold_out, download=cfg.download, image_size=size)
            return split.train if train else split.test
        return load_dataset(cfg.data, cfg.data_root, train=train, download=cfg.download, image_size=size)

    def prepare(self, net: nn.Module) -> nn.Module:
        """Move a network to the device, with ``--channels-last`` put its 4-D
        tensors (convolution weights) in the channels-last memory format, and,
        with ``--compile``, compile it. Build the densities from what this
        returns; keep the original for checkpoints (`attach`).

        Every network is compiled, spectrally normalised ones included (see
        `compile_network`). The memory format is changed in place, parameter
        by parameter, so the original module is channels-last too; its
        ``state_dict`` is the same either way, and a checkpoint written with
        ``--channels-last`` resumes without it and the other way round."""
        net = net.to(self.device)
        if self.cfg.channels_last:
            net = net.to(memory_format=torch.channels_last)  # rank-4 tensors only; the others stay as they are
        if not self.cfg.compile:
            return net
        return compile_network(net)

    def attach(
        self,
        estimator: Estimator,
        networks: Mapping[str, nn.Module],
        optimizers: Mapping[str, torch.optim.Optimizer],
        schedulers: Mapping[str, object] | None = None,
        extra_state: Mapping[str, object] | None = None,
        architecture: Mapping[str, tuple[str, Mapping]] | None = None,
        clip: Mapping[str, float] | None = None,
    ) -> None:
        """Register what the checkpoints hold, wrap the players' networks for
        several processes, and resume if asked.

        Arguments:
            estimator: the compiled game.
            networks: the networks by name (the uncompiled modules).
            optimizers: one optimiser per player, keyed by player name.
            schedulers: learning-rate schedulers stepped once per epoch.
            extra_state: objects with ``state_dict``/``load_state_dict`` (e.g.
                a persistent sampler buffer) to checkpoint too.
            architecture: how to rebuild the networks (see
                [`build_networks`][kldiv.train.build_networks]), stored in checkpoints.
            clip: per player, the norm its gradient is clipped at before its
                update (``torch.nn.utils.clip_grad_norm_``); players not named
                get ``--clip-grad`` (0: no clipping). The norm before clipping
                is logged as ``<player>/grad_norm``.
        """
        self.estimator = estimator
        self.networks = dict(networks)
        self.optimizers = dict(optimizers)
        self.schedulers = dict(schedulers or {})
        self.extra_state = dict(extra_state or {})
        self.architecture = {k: (path, dict(kw)) for k, (path, kw) in (architecture or {}).items()}
        missing = set(estimator.plans) - set(self.optimizers)
        if missing:
            raise ValueError(f"give an optimiser for every player; missing {sorted(missing)}")
        self.clip = {name: float(self.cfg.clip_grad) for name in estimator.plans}
        for name, norm in (clip or {}).items():
            if name not in self.clip:
                raise ValueError(f"clip names no player {name!r}; the players are {sorted(self.clip)}")
            self.clip[name] = float(norm)
        bad = {k: v for k, v in self.clip.items() if not (math.isfinite(v) and v >= 0)}
        if bad:
            raise ValueError(f"gradient clipping norms must be finite and >= 0 (0: off), got {bad}")
        self.ema: dict[str, nn.Module] = {}
        if self.cfg.ema:
            from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

            avg = get_ema_multi_avg_fn(self.cfg.ema)
            # parameters are averaged; buffers are copied from the live network (batch-norm statistics,
            # and spectral norm's power-iteration vectors, whose average is no singular vector at all)
            self.ema = {k: AveragedModel(m, multi_avg_fn=avg, use_buffers=False) for k, m in self.networks.items()}
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            trained = {id(m) for p in estimator.game.players for m in p.networks}
            wrappers = {}
            for m in estimator._networks.values():
                if id(m) in trained and any(q.requires_grad for q in m.parameters()):
                    ids = [self.device.index] if self.device.type == "cuda" else None
                    wrappers[m] = DDP(m, device_ids=ids)
            estimator.distribute(wrappers)
        if self.cfg.resume:
            self._resume()
        if self.is_main:  # after a resume has been accepted: a refused one writes nothing
            self._write_config()

    def _state(self) -> dict:
        return {
            "networks": {k: m.state_dict() for k, m in self.networks.items()},
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "schedulers": {k: s.state_dict() for k, s in self.schedulers.items()},
            "extra": {k: s.state_dict() for k, s in self.extra_state.items()},
            "config": dataclasses.asdict(self.cfg),
            "recipe": self.name,
            "architecture": {k: [path, kw] for k, (path, kw) in self.architecture.items()},
            "step": self.step,
            "elapsed": self._clock(),
            "metrics": dict(self.metrics),
            "rng": _rng_state(),
            **({"ema": {k: a.module.state_dict() for k, a in self.ema.items()},
                "ema_updates": {k: int(a.n_averaged) for k, a in self.ema.items()}} if self.ema else {}),
        }

    def save(self) -> None:
        """Write the checkpoint (rank 0 only), atomically; with ``--keep N`` also
        keep it as ``checkpoint-STEP.pt`` and remove the numbered ones older than the last N."""
        if not self.is_main:
            return
        save_checkpoint(self.checkpoint_path, self._state())
        if self.cfg.keep:
            numbered = self.out / f"checkpoint-{self.step:08d}.pt"
            numbered.unlink(missing_ok=True)
            try:
                os.link(self.checkpoint_path, numbered)  # the same bytes, no copy
            except OSError:
                import shutil

                shutil.copy2(self.checkpoint_path, numbered)
            for old in sorted(self.out.glob("checkpoint-[0-9]*.pt"))[: -self.cfg.keep]:
                old.unlink(missing_ok=True)

    def _resume(self) -> None:
        state = load_checkpoint(self.checkpoint_path, map_location=self.device)
        for k, m in self.networks.items():
            m.load_state_dict(state["networks"][k])
        for k, o in self.optimizers.items():
            # The optimiser's moments come back; its learning rates are the command
            # line's (times any decay accrued), so a run can resume with a lower rate.
            fresh = [g["lr"] for g in o.param_groups]
            o.load_state_dict(state["optimizers"][k])
            _match_layouts(o)  # moments saved in the other memory format take this run's
            for g, lr in zip(o.param_groups, fresh):
                decayed = g["lr"] / g["initial_lr"] if g.get("initial_lr") else 1.0
                g["initial_lr"], g["lr"] = lr, lr * decayed
        for k, s in self.schedulers.items():
            s.load_state_dict(state["schedulers"][k])
        for k, s in self.extra_state.items():
            s.load_state_dict(state["extra"][k])
        if self.ema:
            if "ema" not in state:
                raise ValueError(f"{self.checkpoint_path} was written without --ema: resume without it, "
                                 "or start a new run with it")
            for k, a in self.ema.items():
                a.module.load_state_dict(state["ema"][k])
                a.n_averaged.fill_(state["ema_updates"][k])
        self.step = int(state["step"])
        self.metrics = dict(state["metrics"])
        self._elapsed = float(state.get("elapsed", 0.0))
        self._t0 = time.perf_counter()
        self._last_log = (self._t0, self.step)
        if self.world == 1:
            _set_rng_state({k: (v.cpu() if isinstance(v, Tensor) else v) for k, v in state["rng"].items()})
        else:  # the checkpoint holds rank 0's generators; move every rank on by the step
            seed = self.cfg.seed + 1_000_003 * self.rank + 7919 * self.step
            torch.manual_seed(seed)

    # --- the loop -----------------------------------------------------------------------
    def batches(self, dataset: Dataset | Tensor) -> Iterator[Tensor]:
        """The remaining batches of the run (from the resumed step to ``--steps``),
        on the device; ``self.step`` is the index of the batch being yielded."""
        n = dataset.shape[0] if isinstance(dataset, Tensor) else len(dataset)
        sampler = StepBatchSampler(
            n, self.cfg.batch_size, seed=self.cfg.seed, start=self.step, stop=self.cfg.steps,
            rank=self.rank, world=self.world,
        )
        self.steps_per_epoch = sampler.steps_per_epoch
        if isinstance(dataset, Tensor):
            source = (dataset[idx] for idx in sampler)
        else:
            # The loader's own generator: creating its iterator must not draw from the
            # global one, or a resumed run would sample different noise.
            loader_rng = torch.Generator().manual_seed(self.cfg.seed + self.step)
            source = iter(DataLoader(dataset, batch_sampler=sampler, num_workers=self.cfg.num_workers,
                                     collate_fn=_collate, pin_memory=self.device.type == "cuda",
                                     generator=loader_rng))
        if self.is_main:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.cfg.steps, initial=self.step, desc=self.name, dynamic_ncols=True,
                             disable=not sys.stderr.isatty() and os.environ.get("KLDIV_PROGRESS") != "1")
        self._loop_start = (time.perf_counter(), self.step)
        for x in source:
            yield self.place(x)

    def place(self, x: Tensor) -> Tensor:
        """A batch as `batches` yields it: on the device and, with ``--channels-last``,
        an image batch ``(n, C, H, W)`` in the channels-last memory format."""
        fmt = torch.channels_last if self.cfg.channels_last and x.dim() == 4 else torch.preserve_format
        return x.to(self.device, non_blocking=True, memory_format=fmt)

    def autocast(self):
        """The ``--amp`` autocast context (a no-op without ``--amp bf16``)."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.amp == "bf16")

    def update(self, r: Round, player: str) -> float | None:
        """Back-propagate ``player``'s loss in round ``r``, check it, clip its gradient
        (``clip``), and step its optimiser (one line of a sequential schedule such as
        the papers' Algorithm 1). Returns the player's value when the round computed
        it (``values=True``), else ``None``.

        Raises:
            NonFiniteError: the loss or a gradient is NaN/inf; nothing is
                updated and the last checkpoint stays as it was.
        """
        self._backward(r, player)
        self.optimizers[player].step()
        return self._record(r, player)

    def update_all(self, r: Round) -> dict[str, float | None]:
        """Every player's gradient from the same parameters, then every optimiser
        steps (a simultaneous schedule: one shared evaluation per round).

        A network trained by two players is stepped by each player's optimiser
        with that player's gradient alone (as in a sequential schedule, where
        the second player's gradient is taken after the first one's update):
        the gradients are kept apart, never summed."""
        names = list(self.estimator.plans)
        grads: dict[str, list] = {}
        for name in names:
            self._backward(r, name)
            params = self.estimator.parameters(name)
            grads[name] = [q.grad for q in params]
            for q in params:
                q.grad = None
        for name in names:
            for q, g in zip(self.estimator.parameters(name), grads[name]):
                q.grad = g
            self.optimizers[name].step()
        return {name: self._record(r, name) for name in names}

    def _backward(self, r: Round, player: str) -> None:
        self.optimizers[player].zero_grad(set_to_none=True)
        try:
            with self.autocast():
                loss = r.backward(player)
        except NonFiniteError as err:  # a network output caught by the first-round checks
            raise NonFiniteError(f"{err}\n{self._stop_note(player)}") from err
        grads = [p.grad for p in self.estimator.parameters(player) if p.grad is not None]
        loss_ok = torch.isfinite(loss.detach()).all()
        ok = loss_ok & torch.stack([torch.isfinite(g).all() for g in grads]).all() if grads else loss_ok
        if not bool(ok):
            what = "loss" if not bool(loss_ok) else "gradient"
            raise NonFiniteError(f"the {what} is not finite.\n{self._stop_note(player)}")
        bound = self.cfg.max_loss
        if bound > 0 and float(loss.detach().abs().max()) > bound:
            raise NonFiniteError(
                f"the loss is {float(loss.detach().abs().max()):.3g} in magnitude, beyond --max-loss {bound:g}: "
                f"the run is diverging.\n{self._stop_note(player)}"
            )
        max_norm = self.clip.get(player, 0.0)
        if max_norm > 0 and grads:
            norm = torch.nn.utils.clip_grad_norm_(self.estimator.parameters(player), max_norm)
            if self.logging:
                self.metrics[f"{player}/grad_norm"] = float(norm)

    def _stop_note(self, player: str) -> str:
        where = f"player {player!r} in step {self.step + 1} of {self.cfg.steps}: the run stops before updating. "
        if self._last_saved is None and not self.cfg.resume:
            return where + (f"No checkpoint was written yet (the first is due after step "
                            f"{min(self.cfg.checkpoint_every, self.cfg.steps)}); start again, perhaps with a "
                            "lower learning rate or --amp none.")
        last = (f"{self.checkpoint_path} (after step {self._last_saved})" if self._last_saved is not None
                else f"{self.checkpoint_path} as it was")
        return where + (f"The last good checkpoint is {last}; resume from it with --resume, perhaps with a "
                        "lower learning rate or --amp none.")

    @property
    def logging(self) -> bool:
        """Whether the step in progress writes metrics (every ``--log-every`` steps and
        the last): open its round with ``step.round(x, values=run.logging)``, so the
        players' full values are computed on those steps only."""
        return (self.step + 1) % self.cfg.log_every == 0 or self.step + 1 == self.cfg.steps

    def _record(self, r: Round, player: str) -> float | None:
        if not r.values:  # the value is up to the value-only terms: nothing worth logging
            return None
        value = float(r.value(player))
        self.metrics[player] = value
        for label, v in r.terms(player).items():
            self.metrics[f"{player}/{label}"] = float(v)
        for i, group in enumerate(self.optimizers[player].param_groups):
            self.metrics[f"{player}/lr" + (f"{i}" if i else "")] = float(group["lr"])
        return value

    def end_step(self, **extra: float) -> None:
        """Close the step: log, checkpoint and step the per-epoch schedulers on schedule."""
        self.metrics.update({k: float(v) for k, v in extra.items()})
        self.step += 1
        for k, a in self.ema.items():
            a.update_parameters(self.networks[k])
            with torch.no_grad():
                for mine, live in zip(a.module.buffers(), self.networks[k].buffers()):
                    mine.copy_(live)
        if self.schedulers and self.step % self.steps_per_epoch == 0:
            for s in self.schedulers.values():
                s.step()
        cfg = self.cfg
        if self.is_main and (self.step % cfg.log_every == 0 or self.step == cfg.steps):
            self.log(self.metrics)
            if self._bar is None or self._bar.disable:  # no terminal: a line a log file can hold
                print(self._progress_line(), flush=True)
        if self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps:
            self.save()
            self._last_saved = self.step
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix({k: f"{v:.3g}" for k, v in list(self.metrics.items())[:4]}, refresh=False)
            if self.step == cfg.steps:
                self._bar.close()

    def _clock(self) -> float:
        """Seconds of training so far, across resumes."""
        return self._elapsed + time.perf_counter() - self._t0

    def _progress_line(self) -> str:
        """``step / steps``, steps per second, time left and each player's value."""
        t0, s0 = getattr(self, "_loop_start", (self._t0, 0))
        rate = (self.step - s0) / max(time.perf_counter() - t0, 1e-9)
        left = (self.cfg.steps - self.step) / rate if rate > 0 else math.inf
        values = " ".join(f"{k} {v:.4g}" for k, v in self.metrics.items()
                          if getattr(self, "estimator", None) is not None and k in self.estimator.plans)
        eta = f"{int(left // 60)}:{int(left % 60):02d}" if math.isfinite(left) else "?"
        return f"{self.name} {self.step}/{self.cfg.steps} | {rate:.2f} steps/s | {eta} left" + (
            f" | {values}" if values else "")

    def should_sample(self) -> bool:
        """Whether this step (already closed by `end_step`) writes sample grids."""
        return self.is_main and (self.step % self.cfg.sample_every == 0 or self.step == self.cfg.steps)

    def log(self, metrics: Mapping[str, float]) -> None:
        """Append one JSON line ``{"step", "time", **metrics}`` to ``metrics.jsonl``."""
        if not self.is_main:
            return
        now = time.perf_counter()
        (then, step), self._last_log = self._last_log, (now, self.step)
        row = {"step": self.step, "time": round(self._clock(), 3)}
        if self.step > step:
            row["step_time"] = round((now - then) / (self.step - step), 6)
        row.update({k: (v if math.isfinite(v) else str(v)) for k, v in metrics.items()})
        with open(self.out / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps(row) + "\n")
        if self.cfg.tensorboard:
            if getattr(self, "_tb", None) is None:
                try:
                    from torch.utils.tensorboard import SummaryWriter
                except ImportError as err:
                    raise ImportError("--tensorboard needs the tensorboard package: "
                                      "pip install 'kldiv[tensorboard]'") from err
                self._tb = SummaryWriter(str(self.out / "tensorboard"))
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)):
                    self._tb.add_scalar(k, v, self.step)
            self._tb.flush()

    def save_images(self, name: str, images: Tensor, nrow: int = 10) -> Path | None:
        """Save images in [-1, 1] as a PNG grid ``<out>/<name>.png`` (rank 0)."""
        if not self.is_main:
            return None
        from torchvision.utils import save_image

        path = self.out / f"{name}.png"
        save_image(images.detach().float().cpu().clamp(-1, 1) * 0.5 + 0.5, path, nrow=nrow)
        return path

    def snapshot(self, generator: nn.Module, z: Tensor, encoder: nn.Module | None = None,
                 x: Tensor | None = None) -> None:
        """Write ``samples.png`` (``generator(z)``) and, with an encoder, ``reconstructions.png``
        (data rows above their reconstructions ``g(mu_q(x))``), networks in eval mode."""
        if not self.is_main:
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

    def close(self) -> None:
        """Say what the run wrote, and tear down the process group of a distributed run."""
        if getattr(self, "_tb", None) is not None:
            self._tb.close()
            self._tb = None
        if self.is_main and self.out.exists():
            written = sorted(f.name for f in self.out.iterdir() if f.is_file() and not f.name.endswith(".tmp"))
            print(f"{self.name}: {self.step} steps; wrote {', '.join(written)} in {self.out}. "
                  f"Evaluate it with: python -m kldiv.evaluate {self.out}", flush=True)
        if self.world > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()

