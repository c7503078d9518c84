r"""The networks of the source papers, sized by a ``width`` argument.

| network | maps | paper |
| --- | --- | --- |
| [`Generator`][kldiv.nn.Generator] | $z \mapsto g_\theta(z)$, an image in $[-1, 1]$ | Radford et al. 2016 (DCGAN) |
| [`GaussianEncoder`][kldiv.nn.GaussianEncoder] | $x \mapsto q_\phi(z \mid x) = \mathcal N(\mu_\phi(x), \operatorname{diag} s_\phi(x)^2)$ | Kingma & Welling 2014; Han et al. 2019, 2020 |
| [`EnergyX`][kldiv.nn.EnergyX] | $x \mapsto f_\alpha(x)$ | Han et al. 2019; Miyato et al. 2018 |
| [`EnergyXZ`][kldiv.nn.EnergyXZ] | $(x, z) \mapsto f_\alpha(x, z)$ | Han et al. 2020 |
| [`Descriptor`][kldiv.nn.Descriptor] | $x \mapsto f_\alpha(x)$, unbounded, a sum of many outputs | Xie et al. 2016, 2021 (MNIST) |
| [`MLPGenerator`][kldiv.nn.MLPGenerator], [`MLPEncoder`][kldiv.nn.MLPEncoder], [`MLPEnergy`][kldiv.nn.MLPEnergy] | the same, as multilayer perceptrons | for 2-D toys and tiny images |
| [`StandardNormalEncoder`][kldiv.nn.StandardNormalEncoder] | $x \mapsto \mathcal N(0, I)$ | the prior $p(z)$ as a conditional |
| [`FrozenMeanEncoder`][kldiv.nn.FrozenMeanEncoder] | $x \mapsto \mathcal N(\mu_\phi(x), s^2 I)$, $\phi$ held fixed | the latent term of the BiDVL code |

They plug into kldiv's densities directly: a generator is the ``decoder`` of a
[`GeneratorDensity`][kldiv.GeneratorDensity], an encoder the ``encoder`` of a
[`DataDensity`][kldiv.DataDensity], an energy network the ``energy`` of a
[`LatentEBM`][kldiv.LatentEBM] or [`MarginalEBM`][kldiv.MarginalEBM].

Sign convention: an energy network returns $f$, the *log* unnormalised
density.  The 2020 code writes the energy as $E = \operatorname{softplus}(h)$
of a network output $h$, so these networks return $f = -\operatorname{softplus}(h)$.

Convolutional networks support square images whose side is $s_0 2^k$ with
$s_0 \in \{4, 7\}$ and $k \ge 1$: 8, 14, 16, 28, 32, 56, 64, 128, ...
(the papers use 28×28×1, 32×32×3 and 64×64×3).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn
from torch.nn.utils import parametrizations, parametrize

from kldiv._checks import count, network, positive_number
from kldiv.errors import ShapeError

__all__ = [
    "BernoulliEncoder",
    "Descriptor",
    "EnergyX",
    "FrozenMeanEncoder",
    "EnergyXZ",
    "GaussianEncoder",
    "Generator",
    "MLPEncoder",
    "MLPEnergy",
    "MLPGenerator",
    "StandardNormalEncoder",
    "init_weights",
]

_WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
             nn.ConvTranspose3d, nn.Linear, nn.Bilinear)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm, nn.LayerNorm,
          nn.InstanceNorm2d)


def init_weights(module: nn.Module, std: float = 0.02) -> nn.Module:
    r"""Initialise a network as in DCGAN (Radford et al. 2016).

    $$ W \sim \mathcal N(0, \sigma^2), \quad b = 0 \quad \text{(convolutions, linear layers)}, \qquad
       \gamma \sim \mathcal N(1, \sigma^2), \quad \beta = 0 \quad \text{(normalisation layers)}. $$

    A spectrally normalised layer has its *unnormalised* weight initialised.

    Arguments:
        module: the network; every submodule is visited.
        std: the standard deviation $\sigma$.

    Returns:
        The same module, initialised in place.
    """
    network("module", module)
    std = positive_number("std", std)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, _WEIGHTED):
                weight = (
                    m.parametrizations.weight.original
                    if parametrize.is_parametrized(m, "weight")
                    else m.weight
                )
                weight.normal_(0.0, std)
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, _NORMS) and getattr(m, "weight", None) is not None:
                m.weight.normal_(1.0, std)
                if m.bias is not None:
                    m.bias.zero_()
    return module


def _spectral(module: nn.Module, enabled: bool) -> nn.Module:
    """Wrap every convolution and linear layer of ``module`` in spectral normalisation."""
    if not enabled:
        return module
    for m in list(module.modules()):
        if isinstance(m, (nn.Conv2d, nn.Linear)) and not parametrize.is_parametrized(m, "weight"):
            parametrizations.spectral_norm(m)
    return module


def _shape(name: str, shape: object) -> tuple[int, ...]:
    """``shape`` (an int or a sequence of ints, each >= 1) as a tuple, else an error naming ``name``."""
    sizes = (shape,) if isinstance(shape, numbers.Integral) and not isinstance(shape, bool) else shape
    if not isinstance(sizes, Sequence) or isinstance(sizes, str) or not sizes or not all(
        isinstance(s, numbers.Integral) and not isinstance(s, bool) for s in sizes
    ):
        raise TypeError(f"{name} must be an int or a sequence of ints, got {shape!r}")
    if min(sizes) < 1:
        raise ValueError(f"{name} must have sizes of at least 1, got {shape!r}")
    return tuple(int(s) for s in sizes)


def _hidden(hidden: object) -> tuple[int, ...]:
    """The hidden layer sizes of an MLP: a sequence (possibly empty) of ints >= 1."""
    if not isinstance(hidden, Sequence) or isinstance(hidden, str):
        raise TypeError(f"hidden must be a sequence of layer sizes, e.g. (128, 128), got {hidden!r}")
    return tuple(count(f"hidden[{i}]", h, minimum=1) for i, h in enumerate(hidden))


def _init_std(init_std: object) -> float | None:
    return positive_number("init_std", init_std, optional=True)


def _expect(net: nn.Module, what: str, value: object, shape: tuple[int, ...], *, flat: bool = False) -> None:
    """A ShapeError naming ``net`` unless ``value`` is a tensor ``(n, *shape)`` (with ``flat``:
    ``n`` rows of ``prod(shape)`` numbers, in any trailing layout)."""
    if isinstance(value, Tensor) and value.dim() >= 1 and (
        tuple(value.shape[1:]) == shape or (flat and math.prod(value.shape[1:]) == math.prod(shape))
    ):
        return
    got = f"shape {tuple(value.shape)}" if isinstance(value, Tensor) else type(value).__name__
    err = ShapeError(f"{type(net).__name__} takes {what} of shape (n, {', '.join(map(str, shape))}), got {got}")
    err.from_network = True  # raised by a network: the estimator still names which one
    raise err


def _size_plan(image_shape: Sequence[int]) -> tuple[int, int, int, int]:
    """``(C, H, k, s0)``: channels, side, number of stride-2 stages, side at the top."""
    sizes = _shape("image_shape", image_shape)
    if len(sizes) != 3:
        raise ValueError(f"image_shape must be (C, H, W), got {tuple(sizes)}")
    c, h, w = sizes
    if h != w:
        raise ValueError(f"the convolutional networks take square images, got {h}×{w}")
    k, s0 = 0, h
    while s0 % 2 == 0 and s0 // 2 >= 4:
        s0 //= 2
        k += 1
    if k == 0 or s0 not in (4, 7):
        raise ValueError(
            f"image side {h} is not supported: use s0·2^k with s0 in (4, 7) and k >= 1, "
            "e.g. 8, 16, 28, 32 or 64"
        )
    return c, h, k, s0


_ACTIVATIONS = {
    "relu": lambda: nn.ReLU(),
    "leaky_relu": lambda: nn.LeakyReLU(0.2),
    "leaky_relu_0.1": lambda: nn.LeakyReLU(0.1),
    "elu": lambda: nn.ELU(),
    "silu": lambda: nn.SiLU(),
    "softplus": lambda: nn.Softplus(),
    "tanh": lambda: nn.Tanh(),
}


def _activation(name: str) -> nn.Module:
    try:
        return _ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; choose from {sorted(_ACTIVATIONS)}") from None


def _mlp(sizes: Sequence[int], activation: str) -> nn.Sequential:
    """Linear layers between consecutive ``sizes``, an activation after all but the last."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(_activation(activation))
    return nn.Sequential(*layers)


