r"""The contract every density meets: `Term`, `Samples`, the `Evaluator` protocol and `Density`;
and the terms several densities share ($\log \mathcal N(z; 0, I)$, an encoder's $\log q_\phi(z \mid x)$
and its closed-form KL against a prior)."""

from __future__ import annotations

import abc
import functools
import math
import numbers
from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Protocol

import attrs
import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from kldiv.errors import ShapeError

__all__ = ["Density", "Evaluator", "Samples", "Term", "conditional_term", "prior_kl_term"]

_LOG_2PI = math.log(2.0 * math.pi)
_NO_MODULES: frozenset[nn.Module] = frozenset()


class Evaluator(Protocol):
    """What a term or a sampler may ask of the step that evaluates it.

    The compiler's [`Round`][kldiv.compiler.Round] implements it: network calls
    are memoised (one forward pass per network and sample set), samples are
    drawn once per source, and inputs are the tensors given to the step.
    """

    device: torch.device
    dtype: torch.dtype

    def call(self, module: nn.Module, *args: Tensor) -> object:
        """``module(*args)``, evaluated once per round for the same inputs."""

    def input(self, name: str) -> Tensor:
        """The tensor given to the step under ``name`` (e.g. the data batch)."""

    def samples(self, density: Density) -> Samples:
        """This round's sample set drawn from ``density``."""


@attrs.frozen(eq=False)
class Samples:
    r"""A sample set: one tensor per variable, all with the same leading size $n$.

    An importance-weighted sample set carries ``weights`` $w_i$ (detached).
    With ``self_normalized=False`` an expectation is estimated by
    $\frac1n \sum_i w_i t_i$, otherwise by $\sum_i w_i t_i / \sum_i w_i$.
    """

    values: Mapping[str, Tensor]
    weights: Tensor | None = None
    self_normalized: bool = False

    def __getitem__(self, variable: str) -> Tensor:
        return self.values[variable]

    @property
    def n(self) -> int:
        """The number of samples."""
        return next(iter(self.values.values())).shape[0]

    def mean(self, t: Tensor) -> Tensor:
        """The Monte Carlo estimate of $E[t]$ from per-sample values ``t`` of shape ``(n,)``."""
        if self.weights is None:
            return t.mean()
        if self.self_normalized:
            return (self.weights * t).sum() / self.weights.sum()
        return (self.weights * t).mean()


@attrs.frozen(eq=False)
class Term:
    r"""One additive term of a log density.

    Attributes:
        key: identity of the term. Two terms with equal keys are the same
            function of the same variables (e.g. the ``log q(z|x)`` of a
            `DataDensity` and of a `DecoupledEBLVM` sharing one encoder), so
            their expectations under one source merge.
        label: plain-text form, e.g. ``"f(x, z)"``.
        latex: LaTeX form, e.g. ``r"f_\\alpha(x, z)"``.
        reads: the variables the term reads; empty for a sample-constant term
            such as ``log Z``, whose expectation is the same under any source.
        modules: the networks whose parameters the term depends on directly.
        computable: whether kldiv can evaluate the term (``log Z`` and
            ``log q_data`` cannot).
        reason: why the term cannot be computed, for error messages.
        evaluate: ``evaluate(ev, samples) -> Tensor`` of shape ``(n,)``;
            ``None`` for a term that cannot be computed.
        normalizes: for ``log Z``, the energy network it normalises.
        sign: the sign with which the term enters its log density
            (``-1`` for ``log Z``, ``+1`` for every other term).
        factor: the variable whose factor of the density the term belongs
            to (``"z"`` for $\log p(z)$ or $\log q_\phi(z \mid x)$, ``"x"``
            for $\log p_\theta(x \mid z)$ or the energy of a marginal EBM);
            ``None`` for a term of a joint that does not factorise, such as
            $f(x, z)$. A divergence weighted per variable
            ([`KL`][kldiv.KL]``(a, b, weights={"z": beta})``) scales the terms
            of that variable's factors.
    """

    key: Hashable
    label: str
    latex: str
    reads: frozenset[str]
    modules: tuple[nn.Module, ...] = ()
    computable: bool = True
    reason: str = ""
    evaluate: Callable[[Evaluator, Samples], Tensor] | None = None
    normalizes: nn.Module | None = None
    sign: float = 1.0
    factor: str | None = None


