"""A catalogue of bad inputs: each gets a kldiv error that says what to do, and nothing on disk is lost.

Categories: expressions, games, samplers, the building blocks used on their
own (networks, data, plots, the Langevin kernel), the first step (batches,
latent sizes, networks), recipe command lines, checkpoints, and the
divergence guard. Each
case asserts the error class, the words that tell the user what to do, and,
where files are involved, the files before and after. A hypothesis test
throws random malformed batches at a compiled step.
"""

from __future__ import annotations

import math
import os
import pickle
import re

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kldiv import (KL, DataDensity, DecoupledEBLVM, EnergyPrior, Estimator, Factor, Game, GeneratorDensity, Importance,
                   LatentEBM, MarginalEBM, S)
from kldiv import errors as kerr
from kldiv.errors import CheckpointError, CompileError, InputError, NonFiniteError, ShapeError
from kldiv.nn import EnergyXZ, GaussianEncoder, Generator
from kldiv.samplers import NUTS, Langevin, PersistentStart
from kldiv.samplers.kernel import gaussian_reference
from kldiv.train import load_checkpoint, save_checkpoint
from recipe_runner import load_recipe

TINY = ["--image-size", "8", "--latent-dim", "4", "--width", "4", "--batch-size", "16", "--log-every", "1"]
SHAPE = (1, 8, 8)


def densities(enc=4, dec=4, latent=4, energy=4):
    q = DataDensity(GaussianEncoder(SHAPE, enc, width=4))
    p = GeneratorDensity(Generator(dec, SHAPE, width=4), latent_shape=latent, sigma=1.0)
    pi = LatentEBM(EnergyXZ(SHAPE, energy, width=4))
    return q, p, pi


def triangle(**sizes):
    q, p, pi = densities(**sizes)
    return (KL(q, p) + KL(p, pi) - KL(q, pi)).minimize(p, q).maximize(pi).compile()


def files(folder):
    """Every file under ``folder`` with its bytes."""
    return {f.relative_to(folder): f.read_bytes() for f in sorted(folder.rglob("*")) if f.is_file()}


# ----------------------------------------------------------------------------------------
# Expressions: finite real coefficients, valid weights
# ----------------------------------------------------------------------------------------
def _kl():
    q, p, _ = densities()
    return KL(q, p)


EXPRESSIONS = {
    "nan coefficient": (lambda: math.nan * _kl(), "must be finite real numbers"),
    "infinite coefficient": (lambda: _kl() * math.inf, "must be finite real numbers"),
    "division by zero": (lambda: _kl() / 0, "cannot divide"),
    "coefficients that overflow": (lambda: (lambda kl: 1e308 * kl + 1e308 * kl)(_kl()), "sum to inf"),
    "multiplied by True": (lambda: _kl() * True, "not True or False"),
    "divided by False": (lambda: _kl() / False, "not True or False"),
    "negative weight": (lambda: KL(*densities()[:2], weights={"z": -1.0}), "weight of 'z' must be a finite positive"),
    "nan weight": (lambda: KL(*densities()[:2], weights={"z": math.nan}), "weight of 'z' must be a finite positive"),
}


# ----------------------------------------------------------------------------------------
# Densities: refused when built, with the argument named
# ----------------------------------------------------------------------------------------
def _lin():
    return torch.nn.Linear(2, 3)


