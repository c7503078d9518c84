"""Langevin chain-steps per second: kldiv's kernel against torchebm's ``LangevinDynamics``.

Both samplers run the same update on the same energy, from the same start,
with the same number of chains and steps and the same noise stream
(``x <- x + (d^2/2) grad f(x) + d eps``; torchebm's ``step_size`` is
``d^2 / 2`` with ``noise_scale=1``), so the two final positions agree to
rounding, which the script checks.  Runs are interleaved (the order
alternating) and repeated; the script prints the median chain-steps per
second of each, the ratio of the best times, and the median of the
per-repeat ratios ``time(torchebm) / time(kldiv)`` (above 1: kldiv is
faster).  On a CPU shared with other work, ``--threads 1`` gives steadier
numbers than torch's default thread count, and ``--clock process`` times
each run by the process's CPU time (summed over its threads) rather than
the wall clock, so that time the process spends waiting for a core another
program holds does not count.

Cases:

* ``gmm``: a 2-D mixture of 8 Gaussians, 10,000 chains;
* ``conv``: a small convolutional energy on 1x28x28 images, 64 chains;
* ``prior``: the latent-space EBM prior of ``recipes/latent_prior_ebm.py``,
  f(z) - |z|^2 / 2 with f a LeakyReLU MLP of width 200 on z in R^16, 100 chains.

torchebm is a benchmark-only dependency, never one of kldiv's.  Install it
without letting it touch torch::

    pip install --dry-run torchebm     # check that it would not replace torch
    pip install torchebm               # (or --no-deps, if it would)

Without torchebm the script says so and times kldiv alone.

With ``--compile 1`` kldiv's chain also runs compiled (``langevin_chain(...,
compile=True)``: each step one ``torch.compile``d function of the chains'
state, the noise drawn outside it from the same stream), as a third sampler
in the same interleaved repeats; its chains are checked against the eager
ones, and the script prints the median of the per-repeat ratios
``time(kldiv compiled) / time(kldiv)`` (below 1: compiling pays).  The
compilation happens in the warm-up run and is not timed.

With ``--channels-last 1`` kldiv's chain on the conv energy also runs with
the network's weights and the chains in the channels-last memory format,
as a recipe's ``--channels-last`` runs its chains (the chains are checked
against the others, and the ratios printed as for the compiled chain).

Usage::

    python benchmarks/langevin.py                   # both cases, CPU
    python benchmarks/langevin.py --case conv --repeats 11 --device cuda
    python benchmarks/langevin.py --threads 1 --compile 1
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import time
from dataclasses import dataclass

import torch
from torch import nn

from kldiv.nn import MLPEnergy
from kldiv.samplers import langevin_chain


@dataclass
class Config:
    case: str = "all"  # "gmm", "conv", "prior" or "all"
    steps: int = 100  # Langevin steps per run
    repeats: int = 7  # interleaved timed runs per sampler
    step_size: float = 0.05  # delta
    device: str = "cpu"
    threads: int = 0  # torch intra-op threads (0: torch's default)
    seed: int = 0
    compile: int = 0  # 1: also time kldiv's compiled chain
    channels_last: int = 0  # 1: also time kldiv's chain with a conv energy and its chains channels-last
    clock: str = "wall"  # "wall", or "process": the process's CPU time, summed over its threads


# ----------------------------------------------------------------------------------------
# Energies (log densities f; torchebm gets E = -f)
# ----------------------------------------------------------------------------------------
class MixtureLogDensity(nn.Module):
    """log of an equal mixture of 8 isotropic Gaussians (std 0.2) on a circle of radius 2."""

    def __init__(self, k: int = 8, radius: float = 2.0, std: float = 0.2):
        super().__init__()
        angles = torch.arange(k) * (2 * math.pi / k)
        self.register_buffer("centres", radius * torch.stack([angles.cos(), angles.sin()], 1))
        self.std = std

    def forward(self, x):  # (n, 2) -> (n,)
        d2 = (x[:, None, :] - self.centres).square().sum(-1)  # (n, k)
        return torch.logsumexp(-0.5 * d2 / self.std**2, dim=1)


class ConvLogDensity(nn.Module):
    """A small conv net 1x28x28 -> scalar."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, 2, 1),
            nn.SiLU(),  # 14x14
            nn.Conv2d(32, 64, 3, 2, 1),
            nn.SiLU(),  # 7x7
            nn.Conv2d(64, 64, 3, 2, 1),
            nn.SiLU(),  # 4x4
            nn.Flatten(),
            nn.Linear(64 * 4 * 4, 1),
        )

    def forward(self, x):  # (n, 1, 28, 28) -> (n,)
        return self.body(x)[:, 0]


class PriorLogDensity(nn.Module):
    """The latent-prior recipe's log density on z: an MLP energy plus the N(0, I) reference."""

    def __init__(self, latent_dim: int = 16, width: int = 200):
        super().__init__()
        self.f = MLPEnergy(latent_dim, hidden=(width, width), activation="leaky_relu", bounded=False)

    def forward(self, z):  # (n, d) -> (n,)
        return self.f(z) - 0.5 * z.square().sum(1)


# ----------------------------------------------------------------------------------------
# The two samplers
# ----------------------------------------------------------------------------------------
def run_kldiv(f, x0, steps, delta, seed, compile=False):
    g = torch.Generator(device=x0.device).manual_seed(seed)
    return langevin_chain(x0, f, steps, delta, generator=g, compile=compile)


