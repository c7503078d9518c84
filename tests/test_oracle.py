r"""The linear-Gaussian oracle (DESIGN §7): compiled estimators against analytic KLs.

In the world of `tests/oracle.py` every summand $c_k E_{s_k}[t_k]$ of every
expression is analytic and differentiable. Let $N$ be the sum of the summands
kldiv may not estimate: those whose term cannot be computed ($\log q_{\rm data}$,
$\log Z$) or whose source cannot be sampled (an EBM without a sampler).

Properties checked, for random dimensions, parameters, signed sums of KL and S
over the five density classes, and random players:

* the compiler refuses (``IntractableError``) exactly when some player's analytic
  gradient of $N$ is not zero; it refuses with ``UnusedParametersError`` only when a
  player owns a network on which its analytic objective does not depend;
* otherwise each player's estimated value has mean (analytic value $- N$), and its
  gradient has mean sign $\times$ the analytic gradient, within a Bonferroni-corrected
  multiple of the Monte Carlo standard error over the steps.
"""

from __future__ import annotations

import math

import attrs
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from torch import nn

from kldiv import KL, S, Expression, Game
from kldiv.errors import IntractableError, UnusedParametersError

from oracle import (
    DTYPE,
    LinearGaussianWorld,
    analytic_gradient,
    mc_threshold,
)



STEPS = 64  # Monte Carlo steps per compiled game
BATCH = 256  # data batch (and generator samples) per step
FAMILY_ALPHA = 1e-6  # family-wise false-failure probability of one Monte Carlo check
REL_ZERO = 1e-9  # a gradient below REL_ZERO × its scale is zero (float64 round-off)

XZ_GROUP = ("q", "p", "π", "Π")
X_GROUP = ("q0", "μ")
COEFFICIENTS = (1.0, -1.0, 2.0, -2.0, 0.5, -0.5)


# ----------------------------------------------------------------------------------------
# Game specifications (plain data, so that hypothesis can draw and shrink them)
# ----------------------------------------------------------------------------------------
@attrs.frozen
class DivSpec:
    coef: float
    symmetric: bool
    a: str
    b: str

    def sources(self) -> set[str]:
        return {self.a, self.b} if self.symmetric else {self.a}


@attrs.frozen
class PlayerSpec:
    networks: tuple[str, ...]
    direction: str
    objective: int  # index into GameSpec.objectives
    by_density: tuple[bool, ...]  # name each network by a density that owns it, or by the module


@attrs.frozen
class GameSpec:
    dx: int
    dz: int
    sigma: float
    shared: bool
    seed: int
    objectives: tuple[tuple[DivSpec, ...], ...]
    players: tuple[PlayerSpec, ...]


@attrs.frozen(eq=False)
class Contestant:
    """A player as the oracle sees it: its name, objective, sign and parameters."""

    name: str
    objective: Expression
    sign: float
    networks: tuple[nn.Module, ...]
    roles: tuple[str, ...]

    def parameters(self) -> list[nn.Parameter]:
        return [p for net in self.networks for p in net.parameters()]


def build_expression(world: LinearGaussianWorld, divs) -> Expression:
    density = {
        "q": world.q, "p": world.p, "π": world.pi, "Π": world.Pi, "q0": world.q0, "μ": world.mu
    }
    expr = Expression()
    for d in divs:
        op = S if d.symmetric else KL
        expr = expr + d.coef * op(density[d.a], density[d.b])
    return expr


def build_game(world: LinearGaussianWorld, spec: GameSpec) -> tuple[Game, list[Contestant]]:
    objectives = [build_expression(world, divs) for divs in spec.objectives]
    nets, handles = world.networks, world.handles()
    game = Game(objective=objectives[0])
    contestants = []
    for i, ps in enumerate(spec.players):
        over = [handles[r] if by else nets[r] for r, by in zip(ps.networks, ps.by_density)]
        name = f"player{i}"
        add = game.minimize if ps.direction == "min" else game.maximize
        game = add(*over, objective=objectives[ps.objective], name=name)
        contestants.append(
            Contestant(
                name,
                objectives[ps.objective],
                1.0 if ps.direction == "min" else -1.0,
                tuple(nets[r] for r in ps.networks),
                ps.networks,
            )
        )
    return game, contestants