class Density(abc.ABC):
    """A joint density over named variables, as a sum of [`Term`][kldiv.Term]s.

    Subclasses must implement exactly: `variables`, `terms`, `networks`,
    `own_networks`, `dependence`, and, if they can be sampled, `sample` and
    `pathwise`. Densities are compared by identity.

    Arguments:
        name: short name used when printing expressions (``"q"``, ``"p"``, ``"π"``).
        latex: the name in LaTeX.
    """

    variables: tuple[str, ...]
    order: tuple[str, ...] | None = None
    """The order in which `sample` draws the variables, each given those before it
    (``("z", "x")`` for a generator), or ``None`` if unknown or not sequential (an EBM's
    joint chain). With it, the score-function route keeps only the factors upstream of a
    term (Rao–Blackwellisation); without it, every factor's score is kept (still unbiased)."""

    def __init__(self, name: str, latex: str | None = None):
        if not isinstance(name, str) or not name:
            raise TypeError(f"a density's name is a non-empty string (it names it in messages), got {name!r}")
        if latex is not None and not isinstance(latex, str):
            raise TypeError(f"a density's latex name is a string, got {type(latex).__name__}")
        self.name = name
        self.latex = name if latex is None else latex

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r} over {', '.join(self.variables)})"

    @abc.abstractmethod
    def terms(self) -> tuple[Term, ...]:
        """The log density as a tuple of additive terms."""

    @abc.abstractmethod
    def networks(self) -> dict[str, nn.Module]:
        """Every network the density uses, by role (``{"decoder": g}``)."""

    @abc.abstractmethod
    def own_networks(self) -> tuple[nn.Module, ...]:
        """The networks a player named by this density trains."""

    @abc.abstractmethod
    def dependence(self, reads: frozenset[str]) -> frozenset[nn.Module]:
        """Networks on which the marginal of the variables ``reads`` depends."""

    def pathwise(self, reads: frozenset[str]) -> frozenset[nn.Module]:
        """Networks through which this density's samples of ``reads`` carry gradients."""
        return _NO_MODULES

    def marginal_key(self, reads: frozenset[str]) -> Hashable:
        """Identity of the marginal of ``reads`` under this density's samples.

        Two sources with equal keys draw ``reads`` from the same distribution,
        so $E_s[t]$ merges across them. By default only the density itself.
        """
        return ("density", id(self))

    @property
    def sampleable(self) -> bool:
        """Whether the density can draw its own samples."""
        return False

    def sources(self) -> tuple[Density, ...]:
        """The densities whose samples this one's samples are made from (a sampler's start,
        the data density's ``x``, a generator's energy-based prior); the compiler draws them too."""
        return ()

    def drawn_from(self, variable: str) -> Term | None:
        r"""The term whose distribution this density's samples of ``variable`` are
        drawn from, given the variables drawn before it (``log q(z|x)`` for the
        ``z`` of a `DataDensity`); ``None`` if they are drawn some other way.

        The compiler uses it to replace $E_s[\log q(z \mid x) - \log \mathcal N(z; 0, I)]$
        by the closed-form $E_x\,\mathrm{KL}(q(\cdot \mid x) \,\|\, \mathcal N(0, I))$
        when $z$ is drawn from that very $q$.
        """
        return None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        impl = cls.__dict__.get("sample")
        if impl is not None and not getattr(impl, "_either_call", False):
            cls.sample = _either_call(impl)

    def sample(self, ev: Evaluator, n: int) -> Samples:
        """Draw ``n`` samples of every variable (reparameterised where possible).

        Two calls: the compiler's, ``sample(ev, n)`` with its
        [`Evaluator`][kldiv.densities.Evaluator] (what a subclass implements),
        and a user's outside any game, ``p.sample(n)`` or ``q.sample(data=x)``,
        which is [`kldiv.sample`][kldiv.sample]``(p, n, **inputs)``: the same
        draw with the first-step checks.

        Examples:
            >>> import torch
            >>> from kldiv import GeneratorDensity
            >>> p = GeneratorDensity(torch.nn.Linear(2, 3), latent_shape=2, sigma=0.1)
            >>> p.sample(4)["x"].shape
            torch.Size([4, 3])
        """
        from kldiv.errors import NotSampleableError

        raise NotSampleableError(f"{self!r} cannot be sampled; attach a sampler to it")

    def describe_sampling(self) -> str:
        """One line saying how samples are drawn, for `explain`."""
        return "cannot be sampled"

    def log_prob(self, values: Mapping[str, Tensor], **inputs: Tensor) -> Tensor:
        r"""The log density of ``values``, one number per row, up to the terms kldiv cannot compute.

        The sum of the density's computable terms, each with its sign: exact
        for a `GeneratorDensity`; up to $\log Z$ for an energy-based density
        (the unnormalised $f$, plus $\log q(z \mid x)$ for a `DecoupledEBLVM`);
        up to $\log q_{\rm data}(x)$ for a `DataDensity`
        ($\log q_\phi(z \mid x)$ alone).  `uncomputed` names what is left out.

        Arguments:
            values: a tensor per variable of the density, with a common
                leading size (the number of rows).
            **inputs: the step inputs the terms read, if any.

        Examples:
            >>> import torch
            >>> from kldiv import GeneratorDensity
            >>> p = GeneratorDensity(torch.nn.Linear(2, 3), latent_shape=2, sigma=1.0)
            >>> p.log_prob({"x": torch.zeros(4, 3), "z": torch.zeros(4, 2)}).shape
            torch.Size([4])
        """
        terms = self.log_prob_terms(values, **inputs)
        return functools.reduce(torch.add, terms.values()) if terms else self._no_terms(values)

    def log_prob_terms(self, values: Mapping[str, Tensor], **inputs: Tensor) -> dict[str, Tensor]:
        r"""The computable terms of `log_prob`, each with its sign, one number per row, by label.

        Their sum is `log_prob`; one term alone says what ranks the rows, e.g.
        the reconstruction $\log \mathcal N(x; g(z), \sigma^2 I)$ against the
        prior's $f_\alpha(z) + \log \mathcal N(z; 0, I)$ in an anomaly score.

        Examples:
            >>> import torch
            >>> from kldiv import GeneratorDensity
            >>> p = GeneratorDensity(torch.nn.Linear(2, 3), latent_shape=2, sigma=1.0)
            >>> list(p.log_prob_terms({"x": torch.zeros(4, 3), "z": torch.zeros(4, 2)}))
            ['log N(z; 0, I)', 'log N(x; g(z), σ²I)']
        """
        missing = [v for v in self.variables if v not in values]
        if missing:
            raise ValueError(f"{self!r}.log_prob needs a value for every variable; missing {missing}")
        sizes = {v: t.shape[0] for v, t in values.items() if isinstance(t, Tensor) and t.ndim}
        if len(set(sizes.values())) != 1 or len(sizes) != len(values):
            raise ValueError(f"{self!r}.log_prob takes tensors with one common number of rows, got {sizes}")
        s = Samples({v: values[v] for v in self.variables})
        ev = _DirectEvaluator(inputs, s)
        out: dict[str, Tensor] = {}
        for t in self.terms():
            if t.computable and t.evaluate is not None:
                try:
                    value = t.evaluate(ev, s)
                except torch.OutOfMemoryError:
                    raise
                except RuntimeError as err:  # most often a value of the wrong shape for its network
                    shapes = ", ".join(f"{v} {tuple(values[v].shape)}" for v in self.variables)
                    exc = ShapeError(f"{self!r}.log_prob: the term {t.label} failed on {shapes}: "
                                     f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}. "
                                     "Check that each value has the shape its networks take.")
                    exc.network_error = err  # the original, for debugging
                    raise exc from None
                value = t.sign * (_per_sample(value) if value.dim() else value.expand(s.n))
                out[t.label] = out[t.label] + value if t.label in out else value
        return out

    def _no_terms(self, values: Mapping[str, Tensor]) -> Tensor:
        s = Samples({v: values[v] for v in self.variables})
        ev = _DirectEvaluator({}, s)
        return torch.zeros(s.n, dtype=ev.dtype, device=ev.device)

    def uncomputed(self) -> tuple[str, ...]:
        """The labels of the terms `log_prob` leaves out (``log Z``, ``log q_data(x)``)."""
        return tuple(t.label for t in self.terms() if not (t.computable and t.evaluate is not None))