DENSITIES = {
    "infinite sigma": (lambda: GeneratorDensity(_lin(), latent_shape=2, sigma=math.inf), ValueError,
                       "sigma, the observation noise, must be positive and finite"),
    "nan sigma": (lambda: GeneratorDensity(_lin(), latent_shape=2, sigma=math.nan), ValueError,
                  "must be positive and finite"),
    "zero sigma": (lambda: GeneratorDensity(_lin(), latent_shape=2, sigma=0.0), ValueError, "positive"),
    "sigma a word": (lambda: GeneratorDensity(_lin(), latent_shape=2, sigma="0.5"), TypeError, "must be a number"),
    "empty latent": (lambda: GeneratorDensity(_lin(), latent_shape=0, sigma=1.0), ValueError,
                     "latent_shape must have sizes of at least 1"),
    "negative latent": (lambda: GeneratorDensity(_lin(), latent_shape=(2, -1), sigma=1.0), ValueError,
                        "at least 1"),
    "fractional latent": (lambda: GeneratorDensity(_lin(), latent_shape=2.5, sigma=1.0), TypeError,
                          "latent_shape must be a positive int or a tuple"),
    "latent as text": (lambda: GeneratorDensity(_lin(), latent_shape="12", sigma=1.0), TypeError,
                       "latent_shape must be a positive int or a tuple"),
    "energy prior of no size": (lambda: EnergyPrior(_lin(), 0), ValueError, "at least 1"),
    "decoder a function": (lambda: GeneratorDensity(lambda z: z, latent_shape=2, sigma=1.0), TypeError,
                           "decoder must be an nn.Module"),
    "encoder a function": (lambda: DataDensity(lambda x: x), TypeError, "encoder must be an nn.Module"),
    "name a number": (lambda: DataDensity(_lin(), name=3), TypeError, "name is a non-empty string"),
    "factor of no variable": (lambda: Factor("", _lin()), TypeError, "a factor's variable is a non-empty name"),
    "factor its own parent": (lambda: Factor("x", _lin(), parents="x"), ValueError, "cannot be its own parent"),
    "factor of two sources": (lambda: Factor("x", _lin(), input="data"), ValueError, "exactly one of network"),
    "factor parents not names": (lambda: Factor("x", _lin(), parents=(1,)), TypeError, "are variable names"),
    "density factor over two variables": (lambda: Factor("z", density=LatentEBM(_lin())), ValueError,
                                          "must be over 'z' alone"),
    "zero reference": (lambda: MarginalEBM(_lin(), reference=0.0), ValueError, "reference must be a finite number > 0"),
    "infinite reference": (lambda: MarginalEBM(_lin(), reference=math.inf), ValueError, "reference must be a finite"),
    "reference as text": (lambda: LatentEBM(_lin(), reference="0.016"), TypeError, "reference must be a finite"),
    "energy a function": (lambda: MarginalEBM(lambda x: x.sum(1)), TypeError,
                          "the energy of MarginalEBM must be an nn.Module"),
    "sampler a number": (lambda: LatentEBM(_lin(), sampler=3), TypeError,
                         "the sampler of LatentEBM must be a kldiv.samplers.Sampler"),
    "prior sampler a function": (lambda: EnergyPrior(_lin(), 2, sampler=lambda n: n), TypeError,
                                 "the sampler of EnergyPrior must be a kldiv.samplers.Sampler"),
    "with_sampler of nothing": (lambda: MarginalEBM(_lin()).with_sampler(None), TypeError,
                                "must be a kldiv.samplers.Sampler (e.g. Langevin(steps, step_size)), got None"),
    "decoupled without encoder": (lambda: DecoupledEBLVM(_lin(), None), TypeError,
                                  "the encoder of DecoupledEBLVM must be an nn.Module"),
    "reparameterized a word": (lambda: GeneratorDensity(_lin(), latent_shape=2, sigma=1.0, reparameterized="no"),
                               TypeError, "reparameterized must be True or False, got 'no'"),
    "reparameterized a number": (lambda: DataDensity(_lin(), reparameterized=0), TypeError,
                                 "reparameterized must be True or False, got 0"),
    "factor reparameterized a number": (lambda: Factor("z", _lin(), parents="x", reparameterized=1), TypeError,
                                        "reparameterized, of the factor of 'z', must be True or False"),
    "an input of no name": (lambda: DataDensity(_lin(), x=""), TypeError,
                            "x must be an input name or a Density, got ''"),
    "a factor's input of no name": (lambda: Factor("x", input=""), TypeError,
                                    "is a step input's name or a density, got ''"),
    "a proposal of no name": (lambda: Importance(proposal=""), TypeError,
                              "proposal must be an input name or a Density, got ''"),
}


# ----------------------------------------------------------------------------------------
# Samplers: refused when built, with the argument named
# ----------------------------------------------------------------------------------------
SAMPLERS = {
    "fractional steps": (dict(steps=2.5, step_size=0.1), TypeError, "steps must be an integer >= 0, got 2.5"),
    "steps a bool": (dict(steps=True, step_size=0.1), TypeError, "steps must be an integer"),
    "steps as text": (dict(steps="10", step_size=0.1), TypeError, "steps must be an integer"),
    "negative steps": (dict(steps=-1, step_size=0.1), ValueError, "steps must be an integer >= 0, got -1"),
    "step size as text": (dict(steps=3, step_size="0.1"), TypeError, "step_size must be a finite number > 0"),
    "infinite step size": (dict(steps=3, step_size=math.inf), ValueError, "step_size must be a finite number > 0"),
    "nan step size": (dict(steps=3, step_size=math.nan), ValueError, "step_size must be a finite number > 0"),
    "no step size": (dict(steps=3, step_size=None), TypeError, "step_size must be a finite number > 0"),
    "negative step size of z": (dict(steps=3, step_size={"x": 0.1, "z": -1.0}), ValueError,
                                "the step size of 'z' must be a finite number > 0"),
    "empty step sizes": (dict(steps=3, step_size={}), ValueError, "non-empty mapping"),
    "sigma_ref as text": (dict(steps=3, step_size=0.1, sigma_ref="s"), TypeError, "sigma_ref must be a finite"),
    "infinite sigma_ref": (dict(steps=3, step_size=0.1, sigma_ref=math.inf), ValueError, "sigma_ref must be a finite"),
    "infinite clip": (dict(steps=3, step_size=0.1, clip_grad=math.inf), ValueError, "clip_grad must be a finite"),
    "noise a word": (dict(steps=3, step_size=0.1, noise="yes"), TypeError, "noise must be True or False"),
    "start shape of no size": (dict(steps=3, step_size=0.1, init="normal", shape={"z": (0,)}), ValueError,
                               "the shape of 'z' must have sizes of at least 1"),
    "start shape a word": (dict(steps=3, step_size=0.1, init="normal", shape="12"), TypeError,
                           "shape must be an int, a tuple, or a mapping"),
    "generator a seed": (dict(steps=3, step_size=0.1, generator=0), TypeError, "generator must be a torch.Generator"),
    "callback not callable": (dict(steps=3, step_size=0.1, callback=1), TypeError, "callback must be callable"),
}