# ----------------------------------------------------------------------------------------
# The analytic verdict
# ----------------------------------------------------------------------------------------
@attrs.frozen
class Verdict:
    intractable: tuple[str, ...]  # players whose gradient of N is not zero
    unused: tuple[tuple[str, str], ...]  # (player, network) with an identically zero gradient


def _is_zero(grad: torch.Tensor, scale: float) -> bool:
    return float(grad.norm()) <= REL_ZERO * scale + 1e-12


def _gradient_facts(world: LinearGaussianWorld, contestants: list[Contestant]):
    facts = {}
    for c in contestants:
        total, hidden = world.analytic(c.objective)
        hidden_nonzero = not _is_zero(
            analytic_gradient(hidden, c.parameters()),
            world.gradient_scale(c.objective, c.parameters(), hidden_only=True),
        )
        zero_networks = set()
        for role, net in zip(c.roles, c.networks):
            params = list(net.parameters())
            scale = world.gradient_scale(c.objective, params)
            if _is_zero(analytic_gradient(total, params), scale):
                zero_networks.add(role)
        facts[c.name] = (hidden_nonzero, zero_networks)
    return facts


def analytic_verdict(world: LinearGaussianWorld, contestants: list[Contestant]) -> Verdict:
    """Judge refusal at the current parameters and at a second random point:
    a gradient is 'not zero' if it is not zero at either point, and 'identically
    zero' if it is zero at both."""
    saved = [p.detach().clone() for p in world.parameters()]
    first = _gradient_facts(world, contestants)
    world.randomize()
    second = _gradient_facts(world, contestants)
    with torch.no_grad():
        for p, v in zip(world.parameters(), saved):
            p.copy_(v)
    intractable = tuple(c.name for c in contestants if first[c.name][0] or second[c.name][0])
    unused = tuple(
        (c.name, role)
        for c in contestants
        for role in sorted(first[c.name][1] & second[c.name][1])
    )
    return Verdict(intractable, unused)


# ----------------------------------------------------------------------------------------
# Monte Carlo agreement
# ----------------------------------------------------------------------------------------
def expected_from_oracle(world: LinearGaussianWorld, contestants) -> list:
    """Per player: (player, value, gradient) that the estimator must reproduce in mean:
    the analytic value less N, and sign × its analytic gradient."""
    out = []
    for c in contestants:
        total, hidden = world.analytic(c.objective)
        out.append((c, total - hidden, analytic_gradient(total - hidden, c.parameters())))
    return out


def assert_matches(world: LinearGaussianWorld, estimator, expected, *, steps=STEPS, batch=BATCH):
    """Run ``steps`` simultaneous steps on fresh data batches and check, for each
    ``(player, value, gradient)``, that the mean estimated value is ``value`` and the mean
    gradient read from ``.grad`` is ``sign × gradient``, each component within a
    Bonferroni-corrected Student-t multiple of its Monte Carlo standard error."""
    targets, labels = [], []
    for c, value, gradient in expected:
        targets += [value.detach().reshape(1), c.sign * gradient.detach()]
        labels += [f"{c.name} value"] + [
            f"{c.name} ∂/∂{role}.{pname}[{k}]"
            for role, net in zip(c.roles, c.networks)
            for pname, p in net.named_parameters()
            for k in range(p.numel())
        ]
    target = torch.cat(targets)

    params = world.parameters()
    rows = []
    for _ in range(steps):
        for p in params:
            p.grad = None
        out = estimator(world.sample_data(batch))
        out.backward()
        row = []
        for c, _, _ in expected:
            row.append(out.values[c.name].detach().reshape(1))
            row += [
                (torch.zeros_like(p) if p.grad is None else p.grad).flatten()
                for p in c.parameters()
            ]
        rows.append(torch.cat(row))
    for p in params:
        p.grad = None
    est = torch.stack(rows)  # (steps, components)

    mean = est.mean(0)
    se = est.std(0) / math.sqrt(steps)
    z = mc_threshold(target.numel(), steps=steps, family_alpha=FAMILY_ALPHA)
    tol = z * se + 1e-8 * (1.0 + target.abs())
    bad = ((mean - target).abs() > tol).nonzero().flatten().tolist()
    assert not bad, "estimates disagree with the oracle:\n" + "\n".join(
        f"  {labels[i]}: estimate {mean[i]:.6g} ± {se[i]:.3g}, oracle {target[i]:.6g}" for i in bad
    ) + "\n" + estimator.explain()
    return est