_outside_a_game: Callable[..., Samples] | None = None
"""``kldiv.sample``, set by `kldiv.estimator` when it is imported (it builds on this module, so
this module cannot import it); ``import kldiv``, which any import of a kldiv module runs first,
imports the estimator."""


def _either_call(impl: Callable) -> Callable:
    """``sample`` taking the compiler's ``(ev, n)`` or a user's ``(n, **inputs)``."""

    @functools.wraps(impl)
    def sample(self, ev=None, n=None, **inputs):
        if ev is None or not callable(getattr(ev, "samples", None)):  # a count, checked there
            if ev is not None and n is not None:
                raise TypeError(f"{self.name}.sample takes one count outside a game: {self.name}.sample(n, **inputs)")
            return _outside_a_game(self, n if ev is None else ev, **inputs)  # set: `import kldiv` imports it
        if inputs:
            raise TypeError(f"{self.name}.sample(ev, n) takes no inputs; the evaluator holds them")
        return impl(self, ev, n)

    sample._either_call = True
    return sample


Density.sample = _either_call(Density.sample)


class _DirectEvaluator:
    """The `Evaluator` of `Density.log_prob`: networks run as they are, on given values."""

    def __init__(self, inputs: Mapping[str, Tensor], samples: Samples):
        first = next(iter(samples.values.values()))
        self.device, self.dtype = first.device, first.dtype
        self._inputs, self._samples = dict(inputs), samples

    def call(self, module: nn.Module, *args: Tensor) -> object:
        return module(*args)

    def input(self, name: str) -> Tensor:
        try:
            return self._inputs[name]
        except KeyError:
            raise KeyError(f"log_prob needs the input {name!r}; pass it as log_prob(values, {name}=...)") from None

    def samples(self, density: Density) -> Samples:
        return self._samples


