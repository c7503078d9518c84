"""Training steps per second of each recipe: eager, ``--compile``, ``--channels-last``, both.

Each recipe's networks are built by its own ``networks(cfg, shape)`` at the
papers' sizes (DCGAN width 64, z in R^100, batch 100, 32x32x3 images; random
images in [-1, 1] stand in for the data), once per variant, each variant
through a `kldiv.train.Run` configured as the command-line flags would
configure it (``Run.prepare`` moves, converts and compiles the networks,
``Run.place`` puts the batch on the device in the run's memory format), with
the recipe's own ``game`` and ``optimizers``. A step is the recipe's own
``train_step`` — the body of its training loop: its rounds and its players'
updates in the recipe's order (the non-finite checks and gradient clipping
of `Run.update` included), values computed only on logged steps, as in
training; ``run.end_step`` (logs, checkpoints, schedulers) is left out. The
variants:

    eager                     the default
    compile                   --compile
    channels-last             --channels-last
    compile+channels-last     --compile --channels-last
    channels-last+bf16        --channels-last --amp bf16
    compile+channels-last+bf16  --compile --channels-last --amp bf16
    channels-last+fp16        --channels-last --amp fp16
    compile+channels-last+fp16  --compile --channels-last --amp fp16
    compile-reduce-overhead+channels-last+bf16
                              the same with --compile-mode reduce-overhead (CUDA graphs)

bf16 is autocast (``Run.autocast``): convolutions and matrix products in
bfloat16, the rest in float32.  A CPU runs it fast only where it has native
bfloat16 arithmetic (AMX or AVX512-BF16, which oneDNN uses; the header
records the CPU's flags); elsewhere it is emulated and slower than float32.
fp16 is float16 autocast with a loss scale per player (its scaler's step and
update are part of the timed step).  By default a CPU runs the first four
variants, and the fifth where it has native bfloat16 (compile is slower on
the CPU, see the results page; emulated, bfloat16 and float16 steps take
about 20 times as long as float32 ones), and a GPU runs them all.  A variant that fails in its
warm-up (a step that CUDA graphs do not allow, say) is left out of the table
and named, with its error, under ``failed`` in the JSON.

All variants of a recipe live in one process. Each first runs ``--warmup``
steps (which absorb torch.compile's compilation, forward and backward), then
the variants take turns, round-robin, for ``--repeats`` rounds (the order
rotated every round), so drifting machine load hits all alike. The table
gives each variant's median time per step, its steps per second
(1 / median), and its ratio to eager: median step time of the variant /
median step time of eager (below 1: faster than eager; 0.8 is 20% less time
per step, 1.25 times the steps per second).

Passes per step: how often each network runs in one (untimed) step of the
eager variant. Forward passes are counted by a forward hook on the network
(every call, Langevin steps included). A backward pass is one autograd call
(``backward`` or ``autograd.grad``) whose gradient reaches the output of one
of the network's forward calls, counted with
``torch.autograd.graph.register_multi_grad_hook(mode="any")`` on the output
tensors of every forward call that requires grad: a player's backward pass
restricted to its own parameters, which autograd does not propagate into a
network upstream, does not count for that network; the gradients in x of a
Langevin chain do count for the energy.

    python benchmarks/recipe_speed.py                         # latent_ebm (simultaneous), triangle; CPU
    python benchmarks/recipe_speed.py --recipes all --device cuda --repeats 50 --json speed.json
    python benchmarks/recipe_speed.py --width 8 --latent-dim 8 --batch-size 8 --image-size 16 --repeats 2
    python benchmarks/recipe_speed.py --recipes latent_ebm --variants eager,compile --repeats 3 --profile

``--recipes`` takes recipe names (``latent_ebm``, ``latent-ebm``), a schedule
after a colon for the recipes that have one (``latent_ebm:sequential``), or
``all``: every recipe, the latent EBM with both schedules. The speed targets
name the two default ones. On the CPU the default run (2 recipes x 4
variants x (3 warm-up + 15 timed) steps of about 0.8 s each at the papers'
sizes on two cores, and each recipe's networks compiled twice) should take
about ten minutes, well under a quarter of an hour, on an idle two-core
machine. On a busy one, wall times are noisy: ``--threads 1`` steadies them
(two threads wait for each other when another program holds a core).
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch._dynamo

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load_recipe  # noqa: E402

from kldiv._checks import device as checked_device  # noqa: E402
from kldiv.train import Run, build_networks  # noqa: E402

DEFAULT_RECIPES = ("latent_ebm:simultaneous", "triangle")
ALL_RECIPES = ("triangle", "latent_ebm:simultaneous", "latent_ebm:sequential", "bidvl", "mcmc_teaching",
               "latent_prior_ebm", "vae")
VARIANTS = {  # name -> the run's flags
    "eager": dict(),
    "compile": dict(compile=True),
    "channels-last": dict(channels_last=True),
    "compile+channels-last": dict(compile=True, channels_last=True),
    "channels-last+bf16": dict(channels_last=True, amp="bf16"),
    "compile+channels-last+bf16": dict(compile=True, channels_last=True, amp="bf16"),
    "channels-last+fp16": dict(channels_last=True, amp="fp16"),
    "compile+channels-last+fp16": dict(compile=True, channels_last=True, amp="fp16"),
    "compile-reduce-overhead+channels-last+bf16": dict(compile=True, compile_mode="reduce-overhead",
                                                       channels_last=True, amp="bf16"),
}
CPU_DEFAULT = ("eager", "compile", "channels-last", "compile+channels-last", "channels-last+bf16")


def cpu_bf16_flags() -> list[str]:
    """The CPU's native bfloat16 instruction sets (Linux), which decide whether bf16 is fast on it."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return []
    return sorted({"amx_bf16", "avx512_bf16"} & set(flags.split()))


