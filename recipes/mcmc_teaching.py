"""A VAE as an amortised sampler for an EBM: variational MCMC teaching (Xie, Zheng & Li, AAAI 2021).

An energy-based model pi_alpha(x) = exp f_alpha(x) / Z(alpha) is learned by
maximum likelihood, KL(q_data || pi); the gradient of log Z needs samples
from pi, drawn by "ancestral Langevin": start at a VAE sample g(z), z ~ N(0, I),
and revise it with a few Langevin steps on f.  The VAE (generator p and
encoder q) then learns from the revised samples alone, as if they were data:

    EBM:  min_alpha KL(q_data(x) || pi_alpha(x))                      (maximum likelihood)
    VAE:  min_{theta, phi} KL(q_rev(x) q_phi(z|x) || p(z) p_theta(x|z))  (x from the Langevin chains)

Launch:

    python recipes/mcmc_teaching.py                        # embedded digits, CPU
    python recipes/mcmc_teaching.py --data mnist --data-root ../shared/data
    python recipes/mcmc_teaching.py --data cifar10 --data-root data --download

Defaults follow the authors' code: Langevin without its noise term
(``--no-noise``) and with a Gaussian reference of sigma 0.016, 15 steps of
size 0.002 on CIFAR-10 (50 steps of 0.001 on MNIST), EBM Adam lr 0.009 with
beta1 0.5, VAE lr 2e-4.  With the reference the EBM's density is
exp f(x) N(x; 0, sigma_ref^2 I) / Z; the reference has no parameter, so it
enters no gradient.
"""

from __future__ import annotations

import dataclasses

import torch

from kldiv import KL, DataDensity, GeneratorDensity, MarginalEBM
from kldiv.samplers import Langevin
from kldiv.train import Run, RunConfig, build_networks, option, parse_config


@dataclasses.dataclass
class Config(RunConfig):
    """Variational MCMC teaching (Xie et al. 2021)."""

    latent_dim: int = option(100, "dimension of z")
    width: int = option(64, "DCGAN channel width of every network")
    sigma: float = option(0.3, "observation noise of p(x|z)")
    langevin_steps: int = option(15, "Langevin steps from each VAE sample")
    step_size: float = option(0.002, "Langevin step size delta")
    noise: bool = option(False, "add the Langevin noise term (the authors' code runs without)")
    sigma_ref: float = option(0.016, "Gaussian reference of the EBM (0: none)")
    lr_ebm: float = option(0.009, "learning rate of the EBM")
    lr_vae: float = option(2e-4, "learning rate of the generator and the encoder")
    beta1: float = option(0.5, "Adam beta1")
    beta2: float = option(0.999, "Adam beta2")
    spectral_norm: bool = option(False, "spectral normalisation in the energy network")
    bounded: bool = option(False, "cap f <= 0 with -softplus (the 2020 energies) instead of the "
                           "descriptor's unbounded scalar")


PRESETS = {
    "mnist": dict(langevin_steps=50, step_size=0.001),
    "fashion-mnist": dict(langevin_steps=50, step_size=0.001),
    "digits": dict(image_size=16, latent_dim=16, width=32, steps=1500, langevin_steps=30, step_size=0.001,
                   sample_every=500, checkpoint_every=500),
}


def main(argv=None) -> Run:
    cfg = parse_config(Config, argv, PRESETS)
    run = Run(cfg, name="mcmc_teaching")
    train = run.dataset()
    shape = tuple(train[0][0].shape)

    architecture = {
        "generator": ("kldiv.nn.Generator", dict(latent_dim=cfg.latent_dim, image_shape=shape, width=cfg.width)),
        "encoder": ("kldiv.nn.GaussianEncoder", dict(image_shape=shape, latent_dim=cfg.latent_dim, width=cfg.width)),
        "energy": ("kldiv.nn.EnergyX", dict(image_shape=shape, width=cfg.width, spectral_norm=cfg.spectral_norm,
                                            bounded=cfg.bounded)),
    }
    nets = build_networks(architecture)
    G, I, E = (run.prepare(nets[k]) for k in ("generator", "encoder", "energy"))

    p = GeneratorDensity(G, latent_shape=cfg.latent_dim, sigma=cfg.sigma, synthesis="mean")  # x^ = g(z^)
    langevin = Langevin(cfg.langevin_steps, cfg.step_size, init=p, noise=cfg.noise,
                        sigma_ref=cfg.sigma_ref or None)  # ancestral Langevin
    pi = MarginalEBM(E, sampler=langevin)
    q_data = DataDensity()  # the data, over x
    q_rev = DataDensity(I, x=pi, name="q_rev")  # the revised samples, taken as data, z ~ q(z|x)

    game = (
        KL(q_data, pi).minimize(pi, name="ebm")  # maximum likelihood; log Z paid by Langevin
        .minimize(p, q_rev, objective=KL(q_rev, p), name="vae")  # the VAE taught by the revised samples
    )
    step = game.compile()

    opts = {
        "ebm": torch.optim.Adam(nets["energy"].parameters(), cfg.lr_ebm, betas=(cfg.beta1, cfg.beta2)),
        "vae": torch.optim.Adam([*nets["generator"].parameters(), *nets["encoder"].parameters()], cfg.lr_vae,
                                betas=(cfg.beta1, cfg.beta2)),
    }
    run.attach(step, nets, opts, architecture=architecture)
    if run.is_main and run.step == 0:
        print(step.explain())

    fixed_z = torch.randn(100, cfg.latent_dim, generator=torch.Generator().manual_seed(cfg.seed)).to(run.device)
    for x in run.batches(train):
        r = step.round(x)  # z^ ~ N(0, I), x^ = g(z^), x~ = Langevin(x^): drawn once
        run.update(r, "ebm")
        run.update(r, "vae")
        run.end_step()
        if run.should_sample():
            run.snapshot(G, fixed_z, I, x)
            run.save_images("revised", r.samples(pi)["x"][:100])
    run.close()
    return run


if __name__ == "__main__":
    main()
