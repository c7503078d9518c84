"""A generator with an energy-based prior in latent space (Pang, Han, Nijkamp, Zhu & Wu, NeurIPS 2020).

Two joint densities of an image x and a latent z,

    q(x, z)         = q_data(x) q_phi(z|x)          the data density (encoder phi)
    p_ab(x, z)      = p_alpha(z) p_theta(x|z)       the generator with an EBM prior
    p_alpha(z)      = exp f_alpha(z) N(z; 0, I) / Z(alpha)

and one divergence, minimised by all three networks,

    min_phi min_theta min_alpha  KL(q || p_ab).

The compiler splits it into the VAE's terms (the closed-form KL of the encoder
against N(0, I) and the reconstruction) and the prior's correction
-E_q[f_alpha(z)] + log Z(alpha); log Z survives for the prior's player, so its
gradient E_{p_alpha}[grad f_alpha(z)] is paid for by a short-run Langevin
sampler on z from N(0, I) (the prior's sampler, 60 steps of size 0.4 as in the
paper's code).  That is eq. (12) of the paper, the prior's maximum-likelihood
gradient: E_posterior[grad f] - E_prior[grad f].  The paper infers z by a
second short-run Langevin chain on the posterior; here an encoder amortises it
(the variational version), so every network gets a pathwise gradient from one
evaluation and one step updates all three.

Launch:

    python recipes/latent_prior_ebm.py                     # embedded digits, CPU, a few minutes
    python recipes/latent_prior_ebm.py --data mnist --data-root ../shared/data --hold-out 4
    python -m kldiv.evaluate runs/latent_prior_ebm         # RMSE, Frechet distance, OOD AUROC, AUPRC

An image is scored, as the paper scores anomalies, by its unnormalised log
joint density at its inferred latent vector: -log p(x, mu_q(x)) up to log Z
(`kldiv.metrics.generator_joint_scores`).

Defaults follow the paper's code (its SVHN script, with the LeakyReLU(0.2) of
its job grid): z in R^100, sigma = 0.3, an energy MLP z -> 200 -> 200 -> 1,
Adam(0.5, 0.999) at 1e-4 for the generator and 2e-5 for the prior, a 0.998
decay per epoch, batch 100, prior Langevin 60 x 0.4 with noise.  Where it
differs: the generator is kldiv's DCGAN network of width 64
(`kldiv.nn.Generator`, with batch norm and ReLU; the code's has neither
batch norm nor ReLU but LeakyReLU), shared with the other recipes, and the
encoder, which the code does not have (it infers z by posterior Langevin), is
the latent-EBM recipe's (`kldiv.nn.GaussianEncoder`) at the generator's rate.  On the embedded digits a
CPU preset (`PRESETS` below) makes the networks small so the run takes minutes.
"""

from __future__ import annotations

import dataclasses

import torch

from kldiv import KL, DataDensity, EnergyPrior, GeneratorDensity
from kldiv.evaluate import latent_samples
from kldiv.samplers import Langevin, NoiseStart
from kldiv.train import Run, RunConfig, build_networks, option, parse_config


@dataclasses.dataclass
class Config(RunConfig):
    """A generator with a latent-space EBM prior (Pang et al. 2020), trained with an encoder."""

    latent_dim: int = option(100, "dimension of z", at_least=1)
    width: int = option(64, "DCGAN channel width of the generator and the encoder", at_least=1)
    prior_width: int = option(200, "hidden width of the prior's energy MLP (two hidden layers)", at_least=1)
    sigma: float = option(0.3, "observation noise of p(x|z)", above=0)
    prior_steps: int = option(60, "Langevin steps of the prior sampler", at_least=1)
    prior_step_size: float = option(0.4, "Langevin step size of the prior sampler", above=0)
    lr_prior: float = option(2e-5, "learning rate of the prior's energy", above=0)
    lr_gen: float = option(1e-4, "learning rate of the generator", above=0)
    lr_enc: float = option(1e-4, "learning rate of the encoder", above=0)
    beta1: float = option(0.5, "Adam beta1", at_least=0, below=1)
    beta2: float = option(0.999, "Adam beta2", at_least=0, below=1)
    decay: float = option(0.998, "learning-rate decay per epoch", above=0, at_most=1)