def check_game(world: LinearGaussianWorld, game: Game, contestants: list[Contestant]) -> str:
    """The refusal criterion, then (if it compiles) Monte Carlo agreement. Returns the outcome."""
    verdict = analytic_verdict(world, contestants)
    players = [(c.name, c.sign, c.roles, str(c.objective)) for c in contestants]
    context = f"\ngame: {players}\n{verdict}"
    try:
        estimator = game.compile()
    except IntractableError as e:
        assert verdict.intractable, f"refused, but no player's ∇N is nonzero: {e}{context}"
        named = [c for c in verdict.intractable if f"player {c!r}" in str(e)]
        assert named, f"the error names no player whose gradient of N is nonzero: {e}{context}"
        return "intractable"
    except UnusedParametersError as e:
        assert verdict.unused, f"unused parameters, but every network has a gradient: {e}{context}"
        named = [c for c, _ in verdict.unused if f"player {c!r}" in str(e)]
        assert named, f"the error names no player with an unused network: {e}{context}"
        return "unused"
    explained = f"{context}\n{estimator.explain()}"
    assert not verdict.intractable, f"compiled, but some player's ∇N is nonzero{explained}"
    assert not verdict.unused, f"compiled, but some network has no gradient{explained}"
    assert_matches(world, estimator, expected_from_oracle(world, contestants))
    return "compiled"


def make_world(dx, dz, *, seed=0, sigma=0.8, shared=True, samplers=False, score_function=False) -> LinearGaussianWorld:
    torch.manual_seed(seed)
    return LinearGaussianWorld(dx, dz, sigma=sigma, shared=shared, samplers=samplers, score_function=score_function)


def contestant(name, objective, direction, *networks_and_roles) -> Contestant:
    nets = tuple(n for n, _ in networks_and_roles)
    roles = tuple(r for _, r in networks_and_roles)
    return Contestant(name, objective, 1.0 if direction == "min" else -1.0, nets, roles)


# ----------------------------------------------------------------------------------------
# The oracle itself
# ----------------------------------------------------------------------------------------
def test_oracle_quadratic_forms_are_the_log_density_terms():
    """Each term's quadratic form equals the term computed from its own definition
    (torch log-probs, the energy network, and log Z = f − log N(mean, cov)) at random points."""
    import torch.distributions as td

    world = make_world(3, 2, seed=1, shared=False)
    v = torch.randn(7, 5, dtype=DTYPE)
    x, z = v[:, :3], v[:, 3:]
    for density in (world.q, world.q0, world.p, world.pi, world.mu, world.Pi):
        for term in density.terms():
            kind, net = world._quadratics[id(term)]
            if kind == "prior":
                ref = td.Normal(0.0, 1.0).log_prob(z).sum(1)
            elif kind == "likelihood":
                ref = td.Normal(world.decoder(z), world.sigma).log_prob(x).sum(1)
            elif kind == "conditional":
                ref = world.encoder(x).log_prob(z)
            elif kind == "data":
                ref = td.MultivariateNormal(world.data_mean, world.data_cov).log_prob(x)
            elif kind == "energy":
                ref = net(x) if net.dim == 3 else net(x, z)
            else:  # log Z: exp f / Z is the Gaussian of the energy, at every point
                vv = x if net.dim == 3 else v
                mean, cov = net.gaussian()
                ref = net(vv) - td.MultivariateNormal(mean, cov).log_prob(vv)
            got = world.quadratic(term)(v)
            assert torch.allclose(got, ref.detach(), atol=1e-10), (density, term.label)


