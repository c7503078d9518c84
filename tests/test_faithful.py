"""Each recipe's game, at its defaults, gives every player the gradient of its authors' loss.

The authors' per-player losses are written out by hand from
``shared/papers/authors-code.md`` (what each paper's public script computes),
on the samples the recipe's round drew, and compared network by network with
the gradient kldiv's compiled game gives that player at initialisation.
Networks are small and seeded; energies without spectral normalisation (its
power iteration changes the weights at every forward pass in training mode).
Notation: ``f`` is kldiv's log unnormalised density, the negative of the
code's energy ``E``; ``mse_sum`` sums squared errors over pixels and batch.
"""

import pytest
import torch

from kldiv.train import build_networks, parse_config
from recipe_runner import load_recipe

SHAPE = (1, 8, 8)
NZ = 6
B = 12
SMALL = ["--latent-dim", str(NZ), "--width", "4"]


def _setup(recipe: str, *extra: str):
    module = load_recipe(recipe)
    cfg = parse_config(module.Config, [*SMALL, *extra], module.PRESETS)
    torch.manual_seed(0)
    nets = {k: m.double() for k, m in build_networks(module.networks(cfg, SHAPE)).items()}
    g, dens = module.game(cfg, nets["generator"], nets["encoder"], nets["energy"])
    step = g.compile()
    x = torch.rand(B, *SHAPE, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    torch.manual_seed(2)
    r = step.round(x)
    return cfg, nets, dens, step, r, x


def _mse_sum(a, b):
    return (a - b).square().sum()


def _assert_same_gradient(step, r, player: str, nets: dict, author_loss: torch.Tensor):
    """kldiv's gradient of ``player`` equals the gradient of the authors' loss, network by network."""
    params = step.parameters(player)
    ours = torch.autograd.grad(r.loss(player), params, retain_graph=True, allow_unused=True)
    theirs = torch.autograd.grad(author_loss, params, retain_graph=True, allow_unused=True)
    names = {id(p): name for name, m in nets.items() for p in m.parameters()}
    for p, a, b in zip(params, ours, theirs):
        a = torch.zeros_like(p) if a is None else a
        b = torch.zeros_like(p) if b is None else b
        # float64 throughout; the code's 1e-6 in the sleep term's variance is the largest difference
        assert (a - b).norm() <= 1e-5 * b.norm() + 1e-12, (
            f"{player}: the gradient of {names[id(p)]} differs from the authors' "
            f"(max abs diff {float((a - b).abs().max()):.3g}, norm {float(b.norm()):.3g})"
        )
    total = torch.cat([t.flatten() for t in theirs if t is not None])
    assert total.norm() > 0  # the comparison is not vacuous


# ----------------------------------------------------------------------------------------
# The divergence triangle, 2019
# ----------------------------------------------------------------------------------------
def _triangle_losses(cfg, nets, dens, r, x, *, kl_weight, sleep_weight):
    G, I, E = nets["generator"], nets["encoder"], nets["energy"]
    z = r.samples(dens["P"])["z"]  # z ~ N(0, I)
    z_q = r.samples(dens["Q"])["z"]  # mu + sig * eps
    q = I(x)
    mu, sig = q.base_dist.loc, q.base_dist.scale
    logvar = 2 * sig.log()
    recon = _mse_sum(G(z_q), x) / B
    kl = -0.5 * (1 + logvar - mu.square() - logvar.exp())  # (B, nz)
    kl = kl.mean() if kl_weight != 1.0 else kl.sum(1).mean()

    def sleep(gz):
        s = I(gz).base_dist
        lv = 2 * s.scale.log()
        return (0.5 * lv.sum(1) + 0.5 * ((z - s.loc).square() / (lv.exp() + 1e-6)).sum(1)).mean()

    gz = G(z)
    return {
        "ebm": -E(x).mean() + E(gz.detach()).mean(),  # mean E(x) - mean E(G(z).detach())
        "encoder": recon + kl + sleep_weight * sleep(gz.detach()),
        "generator": recon - E(gz).mean() + sleep_weight * sleep(gz),
    }


@pytest.mark.parametrize("player", ["ebm", "encoder", "generator"])
def test_triangle_defaults_are_the_2019_code(player):
    """KL a mean over batch and latent dimensions, sleep weight 0.1, sigma^2 = 1/2, closed-form KL."""
    cfg, nets, dens, step, r, x = _setup("triangle")
    assert cfg.kl_reduction == "mean" and cfg.sleep_weight == 0.1 and abs(cfg.sigma**2 - 0.5) < 1e-12
    losses = _triangle_losses(cfg, nets, dens, r, x, kl_weight=1 / NZ, sleep_weight=0.1)
    _assert_same_gradient(step, r, player, nets, losses[player])


@pytest.mark.parametrize("player", ["encoder", "generator"])
def test_triangle_paper_weights_are_flags(player):
    """--kl-reduction sum --sleep-weight 1: the paper's objective, the summed KL and the full sleep term."""
    cfg, nets, dens, step, r, x = _setup("triangle", "--kl-reduction", "sum", "--sleep-weight", "1")
    losses = _triangle_losses(cfg, nets, dens, r, x, kl_weight=1.0, sleep_weight=1.0)
    _assert_same_gradient(step, r, player, nets, losses[player])


# ----------------------------------------------------------------------------------------
# The latent EBM, 2020
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("player", ["ebm", "encoder", "generator"])
def test_latent_ebm_defaults_are_the_2020_code(player):
    """sigma^2 = 1/2 (summed squared error, weight 1); the encoder's Monte Carlo KL of eq. 15."""
    cfg, nets, dens, step, r, x = _setup("latent_ebm", "--no-spectral-norm")
    assert abs(cfg.sigma**2 - 0.5) < 1e-12
    G, I, E = nets["generator"], nets["encoder"], nets["energy"]
    z = r.samples(dens["p"])["z"]
    z_q = r.samples(dens["q"])["z"]
    losses = {
        "ebm": -E(x, z_q.detach()).mean() + E(G(z).detach(), z).mean(),
        # KL(Q || P) - KL(Q || Pi): the encoder's entropy cancels; -KL(Q || Pi) brings E_Q[f]
        "encoder": _mse_sum(G(z_q), x) / B + 0.5 * z_q.square().sum(1).mean() + E(x, z_q).mean(),
        "generator": _mse_sum(G(z_q.detach()), x) / B - E(G(z), z).mean(),
    }
    _assert_same_gradient(step, r, player, nets, losses[player])


# ----------------------------------------------------------------------------------------
# MCMC teaching, 2021
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("player", ["ebm", "vae"])
def test_mcmc_teaching_defaults_are_the_2021_code(player):
    """The EBM on mean f(revised) - mean f(data); the VAE on sum (g(z) - x~)^2 + w KL, w = 3 on the digits."""
    cfg, nets, dens, step, r, x = _setup("mcmc_teaching", "--langevin-steps", "2")
    assert cfg.kl_weight == 3.0 and abs(cfg.sigma**2 - 0.5) < 1e-12 and cfg.energy == "descriptor"
    G, I, E = nets["generator"], nets["encoder"], nets["energy"]
    x_rev = r.samples(dens["pi"])["x"]  # the Langevin-revised VAE samples
    z = r.samples(dens["q_rev"])["z"]  # z ~ q(z | x~), reparameterised
    q = I(x_rev).base_dist
    kl = 0.5 * (q.loc.square() + q.scale.square() - 1 - 2 * q.scale.log()).sum(1)
    losses = {
        "ebm": E(x_rev).mean() - E(x).mean(),
        "vae": ((G(z) - x_rev).square().flatten(1).sum(1) + cfg.kl_weight * kl).mean(),
    }
    _assert_same_gradient(step, r, player, nets, losses[player])


# ----------------------------------------------------------------------------------------
# BiDVL, 2022
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("player", ["ebm", "generator", "encoder"])
def test_bidvl_defaults_are_the_2022_code(player):
    """Upper: mean E(v) - mean E(G(h)); lower: mean E(G(h)) + sum ||mu_q(G(h)) - h||^2 / (B nz)
    + r' [mse_sum(G(h_q), v) / B + mean KL(q(h|v) || N(0, I))], the encoder frozen in the latent term."""
    cfg, nets, dens, step, r, x = _setup("bidvl", "--no-spectral-norm")
    assert cfg.latent_term == "code" and cfg.offset and abs(cfg.sigma**2 - 0.5) < 1e-12
    G, I, E = nets["generator"], nets["encoder"], nets["energy"]
    h = r.samples(dens["P"])["z"]  # h ~ N(0, I)
    h_q = r.samples(dens["Pi"])["z"]  # h ~ q(h | v), v the data, weighted by r'
    gh = G(h)
    frozen = {k: p.detach() for k, p in I.named_parameters()}
    mu_gen = torch.func.functional_call(I, frozen, (gh,)).mean
    q = I(x).base_dist
    kl = 0.5 * (q.loc.square() + q.scale.square() - 1 - 2 * q.scale.log()).sum(1)
    lower = (-E(gh).mean() + (mu_gen - h).square().sum() / (B * NZ)
             + cfg.ratio * (_mse_sum(G(h_q), x) / B + kl.mean()))
    losses = {"ebm": -E(x).mean() + E(gh.detach()).mean(), "generator": lower, "encoder": lower}
    _assert_same_gradient(step, r, player, nets, losses[player])


def test_bidvl_paper_latent_term_is_the_symmetric_divergence():
    """--latent-term paper: the lower level is S(Pi, P) and the generator's latent term is -log q(h|v)."""
    cfg, nets, dens, step, r, x = _setup("bidvl", "--no-spectral-norm", "--latent-term", "paper")
    assert str(step.game["generator"].objective) == "S(Π, P)"
    G, I, E = nets["generator"], nets["encoder"], nets["energy"]
    h = r.samples(dens["P"])["z"]
    h_q = r.samples(dens["Pi"])["z"]
    gh = G(h)
    lower = -E(gh).mean() - I(gh).log_prob(h).mean() + cfg.ratio * _mse_sum(G(h_q), x) / B
    _assert_same_gradient(step, r, "generator", nets, lower)


# ----------------------------------------------------------------------------------------
# Work: values only when asked
# ----------------------------------------------------------------------------------------
def _count(nets, run_step):
    counts = {k: 0 for k in nets}
    handles = [m.register_forward_hook(lambda mod, a, o, k=k: counts.__setitem__(k, counts[k] + 1))
               for k, m in nets.items()]
    run_step()
    for h in handles:
        h.remove()
    return counts["generator"], counts["encoder"], counts["energy"]


@pytest.mark.parametrize(("values", "expected"), [(False, (2, 3, 3)), (True, (2, 4, 4))])
def test_sequential_triangle_step_runs_value_terms_only_when_asked(values, expected):
    """E, I, G in turn on one round: G runs on z and z_q; I on x, on G(z) for the encoder's sleep
    term and again on G(z) for the generator's, after the encoder's update; E on x and G(z), and on
    G(z) again after its own update. The value-only terms (E_Q[f] for the encoder, E_Q[log q] for
    the generator), wanted on logged steps only, cost one more pass of I and of E."""
    cfg, nets, dens, step, r, x = _setup("triangle")
    opts = {name: torch.optim.SGD(step.parameters(name), lr=1e-3) for name in step.plans}
    step(x)  # the first step also validates; count a later one

    def sequential():
        rr = step.round(x, values=values)
        for name in ("ebm", "encoder", "generator"):
            opts[name].zero_grad()
            rr.backward(name)
            opts[name].step()

    assert _count(nets, sequential) == expected


def test_simultaneous_latent_ebm_step_runs_each_network_the_minimum_number_of_times():
    cfg, nets, dens, step, r, x = _setup("latent_ebm", "--no-spectral-norm")
    step(x)
    assert _count(nets, lambda: step(x).backward()) == (2, 1, 2)  # g(z), g(z_q); q(z|x); f(x, z_q), f(g(z), z)
