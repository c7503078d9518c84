"""The compiler: cancellation, refusals, the triangle's hand-derived gradients, forward counts."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from kldiv import KL, DataDensity, GeneratorDensity, LatentEBM, MarginalEBM, S
from kldiv.errors import (
    InputError,
    IntractableError,
    NonFiniteError,
    ShapeError,
    UnusedParametersError,
)
from toys import Decoder, Encoder, decoupled_parts, marginal_parts, triangle_parts

DX, DZ, N = 5, 2, 64


def _data(n=N, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, DX, generator=g, dtype=torch.float64)


def _labels(plan_terms):
    return sorted(m.label() for m in plan_terms)


# ----------------------------------------------------------------------------------------
# What cancels
# ----------------------------------------------------------------------------------------
def test_triangle_cancels_log_z_data_entropy_and_encoder_entropy():
    enc, dec, f, q, p, pi = triangle_parts()
    triangle = KL(q, p) + KL(p, pi) - KL(q, pi)
    step = triangle.minimize(p, q).maximize(pi).compile()
    for plan in step.plans.values():
        assert _labels(plan.cancelled) == ["E_q[log q(z|x)]", "E_q[log q_data(x)]", "log Z(π)"]
        assert plan.constants == () and plan.sampler_paid == ()
    assert _labels(step.plans["π"].gradient) == ["E_p[f(x, z)]", "E_q[f(x, z)]"]


def test_decoupled_density_cancels_encoder_so_encoder_gets_no_gradient():
    """KL(q_data q_phi || p_psi q_phi): the surviving terms read only x (DESIGN §2)."""
    enc, dec, f, q, p, big_pi = decoupled_parts()
    kl = KL(q, big_pi)
    with pytest.raises(UnusedParametersError, match=r"q\.encoder"):
        kl.minimize(enc, name="encoder").compile()


def test_constant_terms_merge_across_sources_by_marginal():
    """E_q[log q_data(x)] is the same under two data densities with different encoders."""
    enc, dec, f, q, p, pi = triangle_parts()
    q2 = DataDensity(Encoder(DX, DZ).double(), name="q2")
    e = KL(q, p) - KL(q2, p)
    plan = e.minimize(q).compile().plans["q"]
    assert "E_q[log q_data(x)]" in _labels(plan.cancelled)
    # the prior's expectation is shared by every source with z ~ N(0, I): E_p[log N(z)] merges
    p2 = GeneratorDensity(Decoder(DZ, DX).double(), latent_shape=DZ, sigma=0.5, name="p2")
    merged = (KL(q, p) + KL(q, p2)).minimize(q).compile(closed_form=False).plans["q"]
    assert [m.coef for m in merged.gradient if m.label() == "E_q[log N(z; 0, I)]"] == [-2.0]


def test_triangle_2019_with_decoupled_pi():
    """Han et al. 2019: the encoder also learns from the sleep phase E_p[log q(z|x)]."""
    enc, dec, f, q, p, big_pi = decoupled_parts()
    triangle = KL(q, p) + KL(p, big_pi) - KL(q, big_pi)
    step = triangle.minimize(p, name="G").minimize(q, name="I").maximize(big_pi, name="E").compile()
    assert "−1 E_p[log q(z|x)]" in step.explain()
    assert _labels(step.plans["E"].gradient) == ["E_p[f(x)]", "E_q[f(x)]"]
    out = step(_data())
    out.backward()
    for net in (enc, dec, f):
        assert all(p_.grad is not None and torch.isfinite(p_.grad).all() for p_ in net.parameters())


# ----------------------------------------------------------------------------------------
# Refusals at compile time: each names the divergence, the term, the player, what to do
# ----------------------------------------------------------------------------------------
def test_refuses_log_q_data_under_generator_samples():
    enc, dec, f, q, p, pi = triangle_parts()
    with pytest.raises(IntractableError) as err:
        KL(p, q).minimize(p, name="generator").compile()
    msg = str(err.value)
    for needle in ("'generator'", "E_p[log q_data(x)]", "KL(p ‖ q)", "p.decoder", "samples of p", "unknown"):
        assert needle in msg, needle
    # the same divergence is fine for the encoder: its gradient needs only log q(z|x)
    KL(p, q).minimize(q, name="encoder").compile()


def test_refuses_log_z_without_sampler_and_says_what_to_do():
    f, q0, mu = marginal_parts()
    with pytest.raises(IntractableError) as err:
        KL(q0, mu).minimize(mu, name="ebm").compile()
    msg = str(err.value)
    for needle in ("'ebm'", "log Z(π)", "KL(q ‖ π)", "sampler", "cancels log Z"):
        assert needle in msg, needle


def test_each_log_z_is_paid_for_by_the_sampler_of_its_own_density():
    """0.9 KL(q || pi) + 0.1 KL(q || pi'), pi' the same EBM with chains from noise: the EBM's
    gradient is -E_q[grad f] + 0.9 E_pi[grad f] + 0.1 E_pi'[grad f], each mean over its own chains."""
    from kldiv.samplers import Langevin, NoiseStart

    f, q0, _ = marginal_parts()
    pi = MarginalEBM(f, sampler=Langevin(3, 0.1, init=NoiseStart("normal")))
    pi_noise = pi.with_sampler(Langevin(3, 0.1, init=NoiseStart("uniform", low=-3.0, high=3.0)), name="π_noise")
    assert pi.name == "π" and pi_noise.energy is f
    step = (0.9 * KL(q0, pi) + 0.1 * KL(q0, pi_noise)).minimize(pi, name="ebm").compile()
    text = step.explain()
    assert "samples of π; +0.9 from 0.9·KL(q ‖ π)" in text
    assert "samples of π_noise; +0.1 from 0.1·KL(q ‖ π_noise)" in text
    x = torch.randn(N, 3, dtype=torch.float64)
    out = step(x)
    out.backward()
    a, b = out.round.samples(pi)["x"], out.round.samples(pi_noise)["x"]
    assert not torch.equal(a, b)
    want = torch.autograd.grad(-f(x).mean() + 0.9 * f(a).mean() + 0.1 * f(b).mean(), list(f.parameters()))
    for got, w in zip((p_.grad for p_ in f.parameters()), want):
        torch.testing.assert_close(got, w, rtol=1e-10, atol=1e-12)


def test_two_densities_named_alike_in_one_game_are_warned_of_at_compile():
    from kldiv.errors import NameClashWarning
    from kldiv.samplers import Langevin, NoiseStart

    f, q0, _ = marginal_parts()
    pi = MarginalEBM(f, sampler=Langevin(3, 0.1, init=NoiseStart("normal")))
    alike = pi.with_sampler(Langevin(3, 0.1, init=NoiseStart("uniform")))  # not named: still "π"
    with pytest.warns(NameClashWarning, match=r"named 'π' \(a MarginalEBM and a MarginalEBM\)(.|\n)*with_sampler\(\.\.\., name=") as w:
        (0.9 * KL(q0, pi) + 0.1 * KL(q0, alike)).minimize(pi, name="ebm").compile()
    assert w[0].filename == __file__  # points at the caller of compile
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        named = pi.with_sampler(Langevin(3, 0.1, init=NoiseStart("uniform")), name="π_noise")
        (0.9 * KL(q0, pi) + 0.1 * KL(q0, named) + KL(q0, pi)).minimize(pi, name="ebm").compile()  # pi twice is one


def test_log_z_of_the_same_ebm_cancels_whatever_its_samplers():
    from kldiv.samplers import Langevin, NoiseStart

    f, q0, _ = marginal_parts()
    pi = MarginalEBM(f, sampler=Langevin(3, 0.1, init=NoiseStart("normal")))
    other = MarginalEBM(f, sampler=Langevin(3, 0.1, init=NoiseStart("uniform")), name="π_2")
    q = DataDensity(x=pi, name="q_π")  # an expectation under pi keeps f alive for the player
    step = (KL(q, pi) - KL(q, other) + KL(q0, pi)).minimize(pi, name="ebm").compile()
    (paid,) = step.plans["ebm"].sampler_paid  # +2 by pi's chains, -1 by the others': +1 by pi's
    assert paid[0].coef == 1.0 and paid[1] is pi
    assert "+1 log Z(π)" in step.explain()


def test_ebms_on_one_energy_with_other_references_have_other_log_z():
    """exp f(x) N(x; 0, s^2 I) / Z depends on s: two references are two constants, which do not cancel."""
    from kldiv.samplers import Langevin, NoiseStart

    f, q0, _ = marginal_parts()
    wide = MarginalEBM(f, sampler=Langevin(3, 0.1, init=NoiseStart("normal")), reference=2.0)
    narrow = MarginalEBM(f, reference=0.5, name="π_narrow")  # no sampler for its log Z
    with pytest.raises(IntractableError, match=r"log Z\(π_narrow\)"):
        (KL(q0, wide) - KL(q0, narrow)).minimize(wide, name="ebm").compile()
    plain = MarginalEBM(f, name="π_plain")  # no reference: its own log Z, not the wide one's
    with pytest.raises(IntractableError, match=r"log Z\(π_plain\)"):
        (KL(q0, plain) + KL(q0, wide)).minimize(wide, name="ebm").compile()


def test_refuses_expectation_under_ebm_without_sampler():
    enc, dec, f, q, p, pi = triangle_parts()
    with pytest.raises(IntractableError, match=r"needs samples from π.*Attach a sampler"):
        KL(pi, p).minimize(p, name="generator").compile()


def test_unused_player_is_refused():
    enc, dec, f, q, p, pi = triangle_parts()
    with pytest.raises(UnusedParametersError, match=r"'ebm'.*π\.energy"):
        KL(q, p).minimize(p).maximize(pi, name="ebm").compile()


def test_players_need_densities_or_networks():
    enc, dec, f, q, p, pi = triangle_parts()
    with pytest.raises(TypeError, match="nn.Module"):
        KL(q, p).minimize("decoder")
    with pytest.raises(ValueError, match="unique"):
        KL(q, p).minimize(p, name="a").minimize(q, name="a")


class _Wide(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(DX + DZ, 3)

    def forward(self, x, z):
        return self.lin(torch.cat([x, z], -1))


class _Exploding(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(DX + DZ, 1)

    def forward(self, x, z):
        return self.lin(torch.cat([x, z], -1)) / 0.0


@pytest.mark.parametrize(
    ("energy", "error", "needle"),
    [(_Wide, ShapeError, r"f\(x, z\).*shape \(64,\).*\(64, 3\)"), (_Exploding, NonFiniteError, r"f\(x, z\).*not finite")],
)
def test_bad_network_output_is_caught_at_the_first_step(energy, error, needle):
    enc, dec, _, q, p, _ = triangle_parts()
    pi = LatentEBM(energy().double())
    step = (KL(q, p) + KL(p, pi) - KL(q, pi)).minimize(p, q).maximize(pi).compile()
    with pytest.raises(error, match=needle):
        step(_data())


# ----------------------------------------------------------------------------------------
# The latent-EBM triangle against Han et al. (2020), eqs. 19-21 written by hand
# ----------------------------------------------------------------------------------------
def _hand_gradients(enc, dec, f, x, z, z_tilde, sigma):
    """Eqs. 19-21 on the same samples: z ~ N(0, I) (synthesis), z~ ~ q(z|x) (inference)."""
    q_dist = enc(x)
    eps = ((z_tilde - q_dist.base_dist.loc) / q_dist.base_dist.scale).detach()
    zt = q_dist.base_dist.loc + q_dist.base_dist.scale * eps  # reparameterised z~
    x_gen = dec(z)  # x~ = g(z), noise-free synthesis (eq. 18 and the text below it)

    def log_p_x_given_z(x_, z_):
        r = (x_ - dec(z_)).flatten(1)
        return -0.5 * r.square().sum(1) / sigma**2 - r.shape[1] * (math.log(sigma) + 0.5 * math.log(2 * math.pi))

    def log_prior(z_):
        return -0.5 * z_.square().sum(1) - 0.5 * z_.shape[1] * math.log(2 * math.pi)

    grads = {}
    # eq. 19: dL_E/dalpha = -mean f(x, z~) + mean f(x~, z)
    l_e = -f(x, zt.detach()).mean() + f(x_gen.detach(), z).mean()
    grads["ebm"] = torch.autograd.grad(l_e, list(f.parameters()))
    # eq. 20: mean[log q - log p(x, z~)] - mean[log q - f(x, z~)]
    log_q = q_dist.log_prob(zt)
    l_i = (log_q - log_prior(zt) - log_p_x_given_z(x, zt)).mean() - (log_q - f(x, zt)[:, 0]).mean()
    grads["encoder"] = torch.autograd.grad(l_i, list(enc.parameters()))
    # eq. 21: -mean log p(x | z~) - mean f(x~, z)
    l_g = -log_p_x_given_z(x, zt.detach()).mean() - f(x_gen, z).mean()
    grads["generator"] = torch.autograd.grad(l_g, list(dec.parameters()))
    return grads


@pytest.mark.parametrize("inference", ["kl-minus", "kl-plus"])
def test_triangle_gradients_match_eqs_19_to_21(inference):
    enc, dec, f, q, p, pi = triangle_parts(synthesis="mean")
    L = KL(q, p) + KL(p, pi) - KL(q, pi)
    enc_objective = L if inference == "kl-minus" else KL(q, p) + KL(q, pi)
    game = (
        L.minimize(p, name="generator")
        .minimize(q, objective=enc_objective, name="encoder")
        .maximize(pi, name="ebm")
    )
    step = game.compile()
    x = _data()
    out = step(x)
    out.backward()
    r = out.round
    z, z_tilde = r.samples(p)["z"], r.samples(q)["z"]
    hand = _hand_gradients(enc, dec, f, x, z, z_tilde.detach(), sigma=0.5)
    if inference == "kl-plus":  # eq. 17: KL(q, p) + KL(q, pi) for the encoder
        q_dist = enc(x)
        eps = ((z_tilde - q_dist.base_dist.loc) / q_dist.base_dist.scale).detach()
        zt = q_dist.base_dist.loc + q_dist.base_dist.scale * eps
        r_ = (x - dec(zt)).flatten(1)
        log_px = -0.5 * r_.square().sum(1) / 0.25 - DX * (math.log(0.5) + 0.5 * math.log(2 * math.pi))
        log_pz = -0.5 * zt.square().sum(1) - DZ * 0.5 * math.log(2 * math.pi)
        log_q = q_dist.log_prob(zt)
        l_i = (log_q - log_pz - log_px).mean() + (log_q - f(x, zt)[:, 0]).mean()
        hand["encoder"] = torch.autograd.grad(l_i, list(enc.parameters()))
    for player, net in (("ebm", f), ("encoder", enc), ("generator", dec)):
        for got, want in zip((p_.grad for p_ in net.parameters()), hand[player]):
            torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12, msg=player)


def test_values_are_the_estimate_and_losses_carry_the_sign():
    enc, dec, f, q, p, pi = triangle_parts()
    L = KL(q, p) + KL(p, pi) - KL(q, pi)
    out = L.minimize(p, q, name="vae").maximize(pi, name="ebm").compile()(_data())
    assert torch.allclose(out.values["vae"], out.values["ebm"])
    assert torch.allclose(out.losses["vae"].detach(), out.values["vae"])
    assert torch.allclose(out.losses["ebm"].detach(), -out.values["ebm"])


# ----------------------------------------------------------------------------------------
# Work: each network runs the minimum number of times
# ----------------------------------------------------------------------------------------
def _count_forwards(*nets):
    counts = {id(n): 0 for n in nets}

    def hook(module, args, out):
        counts[id(module)] += 1

    handles = [n.register_forward_hook(hook) for n in nets]
    return counts, handles


def test_simultaneous_triangle_step_runs_each_network_the_minimum_number_of_times():
    """g(z) and g(z~); q(z|x) once; f(x, z~) and f(g(z), z) (DESIGN §4)."""
    enc, dec, f, q, p, pi = triangle_parts()
    L = KL(q, p) + KL(p, pi) - KL(q, pi)
    step = L.minimize(p, name="G").minimize(q, name="I").maximize(pi, name="E").compile()
    step(_data())  # the first step also validates; count a later one
    counts, handles = _count_forwards(dec, enc, f)
    out = step(_data(seed=2))
    out.backward()
    assert (counts[id(dec)], counts[id(enc)], counts[id(f)]) == (2, 1, 2)
    for h in handles:
        h.remove()


def test_sequential_round_follows_algorithm_1_and_reruns_only_what_went_stale():
    """Algorithm 1 of Han et al. (2020): samples drawn once, then E, I, G updated in turn.

    The energy is updated first, so the inference and generator steps must re-run
    f on the new parameters; g(z), g(z~) and q(z|x) are reused."""
    enc, dec, f, q, p, pi = triangle_parts()
    L = KL(q, p) + KL(p, pi) - KL(q, pi)
    game = L.minimize(p, name="G").minimize(q, name="I").maximize(pi, name="E")
    step = game.compile()
    opts = {n: torch.optim.SGD(step.parameters(n), lr=1e-2) for n in ("E", "I", "G")}
    step(_data())
    counts, handles = _count_forwards(dec, enc, f)
    r = step.round(_data(seed=3))
    for name in ("E", "I", "G"):
        opts[name].zero_grad()
        r.backward(name)
        opts[name].step()
    assert (counts[id(dec)], counts[id(enc)], counts[id(f)]) == (2, 1, 4)
    for h in handles:
        h.remove()


def test_sequential_generator_step_sees_the_updated_energy():
    enc, dec, f, q, p, pi = triangle_parts()
    L = KL(q, p) + KL(p, pi) - KL(q, pi)
    step = L.minimize(p, name="G").maximize(pi, name="E").compile()
    x = _data()
    r = step.round(x)
    before = r.loss("G").detach().clone()
    r.backward("E")
    with torch.no_grad():
        for p_ in f.parameters():
            p_.add_(p_.grad)  # an update of the energy
    after = r.loss("G").detach()
    assert not torch.allclose(before, after)
    # an unchanged energy gives the same loss again (nothing is redrawn within a round)
    assert torch.equal(r.loss("G").detach(), after)


# ----------------------------------------------------------------------------------------
# Explain
# ----------------------------------------------------------------------------------------
def test_explain_lists_gradient_terms_constants_and_cancellations():
    enc, dec, f, q, p, pi = triangle_parts()
    text = (KL(q, p) + KL(p, pi) - KL(q, pi)).minimize(p, q).maximize(pi).compile().explain()
    assert "player 'π' maximises KL(q ‖ p) + KL(p ‖ π) − KL(q ‖ π) over π.energy" in text
    assert "log Z(π)                       +1 from KL(p ‖ π), −1 from −KL(q ‖ π)" in text
    assert "x = g(z) (noise-free synthesis)" in text
    vae = KL(q, p).minimize(p, q, name="vae").compile().explain()
    assert "constants (cannot be computed, no gradient; value is up to them)" in vae
    assert "+1 E_q[log q_data(x)]" in vae


# ----------------------------------------------------------------------------------------
# Pyro oracle: KL(DataDensity, GeneratorDensity) is the negative ELBO of Trace_ELBO
# ----------------------------------------------------------------------------------------
def test_vae_value_and_gradient_agree_with_pyro_trace_elbo():
    torch.manual_seed(0)
    enc, dec = Encoder(DX, DZ).double(), Decoder(DZ, DX).double()
    sigma = 0.7
    q = DataDensity(enc)
    p = GeneratorDensity(dec, latent_shape=DZ, sigma=sigma)
    step = KL(q, p).minimize(p, q, name="vae").compile()
    x = _data(n=32)

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(DZ, dtype=x.dtype), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(dec(z), sigma).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", enc(x))

    elbo = pyro.infer.Trace_ELBO()
    params = list(dec.parameters()) + list(enc.parameters())
    ours, theirs, g_ours, g_theirs = [], [], [], []
    for _ in range(400):
        for p_ in params:
            p_.grad = None
        out = step(x)
        out.backward()
        ours.append(out.values["vae"].item())
        g_ours.append(torch.cat([p_.grad.flatten() for p_ in params]))
        loss = elbo.differentiable_loss(model, guide, x) / x.shape[0]
        theirs.append(loss.item())
        g_theirs.append(torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)]))
    a, b = torch.tensor(ours), torch.tensor(theirs)
    se = (a.var() / a.numel() + b.var() / b.numel()).sqrt()
    assert (a.mean() - b.mean()).abs() < 5 * se, (a.mean(), b.mean(), se)
    ga, gb = torch.stack(g_ours), torch.stack(g_theirs)
    se_g = (ga.var(0) / ga.shape[0] + gb.var(0) / gb.shape[0]).sqrt()
    z = ((ga.mean(0) - gb.mean(0)).abs() / (se_g + 1e-12))
    # Bonferroni over the components: P(any |z| > 4.9) < 1e-3 for ~300 components
    assert z.max() < 4.9, z.max()