OTHER_SAMPLERS = {
    "negative warmup": (lambda: NUTS(warmup=-1), ValueError, "warmup must be an integer >= 0, got -1"),
    "fractional warmup": (lambda: NUTS(warmup=2.5), TypeError, "warmup must be an integer"),
    "nan NUTS step": (lambda: NUTS(step_size=math.nan), ValueError, "step_size must be a finite number > 0"),
    "acceptance above one": (lambda: NUTS(target_accept=1.5), ValueError, "target_accept must be a probability"),
    "tree of no depth": (lambda: NUTS(max_tree_depth=0), ValueError, "max_tree_depth must be an integer >= 1"),
    "HMC of no steps": (lambda: NUTS(hmc_steps=0), ValueError, "hmc_steps must be an integer >= 1"),
    "mass a word": (lambda: NUTS(full_mass="no"), TypeError, "full_mass must be True or False"),
    "fractional buffer": (lambda: PersistentStart(capacity=2.5), TypeError, "capacity must be an integer >= 1"),
    "infinite reference": (lambda: gaussian_reference(lambda v: v.sum(1), math.inf), ValueError,
                           "sigma must be a finite number > 0, got inf"),
    "reference a word": (lambda: gaussian_reference(lambda v: v.sum(1), "0.1"), TypeError,
                         "sigma must be a finite number > 0"),
    "buffer a bool": (lambda: PersistentStart(capacity=True), TypeError, "capacity must be an integer"),
    "reinit as text": (lambda: PersistentStart(reinit="0.1"), ValueError, "reinit must be a probability"),
    "buffer noise a number": (lambda: PersistentStart(noise=3), TypeError, "noise must be 'uniform', 'normal'"),
}


def _chain(position=None, log_density=None, steps=3, step_size=0.1, **kw):
    from kldiv.samplers.kernel import langevin_chain

    position = torch.zeros(4, 2) if position is None else position
    return langevin_chain(position, log_density or (lambda v: -v.square().sum(1) / 2), steps, step_size, **kw)


def _grid(**kw):
    from kldiv.plotting import save_image_grid

    return save_image_grid(kw.pop("images", torch.zeros(4, 1, 8, 8)), kw.pop("path", "unused.png"), **kw)


def _nn(name):
    import kldiv.nn

    return getattr(kldiv.nn, name)


def _data(name):
    import kldiv.data

    return getattr(kldiv.data, name)