def _standard_normal_log_prob(z: Tensor) -> Tensor:
    # (n, *latent) -> (n,)
    flat = z.flatten(1)
    return -0.5 * (flat.square().sum(1) + flat.shape[1] * _LOG_2PI)


def _standard_normal_term(latent_shape: tuple[int, ...]) -> Term:
    r"""The term $\log \mathcal N(z; 0, I)$: one key for every density with it, so they merge
    (and the compiler pairs it with an encoder into the closed-form KL)."""
    return Term(
        key=("standard_normal", latent_shape),
        label="log N(z; 0, I)",
        latex=r"\log \mathcal{N}(z; 0, I)",
        reads=frozenset({"z"}),
        evaluate=lambda ev, s: _standard_normal_log_prob(s["z"]),
        factor="z",
    )


def _gaussian_reference_log_prob(v: Tensor, sigma: float) -> Tensor:
    # (n, ...) -> (n,): log N(v; 0, sigma^2 I)
    flat = v.flatten(1)
    return -0.5 * (flat.square().sum(1) / sigma**2 + flat.shape[1] * (_LOG_2PI + 2.0 * math.log(sigma)))


def _gaussian_reference_term(variable: str, sigma: float) -> Term:
    r"""The parameter-free term $\log \mathcal N(v; 0, \sigma^2 I)$ of an energy-based density's reference."""
    return Term(
        key=("gaussian_reference", variable, sigma),
        label=f"log N({variable}; 0, {sigma:g}²I)",
        latex=rf"\log \mathcal{{N}}({variable}; 0, {sigma:g}^2 I)",
        reads=frozenset({variable}),
        evaluate=lambda ev, s: _gaussian_reference_log_prob(s[variable], sigma),
        factor=variable,
    )


def _per_sample(out: Tensor) -> Tensor:
    """Accept an ``(n,)`` or ``(n, 1)`` network output; leave anything else for validation."""
    if out.dim() == 2 and out.shape[1] == 1:
        return out[:, 0]
    return out


def _as_shape(shape: int | tuple[int, ...], what: str = "latent_shape") -> tuple[int, ...]:
    """A shape from an int or a sequence of ints, each at least 1; anything else is refused by name."""
    items = (shape,) if isinstance(shape, numbers.Integral) else shape
    if isinstance(shape, (str, bytes)) or not isinstance(items, (tuple, list, torch.Size)) or not items or any(
            isinstance(k, bool) or not isinstance(k, numbers.Integral) for k in items):
        raise TypeError(f"{what} must be a positive int or a tuple of positive ints, got {shape!r}")
    if any(int(k) < 1 for k in items):
        raise ValueError(f"{what} must have sizes of at least 1, got {shape!r}")
    return tuple(int(k) for k in items)


