r"""Joint densities over named variables, each written as a sum of named log-density terms.

A density in kldiv is not a number-producing function but a *description*:
it knows which variables it is over (``("x", "z")`` or ``("x",)``), how its
log density splits into additive terms, which networks each term depends on,
which variables each term reads, and whether the term can be computed at all.
The compiler (:mod:`kldiv.compiler`) reads these descriptions to cancel what
cancels and refuse what cannot be estimated.

| density | log-density terms |
| --- | --- |
| [`GeneratorDensity`][kldiv.GeneratorDensity] | $\log \mathcal N(z; 0, I) + \log p_\theta(x \mid z)$ |
| [`DataDensity`][kldiv.DataDensity] | $\log q_{\rm data}(x)$ (unknown) $+ \log q_\phi(z \mid x)$ |
| [`LatentEBM`][kldiv.LatentEBM] | $f_\alpha(x, z) - \log Z(\alpha)$ |
| [`MarginalEBM`][kldiv.MarginalEBM] | $f_\alpha(x) - \log Z(\alpha)$ |
| [`DecoupledEBLVM`][kldiv.DecoupledEBLVM] | $f_\psi(x) - \log Z(\psi) + \log q_\phi(z \mid x)$ |
| [`EnergyPrior`][kldiv.EnergyPrior] | $f_\alpha(z) + \log \mathcal N(z; 0, I) - \log Z(\alpha)$ |

A [`GeneratorDensity`][kldiv.GeneratorDensity] with an `EnergyPrior` is the
latent-space EBM prior model of Pang et al. (2020), $p_{\alpha,\theta}(x, z) =
p_\alpha(z)\, p_\theta(x \mid z)$: its terms are the prior's and the likelihood.

Sign convention: every energy network returns $f$, the *log* of the
unnormalised density ($f = -E$ for an energy $E$).
"""

from kldiv.densities.base import Density, Evaluator, Samples, Term, conditional_term, prior_kl_term
from kldiv.densities.energy import DecoupledEBLVM, EnergyBased, EnergyPrior, LatentEBM, MarginalEBM
from kldiv.densities.factored import Factor, FactoredDensity
from kldiv.densities.directed import DataDensity, GeneratorDensity

__all__ = [
    "DataDensity",
    "DecoupledEBLVM",
    "Density",
    "EnergyBased",
    "EnergyPrior",
    "Evaluator",
    "Factor",
    "FactoredDensity",
    "GeneratorDensity",
    "LatentEBM",
    "MarginalEBM",
    "Samples",
    "Term",
    "conditional_term",
    "prior_kl_term",
]