BUILDING_BLOCKS = {  # the networks, data, plots and the Langevin kernel, used without a game
    "generator of no latent": (lambda: Generator(0, SHAPE), ValueError, "latent_dim must be an integer >= 1, got 0"),
    "generator of no width": (lambda: Generator(4, SHAPE, width=0), ValueError, "width must be an integer >= 1"),
    "negative init std": (lambda: Generator(4, SHAPE, init_std=-1.0), ValueError, "init_std must be a finite number > 0"),
    "image of no channels": (lambda: GaussianEncoder((0, 8, 8), 4), ValueError, "image_shape must have sizes of at least 1"),
    "image side a float": (lambda: GaussianEncoder((1, 8.0, 8), 4), TypeError, "image_shape must be an int or a sequence of ints"),
    "scale floor of zero": (lambda: GaussianEncoder(SHAPE, 4, min_scale=0.0), ValueError, "min_scale must be a finite number > 0"),
    "negative latent energy": (lambda: EnergyXZ(SHAPE, -1), ValueError, "latent_dim must be an integer >= 1, got -1"),
    "descriptor of no outputs": (lambda: _nn("Descriptor")((1, 28, 28), outputs=0), ValueError, "outputs must be an integer >= 1"),
    "hidden sizes a number": (lambda: _nn("MLPGenerator")(2, 4, hidden=8), TypeError, "hidden must be a sequence of layer sizes"),
    "negative hidden size": (lambda: _nn("MLPEncoder")(4, 2, hidden=(8, -3)), ValueError, "hidden[1] must be an integer >= 1"),
    "input of no size": (lambda: _nn("MLPEnergy")(0), ValueError, "in_shape must have sizes of at least 1"),
    "energy of no latent": (lambda: _nn("MLPEnergy")(4, 0), ValueError, "latent_dim must be an integer >= 1, got 0"),
    "prior of no size": (lambda: _nn("StandardNormalEncoder")(0), ValueError, "latent_dim must have sizes of at least 1"),
    "frozen view of a name": (lambda: _nn("FrozenMeanEncoder")("encoder", 1.0), TypeError, "encoder must be an nn.Module"),
    "initialise a name": (lambda: _nn("init_weights")("net"), TypeError, "module must be an nn.Module"),
    "generator given x": (lambda: Generator(4, SHAPE, width=4)(torch.zeros(2, 5)), ShapeError,
                          "Generator takes z of shape (n, 4), got shape (2, 5)"),
    "encoder given other images": (lambda: GaussianEncoder(SHAPE, 4, width=4)(torch.zeros(2, 1, 16, 16)), ShapeError,
                                   "GaussianEncoder takes x of shape (n, 1, 8, 8), got shape (2, 1, 16, 16)"),
    "energy given no tensor": (lambda: EnergyXZ(SHAPE, 4, width=4)(torch.zeros(2, 1, 8, 8), [0.0] * 4), ShapeError,
                               "EnergyXZ takes z of shape (n, 4), got list"),
    "digits of no size": (lambda: _data("digits_dataset")(0), ValueError, "image_size must be an integer >= 1, got 0"),
    "digits all test": (lambda: _data("digits_dataset")(8, test_fraction=1.0), ValueError,
                        "test_fraction must be a fraction in (0, 1), got 1.0"),
    "data set resized to nothing": (lambda: _data("load_dataset")("digits", image_size=-3), ValueError,
                                    "image_size must be an integer >= 1, got -3"),
    "anomaly split of no training": (lambda: _data("mnist_anomaly_split")("nowhere", 4, train_fraction=0.0), ValueError,
                                     "train_fraction must be a fraction in (0, 1), got 0.0"),
    "anomaly digit as text": (lambda: _data("mnist_anomaly_split")("nowhere", "4"), TypeError,
                              "held_out must be an integer >= 0, got '4'"),
    "no toy samples": (lambda: _data("toy_2d")("moons", 0), ValueError, "n must be an integer >= 1, got 0"),
    "fractional toy samples": (lambda: _data("toy_2d")("moons", 10.5), TypeError, "n must be an integer >= 1"),
    "batches of nothing": (lambda: next(_data("infinite_batches")(_data("digits_dataset")(8), 0)), ValueError,
                           "batch_size must be an integer >= 1, got 0"),
    "batches of an empty set": (lambda: next(_data("infinite_batches")(
        _data("ImageTensorDataset")(torch.zeros(0, 1, 8, 8), torch.zeros(0)), 4)), ValueError, "the data set is empty"),
    "grid of no rows": (lambda: _grid(nrow=0), ValueError, "nrow must be an integer >= 1, got 0"),
    "grid of no images": (lambda: _grid(images=torch.zeros(0, 1, 8, 8)), ValueError, "images is empty"),
    "grid of two channels": (lambda: _grid(images=torch.zeros(4, 2, 8, 8)), ValueError, "images must have 1 or 3 channels"),
    "grid range reversed": (lambda: _grid(value_range=(1.0, -1.0)), ValueError, "value_range must be finite with low < high"),
    "histogram of no bins": (lambda: __import__("kldiv.plotting").plotting.plot_energy_histograms(
        [1.0, 2.0], [3.0, 4.0], "unused.png", bins=0), ValueError, "bins must be an integer >= 1, got 0"),
    "energy grid of one point": (lambda: __import__("kldiv.plotting").plotting.energy_grid(
        lambda v: -v.square().sum(1), resolution=1), ValueError, "resolution must be an integer >= 2, got 1"),
    "energy grid bounds reversed": (lambda: __import__("kldiv.plotting").plotting.energy_grid(
        lambda v: -v.square().sum(1), bounds=(4, -4, -4, 4)), ValueError, "x_min < x_max and y_min < y_max"),
    "chain step of zero": (lambda: _chain(step_size=0.0), ValueError, "step_size must be a finite number > 0, got 0.0"),
    "chain step negative": (lambda: _chain(step_size=-0.1), ValueError, "step_size must be a finite number > 0"),
    "chain step nan": (lambda: _chain(step_size=math.nan), ValueError, "step_size must be a finite number > 0, got nan"),
    "chain step of z zero": (lambda: _chain(position={"z": torch.zeros(4, 2)}, log_density=lambda v: -v["z"].sum(1),
                                            step_size={"z": 0.0}), ValueError, "the step size of 'z' must be a finite"),
    "chain clip of zero": (lambda: _chain(clip_grad=0.0), ValueError, "clip_grad must be a finite number > 0, got 0.0"),
    "chain of fractional steps": (lambda: _chain(steps=2.5), TypeError, "steps must be an integer >= 0, got 2.5"),
    "chain from nan": (lambda: _chain(position=torch.full((4, 2), math.nan)), ValueError,
                       "position has 8 non-finite values (NaN or inf)"),
    "chain from integers": (lambda: _chain(position=torch.zeros(4, 2, dtype=torch.long)), TypeError,
                            "position must be a floating-point tensor"),
    "chains of two sizes": (lambda: _chain(position={"x": torch.zeros(4, 2), "z": torch.zeros(3, 2)},
                                           log_density=lambda v: -v["x"].sum(1), step_size=0.1), ValueError,
                            "every position needs the same number of chains"),
    "noise of no scale": (lambda: __import__("kldiv.samplers.starts").samplers.starts.NoiseStart("normal", scale=0.0),
                          ValueError, "scale must be a finite number > 0, got 0.0"),
    "samples of no images": (lambda: __import__("kldiv.evaluate").evaluate.generator_samples(
        Generator(4, SHAPE, width=4), 4, 0), ValueError, "n must be an integer >= 1, got 0"),
    "a run that is not there": (lambda: __import__("kldiv.evaluate").evaluate.load_run("no-such-run"),
                                FileNotFoundError, "no-such-run is neither a checkpoint file nor a run's folder"),
    "anomaly share as text": (lambda: __import__("kldiv.metrics").metrics.anomaly_auprc(
        [1.0, 2.0, 3.0], [0, 1, 0], anomaly_share="0.1"), TypeError, "anomaly_share must be a number in (0, 1)"),
}


