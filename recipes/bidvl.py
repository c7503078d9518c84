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

Launch:

    python recipes/bidvl.py                                # embedded digits, CPU
    python recipes/bidvl.py --data mnist --data-root ../shared/data
    python recipes/bidvl.py --data cifar10 --data-root data --download --ratio 0.05
    python recipes/bidvl.py --data celeba --data-root data --image-size 64 --ratio 0.1

Defaults follow the paper and its code: Adam(0, 0.9), learning rates 1e-4
(EBM) and 3e-4 (encoder and decoder), one lower-level step per upper step,
DCGAN variational models with batch norm, a spectrally normalised EBM.
"""

from __future__ import annotations

import dataclasses

import torch

from kldiv import KL, DataDensity, DecoupledEBLVM, GeneratorDensity, S
from kldiv.samplers import Importance
from kldiv.train import Run, RunConfig, build_networks, option, parse_config


@dataclasses.dataclass
class Config(RunConfig):
    """Bi-level doubly variational learning (Kan et al. 2022)."""

    latent_dim: int = option(100, "dimension of h")
    width: int = option(64, "DCGAN channel width of every network")
    sigma: float = option(0.3, "observation noise of p(v|h)")
    ratio: float = option(0.05, "the constant importance ratio r' of eq. 15")
    lower_steps: int = option(1, "lower-level steps N per upper-level step")
    offset: bool = option(True, "offset the opposite inference terms (eqs. 13-14)")
    encoder_upper: str = option("kl", "without offset: the upper-level inference term of eq. 12 "
                                "or KL(q(h|v) || p(h)) on generated v (§4.4)", choices=("kl", "prior"))
    lr_ebm: float = option(1e-4, "learning rate of the EBM")
    lr_gen: float = option(3e-4, "learning rate of the generator")
    lr_enc: float = option(3e-4, "learning rate of the encoder")
    beta1: float = option(0.0, "Adam beta1")
    beta2: float = option(0.9, "Adam beta2")


PRESETS = {
    "digits": dict(image_size=16, latent_dim=16, width=32, steps=1500, sample_every=500, checkpoint_every=500),
}


def main(argv=None) -> Run:
    cfg = parse_config(Config, argv, PRESETS)
    run = Run(cfg, name="bidvl")
    train = run.dataset()
    shape = tuple(train[0][0].shape)

    architecture = {
        "generator": ("kldiv.nn.Generator", dict(latent_dim=cfg.latent_dim, image_shape=shape, width=cfg.width)),
        "encoder": ("kldiv.nn.GaussianEncoder", dict(image_shape=shape, latent_dim=cfg.latent_dim, width=cfg.width)),
        "energy": ("kldiv.nn.EnergyX", dict(image_shape=shape, width=cfg.width, spectral_norm=True)),
    }
    nets = build_networks(architecture)
    G, I, E = (run.prepare(nets[k]) for k in ("generator", "encoder", "energy"))

    Q = DataDensity(I, name="Q")
    P = GeneratorDensity(G, latent_shape=cfg.latent_dim, sigma=cfg.sigma, synthesis="mean", name="P")
    Pi = DecoupledEBLVM(E, I, sampler=Importance("data", ratio=cfg.ratio), name="Π")  # eqs. 8, 15

    lower = S(Pi, P)  # eq. 9
    upper = KL(Q, Pi) - KL(P, Pi)  # eq. 10
    if cfg.offset:  # eqs. 13-14
        game = (
            lower.minimize(P, name="generator")
            .minimize(Q, objective=lower + upper, name="encoder")
            .minimize(Pi, objective=upper, name="ebm")
        )
        lower_players, upper_players = ("generator", "encoder"), ("ebm",)
    elif cfg.encoder_upper == "kl":  # eqs. 11-12
        game = lower.minimize(P, Q, name="lower").minimize(Pi, Q, objective=upper, name="upper")
        lower_players, upper_players = ("lower",), ("upper",)
    else:  # §4.4: the upper level's inference term becomes KL(q(h|v) || p(h)), v ~ P
        from kldiv.nn import StandardNormalEncoder

        Q_gen = DataDensity(I, x=P, name="Q_P")
        prior = DataDensity(StandardNormalEncoder(cfg.latent_dim), x=P, name="N_P")
        game = (
            lower.minimize(P, Q, name="lower")
            .minimize(Pi, objective=upper, name="upper")
            .minimize(Q_gen, objective=KL(Q_gen, prior), name="encoder-upper")
        )
        lower_players, upper_players = ("lower",), ("upper", "encoder-upper")
    step = game.compile()

    betas = (cfg.beta1, cfg.beta2)
    param = {"ebm": nets["energy"], "generator": nets["generator"], "encoder": nets["encoder"]}
    lrs = {"ebm": cfg.lr_ebm, "generator": cfg.lr_gen, "encoder": cfg.lr_enc}
    opts = {}
    for name, plan in step.plans.items():
        groups = [
            {"params": list(param[k].parameters()), "lr": lrs[k]}
            for k in ("ebm", "generator", "encoder")
            if any(param[k] is m for m in plan.player.networks)
        ]
        opts[name] = torch.optim.Adam(groups, betas=betas)
    run.attach(step, nets, opts, architecture=architecture)
    if run.is_main and run.step == 0:
        print(step.explain())

    fixed_z = torch.randn(100, cfg.latent_dim, generator=torch.Generator().manual_seed(cfg.seed)).to(run.device)
    for x in run.batches(train):  # Algorithm 1
        for _ in range(cfg.lower_steps):  # lines 3-5: the lower level
            r = step.round(x)
            for player in lower_players:
                run.update(r, player)
        for player in upper_players:  # line 7: the upper level
            run.update(r, player)
        run.end_step()
        if run.should_sample():
            run.snapshot(G, fixed_z, I, x)
    run.close()
    return run


if __name__ == "__main__":
    main()
