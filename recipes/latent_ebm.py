"""Joint training of a VAE and a latent EBM (Han, Nijkamp, Zhou, Pang, Zhu & Wu, CVPR 2020).

Three joint densities of an image x and a latent z,

    q(x, z)  = q_data(x) q_phi(z|x)          the data density (encoder phi)
    p(x, z)  = p(z) p_theta(x|z)             the generator density (decoder theta)
    pi(x, z) = exp f_alpha(x, z) / Z(alpha)  the latent EBM (energy alpha)

play the divergence triangle (eq. 10)

    min_theta min_phi max_alpha  KL(q || p) + KL(p || pi) - KL(q || pi),

in which log Z(alpha) cancels, so no MCMC is needed.  The encoder plays the
same objective (``--inference kl-minus``, eq. 15) or KL(q || p) + KL(q || pi)
(``--inference kl-plus``, eq. 17).  Algorithm 1 draws the synthesis and
inference samples once per iteration and then updates the EBM, the
inference model and the generator in turn (``--schedule sequential``, the
default); ``--schedule simultaneous`` updates all three from one evaluation
(cheaper: the energy runs twice instead of four times per step).

Launch:

    python recipes/latent_ebm.py                           # embedded digits, CPU, a few minutes
    python recipes/latent_ebm.py --data mnist --data-root ../shared/data --steps 30000
    python recipes/latent_ebm.py --data cifar10 --data-root data --download --amp bf16 --compile
    torchrun --nproc_per_node 4 recipes/latent_ebm.py --data cifar10 --data-root data
    python -m kldiv.evaluate runs/latent_ebm               # FID, RMSE, AUROC, ... of the run

Defaults are the paper's and its code's (DCGAN networks of width 64, z in
R^100, Adam(0, 0.9), learning rates 1e-4 for the EBM and 3e-4 for the
generator and encoder, weight decay 1e-4 on the generator and encoder, a
0.998 decay per epoch, batch 100, a spectrally normalised energy).  The
code's reconstruction loss is the summed squared error with weight 1: a
Gaussian decoder with sigma^2 = 1/2, the default ``--sigma``.  Its encoder
KL is the Monte Carlo one, log q(z|x) cancelling against -KL(q || pi), which
is what the algebra derives for eq. 15.  The code's generator and encoder
have width 48 and its energy width 64 (``--width 48 --energy-width 64``;
``--width`` alone sets all three networks).  The code's energy is capped,
f = -softplus(h) <= 0; ``--no-bounded`` uses the raw scalar f = h, which on
MNIST separates noise and constant images from the digits where the capped
energy does not (docs/tutorials/results.md).  On the embedded digits a CPU
preset (`PRESETS` below) makes the networks small so the run takes minutes.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from kldiv import KL, DataDensity, GeneratorDensity, LatentEBM
from kldiv.train import Run, RunConfig, build_networks, option, parse_config


@dataclasses.dataclass
class Config(RunConfig):
    """Joint training of a VAE and a latent EBM (Han et al. 2020)."""

    latent_dim: int = option(100, "dimension of z", at_least=1)
    width: int = option(64, "DCGAN channel width of the generator and the encoder, and of the energy "
                        "unless --energy-width is given", at_least=1)
    energy_width: int = option(0, "channel width of the energy network (0: --width); the code's "
                               "networks are --width 48 --energy-width 64", at_least=0)
    sigma: float = option(math.sqrt(0.5), "observation noise of p(x|z) (the code's squared error: 1/sqrt 2)", above=0)
    inference: str = option("kl-minus", "encoder objective: eq. 15 or eq. 17", choices=("kl-minus", "kl-plus"))
    schedule: str = option("sequential", "Algorithm 1 order, or one shared evaluation",
                           choices=("sequential", "simultaneous"))
    lr_ebm: float = option(1e-4, "learning rate of the EBM", above=0)
    lr_gen: float = option(3e-4, "learning rate of the generator", above=0)
    lr_enc: float = option(3e-4, "learning rate of the encoder", above=0)
    beta1: float = option(0.0, "Adam beta1", at_least=0, below=1)
    beta2: float = option(0.9, "Adam beta2", at_least=0, below=1)
    weight_decay: float = option(1e-4, "weight decay of the generator and the encoder", at_least=0)
    decay: float = option(0.998, "learning-rate decay per epoch", above=0, at_most=1)
    spectral_norm: bool = option(True, "spectral normalisation in the energy network")
    bounded: bool = option(True, "cap f <= 0 with -softplus, as the code (energy >= 0); off: the raw scalar")
    synthesis: str = option("mean", "synthesised x for the EBM and the generator: g(z), as the paper (4.6), "
                            "or a sample of p(x|z), g(z) + sigma eps", choices=("mean", "sample"))


PRESETS = {
    # The embedded 8x8 digits at 16x16 on two CPU cores: small networks, a few minutes.
    "digits": dict(image_size=16, latent_dim=16, width=32, steps=1500, log_every=50,
                   sample_every=500, checkpoint_every=500),
}


PLAYERS = ("ebm", "encoder", "generator")  # Algorithm 1, lines 5-7


def networks(cfg: Config, shape: tuple[int, ...]) -> dict:
    """How to build the generator, the encoder and the latent energy (see `kldiv.train.build_networks`)."""
    return {
        "generator": ("kldiv.nn.Generator", dict(latent_dim=cfg.latent_dim, image_shape=shape, width=cfg.width)),
        "encoder": ("kldiv.nn.GaussianEncoder", dict(image_shape=shape, latent_dim=cfg.latent_dim, width=cfg.width)),
        "energy": ("kldiv.nn.EnergyXZ", dict(image_shape=shape, latent_dim=cfg.latent_dim,
                                             width=cfg.energy_width or cfg.width,
                                             spectral_norm=cfg.spectral_norm, bounded=cfg.bounded)),
    }


def game(cfg: Config, G, I, E):
    """The densities and the game of eqs. 10-17."""
    q = DataDensity(I)
    p = GeneratorDensity(G, latent_shape=cfg.latent_dim, sigma=cfg.sigma, synthesis=cfg.synthesis)  # x~ = g(z), §4.6
    pi = LatentEBM(E)

    L = KL(q, p) + KL(p, pi) - KL(q, pi)  # eq. 10
    encoder_objective = L if cfg.inference == "kl-minus" else KL(q, p) + KL(q, pi)  # eq. 15 or eq. 17
    g = (
        L.maximize(pi, name="ebm")  # eqs. 11-12
        .minimize(q, objective=encoder_objective, name="encoder")  # eq. 16
        .minimize(p, name="generator")  # eqs. 13-14
    )
    return g, dict(q=q, p=p, pi=pi)


def optimizers(cfg: Config, nets: dict) -> tuple[dict, dict]:
    """Adam per player with the code's rates, betas and weight decay; a per-epoch decay."""
    betas = (cfg.beta1, cfg.beta2)
    opts = {
        "ebm": torch.optim.Adam(nets["energy"].parameters(), cfg.lr_ebm, betas=betas),
        "encoder": torch.optim.Adam(nets["encoder"].parameters(), cfg.lr_enc, betas=betas, weight_decay=cfg.weight_decay),
        "generator": torch.optim.Adam(nets["generator"].parameters(), cfg.lr_gen, betas=betas, weight_decay=cfg.weight_decay),
    }
    return opts, {k: torch.optim.lr_scheduler.ExponentialLR(o, cfg.decay) for k, o in opts.items()}


def train_step(cfg: Config, run: Run, step, parts: dict, x: torch.Tensor):
    """One iteration of Algorithm 1: the synthesis and inference samples drawn once (lines 3-4), then
    the EBM, the inference model and the generator updated in turn (lines 5-7), or all from one evaluation."""
    r = step.round(x, values=run.logging)  # Algorithm 1, lines 3-4: synthesis and inference samples, drawn once
    if cfg.schedule == "sequential":
        for player in PLAYERS:  # lines 5-7, in the paper's order
            run.update(r, player)
    else:
        run.update_all(r)
    return r


def main(argv=None) -> Run:
    cfg = parse_config(Config, argv, PRESETS)
    run = Run(cfg, name="latent_ebm")
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