def test_vae_step_reduces_the_negative_elbo():
    torch.manual_seed(0)
    enc, dec = Encoder(DX, DZ).double(), Decoder(DZ, DX).double()
    q, p = DataDensity(enc), GeneratorDensity(dec, latent_shape=DZ, sigma=0.5)
    step = KL(q, p).minimize(p, q, name="vae").compile()
    opt = torch.optim.Adam(step.parameters("vae"), lr=1e-2)
    x = _data(n=256)
    first = step(x).values["vae"].item()
    for _ in range(200):
        opt.zero_grad()
        step(x).backward()
        opt.step()
    assert step(x).values["vae"].item() < first - 1.0


def test_symmetric_lower_level_compiles_with_data_free_sources_and_n():
    """S(p1, p2) between two generators needs no data: n gives the sample count."""
    torch.manual_seed(0)
    p1 = GeneratorDensity(Decoder(DZ, DX).double(), latent_shape=DZ, sigma=0.5, name="p1")
    p2 = GeneratorDensity(Decoder(DZ, DX).double(), latent_shape=DZ, sigma=0.5, name="p2")
    step = S(p1, p2).minimize(p1).compile()
    with pytest.raises(ValueError, match="number of samples"):
        step()
    out = step(n=16)
    assert out.values["p1"].shape == ()
    assert torch.isfinite(out.losses["p1"])


