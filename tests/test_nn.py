"""The papers' networks: shapes, distributions, spectral norm, initialisation, and use in kldiv."""

from __future__ import annotations

import math

import pyro.distributions as dist
import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from kldiv import KL, DataDensity, DecoupledEBLVM, GeneratorDensity, LatentEBM
from kldiv.nn import (
    EnergyX,
    EnergyXZ,
    GaussianEncoder,
    Generator,
    MLPEncoder,
    MLPEnergy,
    MLPGenerator,
    StandardNormalEncoder,
    init_weights,
)

SHAPES = [(1, 8, 8), (1, 16, 16), (1, 28, 28), (3, 32, 32), (3, 64, 64)]
D = 5  # latent dimension
N = 3  # batch size
WIDTH = 4



@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# ---------------------------------------------------------------------------------------
# shapes
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", SHAPES)
def test_generator_shape_and_range(shape):
    g = Generator(D, shape, width=WIDTH)
    x = g(torch.randn(N, D))
    assert x.shape == (N, *shape)
    assert x.abs().max() <= 1.0  # tanh output


@pytest.mark.parametrize("shape", SHAPES)
def test_encoder_returns_diagonal_gaussian(shape):
    enc = GaussianEncoder(shape, D, width=WIDTH)
    q = enc(torch.rand(N, *shape) * 2 - 1)
    assert isinstance(q, dist.Distribution)
    assert q.batch_shape == (N,)
    assert q.event_shape == (D,)
    assert q.has_rsample
    z = q.rsample()
    assert z.shape == (N, D)
    assert q.log_prob(z).shape == (N,)
    assert (q.base_dist.scale >= enc.min_scale).all()
    z.sum().backward()  # reparameterised: the gradient reaches the encoder
    assert all(p.grad is not None for p in enc.parameters())


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("sn", [True, False])
def test_energies_return_one_number_per_sample(shape, sn):
    x = torch.rand(N, *shape) * 2 - 1
    fx = EnergyX(shape, width=WIDTH, spectral_norm=sn)(x)
    fxz = EnergyXZ(shape, D, width=WIDTH, spectral_norm=sn)(x, torch.randn(N, D))
    for f in (fx, fxz):
        assert f.shape == (N,)
        assert (f <= 0).all()  # f = -softplus(h), the energy softplus(h) is non-negative


@pytest.mark.parametrize("cls", [EnergyX, EnergyXZ])
def test_unbounded_energies_return_the_raw_scalar(cls):
    # bounded=False gives h itself, the network whose -softplus(h) the bounded one returns
    shape, x, z = SHAPES[0], torch.rand(N, *SHAPES[0]) * 2 - 1, torch.randn(N, D)
    args = (shape,) if cls is EnergyX else (shape, D)
    inputs = (x,) if cls is EnergyX else (x, z)
    torch.manual_seed(0)
    bounded = cls(*args, width=WIDTH, spectral_norm=False)
    torch.manual_seed(0)
    raw = cls(*args, width=WIDTH, spectral_norm=False, bounded=False)
    h = raw(*inputs)
    torch.testing.assert_close(bounded(*inputs), -torch.nn.functional.softplus(h))
    assert h.shape == (N,)


@pytest.mark.parametrize("bad", [(1, 30, 30), (1, 28, 32), (3, 12, 12), (32, 32)])
def test_unsupported_image_shapes_are_refused(bad):
    with pytest.raises(ValueError):
        Generator(D, bad, width=WIDTH)


def test_mlp_variants():
    z = torch.randn(N, 2)
    assert MLPGenerator(2, 2, hidden=(8,))(z).shape == (N, 2)
    img = MLPGenerator(2, (1, 8, 8), hidden=(8, 8), tanh=True)(z)
    assert img.shape == (N, 1, 8, 8) and img.abs().max() <= 1
    q = MLPEncoder((1, 8, 8), 3, hidden=(8,))(img)
    assert q.batch_shape == (N,) and q.event_shape == (3,)
    assert q.rsample().shape == (N, 3)
    fx = MLPEnergy(2, hidden=(8,))
    fxz = MLPEnergy((1, 8, 8), latent_dim=3, hidden=(8,), spectral_norm=True)
    assert fx(z).shape == (N,)
    assert fxz(img, q.rsample()).shape == (N,)
    assert MLPEnergy(2, hidden=(8,), bounded=False)(z).shape == (N,)
    with pytest.raises(TypeError, match="energy\\(x, z\\)"):
        fxz(img)
    with pytest.raises(TypeError, match="energy\\(x\\)"):
        fx(z, z)
    with pytest.raises(ValueError, match="activation"):
        MLPGenerator(2, 2, activation="gelu-ish")


