"""One scoreboard for the papers' claims: every recipe and a plain VAE on MNIST, at one budget.

Each model is trained by its own recipe (``recipes/*.py``, imported and run
in this process with its defaults) on MNIST without one held-out digit
(`kldiv.data.mnist_anomaly_split`, the anomaly papers' protocol), with the
same number of steps, batch size, network width and latent size for all; then
`kldiv.evaluate` scores its checkpoint:

| column | what |
| --- | --- |
| FD | Fréchet distance of 2,000 generator samples to the normal test digits, in the features of kldiv's MNIST classifier (lower is better) |
| FD revised | the same for the MCMC-taught EBM's revised samples: the VAE's samples after the recipe's Langevin chain, clamped to [-1, 1] |
| FID, FID revised | with ``--fid``: the same samples' Fréchet Inception distance (`kldiv.metrics.inception_fid`, the ``fid`` extra) |
| RMSE | reconstruction error g(mu(x)) of the normal test digits, in [-1, 1] units |
| AUROC | OOD detection of Fashion-MNIST, uniform noise and constant images against the normal test digits, by the model's own score (the energy; the negative log joint at the encoder mean for the latent-space EBM prior; the negative ELBO for the VAE) |
| AUPRC | anomaly detection of the held-out digit among the test digits, by the same score |
| steps/s | training rounds per second, from short runs of every model side by side after the scoring (``--time-steps``), so that other work on the machine during a long training run does not enter it |

    python benchmarks/scoreboard.py                               # MNIST, two CPU cores, about an hour
    python benchmarks/scoreboard.py --steps 200 --models vae latent-ebm
    python benchmarks/scoreboard.py --steps 18000 --width 64 --latent-dim 100 --device cuda \
        --recipe-args="--amp bf16 --compile --channels-last"
    python benchmarks/scoreboard.py --evaluate-only              # re-score the runs in --out

It writes ``table.md`` (the table, each paper's claim judged at this scale,
the command line), ``scoreboard.json`` and ``scoreboard.png`` (the sample
grids side by side) into ``--out``, and each model's run directory (its
checkpoint, metrics, samples and ``evaluation.json``) below it.  No number is
selected on the test set: every model is scored once, at its last step.

The MCMC-teaching recipe runs its chain of 15 Langevin steps of size 0.002
(the recipe's CIFAR-10 default) instead of its MNIST preset of 50 steps of
0.001, which costs three times as much per step; ``--mcmc-args`` changes it.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import shlex
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA_ROOT, MODELS, at_least, check_recipe_args, load_recipe  # noqa: E402

from kldiv import metrics  # noqa: E402
from kldiv.data import anomaly_split  # noqa: E402
from kldiv.evaluate import evaluate, load_run  # noqa: E402
from kldiv.evaluate import generator_samples as samples_of  # noqa: E402
from kldiv.evaluate import latent_samples  # noqa: E402
from kldiv.train import load_checkpoint  # noqa: E402

# the scoreboard's own arguments of a recipe, beyond the shared budget
EXTRA = {"mcmc-teaching": ["--langevin-steps", "15", "--step-size", "0.002"]}
TITLES = {m: title for m, (_, title) in MODELS.items()}
OOD = ("fashion-mnist", "uniform noise", "constant")


def recipe_args(model: str, args, out: Path) -> list[str]:
    """The command line of one model's recipe at the scoreboard's budget."""
    extra = list(EXTRA.get(model, []))
    if model == "mcmc-teaching" and args.mcmc_args is not None:
        extra = shlex.split(args.mcmc_args)
    return [
        "--data", "mnist", "--data-root", args.data_root, "--hold-out", str(args.hold_out),
        "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--width", str(args.width),
        "--latent-dim", str(args.latent_dim), "--seed", str(args.seed), "--device", args.device,
        "--out", str(out), "--log-every", str(max(1, args.steps // 20)),
        "--sample-every", str(args.steps), "--checkpoint-every", str(args.steps),
        *(["--download"] if args.download else []), *extra, *shlex.split(args.recipe_args),
    ]


def steps_per_second(run_dir: Path) -> float:
    """Training speed from the run's metrics log, leaving out the first interval (warm-up)."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    if len(rows) < 2:
        return math.nan
    first, last = rows[0], rows[-1]
    return (last["step"] - first["step"]) / max(last["time"] - first["time"], 1e-9)