PRESETS = {
    # The embedded 8x8 digits at 16x16 on two CPU cores: small networks, a few minutes.
    "digits": dict(image_size=16, latent_dim=16, width=32, prior_width=64, steps=1500, log_every=50,
                   sample_every=500, checkpoint_every=500, lr_prior=1e-4, lr_gen=3e-4, lr_enc=3e-4),
}


def networks(cfg: Config, shape: tuple[int, ...]) -> dict:
    """How to build the generator, the encoder and the prior's energy (see `kldiv.train.build_networks`)."""
    return {
        "generator": ("kldiv.nn.Generator", dict(latent_dim=cfg.latent_dim, image_shape=shape, width=cfg.width)),
        "encoder": ("kldiv.nn.GaussianEncoder", dict(image_shape=shape, latent_dim=cfg.latent_dim, width=cfg.width)),
        "prior": ("kldiv.nn.MLPEnergy", dict(in_shape=cfg.latent_dim, hidden=[cfg.prior_width] * 2,
                                             activation="leaky_relu", bounded=False)),
    }


def prior_sampler(cfg: Config, generator: torch.Generator | None = None) -> Langevin:
    """Short-run Langevin on z from N(0, I), with noise (the paper's prior sampler); with
    ``--compile``, each of its steps is one compiled function of the chains' state."""
    return Langevin(cfg.prior_steps, cfg.prior_step_size, generator=generator,
                    init=NoiseStart("normal", shape={"z": (cfg.latent_dim,)}), compile=bool(cfg.compile))


def game(cfg: Config, G, I, F):
    """The densities and the game: KL(q || p_ab), one player per network."""
    q = DataDensity(I)
    prior = EnergyPrior(F, cfg.latent_dim, sampler=prior_sampler(cfg))
    p = GeneratorDensity(G, latent_shape=cfg.latent_dim, sigma=cfg.sigma, synthesis="mean", prior=prior)
    g = (
        KL(q, p)
        .minimize(q, name="encoder")
        .minimize(G, name="generator")
        .minimize(prior, name="prior")  # eq. 12: E_q[grad f] - E_prior[grad f], the latter by Langevin
    )
    return g, dict(q=q, p=p, prior=prior)


def optimizers(cfg: Config, nets: dict) -> tuple[dict, dict]:
    """Adam per player with the code's rates and betas; a per-epoch decay."""
    betas = (cfg.beta1, cfg.beta2)
    opts = {
        "encoder": torch.optim.Adam(nets["encoder"].parameters(), cfg.lr_enc, betas=betas),
        "generator": torch.optim.Adam(nets["generator"].parameters(), cfg.lr_gen, betas=betas),
        "prior": torch.optim.Adam(nets["prior"].parameters(), cfg.lr_prior, betas=betas),
    }
    return opts, {k: torch.optim.lr_scheduler.ExponentialLR(o, cfg.decay) for k, o in opts.items()}


def train_step(cfg: Config, run: Run, step, parts: dict, x: torch.Tensor):
    """One iteration: the prior's chains and the encoder's samples drawn once, then the three
    players updated from that one evaluation."""
    r = step.round(x, values=run.logging)
    run.update_all(r)
    return r


def main(argv=None) -> Run:
    cfg = parse_config(Config, argv, PRESETS)
    run = Run(cfg, name="latent_prior_ebm")
    train = run.dataset()
    architecture = networks(cfg, tuple(train[0][0].shape))
    nets = build_networks(architecture)
    G, I, F = (run.prepare(nets[k]) for k in ("generator", "encoder", "prior"))
    g, parts = game(cfg, G, I, F)
    step = g.compile()
    opts, scheds = optimizers(cfg, nets)
    run.attach(step, nets, opts, scheds, architecture=architecture)
    if run.is_main and run.step == 0:
        print(step.explain())

    for x in run.batches(train):
        train_step(cfg, run, step, parts, x)
        run.end_step()
        if run.should_sample():
            # z from the prior's chain, seeded: the samples kldiv.evaluate scores
            z = latent_samples({"prior": F}, dataclasses.asdict(cfg), 100, run.device, seed=cfg.seed)
            run.snapshot(G, z, I, x)
    run.close()
    return run


if __name__ == "__main__":
    main()