def test_standard_normal_encoder():
    enc = StandardNormalEncoder(4)
    assert list(enc.parameters()) == []
    x = torch.zeros(N, 2, dtype=torch.float64)
    p = enc(x)
    assert p.batch_shape == (N,) and p.event_shape == (4,)
    z = p.sample()
    assert z.dtype == torch.float64 and z.device == x.device
    expected = -0.5 * (z.square().sum(1) + 4 * math.log(2 * math.pi))
    assert torch.allclose(p.log_prob(z), expected, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------
# spectral norm and initialisation
# ---------------------------------------------------------------------------------------
def _layers(net):
    return [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def _energy_and_inputs(kind: str, sn: bool):
    if kind == "x":
        return EnergyX((3, 32, 32), width=WIDTH, spectral_norm=sn), (torch.randn(2, 3, 32, 32),)
    if kind == "xz":
        net = EnergyXZ((3, 32, 32), D, width=WIDTH, spectral_norm=sn)
        return net, (torch.randn(2, 3, 32, 32), torch.randn(2, D))
    net = MLPEnergy(2, latent_dim=2, hidden=(16, 16), spectral_norm=sn)
    return net, (torch.randn(2, 2), torch.randn(2, 2))


@pytest.mark.parametrize("kind", ["x", "xz", "mlp"])
def test_spectral_norm_on_every_layer_when_asked(kind):
    with_sn, inputs = _energy_and_inputs(kind, True)
    without, _ = _energy_and_inputs(kind, False)
    assert all(parametrize.is_parametrized(m, "weight") for m in _layers(with_sn))
    assert not any(parametrize.is_parametrized(m, "weight") for m in _layers(without))
    # no batch norm in an energy network (neither the 2019 nor the 2020 code has it)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in with_sn.modules())
    # after power iterations (one per training-mode call) every weight has spectral norm ≈ 1
    with torch.no_grad():
        for _ in range(30):
            with_sn(*inputs)
    for m in _layers(with_sn):
        sigma = torch.linalg.matrix_norm(m.weight.detach().flatten(1), ord=2)
        assert sigma.item() == pytest.approx(1.0, abs=1e-2)


def _assert_normal(values: torch.Tensor, mean: float, std: float):
    """Sample mean and std within 6 standard errors (SE of the mean σ/√n, of the std σ/√(2n))."""
    n = values.numel()
    assert abs(values.mean().item() - mean) < 6 * std / math.sqrt(n)
    assert abs(values.std().item() - std) < 6 * std / math.sqrt(2 * n)


def test_init_weights_statistics():
    layer = init_weights(nn.Linear(1000, 1000))  # 10⁶ weights
    _assert_normal(layer.weight.detach(), 0.0, 0.02)
    assert (layer.bias == 0).all()
    bn = init_weights(nn.BatchNorm2d(4096))
    _assert_normal(bn.weight.detach(), 1.0, 0.02)
    assert (bn.bias == 0).all()
    wide = init_weights(nn.Linear(500, 500), std=0.1)
    _assert_normal(wide.weight.detach(), 0.0, 0.1)


def test_constructors_apply_dcgan_init():
    g = Generator(100, (3, 64, 64), width=64)
    first = g.net[0]  # ConvTranspose2d(100, 512, 4): 819,200 weights
    assert first.weight.numel() == 100 * 512 * 16
    _assert_normal(first.weight.detach(), 0.0, 0.02)
    _assert_normal(g.net[1].weight.detach(), 1.0, 0.02)
    e = EnergyX((3, 64, 64), width=32)  # spectral norm: the *unnormalised* weight is initialised
    big = _layers(e)[-2]  # Conv2d(128, 256, 4): 524,288 weights
    _assert_normal(big.parametrizations.weight.original.detach(), 0.0, 0.02)
    default = Generator(8, (1, 28, 28), width=WIDTH, init_std=None)
    assert default.net[1].weight.detach().eq(1).all()  # PyTorch's default kept


# ---------------------------------------------------------------------------------------
# the networks in kldiv games
# ---------------------------------------------------------------------------------------
def _assert_finite_grads(*nets):
    for net in nets:
        grads = [p.grad for p in net.parameters() if p.requires_grad]
        assert grads, type(net).__name__
        assert all(g is not None and torch.isfinite(g).all() for g in grads), type(net).__name__
        assert sum(g.abs().sum() for g in grads) > 0, type(net).__name__


@pytest.mark.parametrize("shape", [(1, 16, 16), (1, 28, 28), (3, 32, 32)])
def test_latent_ebm_triangle_gives_every_network_a_gradient(shape):
    p = GeneratorDensity(Generator(D, shape, width=WIDTH), latent_shape=D, sigma=0.3)
    q = DataDensity(GaussianEncoder(shape, D, width=WIDTH))
    pi = LatentEBM(EnergyXZ(shape, D, width=WIDTH))
    L = KL(q, p) + KL(p, pi) - KL(q, pi)
    step = L.minimize(p, q).maximize(pi).compile()
    out = step(torch.rand(8, *shape) * 2 - 1)
    out.backward()
    assert all(torch.isfinite(v) for v in out.values.values())
    _assert_finite_grads(p.decoder, q.encoder, pi.energy)


def test_decoupled_triangle_with_the_2019_energy():
    shape = (1, 16, 16)
    enc = GaussianEncoder(shape, D, width=WIDTH)
    q = DataDensity(enc)
    p = GeneratorDensity(Generator(D, shape, width=WIDTH), latent_shape=D, sigma=0.3)
    Pi = DecoupledEBLVM(EnergyX(shape, width=WIDTH, spectral_norm=False), enc)
    L = KL(q, p) + KL(p, Pi) - KL(q, Pi)
    out = L.minimize(p, q).maximize(Pi).compile()(torch.rand(8, *shape) * 2 - 1)
    out.backward()
    _assert_finite_grads(p.decoder, enc, Pi.energy)


def test_mlp_triangle_on_2d_points():
    p = GeneratorDensity(MLPGenerator(2, 2, hidden=(16,)), latent_shape=2, sigma=0.3)
    q = DataDensity(MLPEncoder(2, 2, hidden=(16,)))
    pi = LatentEBM(MLPEnergy(2, latent_dim=2, hidden=(16,)))
    L = KL(q, p) + KL(p, pi) - KL(q, pi)
    out = L.minimize(p, q).maximize(pi).compile()(torch.randn(16, 2))
    out.backward()
    _assert_finite_grads(p.decoder, q.encoder, pi.energy)


def test_standard_normal_encoder_writes_the_vae_regulariser():
    enc = MLPEncoder(2, 2, hidden=(16,))
    q = DataDensity(enc)
    prior = DataDensity(StandardNormalEncoder(2), name="p0")
    x = torch.randn(64, 2)
    step = KL(q, prior).minimize(q).compile()
    out = step(x)
    out.backward()
    _assert_finite_grads(enc)
    # the estimate is unbiased for E_x KL(q(z|x) ‖ N(0, I)): compare over many draws
    with torch.no_grad():
        qx = enc(x)
        exact = torch.distributions.kl_divergence(
            torch.distributions.Normal(qx.base_dist.loc, qx.base_dist.scale),
            torch.distributions.Normal(0.0, 1.0),
        ).sum(1).mean()
        estimates = torch.stack([step(x).values["q"] for _ in range(200)])
    se = estimates.std() / math.sqrt(len(estimates))
    assert abs(estimates.mean() - exact) < 6 * se + 1e-6
