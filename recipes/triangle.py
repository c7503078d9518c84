"""The divergence triangle (Han, Nijkamp, Fang, Hill, Zhu & Wu, CVPR 2019; arXiv:1812.10907).

A generator density P(x, z) = p(z) p_theta(x|z), a data density
Q(x, z) = q_data(x) q_phi(z|x), and an energy-based model on x alone, coupled
with the inference model into Pi(x, z) = pi_alpha(x) q_phi(z|x), play

    min_theta min_phi max_alpha  KL(Q || P) + KL(P || Pi) - KL(Q || Pi).

log Z(alpha) cancels between KL(P || Pi) and KL(Q || Pi), and so does
log q_phi(z|x) inside KL(Q || Pi); the encoder learns from the VAE term
KL(Q || P) and, through KL(P || Pi), from recovering z from generated images
(the sleep phase of the wake-sleep algorithm).  The authors' code weights
that sleep term by 0.1 (``--sleep-weight``); the paper's objective is 1.

Launch:

    python recipes/triangle.py                             # embedded digits, CPU
    python recipes/triangle.py --data mnist --data-root ../shared/data
    python recipes/triangle.py --data cifar10 --data-root data --download --amp bf16

Defaults follow the authors' code: decoder noise sigma^2 = 1/2 (a summed
squared reconstruction error), Adam(0.5, 0.999), learning rates 1e-4 (EBM)
and 3e-4 (generator, encoder), a 0.998 decay per epoch, batch 100, and an
energy network without batch or spectral normalisation.
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

    latent_dim: int = option(100, "dimension of z")
    width: int = option(64, "DCGAN channel width of every network")
    sigma: float = option(math.sqrt(0.5), "observation noise of p(x|z) (the code's squared error: 1/sqrt 2)")
    sleep_weight: float = option(0.1, "weight of the sleep term E_P[-log q(z|x)] for the encoder (paper: 1)")
    schedule: str = option("sequential", "update order", choices=("sequential", "simultaneous"))
    lr_ebm: float = option(1e-4, "learning rate of the EBM")
    lr_gen: float = option(3e-4, "learning rate of the generator")
    lr_enc: float = option(3e-4, "learning rate of the encoder")
    beta1: float = option(0.5, "Adam beta1")
    beta2: float = option(0.999, "Adam beta2")
    decay: float = option(0.998, "learning-rate decay per epoch")
    spectral_norm: bool = option(False, "spectral normalisation in the energy network (the code: none)")


PRESETS = {
    "digits": dict(image_size=16, latent_dim=16, width=32, steps=1500, sample_every=500, checkpoint_every=500),
}


def main(argv=None) -> Run:
    cfg = parse_config(Config, argv, PRESETS)
    run = Run(cfg, name="triangle")
    train = run.dataset()
    shape = tuple(train[0][0].shape)

    architecture = {
        "generator": ("kldiv.nn.Generator", dict(latent_dim=cfg.latent_dim, image_shape=shape, width=cfg.width)),
        "encoder": ("kldiv.nn.GaussianEncoder", dict(image_shape=shape, latent_dim=cfg.latent_dim, width=cfg.width)),
        "energy": ("kldiv.nn.EnergyX", dict(image_shape=shape, width=cfg.width, spectral_norm=cfg.spectral_norm)),
    }
    nets = build_networks(architecture)
    G, I, E = (run.prepare(nets[k]) for k in ("generator", "encoder", "energy"))

    Q = DataDensity(I, name="Q")
    P = GeneratorDensity(G, latent_shape=cfg.latent_dim, sigma=cfg.sigma, synthesis="mean", name="P")
    Pi = DecoupledEBLVM(E, I, name="Π")

    L = KL(Q, P) + KL(P, Pi) - KL(Q, Pi)  # the divergence triangle
    # For the encoder only the sleep term of KL(P || Pi) depends on it, so weighting
    # KL(P || Pi) weights the sleep phase.
    encoder_objective = KL(Q, P) + cfg.sleep_weight * KL(P, Pi) - KL(Q, Pi)
    game = (
        L.maximize(Pi, name="ebm")
        .minimize(Q, objective=encoder_objective, name="encoder")
        .minimize(P, name="generator")
    )
    step = game.compile()

    betas = (cfg.beta1, cfg.beta2)
    opts = {
        "ebm": torch.optim.Adam(nets["energy"].parameters(), cfg.lr_ebm, betas=betas),
        "encoder": torch.optim.Adam(nets["encoder"].parameters(), cfg.lr_enc, betas=betas),
        "generator": torch.optim.Adam(nets["generator"].parameters(), cfg.lr_gen, betas=betas),
    }
    scheds = {k: torch.optim.lr_scheduler.ExponentialLR(o, cfg.decay) for k, o in opts.items()}
    run.attach(step, nets, opts, scheds, architecture=architecture)
    if run.is_main and run.step == 0:
        print(step.explain())

    fixed_z = torch.randn(100, cfg.latent_dim, generator=torch.Generator().manual_seed(cfg.seed)).to(run.device)
    for x in run.batches(train):
        r = step.round(x)  # samples drawn once per iteration
        if cfg.schedule == "sequential":
            for player in ("ebm", "encoder", "generator"):
                run.update(r, player)
        else:
            run.update_all(r)
        run.end_step()
        if run.should_sample():
            run.snapshot(G, fixed_z, I, x)
    run.close()
    return run


if __name__ == "__main__":
    main()