def test_oracle_joints_match_ancestral_sampling():
    """E_s[t] from the oracle's joint Gaussians agrees with a direct Monte Carlo average
    over samples drawn by each source's generative story (within 6 standard errors)."""
    world = make_world(2, 2, seed=2, shared=False)
    n = 50_000
    with torch.no_grad():
        x = world.sample_data(n)
        ancestral = {"q": torch.cat([x, world.encoder(x).sample()], 1)}
        zp = torch.randn(n, 2, dtype=DTYPE)
        xp = world.decoder(zp) + world.sigma * torch.randn(n, 2, dtype=DTYPE)
        ancestral["p"] = torch.cat([xp, zp], 1)
        mean, cov = world.decoupled_energy.gaussian()
        xp = torch.distributions.MultivariateNormal(mean, cov).sample((n,))
        ancestral["Π"] = torch.cat([xp, world.encoder(xp).sample()], 1)
        sources = {"q": world.q, "p": world.p, "Π": world.Pi}
        terms = [t for d in (world.q, world.p, world.pi, world.Pi) for t in d.terms()]
        for name, v in ancestral.items():
            for term in terms:
                quad = world.quadratic(term)
                vals = quad(v)
                mc, se = vals.mean(), vals.std() / math.sqrt(n)
                exact = quad.expectation(world.joint(sources[name]))
                assert abs(float(mc - exact)) <= 6 * float(se) + 1e-9, (name, term.label)


# ----------------------------------------------------------------------------------------
# The property
# ----------------------------------------------------------------------------------------
@st.composite
def divergences(draw):
    """One random KL or S between two densities over the same variables."""
    group = draw(st.sampled_from((XZ_GROUP, XZ_GROUP, XZ_GROUP, X_GROUP)))
    a = draw(st.sampled_from(group))
    others = [d for d in group if d != a]
    return DivSpec(
        coef=draw(st.sampled_from(COEFFICIENTS)),
        symmetric=draw(st.sampled_from((False, False, False, True))),
        a=a,
        b=draw(st.sampled_from(others * 3 + [a])),  # KL(a ‖ a) = 0 now and then
    )


@st.composite
def differences(draw, shared: bool):
    """c·(KL(s ‖ E) − KL(s' ‖ E')), E and E' normalised by the same log Z: the shape of
    the divergence triangle, where log Z cancels (drawn so that many games compile)."""
    pairs = [(s1, s2, e, e) for e in ("π", "Π") for s1, s2 in (("q", "p"), ("p", "q"))]
    if shared:  # μ and Π share their energy, hence log Z
        pairs += [("q0", "p", "μ", "Π"), ("p", "q0", "Π", "μ"), ("q0", "q", "μ", "Π")]
    s1, s2, e1, e2 = draw(st.sampled_from(pairs))
    c = draw(st.sampled_from(COEFFICIENTS))
    return (DivSpec(c, False, s1, e1), DivSpec(-c, False, s2, e2))


@st.composite
def reverse_differences(draw):
    """c·(KL(E ‖ a) − KL(E ‖ b)) for an EBM E: f and log Z cancel, and what survives
    depends on E's energy only through the distribution of E's samples."""
    e = draw(st.sampled_from(("π", "Π")))
    a, b = draw(st.permutations([d for d in XZ_GROUP if d != e]))[:2]
    c = draw(st.sampled_from(COEFFICIENTS))
    return (DivSpec(c, False, e, a), DivSpec(-c, False, e, b))


