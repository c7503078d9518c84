"""MNIST hold-out-digit anomaly detection: Table 4 of Han et al. (2020), reproduced.

For each held-out digit, each model is trained by its own recipe
(``recipes/*.py``, imported and run in this process with its defaults and
``--hold-out DIGIT``) on 80% of the other nine digits; the test set is the
remaining 20% plus every image of the held-out digit (the MEG protocol,
`kldiv.data.mnist_anomaly_split`).  Each model scores an image as
`kldiv.evaluate.scorer` does: the latent EBM by its energy at the encoder mean,
-f(x, mu_q(x)), the generator with a latent-space EBM prior by its negative
log joint at the encoder mean, -log p(x, mu_q(x)) (Pang et al. 2020), and
beside it (its own column) at the end of Pang et al.'s posterior Langevin chain
(20 steps of 0.1, with noise) started at the encoder mean, -log p(x, z_20), an
EBM on x by -f(x), the VAE by its negative ELBO.  The metric is the area under the
precision-recall curve (AUPRC), averaged over the last ``--average-last``
epochs as the paper does: the recipe runs to the first of them, then resumes
one epoch at a time, and its checkpoint is scored after each.

The AUPRC depends on how common the anomalies are, and in this test set the
held-out digit is a third of the images or more (33-39%): a random score gets
about that much, and even one that ranks every held-out image as the most
normal gets 0.19-0.23.  So each AUPRC is also given with the held-out digit
weighted to its share of MNIST (9-11%, as in a test set drawn from MNIST at
large; `kldiv.metrics.anomaly_auprc`'s ``anomaly_share``), and the table
shows both shares and the worst AUPRC at each.  Each scored epoch's
checkpoint (the recipes' ``--keep``) and scores (``scores-epochNNN.pt``)
stay in the run's folder; ``--rescore`` scores the checkpoints again and
recomputes every AUPRC, training nothing.

With ``--ema DECAY`` the recipes also keep a moving average of the weights,
and both are scored at every epoch: the table gives both columns, the last
step's weights and their average, side by side.  No epoch and no setting is
chosen on the test set.

    python benchmarks/anomaly_mnist.py                      # all five digits, CPU-sized
    python benchmarks/anomaly_mnist.py --digits 4 --epochs 2
    python benchmarks/anomaly_mnist.py --ema 0.999          # and the moving average of the weights
    python benchmarks/anomaly_mnist.py --models latent-prior-ebm --ema 0.999   # add a model to the table
    python benchmarks/anomaly_mnist.py --rescore            # score the kept checkpoints again
    python benchmarks/anomaly_mnist.py --shares             # how common each digit is, and the worst AUPRC
    python benchmarks/anomaly_mnist.py --width 64 --latent-dim 100 --epochs 100 --device cuda   # the paper's size

The defaults are sized for two CPU cores: networks of width 16, z in R^16, 12
epochs, the AUPRC averaged over the last 5; a digit took 11-23 minutes for the
latent EBM, 12-17 for the EBM prior and 4-15 for the VAE, one thread each, two
runs sharing the cores.  The paper trains DCGAN-size networks for many
more epochs.  ``--recipe-args`` passes further options to every recipe.
Results go to ``--out``: a JSON per digit, which keeps the results of earlier
invocations with the same settings (so digits and models can be run a few at a
time), and ``table.md``, every digit and model run with these settings beside
the published numbers (Han et al. 2020, Pang et al. 2020, Cui, Wu & Han 2023),
with the command that reproduces all of it; ``--table-only`` rewrites it, ``--plots-only`` redraws
the precision-recall curves and score histograms of an earlier run from its
checkpoints.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA_ROOT, MODELS, at_least, check_recipe_args, load_recipe  # noqa: E402

from kldiv.data import mnist_anomaly_split  # noqa: E402
from kldiv.evaluate import energy_prior_density, load_run, scorer  # noqa: E402
from kldiv.metrics import anomaly_auprc, plot_energy_histograms, plot_precision_recall  # noqa: E402

PAPER = {1: 0.297, 4: 0.723, 5: 0.676, 7: 0.490, 9: 0.383}
PAPER_VAE = {1: 0.063, 4: 0.337, 5: 0.325, 7: 0.148, 9: 0.104}
PANG = {1: 0.336, 4: 0.630, 5: 0.619, 7: 0.463, 9: 0.413}  # Pang et al. 2020, latent-space EBM prior
ICCV = {1: 0.722, 4: 0.949, 5: 0.980, 7: 0.941, 9: 0.935}  # Cui, Wu & Han 2023, Table 3
ANCHORS = [("VAE (Han 2020)", PAPER_VAE), ("latent EBM (Han 2020)", PAPER), ("EBM prior (Pang 2020)", PANG),
           ("joint EBM prior (ICCV 2023)", ICCV)]
SETTINGS = ("epochs", "average_last", "epoch_steps", "width", "latent_dim", "batch_size", "ema", "recipe_args",
            "seed", "test_images")


def test_images(split, limit: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The split's test images and anomaly labels, or a fixed random ``limit`` of them."""
    x, labels = split.test.tensors()
    if limit:
        keep = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))[:limit]
        x, labels = x[keep], labels[keep]
    return x, labels