def make_torchebm(f, cfg: Config, dtype):
    """A torchebm ``LangevinDynamics`` on E = -f, or ``None`` with the reason."""
    try:
        from torchebm.core import BaseModel
        from torchebm.samplers import LangevinDynamics
    except ImportError as e:
        return None, f"torchebm is not installed ({e})"

    class Energy(BaseModel):
        def __init__(self):
            super().__init__(dtype=dtype, device=cfg.device)
            self.f = f

        def forward(self, x):
            return -self.f(x)

    sampler = LangevinDynamics(
        Energy(), step_size=cfg.step_size**2 / 2, noise_scale=1.0, dtype=dtype, device=cfg.device
    )

    def run(x0, steps, seed):
        g = torch.Generator(device=x0.device).manual_seed(seed)
        return sampler.sample(x=x0, n_steps=steps, generator=g)

    return run, ""


def sync(device: str):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bench(name: str, f: nn.Module, x0: torch.Tensor, cfg: Config) -> None:
    chains = x0.shape[0]
    runs = {"kldiv": lambda: run_kldiv(f, x0, cfg.steps, cfg.step_size, cfg.seed)}
    ebm_run, why = make_torchebm(f, cfg, x0.dtype)
    if ebm_run is not None:
        runs["torchebm"] = lambda: ebm_run(x0, cfg.steps, cfg.seed)
    if cfg.compile:
        runs["kldiv compiled"] = lambda: run_kldiv(f, x0, cfg.steps, cfg.step_size, cfg.seed, compile=True)
    if cfg.channels_last and x0.dim() == 4:  # as a recipe's --channels-last runs it: weights and chains NHWC
        f_cl = copy.deepcopy(f).to(memory_format=torch.channels_last)
        x0_cl = x0.contiguous(memory_format=torch.channels_last)
        runs["kldiv channels-last"] = lambda: run_kldiv(f_cl, x0_cl, cfg.steps, cfg.step_size, cfg.seed)

    # warm-up (and compilation), and the check that every sampler computed the same chains
    finals = {which: run() for which, run in runs.items()}
    a = finals["kldiv"]
    scale = max(1.0, a.abs().max().item())
    diffs = {w: (b - a).abs().max().item() for w, b in finals.items() if w != "kldiv"}
    sync(cfg.device)

    clock = time.process_time if cfg.clock == "process" else time.perf_counter
    times = {w: [] for w in runs}
    ratios = {w: [] for w in runs if w != "kldiv"}
    for r in range(cfg.repeats):
        order = list(runs) if r % 2 == 0 else list(runs)[::-1]
        took = {}
        for which in order:
            sync(cfg.device)
            t0 = clock()
            runs[which]()
            sync(cfg.device)
            took[which] = clock() - t0
            times[which].append(took[which])
        for which in ratios:
            ratios[which].append(took[which] / took["kldiv"])

    work = chains * cfg.steps
    print(
        f"\n[{name}] {chains} chains x {cfg.steps} steps, {cfg.repeats} interleaved repeats, "
        f"device {cfg.device}, {torch.get_num_threads()} threads, {cfg.clock} clock"
    )
    for which, ts in times.items():
        med = statistics.median(ts)
        print(f"  {which:15s} median {med * 1e3:9.1f} ms   {work / med:14,.0f} chain-steps/s")
    if ebm_run is None:
        print(f"  torchebm  not timed: {why}")
    for which, diff in diffs.items():
        print(f"  same chains, {which} and kldiv: {'yes' if diff <= 1e-3 * scale else 'NO'} "
              f"(max |difference| {diff:.2e})")
    if "torchebm" in ratios:
        best = min(times["torchebm"]) / min(times["kldiv"])
        q = ratios["torchebm"]
        print(f"  best-time ratio time(torchebm)/time(kldiv) = {best:.3f}")
        print(f"  median ratio time(torchebm)/time(kldiv) = {statistics.median(q):.3f}"
              f"  (per repeat: {', '.join(f'{v:.2f}' for v in q)})")
    for variant in ("kldiv compiled", "kldiv channels-last"):
        if variant not in ratios:
            continue
        q = ratios[variant]
        print(f"  median ratio time({variant})/time(kldiv) = {statistics.median(q):.3f}"
              f"  (per repeat: {', '.join(f'{v:.2f}' for v in q)})")
        if "torchebm" in ratios:
            vs = [e / c for e, c in zip(times["torchebm"], times[variant])]
            print(f"  median ratio time(torchebm)/time({variant}) = {statistics.median(vs):.3f}")


def main(cfg: Config) -> None:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    try:
        import torchebm

        print(f"torchebm {torchebm.__version__}, torch {torch.__version__}")
    except ImportError:
        print("torchebm is not installed: timing kldiv alone (pip install torchebm to compare)")
    if cfg.case in ("gmm", "all"):
        f = MixtureLogDensity().to(cfg.device)
        x0 = 4 * torch.rand(10_000, 2, device=cfg.device) - 2
        bench("gmm 2-D, 8 components", f, x0, cfg)
    if cfg.case in ("conv", "all"):
        f = ConvLogDensity().to(cfg.device)
        x0 = torch.rand(64, 1, 28, 28, device=cfg.device) * 2 - 1
        bench("conv 1x28x28", f, x0, cfg)
    if cfg.case in ("prior", "all"):
        f = PriorLogDensity().to(cfg.device)
        x0 = torch.randn(100, 16, device=cfg.device)
        bench("latent prior MLP, z in R^16", f, x0, cfg)


def parse() -> Config:
    cfg = Config()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    choices = {"case": ("gmm", "conv", "prior", "all"), "clock": ("wall", "process")}
    for field, value in vars(cfg).items():
        p.add_argument(f"--{field.replace('_', '-')}", type=type(value), default=value, choices=choices.get(field))
    return Config(**vars(p.parse_args()))


if __name__ == "__main__":
    main(parse())
