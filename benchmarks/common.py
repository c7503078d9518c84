"""What the benchmarks share: the models they train, each by its own recipe (``recipes/*.py``)."""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA_ROOT = REPO.parent / "shared" / "data"

# model name -> (recipe, its title)
MODELS = {
    "vae": ("vae", "VAE"),
    "latent-ebm": ("latent_ebm", "latent EBM (2020)"),
    "triangle": ("triangle", "triangle (2019)"),
    "bidvl": ("bidvl", "BiDVL (2022)"),
    "mcmc-teaching": ("mcmc_teaching", "MCMC teaching (2021)"),
    "latent-prior-ebm": ("latent_prior_ebm", "latent-space EBM prior (Pang 2020)"),
}


def load_recipe(name: str):
    """A recipe script as a module (its ``Config``, ``networks``, ``game``, ``optimizers``, ``main``)."""
    path = REPO / "recipes" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"kldiv_recipe_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def at_least(minimum: int, maximum: int | None = None):
    """An argparse ``type``: an integer of at least ``minimum`` (and at most ``maximum``), refused by
    argparse with the flag named, before anything is trained or written."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            bound = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {value}")
        return value

    parse.__name__ = "integer"
    return parse


def check_recipe_args(ap: argparse.ArgumentParser, model: str, argv: list[str]) -> None:
    """Parse ``model``'s recipe command line as its recipe would, before anything is trained: a flag
    the recipe refuses (``--recipe-args``, ``--mcmc-args``) is refused by ``ap``, naming the recipe."""
    from kldiv.train import parse_config

    name = MODELS[model][0]
    recipe = load_recipe(name)
    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said):
            parse_config(recipe.Config, argv, recipe.PRESETS)
    except SystemExit:
        lines = said.getvalue().strip().splitlines()
        why = lines[-1].split("error: ", 1)[-1] if lines else "refused"
        ap.error(f"recipes/{name}.py refuses its options ({model}): {why}")
