"""A variational auto-encoder (Kingma & Welling 2014): the baseline the joint models are measured against.

Two joint densities of an image x and a latent z,

    q(x, z) = q_data(x) q_phi(z|x)      the data density (encoder phi)
    p(x, z) = p(z) p_theta(x|z)         the generator density (decoder theta)

and one divergence, minimised by both networks,

    min_theta min_phi  KL(q || p; z x beta),

the negative ELBO up to the data entropy; ``--kl-weight`` (beta) weighs the
z-factor (the beta-VAE of Higgins et al. 2017; 1 is the plain VAE).  The
compiler uses the closed-form KL of the encoder against N(0, I).

Launch:

    python recipes/vae.py                                  # embedded digits, CPU
    python recipes/vae.py --data mnist --data-root ../shared/data
    python -m kldiv.evaluate runs/vae                      # RMSE, Frechet distance, OOD AUROC of the -ELBO

Defaults are those of the generator and encoder of the latent-EBM recipe
(`recipes/latent_ebm.py`, Han et al. 2020, whose Tables 3 and 4 report
this VAE as their baseline): DCGAN networks of width 64, z in R^100,
sigma^2 = 1/2, Adam(0, 0.9) at 3e-4 with weight decay 1e-4 and a 0.998 decay
per epoch, batch 100; so the two recipes differ by the latent EBM alone.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from kldiv import KL, DataDensity, GeneratorDensity
from kldiv.train import Run, RunConfig, build_networks, option, parse_config


@dataclasses.dataclass
class Config(RunConfig):
    """A variational auto-encoder, KL(q || p)."""

    latent_dim: int = option(100, "dimension of z", at_least=1)
    width: int = option(64, "DCGAN channel width of both networks", at_least=1)
    sigma: float = option(math.sqrt(0.5), "observation noise of p(x|z)", above=0)
    kl_weight: float = option(1.0, "weight beta of the z-factor of KL(q || p) (1: the plain VAE)", at_least=0)
    lr: float = option(3e-4, "learning rate of the generator and the encoder", above=0)
    beta1: float = option(0.0, "Adam beta1", at_least=0, below=1)
    beta2: float = option(0.9, "Adam beta2", at_least=0, below=1)
    weight_decay: float = option(1e-4, "weight decay of the generator and the encoder", at_least=0)
    decay: float = option(0.998, "learning-rate decay per epoch", above=0, at_most=1)


PRESETS = {
    # as the latent-EBM recipe's: the embedded 8x8 digits at 16x16 on two CPU cores
    "digits": dict(image_size=16, latent_dim=16, width=32, steps=1500, log_every=50,
                   sample_every=500, checkpoint_every=500),
}


def networks(cfg: Config, shape: tuple[int, ...]) -> dict:
    """How to build the generator and the encoder (see `kldiv.train.build_networks`)."""
    return {
        "generator": ("kldiv.nn.Generator", dict(latent_dim=cfg.latent_dim, image_shape=shape, width=cfg.width)),
        "encoder": ("kldiv.nn.GaussianEncoder", dict(image_shape=shape, latent_dim=cfg.latent_dim, width=cfg.width)),
    }


def game(cfg: Config, G, I):
    """The densities and the game: one player, both networks, on KL(q || p; z x beta)."""
    q = DataDensity(I)
    p = GeneratorDensity(G, latent_shape=cfg.latent_dim, sigma=cfg.sigma, synthesis="mean")
    g = KL(q, p, weights={"z": cfg.kl_weight}).minimize(q, p, name="vae")
    return g, dict(q=q, p=p)


def optimizers(cfg: Config, nets: dict) -> tuple[dict, dict]:
    """One Adam over both networks; a per-epoch decay."""
    params = [*nets["generator"].parameters(), *nets["encoder"].parameters()]
    opt = torch.optim.Adam(params, cfg.lr, betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay)
    return {"vae": opt}, {"vae": torch.optim.lr_scheduler.ExponentialLR(opt, cfg.decay)}


def train_step(cfg: Config, run: Run, step, parts: dict, x: torch.Tensor):
    """One step: q's samples of z drawn, the VAE updated."""
    r = step.round(x, values=run.logging)
    run.update(r, "vae")
    return r


def main(argv=None) -> Run:
    cfg = parse_config(Config, argv, PRESETS)
    run = Run(cfg, name="vae")
    train = run.dataset()
    architecture = networks(cfg, tuple(train[0][0].shape))
    nets = build_networks(architecture)
    G, I = (run.prepare(nets[k]) for k in ("generator", "encoder"))
    g, parts = game(cfg, G, I)
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