def time_models(models: list[str], args) -> dict[str, float]:
    """Steps per second of each model, measured side by side on an otherwise idle machine.

    Each recipe runs ``--time-steps`` steps with the scoreboard's arguments in
    a temporary directory, the models one after another, twice in alternating
    order; the speed of a run leaves out its first logged interval (warm-up),
    and a model's figure is the mean of its two runs."""
    import tempfile

    speeds: dict[str, list[float]] = {m: [] for m in models}
    with tempfile.TemporaryDirectory() as tmp:
        for rep, order in enumerate((models, models[::-1])):
            for m in order:
                run_dir = Path(tmp) / f"{m}-{rep}"
                argv = recipe_args(m, args, run_dir)
                argv[argv.index("--steps") + 1] = str(args.time_steps)
                argv[argv.index("--log-every") + 1] = str(max(1, args.time_steps // 5))
                for flag in ("--sample-every", "--checkpoint-every"):
                    argv[argv.index(flag) + 1] = str(10 * args.time_steps)
                with open(Path(tmp) / "log.txt", "a") as log, contextlib.redirect_stdout(log):
                    load_recipe(MODELS[m][0]).main(argv)
                speeds[m].append(steps_per_second(run_dir))
    return {m: sum(v) / len(v) for m, v in speeds.items()}


def _device(name: str) -> str:
    return ("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name


def revised_samples(run_dir: Path, n: int, device: str, seed: int) -> torch.Tensor:
    """The MCMC-taught EBM's samples: the recipe's own chain from its VAE's samples, ``n`` of them."""
    recipe = load_recipe("mcmc_teaching")
    state, nets, _ = load_run(run_dir, device=device)
    fields = {f.name for f in dataclasses.fields(recipe.Config)}
    cfg = recipe.Config(**{k: v for k, v in state["config"].items() if k in fields})
    G, I, E = nets["generator"], nets["encoder"], nets["energy"]
    step = recipe.game(cfg, G, I, E)[0].compile()
    pi = step.game["ebm"].named[0]
    torch.manual_seed(seed)
    x = torch.zeros(1, *state["architecture"]["generator"][1]["image_shape"], device=device)
    out = []
    for _ in range(-(-n // 500)):
        out.append(step.round(x, n=500).samples(pi)["x"].detach().cpu())
    return torch.cat(out)[:n]


def generator_samples(run_dir: Path, n: int, device: str) -> torch.Tensor:
    """``n`` generator samples of a run, the images `kldiv.evaluate` scores."""
    state, nets, _ = load_run(run_dir, device=device)
    z = latent_samples(nets, state["config"], n, device)  # by the prior's sampler where it has one
    return samples_of(nets["generator"], z.shape[1], n, device, z=z).cpu()


def score(model: str, run_dir: Path, args) -> dict:
    """Evaluate one finished run: `kldiv.evaluate`, the speed, and the revised samples' distance."""
    report = evaluate(run_dir, data_root=args.data_root, samples=args.samples, test_images=args.test_images,
                      device=_device(args.device), download=args.download, fid=args.fid)
    row = {
        "fd": report.get("mnist_frechet_distance", math.nan),
        "rmse": report.get("reconstruction_rmse", math.nan),
        "auroc": {k: report.get("ood_auroc", {}).get(k, math.nan) for k in OOD},
        "auprc": report.get("anomaly_auprc", math.nan),
        "score": report.get("ood_score"),
        "steps_per_second_training": steps_per_second(run_dir),
    }
    if args.fid:
        row["fid"] = report["fid"]
    if model == "mcmc-teaching":
        split = anomaly_split("mnist", args.data_root, args.hold_out, download=args.download)
        images, labels = split.test.tensors()
        normal = images[labels == 0][: args.test_images]
        revised = revised_samples(run_dir, args.samples, _device(args.device), args.seed).clamp(-1, 1)
        row["fd_revised"] = metrics.mnist_frechet_distance(normal, revised)
        if args.fid:
            row["fid_revised"] = metrics.inception_fid(normal[: len(revised)], revised, device=_device(args.device))
        torch.save(revised[:64], run_dir / "revised_samples.pt")
    return row


def figure(models: list[str], rows: dict, out: Path, path: Path) -> None:
    """The sample grids side by side, each titled with its Fréchet distance."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from torchvision.utils import make_grid

    panels = []
    for m in (m for m in models if m in rows and "fd" in rows[m]):  # a run that stopped has no samples
        panels.append((f"{TITLES[m]}\nFD {rows[m]['fd']:.1f}", generator_samples(out / m, 64, "cpu")))
        if m == "mcmc-teaching" and "fd_revised" in rows[m] and (out / m / "revised_samples.pt").exists():
            panels.append((f"{TITLES[m]}, revised\nFD {rows[m]['fd_revised']:.1f}",
                           torch.load(out / m / "revised_samples.pt")))
    if not panels:
        print(f"no model has samples to show: {path.name} is not written")
        path.unlink(missing_ok=True)
        return
    fig = Figure(figsize=(2.6 * len(panels), 3.2))
    FigureCanvasAgg(fig)
    for i, (title, x) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        grid = make_grid(((x.clamp(-1, 1) + 1) / 2), nrow=8, padding=1, pad_value=1.0)
        ax.imshow(grid.permute(1, 2, 0).numpy(), interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(path, dpi=110)


def _fmt(v: float, digits: int = 3) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def claims(rows: dict) -> list[str]:
    """Each paper's claim, judged on this scoreboard's numbers (only where both models ran)."""
    out = []

    def mean_auroc(m):
        return sum(rows[m]["auroc"].values()) / len(OOD)

    if {"bidvl", "latent-ebm"} <= rows.keys():
        rec = rows["bidvl"]["rmse"] < rows["latent-ebm"]["rmse"]
        ood = mean_auroc("bidvl") > mean_auroc("latent-ebm")
        out.append(f"- BiDVL reconstructs better than the 2020 latent EBM (RMSE {_fmt(rows['bidvl']['rmse'])} "
                   f"vs {_fmt(rows['latent-ebm']['rmse'])}): **{'holds' if rec else 'does not hold'}**; "
                   f"and detects OOD better (mean AUROC {_fmt(mean_auroc('bidvl'))} vs "
                   f"{_fmt(mean_auroc('latent-ebm'))}): **{'holds' if ood else 'does not hold'}**.")
    for m in ("latent-ebm", "triangle", "bidvl"):
        if {m, "vae"} <= rows.keys():
            ok = rows[m]["fd"] < rows["vae"]["fd"]
            out.append(f"- Joint training ({TITLES[m]}) gives better samples than the VAE alone (FD "
                       f"{_fmt(rows[m]['fd'], 1)} vs {_fmt(rows['vae']['fd'], 1)}): "
                       f"**{'holds' if ok else 'does not hold'}**.")
    if {"latent-prior-ebm", "vae"} <= rows.keys():
        ok = rows["latent-prior-ebm"]["fd"] < rows["vae"]["fd"]
        out.append(f"- An EBM prior in latent space gives better samples than the VAE's Gaussian prior (Pang et al. "
                   f"2020; FD {_fmt(rows['latent-prior-ebm']['fd'], 1)} vs {_fmt(rows['vae']['fd'], 1)}): "
                   f"**{'holds' if ok else 'does not hold'}**.")
    if "mcmc-teaching" in rows:
        r = rows["mcmc-teaching"]
        ok = r["fd_revised"] < r["fd"]
        out.append(f"- The MCMC-taught EBM's revised samples beat its VAE's (FD {_fmt(r['fd_revised'], 1)} vs "
                   f"{_fmt(r['fd'], 1)}): **{'holds' if ok else 'does not hold'}**.")
    return out


def table(models: list[str], rows: dict, args, wall: float | None, command: str) -> str:
    fid = " FID ↓ | FID revised ↓ |" if args.fid else ""
    head = (f"| model | FD ↓ | FD revised ↓ |{fid} RMSE ↓ | AUROC Fashion ↑ | AUROC noise ↑ | AUROC constant ↑ | "
            f"AUPRC digit {args.hold_out} ↑ | score | steps/s |")
    lines = [head, "| --- | " + " | ".join("---" for _ in range(9 + 2 * bool(args.fid))) + " |"]
    for m in models:
        if m not in rows:
            lines.append(f"| {TITLES[m]} | no checkpoint: the run stopped before its first |" + " |" * 8)
            continue
        r = rows[m]
        name = TITLES[m] + (f" (stopped at step {r['step']})" if "stopped" in r else "")
        lines.append(
            f"| {name} | {_fmt(r['fd'], 1)} | {_fmt(r.get('fd_revised', math.nan), 1)} | "
            + (f"{_fmt(r['fid'], 1)} | {_fmt(r.get('fid_revised', math.nan), 1)} | " if args.fid else "")
            + f"{_fmt(r['rmse'])} | "
            + " | ".join(_fmt(r["auroc"][k]) for k in OOD)
            + f" | {_fmt(r['auprc'])} | `{r['score']}` | {_fmt(r['steps_per_second'], 2)} |"
        )
    budget = (f"\n\nMNIST without digit {args.hold_out}, {args.steps} steps of batch {args.batch_size} for every "
              f"model, width {args.width}, z in R^{args.latent_dim}, seed {args.seed}"
              + (f"; wall time {wall / 60:.1f} min" if wall is not None else "") + ".\n\n")
    stops = "".join(f"- {TITLES[m]} stopped: {r['stopped']}; scored at its last good checkpoint.\n"
                    for m, r in rows.items() if "stopped" in r)
    return "\n".join(lines) + budget + stops + "\n".join(claims(rows)) + f"\n\n    {command}\n"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--steps", type=int, default=3000, help="training rounds of every model")
    ap.add_argument("--width", type=int, default=16, help="channel width of every network")
    ap.add_argument("--latent-dim", type=int, default=16, help="dimension of z of every model")
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--hold-out", type=at_least(0, 9), default=4, help="the digit left out of training, the anomaly")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda")
    ap.add_argument("--samples", type=at_least(2), default=2000, help="generated images per Fréchet distance")
    ap.add_argument("--test-images", type=at_least(1), default=10000, help="test images scored per data set")
    ap.add_argument("--fid", action="store_true",
                    help="also the Inception FID of the samples (pip install 'kldiv[fid]'; slow on a CPU)")
    ap.add_argument("--mcmc-args", default=None, help='extra arguments of the MCMC-teaching recipe '
                    '(default "--langevin-steps 15 --step-size 0.002")')
    ap.add_argument("--recipe-args", default="", help='further options of every recipe, after the others, '
                    'e.g. --recipe-args="--amp bf16 --compile --channels-last"')
    ap.add_argument("--data-root", default=str(DATA_ROOT))
    ap.add_argument("--download", action="store_true")
    ap.add_argument("--out", default="runs/scoreboard")
    ap.add_argument("--evaluate-only", action="store_true", help="score the finished runs in --out again")
    ap.add_argument("--time-steps", type=at_least(0), default=60,
                    help="measure steps/s on runs of this many steps after scoring (0: from the training runs)")
    args = ap.parse_args(argv)
    if args.steps < 1 or args.width < 1 or args.latent_dim < 1 or args.batch_size < 1:
        ap.error("--steps, --width, --latent-dim and --batch-size must be positive")
    out = Path(args.out)
    for m in args.models if not args.evaluate_only else ():  # a flag a recipe refuses: before any training
        check_recipe_args(ap, m, recipe_args(m, args, out / m))
    out.mkdir(parents=True, exist_ok=True)
    rows, t0 = {}, time.perf_counter()
    for i, m in enumerate(args.models, 1):
        run_dir = out / m
        if not args.evaluate_only:
            recipe_argv = recipe_args(m, args, run_dir)
            print(f"[{i}/{len(args.models)}] {m}: python recipes/{MODELS[m][0]}.py {' '.join(recipe_argv)}",
                  flush=True)
            run_dir.mkdir(parents=True, exist_ok=True)
            t = time.perf_counter()
            failure = None
            with open(run_dir / "log.txt", "w") as log, contextlib.redirect_stdout(log):
                try:
                    load_recipe(MODELS[m][0]).main(recipe_argv)
                except Exception as err:  # a run that stops (non-finite values) keeps its last good checkpoint
                    failure = f"{type(err).__name__}: {str(err).splitlines()[0]}"
            (run_dir / "failure.txt").unlink(missing_ok=True)
            if failure is not None:
                (run_dir / "failure.txt").write_text(failure + "\n")
                print(f"      stopped: {failure}", flush=True)
                if not (run_dir / "checkpoint.pt").exists():
                    continue
            print(f"      trained in {(time.perf_counter() - t) / 60:.1f} min "
                  f"({steps_per_second(run_dir):.2f} steps/s); scoring", flush=True)
        elif not (run_dir / "checkpoint.pt").exists():
            print(f"[{i}/{len(args.models)}] {m}: no checkpoint in {run_dir}, skipped", flush=True)
            continue
        rows[m] = score(m, run_dir, args)
        if (run_dir / "failure.txt").exists():
            rows[m]["stopped"] = (run_dir / "failure.txt").read_text().strip()
            rows[m]["step"] = int(load_checkpoint(run_dir / "checkpoint.pt")["step"])
        print(f"      FD {_fmt(rows[m]['fd'], 1)}, RMSE {_fmt(rows[m]['rmse'])}, AUPRC {_fmt(rows[m]['auprc'])}, "
              f"{(time.perf_counter() - t0) / 60:.1f} min so far", flush=True)
    wall = None if args.evaluate_only else time.perf_counter() - t0
    if args.time_steps:
        print(f"timing {args.time_steps} steps of each model, twice, side by side", flush=True)
        for m, v in time_models([m for m in args.models if m in rows], args).items():
            rows[m]["steps_per_second"] = v
    else:
        for r in rows.values():
            r["steps_per_second"] = r["steps_per_second_training"]
    command = "python benchmarks/scoreboard.py " + shlex.join(sys.argv[1:] if argv is None else argv)  # quoted
    text = table(args.models, rows, args, wall, command.strip())
    (out / "table.md").write_text(text)
    (out / "scoreboard.json").write_text(json.dumps({"args": vars(args), "rows": rows, "wall_s": wall}, indent=2))
    figure(args.models, rows, out, out / "scoreboard.png")
    print(text)
    return rows


if __name__ == "__main__":
    main()
