"""Bi-level doubly variational learning, BiDVL (Kan, Lü, Wang, Zhang, Zhu, Huang, Guo & Snoussi, CVPR 2022).

A decoupled energy-based latent-variable model Pi(v, h) = p_psi(v) q_w1(h|v)
(eq. 8) is learned with two variational models: the inference model
q_w1(h|v), shared with Pi, and a generator P(v, h) = p(h) p_w2(v|h).

    lower level (eq. 9):   min_{w1, w2}  S(Pi, P) = KL(Pi || P) + KL(P || Pi)
    upper level (eq. 10):  min_{psi, w1} KL(Q || Pi) - KL(P || Pi)

with Q(v, h) = q_data(v) q_w1(h|v).  Expectations under Pi cannot be sampled
directly; they are estimated with data samples times the importance ratio
r(v) = p_psi(v) / q_data(v), which the paper replaces by a constant r'
(eq. 15; ``--ratio``, 0.05 at 32x32).  The "offset" form (eqs. 13-14, the
paper's formal experiments, the default) lets the opposite w1 terms of the
two levels cancel: the inference model then plays the sum of both levels and
the EBM the upper level alone.  ``--no-offset`` keeps them apart (eqs. 11-12),
optionally with the upper-level inference term replaced by
KL(q_w1(h|v) || p(h)) on generated v (§4.4, ``--encoder-upper prior``).
Algorithm 1: N lower-level steps (``--lower-steps``) per upper-level step.

The authors' code computes the generator's latent term of KL(P || Pi),
E_P[-log q_w1(h|v)], as ``sum ||mu_q(G(h)) - h||^2 / (B nz)``: the encoder's
mean alone, averaged over dimensions, with the encoder frozen.  That is the
same term under a view of the encoder, `kldiv.nn.FrozenMeanEncoder` with
s^2 = nz / 2, so the default (``--latent-term code``) writes KL(P || Pi') with
Pi' = p_psi(v) N(h; mu_w1(v), nz/2), in the lower level and in the upper
level's -KL(P || Pi'), whose encoder terms the offset form cancels anyway;
``--latent-term paper`` (and ``--no-offset``, which the code does not have)
keeps q_w1(h|v), and the lower level is then S(Pi, P) exactly.

Launch:

    python recipes/bidvl.py                                # embedded digits, CPU
    python recipes/bidvl.py --data mnist --data-root ../shared/data
    python recipes/bidvl.py --data cifar10 --data-root data --download --ratio 0.05
    python recipes/bidvl.py --data celeba --data-root data --image-size 64 --ratio 0.1

Defaults follow the paper and its code: Adam(0, 0.9), learning rates 1e-4
(EBM) and 3e-4 (encoder and decoder), weight decay 1e-4 on the encoder and
decoder, a 0.998 decay per epoch, one lower-level step per upper step, a
decoder with sigma^2 = 1/2 (the code's summed squared error, weight r'), the
closed-form KL of the encoder, DCGAN variational models with batch norm, a
spectrally normalised EBM.  The code's variational models have width 48 and
its energy width 64 (``--width 48 --energy-width 64``; ``--width`` alone sets
all three networks).
"""

from __future__ import annotations

import dataclasses
import math

import torch

from kldiv import KL, DataDensity, DecoupledEBLVM, GeneratorDensity, S
from kldiv.samplers import Importance
from kldiv.train import Run, RunConfig, build_networks, option, parse_config


@dataclasses.dataclass
class Config(RunConfig):
    """Bi-level doubly variational learning (Kan et al. 2022)."""

    latent_dim: int = option(100, "dimension of h", at_least=1)
    width: int = option(64, "DCGAN channel width of the generator and the encoder, and of the energy "
                        "unless --energy-width is given", at_least=1)
    energy_width: int = option(0, "channel width of the energy network (0: --width); the code's "
                               "networks are --width 48 --energy-width 64", at_least=0)
    sigma: float = option(math.sqrt(0.5), "observation noise of p(v|h) (the code's squared error: 1/sqrt 2)", above=0)
    latent_term: str = option("code", "the generator's latent term of KL(P || Pi): the code's frozen "
                              "encoder mean (with --offset, as the code), or the paper's -log q(h|v)",
                              choices=("code", "paper"))
    ratio: float = option(0.05, "the constant importance ratio r' of eq. 15", above=0)
    lower_steps: int = option(1, "lower-level steps N per upper-level step", at_least=1)
    offset: bool = option(True, "offset the opposite inference terms (eqs. 13-14)")
    encoder_upper: str = option("kl", "without offset: the upper-level inference term of eq. 12 "
                                "or KL(q(h|v) || p(h)) on generated v (§4.4)", choices=("kl", "prior"))
    lr_ebm: float = option(1e-4, "learning rate of the EBM", above=0)
    lr_gen: float = option(3e-4, "learning rate of the generator", above=0)
    lr_enc: float = option(3e-4, "learning rate of the encoder", above=0)
    beta1: float = option(0.0, "Adam beta1", at_least=0, below=1)
    beta2: float = option(0.9, "Adam beta2", at_least=0, below=1)
    weight_decay: float = option(1e-4, "weight decay of the encoder and the decoder", at_least=0)
    decay: float = option(0.998, "learning-rate decay per epoch", above=0, at_most=1)
    spectral_norm: bool = option(True, "spectral normalisation in the energy network")
    bounded: bool = option(True, "cap f <= 0 with -softplus, as the code (energy >= 0); off: the raw scalar")


PRESETS = {
    "digits": dict(image_size=16, latent_dim=16, width=32, steps=1500, sample_every=500, checkpoint_every=500),
}