def test_marginal_ebm_data_and_missing_input_message():
    f, q0, mu = marginal_parts()
    enc, dec, _, q, p, pi = triangle_parts()
    step = KL(q, p).minimize(p, q).compile()
    with pytest.raises(KeyError, match="needs the input 'data'"):
        step(n=4)
    with pytest.raises(InputError, match=r"reads the step's input 'other'; they read 'data' \(not given: 'data'\)"):
        step(n=4, other=_data())
    assert isinstance(mu, MarginalEBM)


def test_a_failed_first_check_is_repeated_on_the_next_step():
    """Validation is per term and counts only once passed: a caught error cannot be skipped."""
    enc, dec, _, q, p, _ = triangle_parts()
    pi = LatentEBM(_Wide().double())
    step = (KL(q, p) + KL(p, pi) - KL(q, pi)).minimize(p, q).maximize(pi).compile()
    for _ in range(2):
        with pytest.raises(ShapeError):
            step(_data())


# ----------------------------------------------------------------------------------------
# The closed-form KL of a Gaussian encoder against the standard normal prior
# ----------------------------------------------------------------------------------------
def test_closed_form_kl_replaces_the_one_sample_difference():
    """E_q[log q(z|x) - log N(z)] with z ~ q(z|x) is E_x KL(q(.|x) || N(0, I)): the plan says so,
    its value is the analytic KL, and the Monte Carlo form agrees within 4 standard errors."""
    enc, dec, f, q, p, pi = triangle_parts()
    x = _data()
    step = KL(q, p).minimize(q, p).compile()
    plan = step.plans["q+p"]
    assert "E_q[KL(q(z|x) ‖ N(0, I))]" in _labels(plan.gradient)
    assert "E_q[log N(z; 0, I)]" not in _labels(plan.gradient + plan.value_only)
    assert "KL(q(z|x) ‖ N(0, I))" in step.explain()
    qz = enc(x).base_dist
    analytic = 0.5 * (qz.loc.square() + qz.scale.square() - 1 - 2 * qz.scale.log()).sum(1).mean()
    r = step.round(x)
    kl = r.term(plan.gradient[[m.label() for m in plan.gradient].index("E_q[KL(q(z|x) ‖ N(0, I))]")].term,
                r.samples(q))
    assert torch.allclose(kl.mean(), analytic)
    # the one-sample form: same expectation
    mc = KL(q, p).minimize(q, p).compile(closed_form=False)
    assert "E_q[log N(z; 0, I)]" in _labels(mc.plans["q+p"].gradient)
    torch.manual_seed(0)
    vals = torch.stack([mc(x).values["q+p"] - step(x).values["q+p"] for _ in range(400)])
    # the reconstruction term is shared; the difference is the KL's Monte Carlo error
    assert abs(float(vals.mean())) < 4 * float(vals.std()) / 20 + 1e-9


