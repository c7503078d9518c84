"""What the algebra costs: one latent-EBM triangle step compiled by kldiv vs written by hand.

Both steps do the same work on DCGAN-size networks at 32×32×3 (Han et al.
2020, eqs. 19–21): the generator runs twice (g(z), g(z~)), the encoder once,
the energy twice (f(x, z~), f(g(z), z)); each player's gradient goes into its
own parameters and its optimiser steps.  Runs are interleaved (hand, kldiv,
hand, kldiv, ...) so that drifting machine load hits both alike; the
printed figure is the median of the per-pair time ratios kldiv / hand.
On the CPU the clock is the process's CPU time, which other programs on
the machine do not inflate (wall time on a shared two-core machine varies
by ±10% from one step to the next).

    python benchmarks/overhead.py                 # CPU, defaults below
    python benchmarks/overhead.py --device cuda --repeats 50
    python benchmarks/overhead.py --profile       # also count each step's convolutions

Target: a median ratio of at most 1.02 on the CPU.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

from kldiv import KL, DataDensity, GeneratorDensity, LatentEBM
from kldiv.nn import EnergyXZ, GaussianEncoder, Generator

SHAPE = (3, 32, 32)


def build(latent: int, width: int, device: torch.device, seed: int = 0):
    torch.manual_seed(seed)
    G = Generator(latent, SHAPE, width).to(device)
    I = GaussianEncoder(SHAPE, latent, width).to(device)
    E = EnergyXZ(SHAPE, latent, width).to(device)
    opts = {
        "generator": torch.optim.Adam(G.parameters(), 3e-4, betas=(0.0, 0.9)),
        "encoder": torch.optim.Adam(I.parameters(), 3e-4, betas=(0.0, 0.9)),
        "ebm": torch.optim.Adam(E.parameters(), 1e-4, betas=(0.0, 0.9)),
    }
    return G, I, E, opts


def kldiv_step_fn(G, I, E, opts, sigma: float, latent: int):
    q = DataDensity(I)
    p = GeneratorDensity(G, latent_shape=latent, sigma=sigma, synthesis="mean")
    pi = LatentEBM(E)
    L = KL(q, p) + KL(p, pi) - KL(q, pi)  # eq. 10
    step = L.minimize(p, name="generator").minimize(q, name="encoder").maximize(pi, name="ebm").compile()

    def run(x):
        for o in opts.values():
            o.zero_grad(set_to_none=True)
        step(x).backward()
        for o in opts.values():
            o.step()

    return run


def hand_step_fn(G, I, E, opts, sigma: float, latent: int):
    params = {k: [p for g in o.param_groups for p in g["params"]] for k, o in opts.items()}
    log_norm = 0.5 * math.log(2 * math.pi)

    def run(x):
        for o in opts.values():
            o.zero_grad(set_to_none=True)
        n = x.shape[0]
        z = torch.randn(n, latent, device=x.device)  # synthesis sampling, eq. 18
        x_gen = G(z)  # x~ = g(z)
        q = I(x)
        z_inf = q.rsample()  # inference sampling, eq. 18
        x_rec = G(z_inf)
        f_pos, f_neg = E(x, z_inf), E(x_gen, z)
        d = x[0].numel()
        log_px = -0.5 * (x - x_rec).flatten(1).square().sum(1) / sigma**2 - d * (math.log(sigma) + log_norm)
        log_pz = -0.5 * z_inf.square().sum(1) - latent * log_norm
        l_e = f_neg.mean() - f_pos.mean()  # eq. 19
        l_i = (f_pos - log_pz - log_px).mean()  # eq. 20 (log q cancels)
        l_g = -log_px.mean() - f_neg.mean()  # eq. 21
        torch.autograd.backward(l_e, inputs=params["ebm"], retain_graph=True)
        torch.autograd.backward(l_i, inputs=params["encoder"], retain_graph=True)
        torch.autograd.backward(l_g, inputs=params["generator"])
        for o in opts.values():
            o.step()

    return run


def timed(fn, x, device, clock) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = clock()
    fn(x)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return clock() - t


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--latent", type=int, default=100)
    ap.add_argument("--width", type=int, default=64, help="DCGAN width (64 in the papers)")
    ap.add_argument("--repeats", type=int, default=60, help="timed pairs")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--clock", choices=("process", "wall"), default=None,
                    help="process CPU time (default on the CPU: immune to other programs' load) "
                         "or wall time (default on a GPU)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--profile", action="store_true",
                    help="also count, with the torch profiler, the convolutions each step runs")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    clock_name = args.clock or ("wall" if device.type == "cuda" else "process")
    clock = time.perf_counter if clock_name == "wall" else time.process_time
    sigma = 0.3
    hand = hand_step_fn(*build(args.latent, args.width, device), sigma, args.latent)
    ours = kldiv_step_fn(*build(args.latent, args.width, device), sigma, args.latent)
    x = torch.rand(args.batch_size, *SHAPE, device=device) * 2 - 1
    for _ in range(args.warmup):
        hand(x)
        ours(x)
    ratios, t_hand, t_ours = [], [], []
    for i in range(args.repeats):
        if i % 2 == 0:
            a, b = timed(hand, x, device, clock), timed(ours, x, device, clock)
        else:
            b, a = timed(ours, x, device, clock), timed(hand, x, device, clock)
        t_hand.append(a)
        t_ours.append(b)
        ratios.append(b / a)
    print(
        f"device {device}, threads {torch.get_num_threads()}, batch {args.batch_size}, "
        f"width {args.width}, {args.repeats} interleaved pairs, {clock_name} time"
    )
    print(f"hand-written step: median {statistics.median(t_hand) * 1e3:.1f} ms")
    print(f"kldiv step:        median {statistics.median(t_ours) * 1e3:.1f} ms")
    q = statistics.quantiles(ratios, n=4)
    print(f"median time ratio kldiv / hand: {statistics.median(ratios):.4f} (quartiles {q[0]:.4f}, {q[2]:.4f})")
    print(f"ratio of the median times:      {statistics.median(t_ours) / statistics.median(t_hand):.4f}")
    print(f"ratio of the fastest times:     {min(t_ours) / min(t_hand):.4f}")
    if args.profile:
        hand_ops, ours_ops = convolution_counts(hand, x), convolution_counts(ours, x)
        print(f"convolutions per step (forward, backward): hand {hand_ops}, kldiv {ours_ops}")


def convolution_counts(fn, x) -> tuple[int, int]:
    """How many forward and backward convolutions one step runs, by the torch profiler."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if x.is_cuda else [])]) as prof:
        fn(x)
    calls = {e.key: e.count for e in prof.key_averages()}
    return calls.get("aten::convolution", 0), calls.get("aten::convolution_backward", 0)


if __name__ == "__main__":
    main()
