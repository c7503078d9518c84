"""Tiny networks and densities shared by the core tests (CPU, float64, milliseconds)."""

from __future__ import annotations

import pyro.distributions as dist
import torch
from torch import nn

from kldiv import DataDensity, DecoupledEBLVM, GeneratorDensity, LatentEBM, MarginalEBM


class Encoder(nn.Module):
    """x -> N(mu(x), diag sigma(x)^2) with a one-hidden-layer MLP."""

    def __init__(self, dx: int, dz: int, hidden: int = 16):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(dx, hidden), nn.Tanh(), nn.Linear(hidden, 2 * dz))

    def forward(self, x):
        mu, log_sigma = self.body(x).chunk(2, dim=-1)  # (n, dz) each
        return dist.Normal(mu, log_sigma.exp()).to_event(1)


class Decoder(nn.Module):
    def __init__(self, dz: int, dx: int, hidden: int = 16):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(dz, hidden), nn.Tanh(), nn.Linear(hidden, dx))

    def forward(self, z):
        return self.body(z)  # (n, dx)


class JointEnergy(nn.Module):
    """f(x, z) of shape (n, 1)."""

    def __init__(self, dx: int, dz: int, hidden: int = 16):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(dx + dz, hidden), nn.Tanh(), nn.Linear(hidden, 1))

    def forward(self, x, z):
        return self.body(torch.cat([x, z], dim=-1))


class Energy(nn.Module):
    """f(x) of shape (n,)."""

    def __init__(self, dx: int, hidden: int = 16):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(dx, hidden), nn.Tanh(), nn.Linear(hidden, 1))

    def forward(self, x):
        return self.body(x)[:, 0]


def triangle_parts(dx: int = 5, dz: int = 2, *, sigma: float = 0.5, synthesis: str = "mean", seed: int = 0):
    """Networks and densities of the latent-EBM triangle, in float64."""
    torch.manual_seed(seed)
    enc, dec, f = Encoder(dx, dz).double(), Decoder(dz, dx).double(), JointEnergy(dx, dz).double()
    q = DataDensity(enc)
    p = GeneratorDensity(dec, latent_shape=dz, sigma=sigma, synthesis=synthesis)
    pi = LatentEBM(f)
    return enc, dec, f, q, p, pi


def decoupled_parts(dx: int = 5, dz: int = 2, *, seed: int = 0):
    """Networks and densities of the 2019 triangle: Pi = pi(x) q(z|x) sharing the encoder."""
    torch.manual_seed(seed)
    enc, dec, f = Encoder(dx, dz).double(), Decoder(dz, dx).double(), Energy(dx).double()
    q = DataDensity(enc)
    p = GeneratorDensity(dec, latent_shape=dz, sigma=0.5)
    big_pi = DecoupledEBLVM(f, enc)
    return enc, dec, f, q, p, big_pi


def marginal_parts(dx: int = 3, *, seed: int = 0):
    torch.manual_seed(seed)
    f = Energy(dx).double()
    return f, DataDensity(), MarginalEBM(f)