def score_run(run_dir: Path, x: torch.Tensor, ema: bool, device: str, posterior: bool = False) -> torch.Tensor:
    """Anomaly scores of the test images by the run's checkpoint (its moving average with ``ema``;
    at the end of the posterior chain from the encoder mean with ``posterior``)."""
    state, nets, _ = load_run(run_dir, device=device, ema=ema)
    score, _ = scorer(nets, state["config"], device, posterior=posterior)
    return score(x)


KEYS = {"last": "auprc", "ema": "auprc_ema", "posterior": "auprc_posterior"}
KIND_NAMES = {"auprc": "", "auprc_ema": ", EMA", "auprc_posterior": ", posterior chain"}


def kinds_of(model: str, args) -> tuple[str, ...]:
    """How a model's checkpoints are scored: the last step's weights, their moving average with
    ``--ema``, and for the EBM prior also at the end of Pang et al.'s posterior chain (last weights)."""
    return ("last", *(("ema",) if args.ema else ()), *(("posterior",) if model == "latent-prior-ebm" else ()))


def plot(model: str, digit: int, s: torch.Tensor, labels: torch.Tensor, out: Path) -> None:
    """The precision-recall curve and the score histograms of the normal and held-out test images."""
    title = f"{model}, held-out digit {digit}"
    plot_precision_recall(s, labels, out / "precision_recall.png", title=title)
    plot_energy_histograms(s[labels == 0], {f"digit {digit} (anomalies)": s[labels == 1]},
                           out / "score_histograms.png", in_name="normal test digits", xlabel="anomaly score")


def epoch_auprcs(scores: dict[str, torch.Tensor], labels: torch.Tensor, share: float) -> dict[str, float]:
    """One epoch's AUPRCs: on the test set as it is, and with the anomalies weighted to ``share`` of it."""
    out = {}
    for kind, s in scores.items():
        key = KEYS[kind]
        out[key] = anomaly_auprc(s, labels)
        out[f"{key}_natural"] = anomaly_auprc(s, labels, anomaly_share=share)
    return out


def summary(per_epoch: list[dict[str, float]]) -> dict:
    """Each AUPRC's values per epoch, their mean and their standard deviation."""
    result = {}
    for key in per_epoch[0]:
        values = [e[key] for e in per_epoch]
        result[f"{key}_per_epoch"] = values
        result[key] = statistics.fmean(values)
        result[f"{key}_sd"] = statistics.stdev(values) if len(values) > 1 else 0.0
    return result


def score_epoch(ckpt: Path, x, labels, kinds, device: str, save: Path) -> dict[str, torch.Tensor]:
    """Score the test images by a checkpoint (each kind of weights) and keep the scores in ``save``."""
    scores = {kind: score_run(ckpt, x, kind == "ema", device, kind == "posterior") for kind in kinds}
    torch.save({"checkpoint": ckpt.name, "scores": scores, "labels": labels}, save)
    return scores


