"""kldiv: train generative models by writing their objective as an expression of KL divergences."""

from kldiv.algebra import KL, Contribution, Divergence, Expression, Game, Player, S
from kldiv.compiler import Estimator, Round, StepOutput, sample
from kldiv.densities import (
    DataDensity,
    DecoupledEBLVM,
    Density,
    EnergyBased,
    EnergyPrior,
    Factor,
    FactoredDensity,
    GeneratorDensity,
    LatentEBM,
    MarginalEBM,
    Samples,
    Term,
)
from kldiv.samplers import NUTS, Importance, Langevin, Sampler

__version__ = "0.1.0"

__all__ = [
    "KL",
    "S",
    "Contribution",
    "DataDensity",
    "DecoupledEBLVM",
    "Density",
    "Divergence",
    "EnergyBased",
    "EnergyPrior",
    "Estimator",
    "Expression",
    "Factor",
    "FactoredDensity",
    "Game",
    "Importance",
    "Langevin",
    "NUTS",
    "Sampler",
    "GeneratorDensity",
    "LatentEBM",
    "MarginalEBM",
    "Player",
    "Round",
    "Samples",
    "StepOutput",
    "Term",
    "sample",
]
