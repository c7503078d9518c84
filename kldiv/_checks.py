"""Argument checks shared by the public constructors: a bad value is refused by its name."""

from __future__ import annotations

import math
import numbers

import torch
from torch import nn

__all__: list[str] = []


def positive_number(name: str, value: object, *, optional: bool = False) -> float | None:
    """``value`` as a float if it is a finite real number > 0 (``None`` too when ``optional``)."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a finite number > 0{' or None' if optional else ''}, got {value!r}")
    if not (math.isfinite(float(value)) and float(value) > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def count(name: str, value: object, *, minimum: int = 0) -> int:
    """``value`` as an int if it is an integer (not a bool) of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if int(value) < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def network(name: str, value: object, *, optional: bool = False):
    """``value`` if it is an ``nn.Module`` (``None`` too when ``optional``), else a TypeError naming it."""
    if (value is None and optional) or isinstance(value, nn.Module):
        return value
    raise TypeError(f"{name} must be an nn.Module{' or None' if optional else ''}, got {type(value).__name__}")


def flag(name: str, value: object) -> bool:
    """``value`` if it is ``True`` or ``False``."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


def _here(wanted: torch.device, shown: str, fix: str = "") -> torch.device:
    """``wanted`` if it is the CPU or a GPU torch sees, else a ValueError that names it as ``shown``."""
    if wanted.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{shown} asks for a GPU, and torch sees none here (torch.cuda.is_available() is False){fix}")
    if wanted.type == "cuda" and wanted.index is not None and wanted.index >= torch.cuda.device_count():
        raise ValueError(f"{shown}: there are {torch.cuda.device_count()} GPUs here")
    return wanted


def torch_device(name: str, value: object) -> torch.device:
    """``value`` (a ``torch.device`` or its name) as a device that is here, else an error naming
    the argument ``name``: a name that is no device, or a GPU torch does not see."""
    if isinstance(value, torch.device):
        wanted = value
    elif isinstance(value, str):
        try:
            wanted = torch.device(value)
        except (RuntimeError, TypeError):
            raise ValueError(f"{name}={value!r} is not a device: use 'cpu', 'cuda' or 'cuda:N'") from None
    else:
        raise TypeError(f"{name} must be a torch.device or its name, got {type(value).__name__}")
    return _here(wanted, f"{name}={str(wanted)!r}")


def device(value: str, *, local: int | None = None) -> torch.device:
    """The device that ``--device value`` names, checked: ``auto`` is this process's GPU when torch
    sees one, else the CPU; ``cuda`` under several processes (``local``, the process's GPU index)
    is that process's GPU. A name that is no device, or a GPU that is not there, is a ValueError
    naming the flag."""
    if value == "auto":
        return torch.device(f"cuda:{local or 0}" if torch.cuda.is_available() else "cpu")
    try:
        wanted = torch.device(value)
    except (RuntimeError, TypeError):
        raise ValueError(f"--device {value!r} is not a device: use auto, cpu, cuda or cuda:N") from None
    _here(wanted, f"--device {value}", ": use --device cpu or auto")
    if wanted.type == "cuda" and wanted.index is None and local is not None:
        return torch.device(f"cuda:{local}")
    return wanted