def _conv_trunk(
    channels: int, k: int, width: int, *, batch_norm: bool, slope: float
) -> tuple[nn.Sequential, int]:
    """``k`` stride-2 4×4 convolutions, width doubling after the first; returns (trunk, out channels).

    The first layer has no batch norm (Radford et al. 2016).
    """
    layers: list[nn.Module] = []
    c_in = channels
    for i in range(k):
        c_out = width * 2**i
        layers.append(nn.Conv2d(c_in, c_out, 4, 2, 1, bias=not (batch_norm and i > 0)))
        if batch_norm and i > 0:
            layers.append(nn.BatchNorm2d(c_out))
        layers.append(nn.LeakyReLU(slope))
        c_in = c_out
    return nn.Sequential(*layers), c_in


def _neg_softplus(h: Tensor) -> Tensor:
    # f = -E with E = softplus(h) >= 0
    return -F.softplus(h)


class Generator(nn.Module):
    r"""The DCGAN generator $z \mapsto g_\theta(z) \in [-1, 1]^{C \times H \times W}$.

    $$ z \in \mathbb R^d \;\xrightarrow{\text{ConvT } s_0\times s_0}\; s_0 \times s_0
       \;\xrightarrow{\text{ConvT 4, stride 2}}\; \cdots \;\xrightarrow{}\; H \times H
       \;\xrightarrow{\tanh}\; g_\theta(z), $$

    with batch norm and ReLU after every hidden transposed convolution, and
    channels halving from $2^{k-1} w$ at the $s_0 \times s_0$ top to $w$
    (Radford et al. 2016; the generator of Han et al. 2019, 2020).  For
    28×28: $7 \to 14 \to 28$; 32×32: $4 \to 8 \to 16 \to 32$; 64×64: $4 \to \cdots \to 64$.

    It returns the *mean* image; give it to
    [`GeneratorDensity`][kldiv.GeneratorDensity] with an observation noise ``sigma``.

    Arguments:
        latent_dim: the dimension $d$ of $z$.
        image_shape: ``(C, H, W)`` with $H = W$, e.g. ``(1, 28, 28)``, ``(3, 32, 32)``, ``(3, 64, 64)``.
        width: the channel width $w$ of the last hidden layer (64 in DCGAN).
        init_std: standard deviation of [`init_weights`][kldiv.nn.init_weights];
            ``None`` keeps PyTorch's initialisation.

    Examples:
        >>> import torch
        >>> from kldiv.nn import Generator
        >>> Generator(8, (1, 28, 28), width=4)(torch.randn(2, 8)).shape
        torch.Size([2, 1, 28, 28])
    """

    def __init__(
        self,
        latent_dim: int,
        image_shape: Sequence[int] = (3, 32, 32),
        width: int = 64,
        *,
        init_std: float | None = 0.02,
    ):
        super().__init__()
        c, _, k, s0 = _size_plan(image_shape)
        self.latent_dim = count("latent_dim", latent_dim, minimum=1)
        self.image_shape = tuple(int(s) for s in image_shape)
        width, init_std = count("width", width, minimum=1), _init_std(init_std)
        ch = width * 2 ** (k - 1)
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(self.latent_dim, ch, s0, 1, 0, bias=False),
            nn.BatchNorm2d(ch),
            nn.ReLU(),
        ]
        for _ in range(k - 1):
            layers += [
                nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1, bias=False),
                nn.BatchNorm2d(ch // 2),
                nn.ReLU(),
            ]
            ch //= 2
        layers += [nn.ConvTranspose2d(ch, c, 4, 2, 1), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        if init_std is not None:
            init_weights(self, init_std)

    def forward(self, z: Tensor) -> Tensor:
        r"""The mean image $g_\theta(z)$.

        Arguments:
            z: latent vectors of shape ``(n, d)``.

        Returns:
            Images of shape ``(n, C, H, W)`` in $[-1, 1]$.
        """
        _expect(self, "z", z, (self.latent_dim,))
        h = rearrange(z, "n d -> n d 1 1")  # (n, d, 1, 1)
        return self.net(h)  # (n, C, H, W)


class GaussianEncoder(nn.Module):
    r"""The inference network $q_\phi(z \mid x) = \mathcal N\big(\mu_\phi(x), \operatorname{diag} s_\phi(x)^2\big)$.

    The mirror of [`Generator`][kldiv.nn.Generator]: stride-2 4×4
    convolutions down to $s_0 \times s_0$ with batch norm (not on the first
    layer) and LeakyReLU(0.2), as the DCGAN discriminator (Radford et al.
    2016), then an $s_0 \times s_0$ convolution to $2d$ numbers $(\mu, \rho)$ and

    $$ s_\phi(x) = \operatorname{softplus}(\rho) + s_{\min}, $$

    the floor $s_{\min}$ keeping $\log q_\phi(z \mid x)$ finite
    (the inference model of Han et al. 2019, 2020).

    Arguments:
        image_shape: ``(C, H, W)`` with $H = W$.
        latent_dim: the dimension $d$ of $z$.
        width: the channel width $w$ of the first layer.
        min_scale: the floor $s_{\min}$ of the standard deviation.
        init_std: standard deviation of [`init_weights`][kldiv.nn.init_weights];
            ``None`` keeps PyTorch's initialisation.

    """

    def __init__(
        self,
        image_shape: Sequence[int],
        latent_dim: int,
        width: int = 64,
        *,
        min_scale: float = 1e-3,
        init_std: float | None = 0.02,
    ):
        super().__init__()
        c, _, k, s0 = _size_plan(image_shape)
        self.image_shape = tuple(int(s) for s in image_shape)
        self.latent_dim = count("latent_dim", latent_dim, minimum=1)
        self.min_scale = positive_number("min_scale", min_scale)
        width, init_std = count("width", width, minimum=1), _init_std(init_std)
        trunk, ch = _conv_trunk(c, k, width, batch_norm=True, slope=0.2)
        self.net = nn.Sequential(trunk, nn.Conv2d(ch, 2 * self.latent_dim, s0, 1, 0))
        if init_std is not None:
            init_weights(self, init_std)

    def forward(self, x: Tensor) -> dist.Distribution:
        r"""The distribution $q_\phi(z \mid x)$.

        Arguments:
            x: images of shape ``(n, C, H, W)``.

        Returns:
            ``pyro.distributions.Normal(mu, scale).to_event(1)``: batch shape
                ``(n,)``, event shape ``(d,)``.
        """
        _expect(self, "x", x, self.image_shape)
        h = rearrange(self.net(x), "n (two d) 1 1 -> two n d", two=2)  # (2, n, d)
        mu, scale = h[0], F.softplus(h[1]) + self.min_scale
        return dist.Normal(mu, scale).to_event(1)


class BernoulliEncoder(nn.Module):
    r"""An inference network over binary codes, $q_\phi(z \mid x) = \prod_i \mathrm{Bernoulli}(z_i; \sigma(\ell_{\phi,i}(x)))$.

    The trunk of [`GaussianEncoder`][kldiv.nn.GaussianEncoder], ending in
    $d$ logits $\ell_\phi(x)$. Its samples cannot be reparameterised: give it
    to ``DataDensity(encoder, reparameterized=False)``, and the compiler
    estimates the encoder's gradient by the score function.

    Arguments:
        image_shape: ``(C, H, W)`` with $H = W$.
        latent_dim: the number $d$ of bits.
        width: the channel width $w$ of the first layer.
        init_std: standard deviation of [`init_weights`][kldiv.nn.init_weights];
            ``None`` keeps PyTorch's initialisation.
    """

    def __init__(self, image_shape: Sequence[int], latent_dim: int, width: int = 64, *,
                 init_std: float | None = 0.02):
        super().__init__()
        c, _, k, s0 = _size_plan(image_shape)
        self.image_shape = tuple(int(s) for s in image_shape)
        self.latent_dim = count("latent_dim", latent_dim, minimum=1)
        width, init_std = count("width", width, minimum=1), _init_std(init_std)
        trunk, ch = _conv_trunk(c, k, width, batch_norm=True, slope=0.2)
        self.net = nn.Sequential(trunk, nn.Conv2d(ch, self.latent_dim, s0, 1, 0))
        if init_std is not None:
            init_weights(self, init_std)

    def forward(self, x: Tensor) -> dist.Distribution:
        """``pyro.distributions.Bernoulli(logits=...).to_event(1)``: batch ``(n,)``, event ``(d,)``."""
        _expect(self, "x", x, self.image_shape)
        return dist.Bernoulli(logits=self.net(x).flatten(1)).to_event(1)


class EnergyX(nn.Module):
    r"""An energy network on images, $x \mapsto f_\alpha(x) = -\operatorname{softplus}(h_\alpha(x))$.

    $h_\alpha$ is a stack of stride-2 4×4 convolutions with LeakyReLU(0.1)
    down to $s_0 \times s_0$ and an $s_0 \times s_0$ convolution to one number;
    with ``spectral_norm=True`` every layer is spectrally normalised
    (Miyato et al. 2018), as in the code of Han et al. 2020; with
    ``spectral_norm=False`` it has neither spectral nor batch normalisation,
    as in the code of Han et al. 2019 (the divergence triangle).

    The energy is $E = \operatorname{softplus}(h) \ge 0$ and the network
    returns its negative, $f = -E$, the log unnormalised density of
    [`MarginalEBM`][kldiv.MarginalEBM]; ``bounded=False`` returns $f = h$,
    the unbounded scalar of the descriptor networks of Xie et al. (2021),
    whose maximum-likelihood training a cap $f \le 0$ would hamper.

    Arguments:
        image_shape: ``(C, H, W)`` with $H = W$.
        width: the channel width $w$ of the first layer.
        spectral_norm: spectrally normalise every layer.
        bounded: return $-\operatorname{softplus}(h)$ (energy $\ge 0$) rather than $h$.
        init_std: standard deviation of [`init_weights`][kldiv.nn.init_weights];
            ``None`` keeps PyTorch's initialisation.

    """

    def __init__(
        self,
        image_shape: Sequence[int],
        width: int = 64,
        spectral_norm: bool = True,
        *,
        bounded: bool = True,
        init_std: float | None = 0.02,
    ):
        super().__init__()
        c, _, k, s0 = _size_plan(image_shape)
        self.bounded = bounded
        self.image_shape = tuple(int(s) for s in image_shape)
        width, init_std = count("width", width, minimum=1), _init_std(init_std)
        trunk, ch = _conv_trunk(c, k, width, batch_norm=False, slope=0.1)
        self.net = nn.Sequential(trunk, nn.Conv2d(ch, 1, s0, 1, 0))
        if init_std is not None:
            init_weights(self, init_std)
        _spectral(self, spectral_norm)

    def forward(self, x: Tensor) -> Tensor:
        r"""The log unnormalised density $f_\alpha(x)$.

        Arguments:
            x: images of shape ``(n, C, H, W)``.

        Returns:
            $f(x) = -\operatorname{softplus}(h_\alpha(x))$ (or $h_\alpha(x)$ if not
            ``bounded``), shape ``(n,)``.
        """
        _expect(self, "x", x, self.image_shape)
        h = rearrange(self.net(x), "n 1 1 1 -> n")  # (n,)
        return _neg_softplus(h) if self.bounded else h


class Descriptor(nn.Module):
    r"""The descriptor of variational MCMC teaching on MNIST (Xie, Zheng & Li 2021), $x \mapsto f_\alpha(x)$.

    $$ x \xrightarrow{\text{conv } 5{\times}5/2,\ w} \xrightarrow{\text{conv } 3{\times}3/2,\ 2w}
       \xrightarrow{\text{conv } 3{\times}3/1,\ 4w} \xrightarrow{\text{full conv},\ K}
       \; f_\alpha(x) = \sum_{k=1}^{K} h_k(x), $$

    LeakyReLU(0.2) after every hidden convolution, no batch or spectral
    normalisation, an unbounded output.  Summing $K = 100$ outputs rather
    than reading one gives each chain's gradient $\nabla_x f$ many directions
    to follow: with a single output (`EnergyX`) the Langevin chains of a step
    end near the same image.  At 28×28 and $w = 64$: $28 \to 14 \to 7 \to 7 \to 1$.

    Arguments:
        image_shape: ``(C, H, W)``.
        width: the channels $w$ of the first convolution (64 in the authors' code).
        outputs: the number $K$ of summed outputs (100 in the authors' code).
        init_std: standard deviation of [`init_weights`][kldiv.nn.init_weights]
            (0.005 in the authors' code); ``None`` keeps PyTorch's initialisation.

    Examples:
        >>> import torch
        >>> from kldiv.nn import Descriptor
        >>> Descriptor((1, 28, 28), width=4)(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2])
    """

    def __init__(self, image_shape: Sequence[int], width: int = 64, outputs: int = 100, *,
                 init_std: float | None = 0.005):
        super().__init__()
        sizes = _shape("image_shape", image_shape)
        if len(sizes) != 3:
            raise ValueError(f"image_shape must be (C, H, W), got {sizes}")
        c, h, w = sizes
        width, outputs = count("width", width, minimum=1), count("outputs", outputs, minimum=1)
        init_std = _init_std(init_std)
        if h < 8 or w < 8:
            raise ValueError(f"the descriptor needs images of at least 8x8, got {h}x{w}")
        self.image_shape = (c, h, w)
        side = lambda n, k, s, p: (n + 2 * p - k) // s + 1  # noqa: E731
        top = (side(side(h, 5, 2, 2), 3, 2, 1), side(side(w, 5, 2, 2), 3, 2, 1))
        self.net = nn.Sequential(
            nn.Conv2d(c, width, 5, 2, 2), nn.LeakyReLU(0.2),
            nn.Conv2d(width, 2 * width, 3, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(2 * width, 4 * width, 3, 1, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(4 * width, int(outputs), top, 1, 0),
        )
        if init_std is not None:
            init_weights(self, init_std)

    def forward(self, x: Tensor) -> Tensor:
        r"""The log unnormalised density $f_\alpha(x) = \sum_k h_k(x)$.

        Arguments:
            x: images of shape ``(n, C, H, W)``.

        Returns:
            $f(x)$, shape ``(n,)``.
        """
        _expect(self, "x", x, self.image_shape)
        return self.net(x).flatten(1).sum(1)  # (n, K, 1, 1) -> (n,)


class EnergyXZ(nn.Module):
    r"""A latent energy network $(x, z) \mapsto f_\alpha(x, z) = -\operatorname{softplus}(h_\alpha(x, z))$.

    Two branches joined at the top (the latent EBM of Han et al. 2020):

    $$ u = \mathrm{CNN}(x), \qquad v = \mathrm{MLP}(z), \qquad
       h_\alpha(x, z) = \mathrm{MLP}\big([u; v]\big) \in \mathbb R. $$

    The $x$-branch is the convolutional stack of [`EnergyX`][kldiv.nn.EnergyX]
    ending in an $s_0 \times s_0$ convolution to ``hidden`` features; the
    $z$-branch is two linear layers; all activations are LeakyReLU(0.1) and,
    with ``spectral_norm=True``, every layer is spectrally normalised
    (Miyato et al. 2018).  The network returns $f = -\operatorname{softplus}(h)$,
    the log unnormalised density of [`LatentEBM`][kldiv.LatentEBM] (energy
    $\ge 0$, as the authors' code); ``bounded=False`` returns $f = h$.

    Arguments:
        image_shape: ``(C, H, W)`` with $H = W$.
        latent_dim: the dimension $d$ of $z$.
        width: the channel width $w$ of the first convolution.
        spectral_norm: spectrally normalise every layer.
        bounded: return $-\operatorname{softplus}(h)$ (energy $\ge 0$) rather than $h$.
        hidden: features of each branch and of the joint layer
            (default: the channels of the top convolution, $2^{k-1} w$).
        init_std: standard deviation of [`init_weights`][kldiv.nn.init_weights];
            ``None`` keeps PyTorch's initialisation.

    """

    def __init__(
        self,
        image_shape: Sequence[int],
        latent_dim: int,
        width: int = 64,
        spectral_norm: bool = True,
        *,
        bounded: bool = True,
        hidden: int | None = None,
        init_std: float | None = 0.02,
    ):
        super().__init__()
        c, _, k, s0 = _size_plan(image_shape)
        self.image_shape = tuple(int(s) for s in image_shape)
        self.latent_dim = count("latent_dim", latent_dim, minimum=1)
        self.bounded = bool(bounded)
        width, init_std = count("width", width, minimum=1), _init_std(init_std)
        trunk, ch = _conv_trunk(c, k, width, batch_norm=False, slope=0.1)
        hidden = ch if hidden is None else count("hidden", hidden, minimum=1)
        self.x_branch = nn.Sequential(trunk, nn.Conv2d(ch, hidden, s0, 1, 0), nn.LeakyReLU(0.1))
        self.z_branch = nn.Sequential(
            nn.Linear(self.latent_dim, hidden), nn.LeakyReLU(0.1),
            nn.Linear(hidden, hidden), nn.LeakyReLU(0.1),
        )
        self.joint = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.LeakyReLU(0.1), nn.Linear(hidden, 1))
        if init_std is not None:
            init_weights(self, init_std)
        _spectral(self, spectral_norm)

    def forward(self, x: Tensor, z: Tensor) -> Tensor:
        r"""The log unnormalised density $f_\alpha(x, z)$.

        Arguments:
            x: images of shape ``(n, C, H, W)``.
            z: latent vectors of shape ``(n, d)``.

        Returns:
            $f(x, z) = -\operatorname{softplus}(h_\alpha(x, z))$ (or $h_\alpha(x, z)$ when not
            ``bounded``), shape ``(n,)``.
        """
        _expect(self, "x", x, self.image_shape)
        _expect(self, "z", z, (self.latent_dim,))
        u = rearrange(self.x_branch(x), "n h 1 1 -> n h")  # (n, hidden)
        v = self.z_branch(z)  # (n, hidden)
        h = rearrange(self.joint(torch.cat([u, v], dim=1)), "n 1 -> n")
        return _neg_softplus(h) if self.bounded else h


class MLPGenerator(nn.Module):
    r"""A multilayer perceptron generator $z \mapsto g_\theta(z)$ for 2-D toys and tiny images.

    $$ g_\theta(z) = W_L\, a(\cdots a(W_1 z + b_1) \cdots) + b_L, $$

    reshaped to ``out_shape``, optionally squashed by $\tanh$ into $[-1, 1]$
    (for images).

    Arguments:
        latent_dim: the dimension $d$ of $z$.
        out_shape: shape of one output, e.g. ``2`` or ``(1, 8, 8)``.
        hidden: sizes of the hidden layers.
        activation: ``"leaky_relu"`` (slope 0.2), ``"leaky_relu_0.1"``, ``"relu"``,
            ``"elu"``, ``"silu"``, ``"softplus"`` or ``"tanh"``.
        tanh: squash the output into $[-1, 1]$.
        init_std: standard deviation of [`init_weights`][kldiv.nn.init_weights];
            ``None`` (the default) keeps PyTorch's initialisation, which suits
            an MLP without batch norm better than $\mathcal N(0, 0.02^2)$.

    """

    def __init__(
        self,
        latent_dim: int,
        out_shape: int | Sequence[int],
        hidden: Sequence[int] = (128, 128),
        *,
        activation: str = "leaky_relu",
        tanh: bool = False,
        init_std: float | None = None,
    ):
        super().__init__()
        self.latent_dim = count("latent_dim", latent_dim, minimum=1)
        self.out_shape = _shape("out_shape", out_shape)
        init_std = _init_std(init_std)
        self.net = _mlp([self.latent_dim, *_hidden(hidden), math.prod(self.out_shape)], activation)
        self.tanh = tanh
        if init_std is not None:
            init_weights(self, init_std)

    def forward(self, z: Tensor) -> Tensor:
        r"""The output $g_\theta(z)$.

        Arguments:
            z: latent vectors of shape ``(n, d)``.

        Returns:
            A tensor of shape ``(n, *out_shape)``.
        """
        _expect(self, "z", z, (self.latent_dim,))
        out = self.net(z)  # (n, D)
        if self.tanh:
            out = torch.tanh(out)
        return out.reshape(out.shape[0], *self.out_shape)  # (n, *out_shape)


class MLPEncoder(nn.Module):
    r"""A multilayer perceptron inference network $q_\phi(z \mid x) = \mathcal N(\mu_\phi(x), \operatorname{diag} s_\phi(x)^2)$.

    $x$ is flattened, an MLP gives $(\mu, \rho) \in \mathbb R^{2d}$ and
    $s_\phi = \operatorname{softplus}(\rho) + s_{\min}$.

    Arguments:
        in_shape: shape of one input, e.g. ``2`` or ``(1, 8, 8)``.
        latent_dim: the dimension $d$ of $z$.
        hidden: sizes of the hidden layers.
        activation: as in [`MLPGenerator`][kldiv.nn.MLPGenerator].
        min_scale: the floor $s_{\min}$ of the standard deviation.
        init_std: standard deviation of [`init_weights`][kldiv.nn.init_weights];
            ``None`` (the default) keeps PyTorch's initialisation.

    """

    def __init__(
        self,
        in_shape: int | Sequence[int],
        latent_dim: int,
        hidden: Sequence[int] = (128, 128),
        *,
        activation: str = "leaky_relu",
        min_scale: float = 1e-3,
        init_std: float | None = None,
    ):
        super().__init__()
        self.in_shape = _shape("in_shape", in_shape)
        self.latent_dim = count("latent_dim", latent_dim, minimum=1)
        self.min_scale = positive_number("min_scale", min_scale)
        init_std = _init_std(init_std)
        self.net = _mlp([math.prod(self.in_shape), *_hidden(hidden), 2 * self.latent_dim], activation)
        if init_std is not None:
            init_weights(self, init_std)

    def forward(self, x: Tensor) -> dist.Distribution:
        r"""The distribution $q_\phi(z \mid x)$.

        Arguments:
            x: inputs of shape ``(n, *in_shape)``.

        Returns:
            ``pyro.distributions.Normal(mu, scale).to_event(1)``: batch shape
                ``(n,)``, event shape ``(d,)``.
        """
        _expect(self, "x", x, self.in_shape, flat=True)
        h = self.net(rearrange(x, "n ... -> n (...)"))  # (n, 2d)
        mu, rho = rearrange(h, "n (two d) -> two n d", two=2)
        return dist.Normal(mu, F.softplus(rho) + self.min_scale).to_event(1)


class MLPEnergy(nn.Module):
    r"""A multilayer perceptron energy network, $f_\alpha(x)$ or $f_\alpha(x, z)$.

    $$ f_\alpha(x, z) = -\operatorname{softplus}\big(h_\alpha([x; z])\big) \quad\text{or}\quad
       f_\alpha(x) = -\operatorname{softplus}\big(h_\alpha(x)\big), $$

    with $h_\alpha$ an MLP on the flattened input (with $z$ concatenated when
    ``latent_dim`` is given); ``bounded=False`` returns $f = h_\alpha$ instead.
    Optionally spectrally normalised (Miyato et al. 2018).

    Arguments:
        in_shape: shape of one $x$, e.g. ``2`` or ``(1, 8, 8)``.
        latent_dim: the dimension of $z$ for a latent EBM (``forward(x, z)``),
            or ``None`` for an EBM on $x$ alone (``forward(x)``).
        hidden: sizes of the hidden layers.
        activation: as in [`MLPGenerator`][kldiv.nn.MLPGenerator]; default
            LeakyReLU(0.1) as in Han et al. 2020.
        spectral_norm: spectrally normalise every layer.
        bounded: return $-\operatorname{softplus}(h)$ (energy $\ge 0$) rather than $h$.
        init_std: standard deviation of [`init_weights`][kldiv.nn.init_weights];
            ``None`` (the default) keeps PyTorch's initialisation.

    """

    def __init__(
        self,
        in_shape: int | Sequence[int],
        latent_dim: int | None = None,
        hidden: Sequence[int] = (128, 128),
        *,
        activation: str = "leaky_relu_0.1",
        spectral_norm: bool = False,
        bounded: bool = True,
        init_std: float | None = None,
    ):
        super().__init__()
        self.in_shape = _shape("in_shape", in_shape)
        self.latent_dim = None if latent_dim is None else count("latent_dim", latent_dim, minimum=1)
        self.bounded = bounded
        init_std = _init_std(init_std)
        d_in = math.prod(self.in_shape) + (self.latent_dim or 0)
        self.net = _mlp([d_in, *_hidden(hidden), 1], activation)
        if init_std is not None:
            init_weights(self, init_std)
        _spectral(self, spectral_norm)

    def forward(self, x: Tensor, z: Tensor | None = None) -> Tensor:
        r"""The log unnormalised density $f_\alpha(x)$ or $f_\alpha(x, z)$.

        Arguments:
            x: inputs of shape ``(n, *in_shape)``.
            z: latent vectors of shape ``(n, d)``; only (and always) for a latent EBM.

        Returns:
            $f$ of shape ``(n,)``.
        """
        _expect(self, "x", x, self.in_shape, flat=True)
        h = rearrange(x, "n ... -> n (...)")  # (n, D)
        if self.latent_dim is not None:
            if z is None:
                raise TypeError("this MLPEnergy is over (x, z): call it as energy(x, z)")
            _expect(self, "z", z, (self.latent_dim,), flat=True)
            h = torch.cat([h, rearrange(z, "n ... -> n (...)")], dim=1)  # (n, D + d)
        elif z is not None:
            raise TypeError("this MLPEnergy is over x alone (latent_dim=None): call it as energy(x)")
        out = rearrange(self.net(h), "n 1 -> n")  # (n,)
        return _neg_softplus(out) if self.bounded else out


class StandardNormalEncoder(nn.Module):
    r"""The prior as a conditional: $x \mapsto p(z) = \mathcal N(0, I)$, whatever $x$.

    No parameters.  As the encoder of a [`DataDensity`][kldiv.DataDensity] it
    makes the density $q_{\rm data}(x)\, p(z)$, so that, e.g.,
    ``KL(q, DataDensity(StandardNormalEncoder(d)))`` is
    $E_{q_{\rm data}}\big[\mathrm{KL}(q_\phi(z \mid x) \,\|\, p(z))\big]$, the
    regulariser of the VAE (Kingma & Welling 2014).

    Arguments:
        latent_dim: the dimension $d$ of $z$ (an int), or the shape of $z$.

    """

    def __init__(self, latent_dim: int | Sequence[int]):
        super().__init__()
        self.latent_shape = _shape("latent_dim", latent_dim)

    def forward(self, x: Tensor) -> dist.Distribution:
        r"""$\mathcal N(0, I)$ for each of the $n$ inputs.

        Arguments:
            x: any tensor whose first dimension is the batch size $n$.

        Returns:
            A standard normal with batch shape ``(n,)`` and event shape
                ``latent_shape``, on ``x``'s device and dtype.
        """
        zeros = x.new_zeros((x.shape[0], *self.latent_shape))  # (n, *latent)
        return dist.Normal(zeros, torch.ones_like(zeros)).to_event(len(self.latent_shape))

    def extra_repr(self) -> str:
        return f"latent_shape={self.latent_shape}"


class FrozenMeanEncoder(nn.Module):
    r"""A view of an encoder through its mean alone, with its parameters held fixed:
    $x \mapsto \mathcal N\big(\mu_\phi(x), s^2 I\big)$, differentiable in $x$ but not in $\phi$.

    $-\log \mathcal N(z; \mu_\phi(x), s^2 I) = \|z - \mu_\phi(x)\|^2 / (2 s^2) + \text{const}$,
    so with $s^2 = d/2$ an expectation of it under generated pairs is the
    latent loss $\sum \|\mu_q(G(h)) - h\|^2 / (B d)$ of the BiDVL code, whose
    encoder is frozen while it encodes the generated images (the gradient
    reaches the generator only).  The encoder runs as it is (in training
    mode it updates its batch-norm statistics, as in the code).

    Arguments:
        encoder: a network $x \mapsto$ a distribution with a ``mean`` (e.g.
            [`GaussianEncoder`][kldiv.nn.GaussianEncoder]).
        scale: the fixed standard deviation $s$.
    """

    def __init__(self, encoder: nn.Module, scale: float):
        super().__init__()
        self.encoder = network("encoder", encoder)
        self.scale = positive_number("scale", scale)

    def forward(self, x: Tensor) -> dist.Distribution:
        r"""The distribution $\mathcal N(\mu_\phi(x), s^2 I)$ with $\phi$ detached."""
        frozen = {k: p.detach() for k, p in self.encoder.named_parameters()}
        mu = torch.func.functional_call(self.encoder, frozen, (x,)).mean  # (n, d)
        return dist.Normal(mu, torch.full_like(mu, self.scale)).to_event(1)