@st.composite
def expressions(draw, shared: bool, tame: bool):
    """A signed sum of 1 to 4 divergences: random ones and differences of two KLs,
    or (``tame``) only differences and VAE terms c·KL(q ‖ p), which mostly compile."""
    if tame:
        vae = st.sampled_from(COEFFICIENTS).map(lambda c: (DivSpec(c, False, "q", "p"),))
        piece = st.one_of(differences(shared), vae)
    else:
        single = divergences().map(lambda d: (d,))
        piece = st.one_of(single, differences(shared), reverse_differences())
    pieces = draw(st.lists(piece, min_size=1, max_size=3))
    return tuple(d for piece in pieces for d in piece)[:4]


def involved_roles(divs, shared: bool) -> set[str]:
    """The networks of the densities an expression mentions."""
    energy = "marginal energy" if shared else "decoupled energy"
    roles = {
        "q": {"encoder"},
        "q0": set(),
        "p": {"decoder"},
        "π": {"latent energy"},
        "μ": {"marginal energy"},
        "Π": {"encoder", energy},
    }
    return set().union(*(roles[d.a] | roles[d.b] for d in divs))


@st.composite
def games(draw):
    shared = draw(st.booleans())
    roles = ["encoder", "decoder", "latent energy", "marginal energy"]
    if not shared:
        roles.append("decoupled energy")
    tame = draw(st.sampled_from((False, False, True)))
    objectives = [draw(expressions(shared, tame)) for _ in range(draw(st.sampled_from((1, 1, 2))))]
    involved = set().union(*(involved_roles(divs, shared) for divs in objectives))
    n_players = draw(st.integers(1, 3))
    owners = []
    for role in roles:  # a network the objectives never mention is rarely owned
        if role in involved:
            choices = list(range(n_players)) + ([] if tame else [-1])
        else:
            choices = [-1] * 6 + ([] if tame else list(range(n_players)))
        owners.append(draw(st.sampled_from(choices)))
    if all(o < 0 for o in owners):
        owners[draw(st.integers(0, len(roles) - 1))] = 0
    players = []
    for i in range(n_players):
        mine = tuple(r for r, o in zip(roles, owners) if o == i)
        if mine:
            players.append(
                PlayerSpec(
                    networks=mine,
                    direction=draw(st.sampled_from(("min", "max"))),
                    objective=draw(st.integers(0, len(objectives) - 1)),
                    by_density=tuple(draw(st.booleans()) for _ in mine),
                )
            )
    return GameSpec(
        dx=draw(st.integers(1, 4)),
        dz=draw(st.integers(1, 3)),
        sigma=draw(st.sampled_from((0.6, 0.8, 1.0, 1.3))),
        shared=shared,
        seed=draw(st.integers(0, 2**31 - 1)),
        objectives=tuple(objectives),
        players=tuple(players),
    )