# ----------------------------------------------------------------------------------------
# One recipe, one variant
# ----------------------------------------------------------------------------------------
class Variant:
    """A recipe's networks, game, optimisers and batch, set up as ``recipe.main`` would with these flags."""

    def __init__(self, name: str, recipe, cfg, shape: tuple[int, ...], data: torch.Tensor):
        self.cfg = cfg
        self.run = run = Run(cfg, name=name)  # seeds torch as the recipe's run: every variant starts alike
        self.architecture = recipe.networks(cfg, shape)
        self.networks = build_networks(self.architecture)
        prepared = [run.prepare(self.networks[k]) for k in self.architecture]  # generator, encoder, energy/prior
        g, self.parts = recipe.game(cfg, *prepared)
        self.step = g.compile()
        takes_step = "step" in inspect.signature(recipe.optimizers).parameters  # bidvl's: (cfg, step, nets)
        opts, scheds = (recipe.optimizers(cfg, self.step, self.networks) if takes_step
                        else recipe.optimizers(cfg, self.networks))
        run.attach(self.step, self.networks, opts, scheds, architecture=self.architecture)
        self.x = run.place(data)
        self.recipe = recipe

    def __call__(self) -> None:
        self.recipe.train_step(self.cfg, self.run, self.step, self.parts, self.x)


def timed(fn, device: torch.device, clock) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t = clock()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return clock() - t