def networks(cfg: Config, shape: tuple[int, ...]) -> dict:
    """How to build the generator, the encoder and the energy (see `kldiv.train.build_networks`)."""
    return {
        "generator": ("kldiv.nn.Generator", dict(latent_dim=cfg.latent_dim, image_shape=shape, width=cfg.width)),
        "encoder": ("kldiv.nn.GaussianEncoder", dict(image_shape=shape, latent_dim=cfg.latent_dim, width=cfg.width)),
        "energy": ("kldiv.nn.EnergyX", dict(image_shape=shape, width=cfg.energy_width or cfg.width,
                                            spectral_norm=cfg.spectral_norm, bounded=cfg.bounded)),
    }


def game(cfg: Config, G, I, E):
    """The densities, the game, and which players form the lower and the upper level."""
    from kldiv.nn import FrozenMeanEncoder, StandardNormalEncoder

    Q = DataDensity(I, name="Q")
    P = GeneratorDensity(G, latent_shape=cfg.latent_dim, sigma=cfg.sigma, synthesis="mean", name="P")
    Pi = DecoupledEBLVM(E, I, sampler=Importance("data", ratio=cfg.ratio), name="Π")  # eqs. 8, 15
    if cfg.latent_term == "code" and cfg.offset:  # under generated pairs: the encoder's mean, frozen
        Pi_P = DecoupledEBLVM(E, FrozenMeanEncoder(I, math.sqrt(cfg.latent_dim / 2)), name="Π'")
        lower = KL(Pi, P) + KL(P, Pi_P)  # eq. 9, the code's latent term
    else:
        Pi_P = Pi
        lower = S(Pi, P)  # eq. 9
    upper = KL(Q, Pi) - KL(P, Pi_P)  # eq. 10
    if cfg.offset:  # eqs. 13-14
        g = (
            lower.minimize(P, name="generator")
            .minimize(Q, objective=lower + upper, name="encoder")
            .minimize(Pi, objective=upper, name="ebm")
        )
        levels = ("generator", "encoder"), ("ebm",)
    elif cfg.encoder_upper == "kl":  # eqs. 11-12
        g = lower.minimize(P, Q, name="lower").minimize(Pi, Q, objective=upper, name="upper")
        levels = ("lower",), ("upper",)
    else:  # §4.4: the upper level's inference term becomes KL(q(h|v) || p(h)), v ~ P
        Q_gen = DataDensity(I, x=P, name="Q_P")
        prior = DataDensity(StandardNormalEncoder(cfg.latent_dim), x=P, name="N_P")
        g = (
            lower.minimize(P, Q, name="lower")
            .minimize(Pi, objective=upper, name="upper")
            .minimize(Q_gen, objective=KL(Q_gen, prior), name="encoder-upper")
        )
        levels = ("lower",), ("upper", "encoder-upper")
    return g, dict(Q=Q, P=P, Pi=Pi, Pi_P=Pi_P, levels=levels)


def optimizers(cfg: Config, step, nets: dict) -> tuple[dict, dict]:
    """One Adam per player over the networks it trains, each network at its own rate."""
    betas = (cfg.beta1, cfg.beta2)
    lrs = {"energy": cfg.lr_ebm, "generator": cfg.lr_gen, "encoder": cfg.lr_enc}
    decay = {"energy": 0.0, "generator": cfg.weight_decay, "encoder": cfg.weight_decay}
    opts = {}
    for name in step.plans:
        trained = {id(p) for p in step.parameters(name)}  # the same tensors, compiled or not
        groups = [
            {"params": list(nets[k].parameters()), "lr": lrs[k], "weight_decay": decay[k]}
            for k in ("energy", "generator", "encoder")
            if any(id(p) in trained for p in nets[k].parameters())
        ]
        opts[name] = torch.optim.Adam(groups, betas=betas)
    return opts, {k: torch.optim.lr_scheduler.ExponentialLR(o, cfg.decay) for k, o in opts.items()}


def train_step(cfg: Config, run: Run, step, parts: dict, x: torch.Tensor):
    """One iteration of Algorithm 1: ``lower_steps`` updates of the lower level on fresh rounds
    (lines 3-5), then the upper level on the last round (line 7)."""
    lower_players, upper_players = parts["levels"]
    for i in range(cfg.lower_steps):  # lines 3-5: the lower level
        r = step.round(x, values=run.logging and i == cfg.lower_steps - 1)
        for player in lower_players:
            run.update(r, player)
    for player in upper_players:  # line 7: the upper level
        run.update(r, player)
    return r


def main(argv=None) -> Run:
    cfg = parse_config(Config, argv, PRESETS)
    run = Run(cfg, name="bidvl")
    train = run.dataset()
    architecture = networks(cfg, tuple(train[0][0].shape))
    nets = build_networks(architecture)
    G, I, E = (run.prepare(nets[k]) for k in ("generator", "encoder", "energy"))
    g, parts = game(cfg, G, I, E)
    step = g.compile()
    opts, scheds = optimizers(cfg, step, nets)
    run.attach(step, nets, opts, scheds, architecture=architecture)
    if run.is_main and run.step == 0:
        print(step.explain())

    fixed_z = torch.randn(100, cfg.latent_dim, generator=torch.Generator().manual_seed(cfg.seed)).to(run.device)
    for x in run.batches(train):  # Algorithm 1
        train_step(cfg, run, step, parts, x)
        run.end_step()
        if run.should_sample():
            run.snapshot(G, fixed_z, I, x)
    run.close()
    return run


if __name__ == "__main__":
    main()