@pytest.mark.parametrize("case", list(BUILDING_BLOCKS))
def test_bad_arguments_to_the_building_blocks_are_refused_by_name(case, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a plot that was not refused would land here, not in the checkout
    build, kind, words = BUILDING_BLOCKS[case]
    with pytest.raises(kind, match=re.escape(words)):
        build()
    assert not any(tmp_path.iterdir())  # refused before anything was written


@pytest.mark.parametrize("case", list(SAMPLERS))
def test_bad_sampler_arguments_are_refused_when_built(case):
    kwargs, kind, words = SAMPLERS[case]
    with pytest.raises(kind, match=re.escape(words)):
        Langevin(**kwargs)


@pytest.mark.parametrize("case", list(OTHER_SAMPLERS))
def test_bad_nuts_and_buffer_arguments_are_refused_when_built(case):
    build, kind, words = OTHER_SAMPLERS[case]
    with pytest.raises(kind, match=re.escape(words)):
        build()


@pytest.mark.parametrize("case", list(DENSITIES))
def test_bad_densities_are_refused_when_built(case):
    build, kind, words = DENSITIES[case]
    with pytest.raises(kind, match=re.escape(words)):
        build()


GAMES = {
    "player named by a number": (lambda: _kl().minimize(densities()[0], name=3), "a player's name is a non-empty"),
    "values a word": (lambda: _kl().minimize(densities()[0]).compile(values="no"), "values must be True or False"),
    "closed form a word": (lambda: _kl().minimize(densities()[0]).compile(closed_form="yes"),
                           "closed_form must be True or False"),
    "a round's values a word": (lambda: triangle().round(torch.randn(4, 1, 8, 8), values="yes"),
                                "must be True or False, got 'yes'"),
    "an estimator of an expression": (lambda: Estimator(_kl()),
                                      "Estimator takes a Game, got KL: an expression is a game's objective"),
    "an estimator of a number": (lambda: Estimator(3), "Estimator takes a Game, got int"),
    "a game of a number": (lambda: Game(3), "Game takes Players (made by minimize and maximize), got int"),
    "a game of densities": (lambda: Game(densities()[:2]), "got ['DataDensity', 'GeneratorDensity']"),
    "a game of an expression": (lambda: Game(_kl()), "Game takes players, not an objective"),
    "a game's objective a number": (lambda: Game(objective=1.0), "a game's objective is an Expression"),
    "expression times a word": (lambda: _kl() * "2", "cannot multiply KL(q ‖ p) by str"),
    "expression times a tensor": (lambda: _kl() * torch.tensor(2.0), "(a 0-d tensor: pass float(t))"),
    "expression divided by a tensor": (lambda: _kl() / torch.tensor(2.0), "cannot divide KL(q ‖ p) by Tensor"),
    "a constant added": (lambda: _kl() + 1.0, "a constant changes no player's gradient"),
    "added to a constant": (lambda: 1.0 + _kl(), "cannot add 1.0 and KL(q ‖ p)"),
    "subtracted from a constant": (lambda: 1 - _kl(), "cannot subtract 1 and KL(q ‖ p)"),
    "a tensor subtracted": (lambda: _kl() - torch.ones(()), "cannot subtract a Tensor"),
    "a density added": (lambda: _kl() + densities()[0], "cannot add DataDensity and KL(q ‖ p)"),
    "a sample count of 2.5": (lambda: densities()[1].sample(2.5), "n, the number of samples, must be a positive int"),
    "a sample count as text": (lambda: densities()[1].sample("4"), "n, the number of samples, must be a positive int"),
}


@pytest.mark.parametrize("case", list(GAMES))
def test_bad_game_arguments_are_refused_by_name(case):
    build, words = GAMES[case]
    with pytest.raises(TypeError, match=re.escape(words)):
        build()


@pytest.mark.parametrize("case", list(EXPRESSIONS))
def test_bad_expressions_are_refused_when_written(case):
    build, words = EXPRESSIONS[case]
    with pytest.raises(CompileError, match=re.escape(words)):
        build()


def test_a_weight_on_a_variable_the_densities_lack_is_refused():
    with pytest.raises(kerr.VariableMismatchError, match="weighs the factors of 'w'(.|\n)*weigh one of those"):
        KL(*densities()[:2], weights={"w": 2.0})


def test_a_divergence_between_densities_over_different_variables_is_refused():
    q, p, _ = densities()
    from kldiv import MarginalEBM
    from kldiv.nn import EnergyX

    with pytest.raises(kerr.VariableMismatchError):
        S(q, MarginalEBM(EnergyX(SHAPE, width=4)))


# ----------------------------------------------------------------------------------------
# Games: a network in two players
# ----------------------------------------------------------------------------------------
def test_a_parameter_in_two_players_is_refused_by_the_summing_backward():
    q, p, _ = densities()
    step = KL(q, p).minimize(p, name="a").minimize(p, objective=2 * KL(q, p), name="b").compile()
    out = step(torch.randn(5, *SHAPE))
    with pytest.raises(CompileError, match=r"players 'a' and 'b' both train a parameter of p.decoder(.|\n)*update_all"):
        out.backward()


def test_update_all_steps_each_optimiser_with_its_own_players_gradient(tmp_path):
    from kldiv.train import Run, RunConfig

    q, p, _ = densities()
    step = KL(q, p).minimize(p, name="a").minimize(p, objective=2 * KL(q, p), name="b").compile()
    G = p.decoder
    run = Run(RunConfig(out=str(tmp_path), steps=1), name="two")
    opts = {k: torch.optim.SGD(G.parameters(), lr=0.0) for k in ("a", "b")}
    run.attach(step, {"generator": G}, opts)
    x = torch.randn(5, *SHAPE)
    torch.manual_seed(0)
    r = step.round(x)
    seen = {}
    for name, opt in opts.items():  # record the gradient each optimiser steps with
        opt.step = (lambda n: lambda *a, **k: seen.setdefault(n, [q.grad.clone() for q in G.parameters()]))(name)
    run.update_all(r)
    for ga, gb in zip(seen["a"], seen["b"]):
        torch.testing.assert_close(gb, 2 * ga)  # b's gradient is twice a's, not their sum


# ----------------------------------------------------------------------------------------
# The first step: the batch, checked before any network runs; then the networks
# ----------------------------------------------------------------------------------------
BATCHES = {
    "uint8 pixels": (torch.randint(0, 255, (5, *SHAPE), dtype=torch.uint8), InputError, "x.float() / 127.5 - 1"),
    "float64": (torch.randn(5, *SHAPE, dtype=torch.float64), InputError, "x.to(torch.float32)"),
    "integers": (torch.zeros(5, *SHAPE, dtype=torch.int64), InputError, "floating-point"),
    "empty": (torch.zeros(0, *SHAPE), InputError, "at least one row"),
    "a scalar": (torch.tensor(1.0), InputError, "empty"),
    "NaN pixels": (torch.full((5, *SHAPE), math.nan), NonFiniteError, "clean the batch"),
    "infinite pixels": (torch.full((5, *SHAPE), math.inf), NonFiniteError, "clean the batch"),
    "three channels": (torch.randn(5, 3, 8, 8), ShapeError, "built for image_shape (1, 8, 8)"),
    "another size": (torch.randn(5, 1, 16, 16), ShapeError, "built for image_shape (1, 8, 8)"),
    "no channel axis": (torch.randn(5, 8, 8), ShapeError, "failed when first run"),
    "a list": ([1.0, 2.0], InputError, "tensor batch or a mapping"),
    "a mapping of non-tensors": ({"data": [1.0]}, InputError, "must be a tensor"),
}


@pytest.mark.parametrize("case", list(BATCHES))
def test_bad_batches_get_a_kldiv_error_before_a_torch_traceback(case):
    x, cls, words = BATCHES[case]
    with pytest.raises(cls, match=re.escape(words)):
        triangle()(x)


def test_a_batch_on_another_device_is_named():
    step = triangle()
    x = torch.randn(5, *SHAPE, device="meta")
    with pytest.raises(InputError, match=r"on meta and the networks on cpu: move it"):
        step(x)


def test_an_input_no_density_reads_is_named():
    x = torch.randn(5, *SHAPE)
    with pytest.raises(InputError, match=r"no density of this game reads the step's input 'datta'; they read 'data'"):
        triangle().round(x, datta=x)
    with pytest.raises(InputError, match=r"inputs 'labels', 'x'"):
        triangle()({"data": x, "x": x, "labels": x})


def test_log_prob_of_values_of_the_wrong_shape_names_the_term_and_the_shapes():
    p = GeneratorDensity(_lin(), latent_shape=2, sigma=1.0)
    with pytest.raises(ShapeError, match=re.escape("the term log N(x; g(z), σ²I) failed on x (4, 5), z (4, 2)")) as e:
        p.log_prob({"x": torch.zeros(4, 5), "z": torch.zeros(4, 2)})
    assert isinstance(e.value.network_error, RuntimeError)  # torch's own error, kept for debugging


def test_n_must_be_a_positive_count():
    with pytest.raises(InputError, match="positive int"):
        triangle()(torch.randn(5, *SHAPE), n=0)


LATENTS = {
    "encoder smaller than latent_shape": (dict(enc=3), "q draws z of shape (3,)"),
    "decoder and latent_shape smaller than the encoder": (dict(dec=3, latent=3), "p declares latent_shape (3,)"),
    "latent_shape alone differs": (dict(latent=3), "p declares latent_shape (3,)"),
}


@pytest.mark.parametrize("case", list(LATENTS))
def test_latent_sizes_that_disagree_are_named_with_both_densities(case):
    sizes, words = LATENTS[case]
    with pytest.raises(ShapeError, match=re.escape(words) + r"(.|\n)*same latent size"):
        triangle(**sizes)(torch.randn(5, *SHAPE))


def test_an_energy_built_for_another_latent_size_is_named():
    with pytest.raises(ShapeError, match=r"network π.energy failed when first run(.|\n)*latent_dim 3"):
        triangle(energy=3)(torch.randn(5, *SHAPE))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    shape=st.lists(st.integers(0, 9), min_size=0, max_size=5),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.uint8, torch.int64, torch.bool]),
    poison=st.sampled_from([None, math.nan, math.inf]),
)
def test_only_kldiv_errors_escape_a_step_given_malformed_batches(shape, dtype, poison):
    x = torch.zeros(shape, dtype=dtype) if dtype in (torch.uint8, torch.int64, torch.bool) else torch.randn(shape, dtype=dtype)
    if poison is not None and x.dtype.is_floating_point and x.numel():
        x.view(-1)[0] = poison
    try:
        triangle()(x)
    except Exception as err:  # noqa: BLE001 - the point is which classes escape
        assert type(err).__module__ == "kldiv.errors", f"{type(err).__module__}.{type(err).__name__}: {err}"