def conditional_term(encoder: nn.Module, name: str = "q") -> Term:
    """The term $\\log q_\\phi(z \\mid x)$ of an encoder; shared by every density using it
    (its key is the encoder), labelled ``log <name>(z|x)``."""

    def evaluate(ev: Evaluator, s: Samples) -> Tensor:
        dist = ev.call(encoder, s["x"])
        if not isinstance(dist, Distribution):
            raise TypeError(
                f"an encoder must return a torch/pyro distribution over z, got {type(dist).__name__}"
            )
        return dist.log_prob(s["z"])

    return Term(
        key=("conditional", encoder),
        label=f"log {name}(z|x)",
        latex=r"\log q_\phi(z \mid x)",
        reads=frozenset({"x", "z"}),
        modules=(encoder,),
        evaluate=evaluate,
        factor="z",
    )


def prior_kl_term(conditional: Term, prior: Term) -> Term:
    r"""The term $\mathrm{KL}(q_\phi(\cdot \mid x) \,\|\, \mathcal N(0, I))$ that replaces
    $\log q_\phi(z \mid x) - \log \mathcal N(z; 0, I)$ under a source drawing $z$ from $q_\phi$.

    Evaluated in closed form (``torch.distributions.kl_divergence``) when the
    encoder's distribution has one against a standard normal — a diagonal
    Normal does — and otherwise as the one-sample difference it replaces, so
    its expectation is the same either way and only its variance changes.
    """
    (encoder,) = conditional.modules
    given = prior.key[1] if prior.key[0] == "prior" else None  # a GeneratorDensity's own prior

    def evaluate(ev: Evaluator, s: Samples) -> Tensor:
        q = ev.call(encoder, s["x"])
        z = s["z"]
        if not isinstance(q, Distribution):
            raise TypeError(
                f"an encoder must return a torch/pyro distribution over z, got {type(q).__name__}"
            )
        event = z.dim() - 1
        if tuple(q.event_shape) == tuple(z.shape[1:]):
            if given is None:
                base = torch.distributions.Normal(torch.zeros_like(z), torch.ones_like(z))
                target = torch.distributions.Independent(base, event) if event else base
            else:
                target = given.expand(q.batch_shape)
            try:
                return torch.distributions.kl_divergence(q, target)
            except NotImplementedError:
                pass
        log_q = q.log_prob(z)
        if log_q.dim() != 1:  # not one value per sample: left for the first-step shape check to name
            return log_q
        return log_q - (_standard_normal_log_prob(z) if given is None else given.log_prob(z))

    return Term(
        key=("prior_kl", conditional.key, prior.key),
        label=f"KL({conditional.label.removeprefix('log ')} ‖ {'N(0, I)' if given is None else 'p(z)'})",
        latex=r"\mathrm{KL}(q_\phi(\cdot \mid x) \,\|\, " + (r"\mathcal{N}(0, I))" if given is None else "p(z))"),
        reads=frozenset({"x", "z"}),
        modules=conditional.modules,
        evaluate=evaluate,
        factor="z",
    )


def _rsample(dist: object, owner: Density) -> Tensor:
    if not isinstance(dist, Distribution):
        raise TypeError(
            f"the encoder of {owner!r} must return a torch/pyro distribution over z, "
            f"got {type(dist).__name__}"
        )
    if not dist.has_rsample:
        raise TypeError(
            f"the encoder of {owner!r} returns a {type(dist).__name__}, which cannot be "
            "reparameterised; kldiv draws z by rsample() so that gradients reach the encoder. For a "
            "discrete z, give DataDensity(encoder, reparameterized=False): the compiler then estimates "
            "the encoder's gradient by the score function"
        )
    return dist.rsample()




def _densities_of(*densities: Density) -> tuple[Density, ...]:
    """``densities`` and, transitively, the densities they draw samples from (`Density.sources`)."""
    seen: dict[int, Density] = {}
    stack = list(densities)
    while stack:
        d = stack.pop(0)
        if id(d) in seen:
            continue
        seen[id(d)] = d
        stack.extend(d.sources())
    return tuple(seen.values())


class _Namer:
    """Names networks after the densities that hold them (``"p.decoder"``)."""

    def __init__(self, densities: Iterable[Density]):
        self.names: dict[int, str] = {}
        for d in densities:
            for role, m in d.networks().items():
                self.names.setdefault(id(m), f"{d.name}.{role}")

    def __call__(self, modules: Iterable[nn.Module]) -> str:
        return ", ".join(sorted({self.names.get(id(m), type(m).__name__) for m in modules}))