@settings(
    derandomize=True,
    deadline=None,
    max_examples=150,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(spec=games())
def test_random_games_refuse_exactly_when_untracked_gradient_and_else_match_oracle(spec):
    """For a random signed sum of KL and S and random players: compilation raises
    IntractableError iff some player's analytic ∇N ≠ 0 (UnusedParametersError only if a
    player's network has an identically zero analytic gradient); a compiled game's values
    and gradients match (analytic − N) and sign × ∇(analytic) within Monte Carlo error."""
    world = make_world(spec.dx, spec.dz, seed=spec.seed, sigma=spec.sigma, shared=spec.shared)
    game, contestants = build_game(world, spec)
    event(f"{check_game(world, game, contestants)} ({len(contestants)} player(s))")


# ----------------------------------------------------------------------------------------
# Explicit games
# ----------------------------------------------------------------------------------------
def test_latent_ebm_triangle_compiles_and_matches_oracle():
    """KL(q‖p) + KL(p‖π) − KL(q‖π) with a LatentEBM: log Z and log q_data cancel or are
    constant, so min over decoder, encoder and max over f(x, z) compile and match."""
    world = make_world(3, 2, seed=10)
    L = KL(world.q, world.p) + KL(world.p, world.pi) - KL(world.q, world.pi)
    game = L.minimize(world.p, world.q, name="vae").maximize(world.pi, name="ebm")
    players = [
        contestant("vae", L, "min", (world.decoder, "decoder"), (world.encoder, "encoder")),
        contestant("ebm", L, "max", (world.latent_energy, "latent energy")),
    ]
    assert check_game(world, game, players) == "compiled"


def test_decoupled_triangle_compiles_and_matches_oracle():
    """The 2019 triangle with Π = DecoupledEBLVM(f(x), encoder) compiles and matches."""
    world = make_world(2, 2, seed=11, shared=False)
    L = KL(world.q, world.p) + KL(world.p, world.Pi) - KL(world.q, world.Pi)
    game = L.minimize(world.p, world.q, name="vae").maximize(world.Pi, name="ebm")
    players = [
        contestant("vae", L, "min", (world.decoder, "decoder"), (world.encoder, "encoder")),
        contestant("ebm", L, "max", (world.decoupled_energy, "decoupled energy")),
    ]
    assert check_game(world, game, players) == "compiled"


def test_kl_data_to_decoupled_gives_encoder_no_gradient():
    """In KL(q ‖ Π) only f(x), log Z and log q_data survive: the encoder's analytic gradient
    is identically zero, so naming it raises UnusedParametersError."""
    world = make_world(2, 2, seed=12)
    L = KL(world.q, world.Pi)
    players = [contestant("enc", L, "min", (world.encoder, "encoder"))]
    verdict = analytic_verdict(world, players)
    assert verdict.unused == (("enc", "encoder"),) and not verdict.intractable
    with pytest.raises(UnusedParametersError):
        L.minimize(world.encoder, name="enc").compile()


def test_kl_data_to_decoupled_refuses_the_energy():
    """In KL(q ‖ Π) log Z(Π) survives with a nonzero analytic gradient for f(x): refused."""
    world = make_world(2, 2, seed=13)
    L = KL(world.q, world.Pi)
    players = [contestant("ebm", L, "max", (world.marginal_energy, "marginal energy"))]
    assert analytic_verdict(world, players).intractable == ("ebm",)
    with pytest.raises(IntractableError, match="log Z"):
        L.maximize(world.Pi, name="ebm").compile()


def test_decoupled_energy_reaching_terms_only_through_samples_is_refused():
    """In KL(Π ‖ p) − KL(Π ‖ π) f(x) and log Z(Π) cancel; what survives reads z under Π,
    whose distribution depends on Π's energy through x: the analytic gradient is nonzero and
    Π cannot be sampled, so the energy is refused (not reported unused)."""
    world = make_world(2, 2, seed=20, shared=False)
    L = KL(world.Pi, world.p) - KL(world.Pi, world.pi)
    players = [contestant("ebm", L, "max", (world.decoupled_energy, "decoupled energy"))]
    assert analytic_verdict(world, players) == Verdict(intractable=("ebm",), unused=())
    with pytest.raises(IntractableError, match="samples from Π"):
        L.maximize(world.Pi, name="ebm").compile()


def test_data_terms_merge_across_data_densities_and_log_z_across_mu_and_pi():
    """With Π's energy shared with μ, KL(q0 ‖ μ) − KL(q ‖ Π) is identically zero: E[f(x)]
    and E[log q_data(x)] under the data merge across q0 and q, log Z(μ) = log Z(Π), and
    log q(z|x) cancels inside KL(q ‖ Π). Every network is unused; adding KL(q ‖ p) gives a
    game that compiles for the encoder and decoder and matches the oracle."""
    world = make_world(3, 2, seed=21, shared=True)
    zero = KL(world.q0, world.mu) - KL(world.q, world.Pi)
    total, _ = world.analytic(zero)
    assert abs(float(total.detach())) < 1e-9
    for role, net in world.networks.items():
        players = [contestant("p0", zero, "max", (net, role))]
        assert analytic_verdict(world, players) == Verdict(intractable=(), unused=(("p0", role),))
        with pytest.raises(UnusedParametersError):
            zero.maximize(net, name="p0").compile()
    L = zero + KL(world.q, world.p)
    players = [contestant("vae", L, "min", (world.encoder, "encoder"), (world.decoder, "decoder"))]
    assert check_game(world, L.minimize(world.q, world.p, name="vae"), players) == "compiled"


def test_kl_generator_to_data_refuses_the_decoder():
    """KL(p ‖ q) needs E_p[log q_data(x)], whose gradient reaches the decoder: refused."""
    world = make_world(2, 2, seed=14)
    L = KL(world.p, world.q)
    players = [contestant("dec", L, "min", (world.decoder, "decoder"))]
    assert analytic_verdict(world, players).intractable == ("dec",)
    with pytest.raises(IntractableError, match="q_data"):
        L.minimize(world.p, name="dec").compile()


def test_maximum_likelihood_without_sampler_is_refused():
    """KL(q0 ‖ μ) for μ: ∇ log Z does not cancel and μ has no sampler: refused."""
    world = make_world(3, 1, seed=15)
    L = KL(world.q0, world.mu)
    players = [contestant("ebm", L, "min", (world.marginal_energy, "marginal energy"))]
    assert analytic_verdict(world, players).intractable == ("ebm",)
    with pytest.raises(IntractableError, match="log Z"):
        L.minimize(world.mu, name="ebm").compile()


def test_maximum_likelihood_with_exact_sampler_matches_ml_gradient():
    """With an exact Gaussian sampler attached to μ, KL(q0 ‖ μ) compiles for μ: its gradient
    −E_data[∇f] + E_μ[∇f] matches the analytic maximum-likelihood gradient
    ∇(−E_data[f] + log Z), and its value is −E_data[f] (log Z and E[log q_data] left out)."""
    world = make_world(3, 1, seed=16, samplers=True)
    L = KL(world.q0, world.mu)
    estimator = L.minimize(world.mu, name="ebm").compile()
    c = contestant("ebm", L, "min", (world.marginal_energy, "marginal energy"))
    data_f = world.quadratic(world.mu.terms()[0]).expectation(world.joint(world.q0))
    ml = -data_f + world.marginal_energy.log_normalizer()
    total, _ = world.analytic(L)
    ml_gradient = analytic_gradient(ml, c.parameters())
    assert torch.allclose(analytic_gradient(total, c.parameters()), ml_gradient)
    assert_matches(world, estimator, [(c, -data_f, ml_gradient)])


def test_latent_maximum_likelihood_with_exact_sampler_matches_oracle():
    """KL(q ‖ π) with an exact sampler on π: the encoder's gradient of
    E_q[log q(z|x) − f(x, z)] needs no sampler, the energy's ∇ log Z is paid by π's samples;
    both gradients match the analytic ones and the value is E_q[log q(z|x) − f]."""
    world = make_world(2, 2, seed=17, samplers=True)
    L = KL(world.q, world.pi)
    estimator = L.minimize(world.q, name="enc").minimize(world.pi, name="ebm").compile()
    total, _ = world.analytic(L)
    data_term = world.quadratic(world.q.terms()[0]).expectation(world.joint(world.q))
    value = total - world.latent_energy.log_normalizer() - data_term
    players = [
        contestant("enc", L, "min", (world.encoder, "encoder")),
        contestant("ebm", L, "min", (world.latent_energy, "latent energy")),
    ]
    expected = [(c, value, analytic_gradient(total, c.parameters())) for c in players]
    assert_matches(world, estimator, expected)


def test_reverse_kl_from_a_sampled_ebm_takes_the_score_route_for_the_energy():
    """KL(π ‖ p) with an exact (detached) sampler on π: E_π[·] depends on f through the
    distribution of the samples (analytic gradient nonzero), which detached samples cannot
    carry; the energy's gradient is then the score-function one, Cov_π(t, ∇f) with log Z
    centred away, and matches the analytic gradient. The decoder, reached through its term
    only, compiles and matches (the value leaves out log Z(π))."""
    world = make_world(2, 1, seed=18, samplers=True)
    L = KL(world.pi, world.p)
    total, _ = world.analytic(L)
    estimable = total + world.latent_energy.log_normalizer()  # log Z(π) enters with −1
    assert float(analytic_gradient(estimable, list(world.latent_energy.parameters())).norm()) > 1e-3
    estimator = L.maximize(world.pi, name="ebm").compile()
    assert "score function" in estimator.explain()
    c = contestant("ebm", L, "max", (world.latent_energy, "latent energy"))
    assert_matches(world, estimator, [(c, estimable, analytic_gradient(total, c.parameters()))])
    estimator = L.minimize(world.p, name="dec").compile()
    c = contestant("dec", L, "min", (world.decoder, "decoder"))
    assert_matches(world, estimator, [(c, estimable, analytic_gradient(total, c.parameters()))])


def test_decoupled_x_marginal_merges_with_marginal_ebm():
    """KL(Π‖q) − KL(μ‖q0) + KL(p‖Π) − KL(q‖Π), Π's energy shared with μ: analytically
    N = 0 (E_Π[f − log q_data] = E_μ[f − log q_data], log Z cancels), so maximising over
    f(x) should compile and match the oracle."""
    w = make_world(2, 2, seed=19, shared=True)
    L = KL(w.Pi, w.q) - KL(w.mu, w.q0) + KL(w.p, w.Pi) - KL(w.q, w.Pi)
    players = [contestant("ebm", L, "max", (w.marginal_energy, "marginal energy"))]
    assert analytic_verdict(w, players) == Verdict(intractable=(), unused=())
    estimator = L.maximize(w.mu, name="ebm").compile()
    assert_matches(w, estimator, expected_from_oracle(w, players))


@pytest.mark.parametrize("game_name", ["vae", "latent-ebm triangle"])
def test_the_score_function_route_forced_on_gaussian_sources_matches_the_oracle(game_name):
    """With q's z and p's x drawn without a pathwise gradient, every gradient that flowed through
    them takes the score-function route: the same expectations (the oracle's), a larger variance."""
    spread = {}
    for score_function in (False, True):
        world = make_world(3, 2, seed=12, score_function=score_function)
        vae = KL(world.q, world.p)
        if game_name == "vae":
            game = vae.minimize(world.q, world.p, name="vae")
            players = [contestant("vae", vae, "min", (world.decoder, "decoder"), (world.encoder, "encoder"))]
        else:
            L = vae + KL(world.p, world.pi) - KL(world.q, world.pi)
            game = L.minimize(world.p, world.q, name="vae").maximize(world.pi, name="ebm")
            players = [contestant("vae", L, "min", (world.decoder, "decoder"), (world.encoder, "encoder")),
                       contestant("ebm", L, "max", (world.latent_energy, "latent energy"))]
        estimator = game.compile()
        explained = estimator.explain()
        assert ("gradient by the score function" in explained) == score_function
        est = assert_matches(world, estimator, expected_from_oracle(world, players), steps=128)
        spread[score_function] = est.std(0)
    # the vae player's gradient components (the first entry of each row is its value)
    n = sum(p.numel() for p in (*world.decoder.parameters(), *world.encoder.parameters()))
    ratio = (spread[True][1 : n + 1] / spread[False][1 : n + 1]).median()
    assert ratio > 1.5, f"the score-function gradient should be noisier; median sd ratio {ratio:.2f}"