# ----------------------------------------------------------------------------------------
# Recipe command lines: refused before anything is written
# ----------------------------------------------------------------------------------------
COMMAND_LINES = {
    "batch size 0": (["--batch-size", "0"], "--batch-size must be an integer >= 1"),
    "negative batch size": (["--batch-size", "-3"], "--batch-size must be an integer >= 1"),
    "negative steps": (["--steps", "-1"], "--steps must be an integer >= 0"),
    "log every 0 steps": (["--log-every", "0"], "--log-every must be an integer >= 1"),
    "checkpoint every 0 steps": (["--checkpoint-every", "0"], "--checkpoint-every must be an integer >= 1"),
    "negative clipping": (["--clip-grad", "-1"], "--clip-grad must be a finite number >= 0"),
    "nan loss bound": (["--max-loss", "nan"], "--max-loss must be a finite number >= 0"),
    "ema decay of 1.5": (["--ema", "1.5"], "--ema is the decay of the moving average"),
    "hold-out -2": (["--hold-out", "-2"], "--hold-out must be an integer >= -1"),
    "negative sigma": (["--sigma", "-1"], "--sigma must be a finite number > 0, got -1.0"),
    "width 0": (["--width", "0"], "--width must be an integer >= 1, got 0"),
    "a negative learning rate": (["--lr-ebm", "-0.0001"], "--lr-ebm must be a finite number > 0"),
    "Adam beta1 of 1": (["--beta1", "1"], "--beta1 must be a finite number in [0, 1), got 1.0"),
    "a learning-rate decay of 0": (["--decay", "0"], "--decay must be a finite number in (0, 1], got 0.0"),
    "an abbreviated flag": (["--step", "3"], "unrecognized arguments: --step"),
    "an unknown data set": (["--data", "imagenet"], "invalid choice: 'imagenet'"),
    "an unknown schedule": (["--schedule", "random"], "invalid choice: 'random'"),
}


