"""The options of a run and how they are read: `option` (a dataclass field with a
command-line help text), `RunConfig` (the options every recipe shares),
`parse_config` (the command line, a TOML or JSON file of options, and a data
set's presets) and `build_networks`, which rebuilds the networks a checkpoint
names."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import typing
from collections.abc import Mapping
from pathlib import Path

from torch import nn

from kldiv.train.compile import MODES as COMPILE_MODES


def option(default, help: str, *, at_least=None, above=None, at_most=None, below=None, **kw):
    """A dataclass field with a command-line help text, and the range its value must lie in.

    ``at_least``/``above`` and ``at_most``/``below`` bound the value (closed and
    open ends); a config built with a value outside them, or a float that is not
    finite, is refused with an error that names the flag (`RunConfig`). Other
    keywords go to ``argparse`` (``choices``).

    Examples:
        >>> import dataclasses
        >>> @dataclasses.dataclass
        ... class C(RunConfig):
        ...     sigma: float = option(0.3, "observation noise", above=0)
        >>> C(sigma=-1.0)
        Traceback (most recent call last):
        ...
        ValueError: --sigma must be a finite number > 0, got -1.0
    """
    if at_least is not None and above is not None or at_most is not None and below is not None:
        raise TypeError("give at most one lower bound (at_least or above) and one upper bound (at_most or below)")
    bounds = (at_least, above, at_most, below)
    meta = {"help": help, **kw}
    if any(b is not None for b in bounds):
        meta["bounds"] = bounds
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: default, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _bounds_text(bounds) -> str:
    at_least, above, at_most, below = bounds
    low = at_least if at_least is not None else above
    high = at_most if at_most is not None else below
    if low is not None and high is not None:
        return f"in {'[' if at_least is not None else '('}{low}, {high}{']' if at_most is not None else ')'}"
    if low is not None:
        return f"{'>=' if at_least is not None else '>'} {low}"
    return f"{'<=' if at_most is not None else '<'} {high}"


def _check_bounds(cfg) -> None:
    """Refuse a field's value outside the bounds its `option` declares, naming the flag."""
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        bounds = f.metadata.get("bounds")
        if bounds is None:
            continue
        value, flag, integer = getattr(cfg, f.name), "--" + f.name.replace("_", "-"), hints.get(f.name) is int
        kind = "an integer" if integer else "a finite number"
        number = not isinstance(value, bool) and (isinstance(value, int) if integer else isinstance(value, (int, float)))
        at_least, above, at_most, below = bounds
        ok = number and math.isfinite(value) and (
            (at_least is None or value >= at_least) and (above is None or value > above)
            and (at_most is None or value <= at_most) and (below is None or value < below))
        if not ok:
            raise ValueError(f"{flag} must be {kind} {_bounds_text(bounds)}, got {value!r}")


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
    amp: str = option("none", "mixed precision: none, bf16, or fp16 (float16 autocast with a loss scale per "
                      "player, torch.amp.GradScaler: a step whose gradient overflows is skipped and the "
                      "scale halved)", choices=("none", "bf16", "fp16"))
    tf32: bool = option(True, "on CUDA, let float32 matrix products and convolutions use TF32 tensor cores "
                        "(torch.set_float32_matmul_precision('high'), cuDNN's allow_tf32)")
    compile: bool = option(False, "compile the networks with torch.compile")
    compile_mode: str = option("default", "torch.compile's mode with --compile (reduce-overhead: CUDA graphs, "
                               "on a GPU)", choices=COMPILE_MODES)
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
        _check_bounds(self)


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
        bounds = meta.pop("bounds", None)
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        # the value the run will use: the default, or a data set's preset
        shown = f"default: {default}" + "".join(
            f"; with --data {data}: {values[f.name]}" for data, values in (presets or {}).items() if f.name in values
        )
        if bounds is not None:
            shown += f"; {_bounds_text(bounds)}"
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
