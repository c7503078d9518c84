"""The divergence triangle (Han, Nijkamp, Fang, Hill, Zhu & Wu, CVPR 2019; arXiv:1812.10907).

A generator density P(x, z) = p(z) p_theta(x|z), a data density
Q(x, z) = q_data(x) q_phi(z|x), and an energy-based model on x alone, coupled
with the inference model into Pi(x, z) = pi_alpha(x) q_phi(z|x), play

    min_theta min_phi max_alpha  KL(Q || P) + KL(P || Pi) - KL(Q || Pi).

log Z(alpha) cancels between KL(P || Pi) and KL(Q || Pi), and so does
log q_phi(z|x) inside KL(Q || Pi); the encoder learns from the VAE term
KL(Q || P) and, through KL(P || Pi), from recovering z from generated images
(the sleep phase of the wake-sleep algorithm).

The authors' code weighs two factors differently from the paper, and the
algebra says so with per-variable weights on the divergences (the default
follows the code; the paper is ``--kl-reduction sum --sleep-weight 1``):

    L = KL_{z x 1/nz}(Q || P) + KL_{z x 0.1}(P || Pi) - KL(Q || Pi)

- its encoder KL is a mean over batch *and* latent dimensions, 1/nz of the
  per-image KL(q(z|x) || N(0, I)) (``--kl-reduction mean``);
- its sleep term E_P[-log q(z|x)] has weight 0.1 for the encoder and the
  generator alike (``--sleep-weight``), while the energy term of KL(P || Pi)
  keeps weight 1: the weight is on the z-factors of KL(P || Pi).

Launch:

    python recipes/triangle.py                             # embedded digits, CPU
    python recipes/triangle.py --data mnist --data-root ../shared/data
    python recipes/triangle.py --data cifar10 --data-root data --download --amp bf16

Defaults follow the authors' code: decoder noise sigma^2 = 1/2 (a summed
squared reconstruction error), the closed-form KL, every player's gradient
norm clipped at 100 (``--clip-grad``), weight decay 5e-4 on the generator,
Adam(0.5, 0.999), learning rates 1e-4 (EBM) and 3e-4 (generator, encoder), a
0.998 decay per epoch, batch 100, and an energy network without batch or
spectral normalisation returning a raw, unbounded scalar (``--bounded``
caps it).  The code's energy network starts with a 3x3 convolution and uses
LeakyReLU(0.2); `kldiv.nn.EnergyX` is the 4x4 stride-2 stack of the 2020 code.
Update order per batch: E, then I, then G (``--schedule sequential``).
"""

from __future__ import annotations

import dataclasses
import math

import torch

from kldiv import KL, DataDensity, DecoupledEBLVM, GeneratorDensity
from kldiv.train import Run, RunConfig, build_networks, option, parse_config


@dataclasses.dataclass
class Config(RunConfig):
    """The divergence triangle (Han et al. 2019)."""

    latent_dim: int = option(100, "dimension of z", at_least=1)
    width: int = option(64, "DCGAN channel width of every network", at_least=1)
    sigma: float = option(math.sqrt(0.5), "observation noise of p(x|z) (the code's squared error: 1/sqrt 2)", above=0)
    kl_reduction: str = option("mean", "the encoder KL per latent dimension (the code) or summed (the paper)",
                               choices=("mean", "sum"))
    sleep_weight: float = option(0.1, "weight of the sleep term E_P[-log q(z|x)] (the code: 0.1, the paper: 1)",
                                 at_least=0)
    schedule: str = option("sequential", "update order", choices=("sequential", "simultaneous"))
    lr_ebm: float = option(1e-4, "learning rate of the EBM", above=0)
    lr_gen: float = option(3e-4, "learning rate of the generator", above=0)
    lr_enc: float = option(3e-4, "learning rate of the encoder", above=0)
    beta1: float = option(0.5, "Adam beta1", at_least=0, below=1)
    beta2: float = option(0.999, "Adam beta2", at_least=0, below=1)
    weight_decay: float = option(5e-4, "weight decay of the generator (the code: 5e-4)", at_least=0)
    decay: float = option(0.998, "learning-rate decay per epoch", above=0, at_most=1)
    clip_grad: float = option(100.0, "clip every player's gradient norm at this value (the code: 100; 0: off)")
    spectral_norm: bool = option(False, "spectral normalisation in the energy network (the code: none)")
    bounded: bool = option(False, "cap f <= 0 with -softplus (the code: a raw scalar)")