@pytest.mark.parametrize("case", list(COMMAND_LINES))
def test_bad_command_lines_exit_with_the_flag_named_and_write_nothing(case, tmp_path, capsys):
    argv, words = COMMAND_LINES[case]
    with pytest.raises(SystemExit) as info:
        load_recipe("latent_ebm").main([*TINY, *argv, "--out", str(tmp_path / "run")])
    assert info.value.code == 2
    assert words in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def _outside(bounds, integer: bool) -> list:
    """Values just outside an option's declared bounds, and a non-finite one for floats."""
    at_least, above, at_most, below = bounds
    step = 1 if integer else 1e-3
    low = [at_least - step] if at_least is not None else [above] if above is not None else []
    high = [at_most + step] if at_most is not None else [below] if below is not None else []
    return low + high + ([] if integer else [math.nan, math.inf])


def _inside(bounds):
    """A value inside an option's declared bounds: a closed end, or one past an open one."""
    at_least, above, at_most, below = bounds
    if at_least is not None or at_most is not None:
        return at_least if at_least is not None else at_most
    if above is not None and below is not None:
        return (above + below) / 2
    return above + 1 if above is not None else below - 1


@pytest.mark.parametrize("name", ["latent_ebm", "triangle", "bidvl", "mcmc_teaching", "latent_prior_ebm", "vae"])
def test_every_bounded_option_of_every_recipe_is_refused_outside_its_range_by_name(name):
    import dataclasses
    import typing

    from kldiv.train import parse_config

    cls = load_recipe(name).Config
    hints = typing.get_type_hints(cls)
    bounded = [f for f in dataclasses.fields(cls) if "bounds" in f.metadata]
    assert {"width", "latent_dim", "sigma", "beta1", "decay"} <= {f.name for f in bounded}
    for f in bounded:
        flag, integer = "--" + f.name.replace("_", "-"), hints[f.name] is int
        for value in _outside(f.metadata["bounds"], integer):
            with pytest.raises(SystemExit) as info:
                parse_config(cls, [flag, str(value)])
            assert info.value.code == 2, (name, flag, value)
        with pytest.raises(ValueError, match=f"^{re.escape(flag)} must be"):
            cls(**{f.name: _outside(f.metadata["bounds"], integer)[0]})
        assert getattr(parse_config(cls, [flag, str(_inside(f.metadata["bounds"]))]), f.name) is not None


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_a_gpu_that_is_not_there_is_named(tmp_path):
    with pytest.raises(ValueError, match=r"asks for a GPU(.|\n)*--device cpu"):
        load_recipe("vae").main([*TINY, "--device", "cuda", "--out", str(tmp_path / "run")])
    assert not (tmp_path / "run").exists()


def test_a_device_that_is_no_device_is_named(tmp_path):
    with pytest.raises(ValueError, match="is not a device: use auto, cpu, cuda"):
        load_recipe("vae").main([*TINY, "--device", "gpu0", "--out", str(tmp_path / "run")])


