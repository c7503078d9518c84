"""Every recipe runs end to end on the embedded digits with its smallest settings."""

import json

import pytest
import torch

from kldiv.train import build_networks, load_checkpoint
from recipe_runner import load_recipe

TINY = ["--image-size", "8", "--latent-dim", "4", "--width", "4", "--batch-size", "16",
        "--steps", "3", "--log-every", "1", "--sample-every", "3"]

CASES = [
    ("latent_ebm", []),
    ("latent_ebm", ["--inference", "kl-plus", "--schedule", "simultaneous", "--no-bounded"]),
    ("triangle", []),
    ("triangle", ["--schedule", "simultaneous", "--sleep-weight", "1"]),
    ("triangle", ["--compile"]),  # every network compiled (no spectral norm here)
    ("latent_ebm", ["--compile", "--amp", "bf16"]),  # every network compiled, the spectrally normalised energy too
    ("bidvl", []),
    ("bidvl", ["--no-offset", "--lower-steps", "2", "--no-bounded"]),
    ("bidvl", ["--no-offset", "--encoder-upper", "prior"]),
    ("mcmc_teaching", ["--langevin-steps", "3"]),
    ("mcmc_teaching", ["--langevin-steps", "3", "--noise", "--sigma-ref", "0"]),
    ("mcmc_teaching", ["--langevin-steps", "3", "--noise-share", "0.25"]),  # a quarter of log Z from noise
    ("vae", []),
    ("vae", ["--kl-weight", "4", "--hold-out", "3", "--ema", "0.5"]),
    ("latent_prior_ebm", ["--prior-width", "8", "--prior-steps", "3"]),
]


@pytest.mark.parametrize(("recipe", "extra"), CASES, ids=[f"{r}{'-' + '-'.join(e) if e else ''}" for r, e in CASES])
def test_recipe_runs_end_to_end(recipe, extra, tmp_path, device):
    out = tmp_path / recipe
    run = load_recipe(recipe).main([*TINY, *extra, "--out", str(out), "--device", device])
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    players = set(run.estimator.plans)
    assert players <= set(rows[-1]) and all(isinstance(rows[-1][p], float) for p in players)
    for png in ("samples.png", "reconstructions.png"):
        assert (out / png).stat().st_size > 100
    state = load_checkpoint(out / "checkpoint.pt")
    assert state["step"] == 3 and state["recipe"] == recipe
    # the checkpoint describes itself: its networks can be rebuilt from it alone
    nets = build_networks({k: tuple(v) for k, v in state["architecture"].items()})
    for name, net in nets.items():
        net.load_state_dict(state["networks"][name])
    x = torch.zeros(2, 4)
    assert nets["generator"](x).shape == (2, 1, 8, 8)
    if "--no-bounded" in extra:  # the raw scalar f = h, recorded in the checkpoint's architecture
        assert nets["energy"].bounded is False


def test_mcmc_teaching_stays_bounded_on_the_digits(tmp_path):
    """A few hundred steps of the authors' settings on the embedded digits: the energies level off
    instead of growing without bound, the revised samples stay near [-1, 1], and the chains of a
    step end at different images (a single-output energy collapses them to one grey image)."""
    out = tmp_path / "mt"
    run = load_recipe("mcmc_teaching").main([
        "--image-size", "16", "--latent-dim", "8", "--width", "8", "--batch-size", "32", "--steps", "240",
        "--langevin-steps", "10", "--log-every", "20", "--sample-every", "240", "--out", str(out)])
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    ebm = [abs(r["ebm"]) for r in rows]
    assert all(isinstance(v, float) for v in ebm)
    assert max(ebm[len(ebm) // 2:]) < 10 * max(ebm[: len(ebm) // 2])  # levels off
    assert all(-3 < r["revised_min"] and r["revised_max"] < 3 for r in rows)
    torch.manual_seed(0)
    pi = run.estimator.game["ebm"].named[0]
    x = run.estimator.round(torch.zeros(64, 1, 16, 16)).samples(pi)["x"]
    assert x.flatten(1).std(0).mean() > 0.1  # the chains do not end at one image


def test_mcmc_teaching_noise_share_pays_part_of_log_z_with_chains_from_noise():
    """--noise-share s: the EBM's log Z gradient is (1 - s) E_rev[grad f] + s E_noise[grad f], over
    s times as many chains from uniform noise, which teach no VAE."""
    recipe = load_recipe("mcmc_teaching")
    from kldiv.train import build_networks

    cfg = recipe.Config(image_size=8, latent_dim=4, width=4, batch_size=40, noise_share=0.25, langevin_steps=2)
    nets = build_networks(recipe.networks(cfg, (1, 8, 8)))
    g, parts = recipe.game(cfg, nets["generator"], nets["encoder"], nets["energy"])
    step = g.compile()
    paid = step.plans["ebm"].sampler_paid
    assert sorted((m.coef, d.name) for m, d in paid) == [(0.25, "π_noise"), (0.75, "π")]
    r = step.round(torch.zeros(40, 1, 8, 8))
    r.loss("ebm"), r.loss("vae")
    assert r.samples(parts["pi_noise"])["x"].shape[0] == 10 and r.samples(parts["pi"])["x"].shape[0] == 40
    assert all(d is not parts["pi_noise"] for d, _ in step.plans["vae"].fresh)  # the VAE learns from pi's


@pytest.mark.parametrize("name", ["latent_ebm", "bidvl"])
def test_energy_width_sets_the_energy_alone(name):
    """--energy-width 0 follows --width; another value widens the energy only (the code's 48 and 64)."""
    recipe = load_recipe(name)
    same = recipe.networks(recipe.Config(width=8), (1, 16, 16))
    assert {k: v[1]["width"] for k, v in same.items()} == {"generator": 8, "encoder": 8, "energy": 8}
    code = recipe.networks(recipe.Config(width=8, energy_width=12), (1, 16, 16))
    assert {k: v[1]["width"] for k, v in code.items()} == {"generator": 8, "encoder": 8, "energy": 12}
    with pytest.raises(ValueError, match="--energy-width"):
        recipe.Config(energy_width=-1)


def test_latent_prior_recipe_compiles_its_prior_chain_with_the_networks():
    # --compile compiles the prior's Langevin chain too (the chain itself is tested in test_samplers)
    recipe = load_recipe("latent_prior_ebm")
    assert recipe.prior_sampler(recipe.Config(compile=True)).compile is True
    assert recipe.prior_sampler(recipe.Config()).compile is False