def train(model: str, split, args, out: Path) -> dict:
    """Train one model by its recipe; its AUPRCs after each of the last ``--average-last`` epochs."""
    recipe = load_recipe(MODELS[model][0])
    per_epoch = args.epoch_steps or len(split.train) // args.batch_size
    base = [
        "--data", "mnist", "--data-root", args.data_root, "--hold-out", str(split.held_out),
        "--width", str(args.width), "--latent-dim", str(args.latent_dim), "--batch-size", str(args.batch_size),
        "--seed", str(args.seed), "--device", args.device, "--out", str(out),
        "--log-every", str(max(1, per_epoch // 4)), "--sample-every", str(per_epoch * args.epochs),
        "--checkpoint-every", str(per_epoch), "--keep", str(args.average_last),
        *(["--ema", str(args.ema)] if args.ema else []),
        *(["--download"] if args.download else []), *shlex.split(args.recipe_args),
    ]
    x, labels = test_images(split, args.test_images)
    shares = dict(zip(("share_test", "share_mnist"), split.held_out_shares()))
    device = "cuda" if args.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu"
    kinds = kinds_of(model, args)
    per_epoch_auprcs = []
    t0 = time.perf_counter()
    first = args.epochs - args.average_last + 1
    out.mkdir(parents=True, exist_ok=True)
    for epoch in range(first, args.epochs + 1):
        argv = [*base, "--steps", str(per_epoch * epoch), *(["--resume"] if epoch > first else [])]
        with open(out / "log.txt", "a") as log, contextlib.redirect_stdout(log):
            recipe.main(argv)
        scores = score_epoch(out / "checkpoint.pt", x, labels, kinds, device, out / f"scores-epoch{epoch:03d}.pt")
        per_epoch_auprcs.append(epoch_auprcs(scores, labels, shares["share_mnist"]))
        shown = ", ".join(f"{k} {v:.3f}" for k, v in per_epoch_auprcs[-1].items())
        print(f"  {model} digit {split.held_out} epoch {epoch}: AUPRC {shown}", flush=True)
    plot(model, split.held_out, scores["last"], labels, out)
    return {"seconds": time.perf_counter() - t0, "steps": per_epoch * args.epochs, **summary(per_epoch_auprcs),
            **shares}


def rescore(args, settings: dict) -> None:
    """Score again the checkpoints of the last ``--average-last`` epochs that each run kept, and
    recompute its AUPRCs (every kind) in the results run with these settings."""
    out = Path(args.out)
    for digit in args.digits:
        f = out / f"digit{digit}.json"
        results = json.loads(f.read_text()) if f.exists() else {}
        split = mnist_anomaly_split(args.data_root, digit, download=args.download)
        x, labels = test_images(split, args.test_images)
        shares = dict(zip(("share_test", "share_mnist"), split.held_out_shares()))
        for model in args.models:
            if results.get(model, {}).get("settings") != settings:
                continue
            where = out / f"digit{digit}" / model
            kept = sorted(where.glob("checkpoint-[0-9]*.pt"))[-args.average_last:]
            if len(kept) < args.average_last:
                raise SystemExit(f"{where} keeps {len(kept)} checkpoints (checkpoint-STEP.pt), fewer than the "
                                 f"last {args.average_last} epochs'")
            per_epoch = []
            for i, ckpt in enumerate(kept):
                epoch = args.epochs - args.average_last + 1 + i
                scores = score_epoch(ckpt, x, labels, kinds_of(model, args), "cpu",
                                     where / f"scores-epoch{epoch:03d}.pt")
                per_epoch.append(epoch_auprcs(scores, labels, shares["share_mnist"]))
                print(f"  {model} digit {digit} {ckpt.name}: AUPRC "
                      + ", ".join(f"{k} {v:.3f}" for k, v in per_epoch[-1].items()), flush=True)
            results[model] = {**results[model], **summary(per_epoch), **shares}
        if results:
            f.write_text(json.dumps(results, indent=2))


def term_auprcs(args, settings: dict) -> str:
    """Which term of the EBM prior's score ranks the anomalies: the AUPRC of each term of
    -log p(x, mu_q(x)) alone, and of the prior's two together, at every kept checkpoint."""
    out = Path(args.out)
    rows, names = {}, []
    for digit in args.digits:
        if "latent-prior-ebm" not in load_results(out, settings).get(digit, {}):
            continue
        split = mnist_anomaly_split(args.data_root, digit, download=args.download)
        x, labels = test_images(split, args.test_images)
        where = out / f"digit{digit}" / "latent-prior-ebm"
        kept = sorted(where.glob("checkpoint-[0-9]*.pt"))[-args.average_last:]
        if len(kept) < args.average_last:
            raise SystemExit(f"{where} keeps {len(kept)} checkpoints (checkpoint-STEP.pt), fewer than the "
                             f"last {args.average_last} epochs'")
        per_epoch: dict[str, list[float]] = {}
        spread: dict[str, list[float]] = {}
        for ckpt in kept:
            state, nets, _ = load_run(ckpt, device="cpu", ema=False)
            p = energy_prior_density(nets, state["config"])
            for net in nets.values():
                net.eval()
            with torch.no_grad():
                terms = [p.log_prob_terms({"x": b, "z": nets["encoder"](b).mean}) for b in x.split(500)]
            terms = {k: torch.cat([t[k] for t in terms]) for k in terms[0]}
            prior = [k for k in terms if k in {t.label for t in p.terms() if t.factor == "z"}]  # p_alpha(z)'s
            scores = {"-log p(x, mu_q(x))": -sum(terms.values()), **{f"-[{k}]": -v for k, v in terms.items()},
                      f"-[{' + '.join(prior)}]": -sum(terms[k] for k in prior)}
            for name, sc in scores.items():
                per_epoch.setdefault(name, []).append(anomaly_auprc(sc, labels))
                spread.setdefault(name, []).append(sc.std().item())
        names = list(per_epoch)
        rows[digit] = {k: (statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else 0.0,
                           statistics.fmean(spread[k])) for k, v in per_epoch.items()}
        print(f"  digit {digit}: " + ", ".join(f"{k} {m:.3f}" for k, (m, _, _) in rows[digit].items()), flush=True)
    if not rows:
        raise SystemExit(f"{out} holds no EBM prior results run with these settings for digits {args.digits}: "
                         "train them first (--models latent-prior-ebm), with the same settings")
    lines = ["| held-out digit | EBM prior (Pang 2020) | " + " | ".join(f"`{n}`" for n in names) + " |",
             "| --- | --- | " + " | ".join("---" for _ in names) + " |"]
    for digit, r in rows.items():
        lines.append(f"| {digit} | {PANG[digit]:.3f} | "
                     + " | ".join(f"{r[n][0]:.3f} ± {r[n][1]:.3f} (sd {r[n][2]:.3g})" for n in names) + " |")
    text = "\n".join(lines) + ("\n\nEach cell: the term's AUPRC alone, mean ± sd over the kept epochs, and (sd) "
                               "the spread of its values over the test images, in nats")
    (out / "terms.md").write_text(text + "\n")
    print(text)
    return text


def replot(args) -> None:
    """Rescore each digit's models from their checkpoints and redraw their plots."""
    for digit in args.digits:
        split = mnist_anomaly_split(args.data_root, digit, download=args.download)
        x, labels = test_images(split, args.test_images)
        for model in args.models:
            where = Path(args.out) / f"digit{digit}" / model
            s = score_run(where, x, bool(args.ema), "cpu")
            plot(model, digit, s, labels, where)
            print(f"{where}: AUPRC {anomaly_auprc(s, labels):.3f} at the last epoch")


def settings_of(args) -> dict:
    """What makes two runs of a model comparable: everything but the digits and the models."""
    return {k: getattr(args, k) for k in SETTINGS}


def load_results(out: Path, settings: dict) -> dict[int, dict]:
    """The results in ``out`` (a JSON per digit) that were run with ``settings``."""
    found = {}
    for f in sorted(out.glob("digit*.json")):
        kept = {m: r for m, r in json.loads(f.read_text()).items() if r.get("settings") == settings}
        if kept:
            found[int(f.stem.removeprefix("digit"))] = kept
    return dict(sorted(found.items()))


def worst_auprc(share: float) -> float:
    """The AUPRC of a score that ranks every anomaly below every normal image, anomalies ``share`` of the set."""
    k = share / (1 - share)
    return 1 - math.log1p(k) / k


def print_shares(args) -> str:
    """How common each held-out digit is in the test set and in MNIST, what chance and the worst
    score get there, beside the published AUPRCs."""
    lines = ["| held-out digit | share of the test set (chance) | worst AUPRC there | share of MNIST (chance) "
             "| worst AUPRC there | " + " | ".join(a for a, _ in ANCHORS) + " |",
             "| --- | --- | --- | --- | --- | " + " | ".join("---" for _ in ANCHORS) + " |"]
    for digit in args.digits:
        test, mnist = mnist_anomaly_split(args.data_root, digit, download=args.download).held_out_shares()
        published = " | ".join(f"{a.get(digit, math.nan):.3f}" for _, a in ANCHORS)
        lines.append(f"| {digit} | {test:.3f} | {worst_auprc(test):.3f} | {mnist:.3f} | {worst_auprc(mnist):.3f} "
                     f"| {published} |")
    text = "\n".join(lines)
    print(text)
    return text


def table(results: dict, args, command: str) -> str:
    """The table of every digit and model in ``results``, beside the published numbers."""
    models = [m for m in MODELS if any(m in r for r in results.values())]
    cols = [(m, key + natural, f"{MODELS[m][1]}{suffix}{', at MNIST share' if natural else ''} (kldiv)")
            for m in models for key, suffix in KIND_NAMES.items() for natural in ("", "_natural")
            if any(key + natural in r.get(m, {}) for r in results.values())]
    lines = [
        "| held-out digit | share of the test set (of MNIST) | worst AUPRC (at MNIST share) | "
        + " | ".join(a for a, _ in ANCHORS) + " | " + " | ".join(c[2] for c in cols) + " |",
        "| --- | --- | --- | " + " | ".join("---" for _ in ANCHORS) + " | " + " | ".join("---" for _ in cols) + " |",
    ]
    minutes = 0.0
    for digit, res in results.items():
        cells = []
        for m, k, _ in cols:
            r = res.get(m, {})
            cells.append(f"{r[k]:.3f} ± {r[k + '_sd']:.3f}" if k in r else "–")
        minutes += sum(r.get("seconds", 0.0) for r in res.values()) / 60
        shared = next((r for r in res.values() if "share_test" in r), None)
        share = (f"{shared['share_test']:.3f} ({shared['share_mnist']:.3f}) | "
                 f"{worst_auprc(shared['share_test']):.3f} ({worst_auprc(shared['share_mnist']):.3f})"
                 if shared else "– | –")
        published = " | ".join(f"{a.get(digit, math.nan):.3f}" for _, a in ANCHORS)
        lines.append(f"| {digit} | {share} | {published} | " + " | ".join(cells) + " |")
    ema = f"; EMA: the moving average of the weights, decay {args.ema}" if args.ema else ""
    note = (f"\n\nkldiv columns: AUPRC averaged over the last {args.average_last} of {args.epochs} epochs "
            f"(± their standard deviation), width {args.width}, z in R^{args.latent_dim}{ema}; "
            f"'at MNIST share': the held-out digit weighted to its share of MNIST (anomaly_auprc's anomaly_share); "
            f"a random score's AUPRC is about the share. Training and scoring {minutes:.1f} min in all. "
            f"Every row and column comes from (a few digits or models at a time with --digits and --models):"
            f"\n\n    {command.strip()}\n")
    return "\n".join(lines) + note


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    ap.add_argument("--digits", type=at_least(0, 9), nargs="+", default=[1, 4, 5, 7, 9])
    ap.add_argument("--models", nargs="+", default=["latent-ebm", "vae", "latent-prior-ebm"], choices=list(MODELS))
    ap.add_argument("--epochs", type=at_least(1), default=12)
    ap.add_argument("--average-last", type=at_least(1), default=5, help="average the AUPRC over the last this many epochs")
    ap.add_argument("--epoch-steps", type=at_least(0), default=0, help="steps per epoch (0: one pass over the training set)")
    ap.add_argument("--width", type=at_least(1), default=16)
    ap.add_argument("--latent-dim", type=at_least(1), default=16)
    ap.add_argument("--batch-size", type=at_least(1), default=100)
    ap.add_argument("--ema", type=float, default=0.0,
                    help="also score the moving average of the weights with this decay (0: off)")
    ap.add_argument("--recipe-args", default="", help='further options for every recipe, e.g. --recipe-args="--sigma 0.3"')
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--test-images", type=at_least(0), default=0, help="score only this many test images (0: all)")
    ap.add_argument("--data-root", default=str(DATA_ROOT))
    ap.add_argument("--download", action="store_true")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default="runs/anomaly_mnist")
    ap.add_argument("--plots-only", action="store_true",
                    help="rescore the checkpoints of an earlier run in --out and redraw its plots")
    ap.add_argument("--table-only", action="store_true",
                    help="rewrite table.md from the results in --out run with these settings, training nothing")
    ap.add_argument("--rescore", action="store_true",
                    help="score the checkpoints each run kept of its last --average-last epochs again, update "
                         "its AUPRCs and rewrite table.md, training nothing")
    ap.add_argument("--terms", action="store_true",
                    help="the AUPRC of each term of the EBM prior's score alone, at the checkpoints each run "
                         "kept (writes terms.md), training nothing")
    ap.add_argument("--shares", action="store_true",
                    help="print each digit's share of the test set and of MNIST, and the worst AUPRC at each, "
                         "beside the published numbers, training nothing")
    args = ap.parse_args(argv)
    if args.plots_only:
        return replot(args)
    if args.shares:
        return print_shares(args)
    if not 1 <= args.average_last <= args.epochs:
        ap.error("--average-last must be between 1 and --epochs")
    if not (args.plots_only or args.table_only or args.rescore or args.terms):
        for m in args.models:  # a flag a recipe refuses: before any training
            check_recipe_args(ap, m, ["--data", "mnist", *shlex.split(args.recipe_args)])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = settings_of(args)
    # every result in the table was run with these settings, whichever digits and models each invocation took
    # (--recipe-args=... with "=", since its value starts with "--")
    flags = [f"--{k.replace('_', '-')} {v}" if k != "recipe_args" else f"--recipe-args={shlex.quote(v)}"
             for k, v in settings.items() if v != ap.get_default(k)]
    command = " ".join(["python benchmarks/anomaly_mnist.py", *flags])
    if args.terms:
        return term_auprcs(args, settings)
    if args.rescore:
        rescore(args, settings)
    elif not args.table_only:
        for digit in args.digits:  # never overwrite results run with other settings
            f = out / f"digit{digit}.json"
            earlier = json.loads(f.read_text()) if f.exists() else {}
            clash = [m for m in args.models if m in earlier and earlier[m].get("settings") != settings]
            if clash:
                ap.error(f"{f} holds results of {', '.join(clash)} run with other settings "
                         f"({earlier[clash[0]].get('settings')}); give another --out")
        for digit in args.digits:
            split = mnist_anomaly_split(args.data_root, digit, download=args.download)
            # earlier results for this digit stay; the models run now replace theirs
            f = out / f"digit{digit}.json"
            results = json.loads(f.read_text()) if f.exists() else {}
            for m in args.models:
                where = out / f"digit{digit}" / m
                if where.exists():  # a fresh run: the recipe resumes from its own checkpoints only
                    for old in [*where.glob("checkpoint*.pt"), *where.glob("scores-epoch*.pt"),
                                where / "metrics.jsonl", where / "log.txt"]:
                        old.unlink(missing_ok=True)
                results[m] = {**train(m, split, args, where), "settings": settings}
                (out / f"digit{digit}.json").write_text(json.dumps(results, indent=2))
    text = table(load_results(out, settings), args, command)
    (out / "table.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
