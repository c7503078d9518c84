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
size 0.002 on CIFAR-10 (50 steps of 0.001, 400 chains and a data batch of
400 on MNIST), the EBM on Adam(lr 0.009, beta1 0.5), the VAE on Adam(lr 2e-4,
1e-4 on MNIST, beta1 0.5), every network initialised N(0, 0.005).  With the
reference the EBM's density is exp f(x) N(x; 0, sigma_ref^2 I) / Z
(``MarginalEBM(f, reference=sigma_ref)``); the reference has no parameter,
so it enters no gradient, but it is what the chains follow and part of the
model's log density, by which ``kldiv.evaluate`` scores images.  The code's VAE loss
is ``mean_b[sum (g(mu(x~)) - x~)^2 + w KL(q(z|x~) || N(0, I))]``: a decoder
with sigma^2 = 1/2 and the closed-form KL weighted by w = 2 on CIFAR-10,
3 on MNIST (``--kl-weight``), which the algebra writes
KL(q_rev || p; z x w).  The energy is the authors' MNIST descriptor
(`kldiv.nn.Descriptor`: 100 summed outputs, unbounded); ``--energy dcgan``
is `kldiv.nn.EnergyX`, a single output, with which the chains of a step end
at nearly the same image and training collapses.

Beyond the code: ``--noise-share s`` pays a share s of the EBM's log Z gradient
with chains from uniform noise (s times as many as the amortised ones, the same
Langevin settings), (1 - s) KL(q_data || pi) + s KL(q_data || pi') with pi' the
same EBM and another sampler; those chains teach no VAE.  Without them the EBM
is shaped only along the VAE's chains and, trained on MNIST, ranks uniform noise
as more normal than the test digits (docs: results, MCMC teaching on images).
"""

from __future__ import annotations

import dataclasses
import math

import torch

from kldiv import KL, DataDensity, GeneratorDensity, MarginalEBM
from kldiv.samplers import Langevin
from kldiv.train import Run, RunConfig, build_networks, option, parse_config


@dataclasses.dataclass
class Config(RunConfig):
    """Variational MCMC teaching (Xie et al. 2021)."""

    latent_dim: int = option(100, "dimension of z", at_least=1)
    width: int = option(64, "channel width of every network", at_least=1)
    sigma: float = option(math.sqrt(0.5), "observation noise of p(x|z) (the code's squared error: 1/sqrt 2)", above=0)
    kl_weight: float = option(2.0, "weight w of the VAE's KL (the code: 2 on CIFAR-10, 3 on MNIST)", at_least=0)
    energy: str = option("descriptor", "energy network: the authors' MNIST descriptor or a DCGAN stack",
                         choices=("descriptor", "dcgan"))
    chains: int = option(0, "Langevin chains per step (0: the batch size; the code: 900 on CIFAR-10)", at_least=0)
    langevin_steps: int = option(15, "Langevin steps from each VAE sample", at_least=1)
    step_size: float = option(0.002, "Langevin step size delta", above=0)
    noise: bool = option(False, "add the Langevin noise term (the authors' code runs without)")
    sigma_ref: float = option(0.016, "Gaussian reference of the EBM (0: none)", at_least=0)
    noise_share: float = option(0.0, "share of the EBM's log Z gradient paid by as large a share of chains started "
                                "from uniform noise (0: the authors' code, every chain from the VAE)",
                                at_least=0, below=1)
    lr_ebm: float = option(0.009, "learning rate of the EBM", above=0)
    lr_vae: float = option(2e-4, "learning rate of the generator and the encoder", above=0)
    beta1: float = option(0.5, "Adam beta1", at_least=0, below=1)
    beta2: float = option(0.999, "Adam beta2", at_least=0, below=1)
    decay: float = option(0.98, "learning-rate decay every 20 epochs", above=0, at_most=1)
    init_std: float = option(0.005, "standard deviation of every network's initial weights", above=0)
    spectral_norm: bool = option(False, "spectral normalisation in the DCGAN energy network")
    bounded: bool = option(False, "cap f <= 0 with -softplus in the DCGAN energy network")


_MNIST = dict(langevin_steps=50, step_size=0.001, batch_size=400, lr_vae=1e-4, kl_weight=3.0)
PRESETS = {
    "mnist": _MNIST,
    "fashion-mnist": _MNIST,
    "digits": dict(image_size=16, latent_dim=16, width=32, steps=1500, langevin_steps=30, step_size=0.001,
                   lr_vae=1e-4, kl_weight=3.0, sample_every=500, checkpoint_every=500),
}


def networks(cfg: Config, shape: tuple[int, ...]) -> dict:
    """How to build the generator, the encoder and the descriptor (see `kldiv.train.build_networks`)."""
    init = dict(init_std=cfg.init_std)
    if cfg.energy == "descriptor":
        energy = ("kldiv.nn.Descriptor", dict(image_shape=shape, width=cfg.width, **init))
    else:
        energy = ("kldiv.nn.EnergyX", dict(image_shape=shape, width=cfg.width, spectral_norm=cfg.spectral_norm,
                                           bounded=cfg.bounded, **init))
    return {
        "generator": ("kldiv.nn.Generator", dict(latent_dim=cfg.latent_dim, image_shape=shape, width=cfg.width,
                                                 **init)),
        "encoder": ("kldiv.nn.GaussianEncoder", dict(image_shape=shape, latent_dim=cfg.latent_dim,
                                                     width=cfg.width, **init)),
        "energy": energy,
    }


def game(cfg: Config, G, I, E):
    """The densities and the game: the EBM by maximum likelihood, the VAE on the revised samples."""
    p = GeneratorDensity(G, latent_shape=cfg.latent_dim, sigma=cfg.sigma, synthesis="mean")  # x^ = g(z^)
    langevin = Langevin(cfg.langevin_steps, cfg.step_size, init=p, noise=cfg.noise)  # ancestral Langevin
    pi = MarginalEBM(E, sampler=langevin, reference=cfg.sigma_ref or None)  # exp f(x) N(x; 0, s^2 I) / Z
    q_data = DataDensity()  # the data, over x
    q_rev = DataDensity(I, x=pi, name="q_rev")  # the revised samples, taken as data, z ~ q(z|x)
    ml = KL(q_data, pi)  # maximum likelihood; log Z paid by Langevin
    parts = dict(p=p, pi=pi, q_data=q_data, q_rev=q_rev)
    if cfg.noise_share:  # the same EBM, its log Z paid in part by chains from noise, which teach no VAE
        chains = max(1, round(cfg.noise_share * (cfg.chains or cfg.batch_size)))
        from_noise = Langevin(cfg.langevin_steps, cfg.step_size, init="uniform", noise=cfg.noise, chains=chains)
        parts["pi_noise"] = pi_noise = pi.with_sampler(from_noise, name="π_noise")
        ml = (1 - cfg.noise_share) * ml + cfg.noise_share * KL(q_data, pi_noise)
    g = (
        ml.minimize(pi, name="ebm")
        .minimize(p, q_rev, objective=KL(q_rev, p, weights={"z": cfg.kl_weight}), name="vae")  # taught
    )
    return g, parts


def optimizers(cfg: Config, nets: dict) -> tuple[dict, dict]:
    """Adam for the EBM and for the VAE (generator and encoder together); the code's step decay."""
    betas = (cfg.beta1, cfg.beta2)
    opts = {
        "ebm": torch.optim.Adam(nets["energy"].parameters(), cfg.lr_ebm, betas=betas),
        "vae": torch.optim.Adam([*nets["generator"].parameters(), *nets["encoder"].parameters()], cfg.lr_vae,
                                betas=betas),
    }
    return opts, {k: torch.optim.lr_scheduler.StepLR(o, 20, cfg.decay) for k, o in opts.items()}


def train_step(cfg: Config, run: Run, step, parts: dict, x: torch.Tensor):
    """One iteration: z^ ~ N(0, I), x^ = g(z^), x~ = Langevin(x^), drawn once; then the EBM
    and the VAE updated in turn."""
    r = step.round(x, n=cfg.chains or None, values=run.logging)
    run.update(r, "ebm")
    run.update(r, "vae")
    return r


def main(argv=None) -> Run:
    cfg = parse_config(Config, argv, PRESETS)
    run = Run(cfg, name="mcmc_teaching")
    train = run.dataset()
    architecture = networks(cfg, tuple(train[0][0].shape))
    nets = build_networks(architecture)
    G, I, E = (run.prepare(nets[k]) for k in ("generator", "encoder", "energy"))
    g, parts = game(cfg, G, I, E)
    step = g.compile()
    opts, scheds = optimizers(cfg, nets)
    run.attach(step, nets, opts, scheds, architecture=architecture)
    pi = parts["pi"]
    if run.is_main and run.step == 0:
        print(step.explain())

    fixed_z = torch.randn(100, cfg.latent_dim, generator=torch.Generator().manual_seed(cfg.seed)).to(run.device)
    for x in run.batches(train):
        r = train_step(cfg, run, step, parts, x)
        if run.logging:
            revised = r.samples(pi)["x"]
            run.end_step(revised_min=float(revised.min()), revised_max=float(revised.max()))
        else:
            run.end_step()
        if run.should_sample():
            run.snapshot(G, fixed_z, I, x)
            run.save_images("revised", r.samples(pi)["x"][:100])
    run.close()
    return run


if __name__ == "__main__":
    main()