def _tensors(out) -> list[torch.Tensor]:
    """The tensors of a network's output: a tensor, a container, or a distribution's parameters."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _tensors(o)]
    if isinstance(out, dict):
        return [t for o in out.values() for t in _tensors(o)]
    if isinstance(out, torch.distributions.Distribution):
        found, seen = [], set()
        for v in vars(out).values():  # loc, scale, logits, base_dist, ...
            for t in _tensors(v) if isinstance(v, (torch.Tensor, torch.distributions.Distribution)) else []:
                if id(t) not in seen:
                    seen.add(id(t))
                    found.append(t)
        return found
    return []


def count_passes(variant: Variant) -> dict[str, dict[str, int]]:
    """Forward and backward passes of each network in one step (see the module's docstring)."""
    counts = {k: {"forward": 0, "backward": 0} for k in variant.networks}
    handles = []

    def forward_hook(key):
        def hook(module, args, out):
            counts[key]["forward"] += 1
            outs = [t for t in _tensors(out) if t.requires_grad]
            if outs:
                def backward(grads):
                    counts[key]["backward"] += 1
                handles.append(torch.autograd.graph.register_multi_grad_hook(outs, backward, mode="any"))
        return hook

    hooks = [m.register_forward_hook(forward_hook(k)) for k, m in variant.networks.items()]
    try:
        variant()
    finally:
        for h in hooks + handles:
            h.remove()
    return counts


# ----------------------------------------------------------------------------------------
# The benchmark
# ----------------------------------------------------------------------------------------
def _parse_recipes(text: str) -> list[tuple[str, str | None]]:
    items = ALL_RECIPES if text.strip() == "all" else [s for s in text.split(",") if s.strip()]
    out = []
    for item in items:
        name, _, schedule = item.strip().replace("-", "_").partition(":")
        out.append((name, schedule or None))
    return out


def bench_recipe(name: str, schedule: str | None, args, device: torch.device, clock) -> dict:
    recipe = load_recipe(name)
    fields = {f.name for f in dataclasses.fields(recipe.Config)}
    base = dict(width=args.width, latent_dim=args.latent_dim, batch_size=args.batch_size,
                image_size=args.image_size, device=str(device), seed=args.seed, log_every=10**9)
    if schedule is not None:
        if "schedule" not in fields:
            raise SystemExit(f"--recipes {name}:{schedule}: {name} has no --schedule")
        base["schedule"] = schedule
    shape = (args.channels, args.image_size, args.image_size)
    data = torch.rand(args.batch_size, *shape, generator=torch.Generator().manual_seed(args.seed)) * 2 - 1
    names = list(args.variants)
    torch._dynamo.reset()  # the previous recipe's compiled graphs
    variants = {}
    with tempfile.TemporaryDirectory(prefix=f"recipe_speed_{name}_") as tmp:
        for v in names:
            cfg = recipe.Config(**base, **VARIANTS[v], out=str(Path(tmp) / v))
            variants[v] = Variant(name, recipe, cfg, shape, data)
        label = name + (f":{variants['eager'].cfg.schedule}" if "schedule" in fields else "")
        t0 = time.perf_counter()
        warm, failed = {}, {}
        for v, fn in list(variants.items()):  # compilation happens here
            t = time.perf_counter()
            try:
                for _ in range(args.warmup):
                    fn()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
            except Exception as err:  # a variant this step does not allow (CUDA graphs, say): left out, named
                failed[v] = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
                print(f"  {label}: variant {v} failed in its warm-up and is left out ({failed[v][:300]})",
                      flush=True)
                del variants[v]
                continue
            warm[v] = time.perf_counter() - t
        if not variants:
            raise SystemExit(f"{label}: every variant failed in its warm-up: {failed}")
        times = {v: [] for v in variants}
        order = list(variants)
        for i in range(args.repeats):  # round-robin, the order rotated every round
            for v in order[i % len(order):] + order[: i % len(order)]:
                times[v].append(timed(variants[v], device, clock))
        passes = count_passes(variants["eager"]) if "eager" in variants else count_passes(next(iter(variants.values())))
        profile = {v: profile_step(fn) for v, fn in variants.items()} if args.profile else None
    median = {v: statistics.median(t) for v, t in times.items()}
    ref = median.get("eager")
    result = {
        "recipe": label,
        "variants": {v: {"median_s": median[v], "steps_per_s": 1 / median[v],
                         "ratio_to_eager": median[v] / ref if ref else None,
                         "warmup_s": warm[v], "times_s": times[v]} for v in variants},
        "passes": passes,
        "failed": failed,
        "seconds": time.perf_counter() - t0,
    }
    if profile is not None:
        result["profile_ms"] = profile
    return result


def profile_step(fn) -> dict[str, float]:
    """One step under the PyTorch profiler, its self CPU time split into the convolutions
    (forward and backward) and everything else (for a compiled network, mostly the
    kernels inductor generated), in milliseconds."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    rows = prof.key_averages()
    total = sum(r.self_cpu_time_total for r in rows) / 1e3
    conv = sum(r.self_cpu_time_total for r in rows if "convolution" in r.key) / 1e3
    generated = sum(r.self_cpu_time_total for r in rows if r.key.startswith("## Call CompiledFxGraph")) / 1e3
    return {"total": total, "convolutions": conv, "compiled_graphs": generated, "rest": total - conv}


def print_result(res: dict) -> None:
    print(f"\n{res['recipe']}")
    print(f"  {'variant':<28} {'ms/step':>9} {'steps/s':>9} {'/ eager':>8} {'warm-up s':>10}")
    for v, r in res["variants"].items():
        ratio = f"{r['ratio_to_eager']:.3f}" if r["ratio_to_eager"] is not None else "-"
        print(f"  {v:<28} {r['median_s'] * 1e3:9.1f} {r['steps_per_s']:9.2f} {ratio:>8} {r['warmup_s']:10.1f}")
    passes = ", ".join(f"{k} {c['forward']}/{c['backward']}" for k, c in res["passes"].items())
    print(f"  passes per step (forward/backward): {passes}", flush=True)
    for v, ms in res.get("profile_ms", {}).items():
        print(f"  profile {v:<20} {ms['total']:8.1f} ms self CPU: convolutions {ms['convolutions']:.1f}, "
              f"the rest {ms['rest']:.1f} (of which compiled graphs' own kernels {ms['compiled_graphs']:.1f})")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipes", default=",".join(DEFAULT_RECIPES),
                    help="comma-separated recipes, NAME or NAME:SCHEDULE, or 'all' (default: %(default)s)")
    ap.add_argument("--width", type=int, default=64, help="DCGAN width of every network (the papers: 64)")
    ap.add_argument("--latent-dim", type=int, default=100, help="dimension of z (the papers: 100)")
    ap.add_argument("--batch-size", type=int, default=100, help="images per step (the papers: 100)")
    ap.add_argument("--image-size", type=int, default=32, help="image side (the papers: 32)")
    ap.add_argument("--channels", type=int, default=3, help="image channels (CIFAR-10, SVHN: 3)")
    ap.add_argument("--repeats", type=int, default=15, help="timed rounds; each times one step of every variant")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps per variant first (compilation)")
    ap.add_argument("--variants", default=None,
                    help="comma-separated subset of: " + ", ".join(VARIANTS)
                    + " (default: all on a GPU; on the CPU " + ", ".join(CPU_DEFAULT)
                    + ", bf16 only where the CPU has native bfloat16)")
    ap.add_argument("--device", default="auto", help="auto (a GPU when torch sees one), cpu, cuda or cuda:N")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--clock", choices=("wall", "process"), default="wall",
                    help="wall time (default) or the process's CPU time, summed over its threads")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, metavar="PATH", help="also write the results as JSON")
    ap.add_argument("--profile", action="store_true",
                    help="also profile one step of each variant: convolutions against everything else")
    args = ap.parse_args(argv)
    try:
        device = checked_device(args.device)
    except ValueError as err:
        ap.error(str(err))
    args.device = str(device)
    if args.variants is None:  # bf16 on a CPU only where it has native bfloat16: emulated, it is ~20x slower
        cpu = [v for v in CPU_DEFAULT if "bf16" not in v or cpu_bf16_flags()]
        args.variants = ",".join(VARIANTS if device.type == "cuda" else cpu)
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(args.variants) - set(VARIANTS))
    if unknown:
        ap.error(f"--variants: unknown {unknown}; choose from {list(VARIANTS)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.repeats < 1 or args.warmup < 1:
        ap.error("--repeats and --warmup must be at least 1 (the warm-up absorbs the compilation)")
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    # every variant compiles its own copies of the networks: more graphs per code object than the default allows
    dynamo = torch._dynamo.config
    for limit, value in (("cache_size_limit", 64), ("accumulated_cache_size_limit", 512)):
        if hasattr(dynamo, limit):
            setattr(dynamo, limit, max(getattr(dynamo, limit), value))
    header = {
        "device": str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
        "torch": torch.__version__, "threads": torch.get_num_threads(), "clock": args.clock,
        "cpu": platform.processor() or platform.machine(), "cpu_bf16": cpu_bf16_flags(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "width": args.width, "latent_dim": args.latent_dim, "batch_size": args.batch_size,
        "image_shape": [args.channels, args.image_size, args.image_size],
        "repeats": args.repeats, "warmup": args.warmup,
    }
    print(", ".join(f"{k} {v}" for k, v in header.items()))
    print("median time per step of each variant over interleaved rounds; '/ eager' = its median / eager's median")
    results = []
    for name, schedule in _parse_recipes(args.recipes):
        res = bench_recipe(name, schedule, args, device, clock)
        print_result(res)
        results.append(res)
    out = {**header, "results": results}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return out


if __name__ == "__main__":
    main()