def test_closed_form_needs_z_drawn_from_that_encoder():
    """Under the generator z is drawn from the prior: E_p[log q(z|x)] stays a Monte Carlo term."""
    enc, dec, f, q, p, pi = triangle_parts()
    plan = KL(p, q).minimize(q).compile().plans["q"]
    assert _labels(plan.gradient) == ["E_p[log q(z|x)]"]


def test_the_estimator_is_a_module_holding_the_games_networks():
    enc, dec, f, q, p, pi = triangle_parts()
    est = (KL(q, p) + KL(p, pi) - KL(q, pi)).minimize(p, q, name="vae").maximize(pi, name="ebm").compile()
    assert isinstance(est, nn.Module)
    assert set(est.networks) == {"p_decoder", "q_encoder", "π_energy"}
    every = {id(t) for m in (enc, dec, f) for t in m.parameters()}
    assert {id(t) for t in est.parameters()} == every
    assert {id(t) for t in est.player_parameters("ebm")} == {id(t) for t in f.parameters()}
    assert est.parameters("vae") == est.player_parameters("vae")
    assert {k.split(".")[1] for k in est.state_dict()} == {"p_decoder", "q_encoder", "π_energy"}
    est.to(torch.float32)
    assert all(t.dtype == torch.float32 for t in f.parameters())
    est.eval()
    assert not enc.training
    with pytest.raises(KeyError, match="no player 'gen'"):
        est.player_parameters("gen")