def test_a_class_the_data_set_lacks_cannot_be_held_out(tmp_path):
    with pytest.raises(ValueError, match=r"held_out must be one of digits's classes 0..9"):
        load_recipe("vae").main([*TINY, "--hold-out", "12", "--out", str(tmp_path / "run")])


# ----------------------------------------------------------------------------------------
# Checkpoints: a bad one is named and left untouched
# ----------------------------------------------------------------------------------------
@pytest.fixture()
def vae_run(tmp_path):
    out = tmp_path / "run"
    load_recipe("vae").main([*TINY, "--steps", "2", "--out", str(out)])
    return out


class _Code:
    def __reduce__(self):  # what a malicious pickle does: call a function when loaded
        return (os.getcwd, ())


CORRUPTIONS = {
    "garbage bytes": (lambda path: path.write_bytes(b"not a checkpoint at all"), "truncated or corrupt"),
    "a truncated file": (lambda path: path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2]),
                         "truncated or corrupt"),
    "an empty file": (lambda path: path.write_bytes(b""), "truncated or corrupt"),
    "code inside": (lambda path: torch.save({"networks": {}, "payload": _Code()}, path), "could run code"),
    "a pickle that is not a checkpoint": (lambda path: torch.save([1, 2], path), "not a checkpoint dictionary"),
    "a plain pickle": (lambda path: path.write_bytes(pickle.dumps({"networks": {}})), "It was left as it is"),
}


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch's note on the plain pickle
@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_a_bad_checkpoint_is_named_and_left_as_it_is(case, vae_run):
    corrupt, words = CORRUPTIONS[case]
    corrupt(vae_run / "checkpoint.pt")
    before = files(vae_run)
    with pytest.raises(CheckpointError, match=re.escape(words)) as info:
        load_recipe("vae").main([*TINY, "--steps", "4", "--out", str(vae_run), "--resume"])
    assert "weights_only=False" not in str(info.value)  # never suggest unsafe loading
    assert str(vae_run / "checkpoint.pt") in str(info.value)
    assert files(vae_run) == before


@pytest.mark.parametrize("resume", [True, False], ids=["with --resume", "without --resume"])
def test_another_recipes_checkpoint_is_refused_before_anything_is_written(resume, vae_run):
    before = files(vae_run)
    with pytest.raises(CheckpointError, match=r"checkpoint of 'vae', not of 'bidvl'(.|\n)*another --out"):
        load_recipe("bidvl").main([*TINY, "--steps", "4", "--out", str(vae_run), *(["--resume"] if resume else [])])
    assert files(vae_run) == before


def test_resume_without_a_checkpoint_says_to_start_without_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="start without --resume"):
        load_recipe("vae").main([*TINY, "--steps", "2", "--out", str(tmp_path / "new"), "--resume"])


def test_resume_with_ema_from_a_run_without_it_is_refused(vae_run):
    before = files(vae_run)
    with pytest.raises(ValueError, match="written without --ema"):
        load_recipe("vae").main([*TINY, "--steps", "4", "--ema", "0.9", "--out", str(vae_run), "--resume"])
    assert files(vae_run) == before


def test_checkpoints_follow_the_umask_and_sweep_orphans(tmp_path):
    (tmp_path / "checkpoint.pt.abc123.tmp").write_bytes(b"half a checkpoint")
    old = os.umask(0o022)
    try:
        save_checkpoint(tmp_path / "checkpoint.pt", {"networks": {}, "step": 1})
    finally:
        os.umask(old)
    assert [f.name for f in tmp_path.iterdir()] == ["checkpoint.pt"]
    assert (tmp_path / "checkpoint.pt").stat().st_mode & 0o777 == 0o644
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 1


# ----------------------------------------------------------------------------------------
# The divergence guard
# ----------------------------------------------------------------------------------------
def test_a_diverging_run_stops_like_a_non_finite_one(vae_run):
    before = load_checkpoint(vae_run / "checkpoint.pt")
    with pytest.raises(NonFiniteError, match=r"beyond --max-loss 1: the run is diverging(.|\n)*in step 3 of 6"
                                             r"(.|\n)*checkpoint.pt as it was(.|\n)*--resume"):
        load_recipe("vae").main([*TINY, "--steps", "6", "--out", str(vae_run), "--resume", "--max-loss", "1"])
    after = load_checkpoint(vae_run / "checkpoint.pt")
    assert after["step"] == before["step"] == 2
    for k, v in before["networks"]["generator"].items():
        assert torch.equal(v, after["networks"]["generator"][k])


def test_a_network_failure_prints_kldivs_message_first_and_keeps_the_original():
    with pytest.raises(ShapeError) as info:
        triangle()(torch.randn(5, 3, 8, 8))
    assert info.value.__suppress_context__ and info.value.__cause__ is None  # no torch traceback above it
    assert str(info.value).startswith("network q.encoder failed when first run, on inputs (5, 3, 8, 8)")
    # the network's own refusal, kept: kldiv's networks check their inputs before torch does
    assert "GaussianEncoder takes x of shape (n, 1, 8, 8), got shape (5, 3, 8, 8)" in str(info.value.network_error)