PRESETS = {
    "digits": dict(image_size=16, latent_dim=16, width=32, steps=1500, sample_every=500, checkpoint_every=500),
}

PLAYERS = ("ebm", "encoder", "generator")  # the code's update order


def networks(cfg: Config, shape: tuple[int, ...]) -> dict:
    """How to build the generator, the encoder and the energy (see `kldiv.train.build_networks`)."""
    return {
        "generator": ("kldiv.nn.Generator", dict(latent_dim=cfg.latent_dim, image_shape=shape, width=cfg.width)),
        "encoder": ("kldiv.nn.GaussianEncoder", dict(image_shape=shape, latent_dim=cfg.latent_dim, width=cfg.width)),
        "energy": ("kldiv.nn.EnergyX", dict(image_shape=shape, width=cfg.width, spectral_norm=cfg.spectral_norm,
                                            bounded=cfg.bounded)),
    }


def game(cfg: Config, G, I, E):
    """The densities and the game: everyone plays L; min over G and I, max over E."""
    Q = DataDensity(I, name="Q")
    P = GeneratorDensity(G, latent_shape=cfg.latent_dim, sigma=cfg.sigma, synthesis="mean", name="P")
    Pi = DecoupledEBLVM(E, I, name="Π")
    kl_weight = 1.0 / cfg.latent_dim if cfg.kl_reduction == "mean" else 1.0
    # the divergence triangle, with the code's weights on the z-factors
    L = KL(Q, P, weights={"z": kl_weight}) + KL(P, Pi, weights={"z": cfg.sleep_weight}) - KL(Q, Pi)
    g = L.maximize(Pi, name="ebm").minimize(Q, name="encoder").minimize(P, name="generator")
    return g, dict(Q=Q, P=P, Pi=Pi)


def optimizers(cfg: Config, nets: dict) -> tuple[dict, dict]:
    """Adam per player, with the code's rates, betas and weight decay; a per-epoch decay."""
    betas = (cfg.beta1, cfg.beta2)
    opts = {
        "ebm": torch.optim.Adam(nets["energy"].parameters(), cfg.lr_ebm, betas=betas),
        "encoder": torch.optim.Adam(nets["encoder"].parameters(), cfg.lr_enc, betas=betas),
        "generator": torch.optim.Adam(nets["generator"].parameters(), cfg.lr_gen, betas=betas,
                                      weight_decay=cfg.weight_decay),
    }
    return opts, {k: torch.optim.lr_scheduler.ExponentialLR(o, cfg.decay) for k, o in opts.items()}


def train_step(cfg: Config, run: Run, step, parts: dict, x: torch.Tensor):
    """One iteration: the samples drawn once, then E, I and G updated in turn (or all from one evaluation)."""
    r = step.round(x, values=run.logging)  # samples drawn once per iteration
    if cfg.schedule == "sequential":
        for player in PLAYERS:  # E, then I, then G
            run.update(r, player)
    else:
        run.update_all(r)
    return r


def main(argv=None) -> Run:
    cfg = parse_config(Config, argv, PRESETS)
    run = Run(cfg, name="triangle")
    train = run.dataset()
    architecture = networks(cfg, tuple(train[0][0].shape))
    nets = build_networks(architecture)
    G, I, E = (run.prepare(nets[k]) for k in ("generator", "encoder", "energy"))
    g, parts = game(cfg, G, I, E)
    step = g.compile()
    opts, scheds = optimizers(cfg, nets)
    run.attach(step, nets, opts, scheds, architecture=architecture)
    if run.is_main and run.step == 0:
        print(step.explain())

    fixed_z = torch.randn(100, cfg.latent_dim, generator=torch.Generator().manual_seed(cfg.seed)).to(run.device)
    for x in run.batches(train):
        train_step(cfg, run, step, parts, x)
        run.end_step()
        if run.should_sample():
            run.snapshot(G, fixed_z, I, x)
    run.close()
    return run


if __name__ == "__main__":
    main()
