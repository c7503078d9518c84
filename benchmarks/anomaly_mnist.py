"""MNIST hold-out-digit anomaly detection: Table 4 of Han et al. (2020), reproduced.

For each held-out digit, the latent-EBM triangle (the objective of
``recipes/latent_ebm.py``, eq. 10, the encoder on eq. 15) is trained on 80%
of the other nine digits; the test set is the remaining 20% plus every image
of the held-out digit (the MEG protocol, `kldiv.data.mnist_anomaly_split`).
The anomaly score is the energy at the encoder mean, -f(x, mu_q(x)), and the
metric is the area under the precision-recall curve (AUPRC), averaged over
the last ``--average-last`` epochs as the paper does.  A plain VAE,
KL(q || p) with the same generator and encoder and the same number of steps,
is the baseline; its score is the per-image negative ELBO (one sample).

    python benchmarks/anomaly_mnist.py                      # all five digits, CPU-sized
    python benchmarks/anomaly_mnist.py --digits 4 --epochs 2
    python benchmarks/anomaly_mnist.py --width 64 --latent-dim 100 --epochs 100   # the paper's size, on a GPU

The defaults are sized so that all five digits, both models, fit in about 90
minutes on two CPU cores: networks of width 16, z in R^16, 12 epochs, the AUPRC
averaged over the last 5.  The
paper trains DCGAN-size networks for many more epochs.  Results go to
``--out`` (a JSON per digit and ``table.md``), with the command line.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

from kldiv import KL, DataDensity, DecoupledEBLVM, GeneratorDensity, LatentEBM
from kldiv.data import mnist_anomaly_split
from kldiv.metrics import (
    anomaly_auprc,
    latent_ebm_scores,
    marginal_ebm_scores,
    plot_energy_histograms,
    plot_precision_recall,
)
from kldiv.train import Run, RunConfig, build_networks, load_checkpoint

PAPER = {1: 0.297, 4: 0.723, 5: 0.676, 7: 0.490, 9: 0.383}
PAPER_VAE = {1: 0.063, 4: 0.337, 5: 0.325, 7: 0.148, 9: 0.104}
REPO = Path(__file__).resolve().parents[1]


def negative_elbo(G, I, x: torch.Tensor, sigma: float, batch: int = 1000) -> torch.Tensor:
    """Per-image -ELBO with one reparameterised sample: -log p(x|z) + KL(q(z|x) || N(0, I))."""
    out = []
    with torch.no_grad():
        G.eval(), I.eval()
        for xb in x.split(batch):
            q = I(xb)
            z = q.rsample()
            rec = 0.5 * (xb - G(z)).flatten(1).square().sum(1) / sigma**2
            mu, s = q.base_dist.loc, q.base_dist.scale
            kl = 0.5 * (mu.square() + s.square() - 1 - 2 * s.log()).sum(1)
            out.append((rec + kl).cpu())
        G.train(), I.train()
    return torch.cat(out)


def scores(model: str, nets: dict, x: torch.Tensor, sigma: float, device) -> torch.Tensor:
    """Anomaly scores (higher: more anomalous) of each model, as the papers score them."""
    if model == "latent-ebm":
        return latent_ebm_scores(nets["energy"], nets["encoder"], x, device=device)
    if model == "triangle":
        return marginal_ebm_scores(nets["energy"], x, device=device)
    return negative_elbo(nets["generator"], nets["encoder"], x.to(device), sigma)


def plot(model: str, split, s: torch.Tensor, labels: torch.Tensor, out: Path) -> None:
    """The precision-recall curve and the score histograms of the normal and held-out test images."""
    title = f"{model}, held-out digit {split.held_out}"
    plot_precision_recall(s, labels, out / "precision_recall.png", title=title)
    plot_energy_histograms(s[labels == 0], {f"digit {split.held_out} (anomalies)": s[labels == 1]},
                           out / "score_histograms.png", in_name="normal test digits",
                           xlabel="anomaly score")


def train(model: str, split, args, out: Path) -> dict:
    """Train one model on ``split.train``; AUPRC after each of the last epochs.

    ``latent-ebm``: the 2020 triangle (eq. 10, encoder on eq. 15), score -f(x, mu_q(x));
    ``triangle``: the 2019 triangle with an EBM on x alone (the authors' code: no
    spectral norm, sigma^2 = 1/2, sleep weight 0.1, Adam(0.5, 0.999)), score -f(x);
    ``vae``: KL(q || p), score the per-image negative ELBO.
    """
    cfg = RunConfig(data="mnist", batch_size=args.batch_size, seed=args.seed, out=str(out),
                    device=args.device, log_every=100, checkpoint_every=10**9, steps=0)
    shape, d = (1, 28, 28), args.latent_dim
    architecture = {
        "generator": ("kldiv.nn.Generator", dict(latent_dim=d, image_shape=shape, width=args.width)),
        "encoder": ("kldiv.nn.GaussianEncoder", dict(image_shape=shape, latent_dim=d, width=args.width)),
    }
    if model == "latent-ebm":
        architecture["energy"] = ("kldiv.nn.EnergyXZ", dict(image_shape=shape, latent_dim=d, width=args.width))
    elif model == "triangle":
        architecture["energy"] = ("kldiv.nn.EnergyX", dict(image_shape=shape, width=args.width, spectral_norm=False))
    run = Run(cfg, name=model)
    nets = build_networks(architecture)
    G, I = run.prepare(nets["generator"]), run.prepare(nets["encoder"])
    E = run.prepare(nets["energy"]) if "energy" in nets else None
    sigma = math.sqrt(0.5) if model == "triangle" else args.sigma
    q = DataDensity(I)
    p = GeneratorDensity(G, latent_shape=d, sigma=sigma, synthesis="mean")
    betas = (0.5, 0.999) if model == "triangle" else (0.0, 0.9)
    opts = {}
    if model == "latent-ebm":
        pi = LatentEBM(E)
        L = KL(q, p) + KL(p, pi) - KL(q, pi)  # eq. 10; the encoder on eq. 15
        step = L.maximize(pi, name="ebm").minimize(q, name="encoder").minimize(p, name="generator").compile()
        players = ("ebm", "encoder", "generator")
    elif model == "triangle":
        Pi = DecoupledEBLVM(E, I)
        L = KL(q, p) + KL(p, Pi) - KL(q, Pi)  # Han et al. 2019
        step = (L.maximize(Pi, name="ebm").minimize(q, objective=KL(q, p) + 0.1 * KL(p, Pi) - KL(q, Pi), name="encoder")
                .minimize(p, name="generator").compile())
        players = ("ebm", "encoder", "generator")
    else:
        step = KL(q, p).minimize(q, name="encoder").minimize(p, name="generator").compile()
        players = ("encoder", "generator")
    if "ebm" in players:
        opts["ebm"] = torch.optim.Adam(nets["energy"].parameters(), args.lr_ebm, betas=betas)
    decay = 0.0 if model == "triangle" else 1e-4
    opts["encoder"] = torch.optim.Adam(nets["encoder"].parameters(), args.lr, betas=betas, weight_decay=decay)
    opts["generator"] = torch.optim.Adam(nets["generator"].parameters(), args.lr, betas=betas, weight_decay=decay)
    images = split.train.tensors()[0][: args.train_images or None]
    steps_per_epoch = len(images) // args.batch_size
    run.cfg.steps = steps_per_epoch * args.epochs
    run.attach(step, nets, opts, architecture=architecture)
    keep = slice(None) if not args.test_images else torch.randperm(
        len(split.test_labels), generator=torch.Generator().manual_seed(0))[: args.test_images]
    test_x = split.test.tensors()[0][keep]
    labels = split.test_labels[keep]
    auprcs, t0 = [], time.perf_counter()
    for x in run.batches(images):
        r = step.round(x)
        for player in players:
            run.update(r, player)
        run.end_step()
        epoch, rest = divmod(run.step, steps_per_epoch)
        if rest == 0 and epoch > args.epochs - args.average_last:
            s = scores(model, {"energy": E, "encoder": I, "generator": G}, test_x, sigma, run.device)
            auprcs.append(anomaly_auprc(s, labels))
            print(f"  {model} digit {split.held_out} epoch {epoch}: AUPRC {auprcs[-1]:.3f}", flush=True)
    plot(model, split, s, labels, out)
    return {"auprc_per_epoch": auprcs, "auprc": sum(auprcs) / len(auprcs),
            "auprc_sd": (sum((a - sum(auprcs) / len(auprcs)) ** 2 for a in auprcs) / max(1, len(auprcs) - 1)) ** 0.5,
            "seconds": time.perf_counter() - t0}


def replot(args) -> None:
    """Rebuild each digit's models from their checkpoints and redraw their plots."""
    for digit in args.digits:
        split = mnist_anomaly_split(args.data_root, digit, download=args.download)
        test_x = split.test.tensors()[0]
        for model in args.models:
            where = Path(args.out) / f"digit{digit}" / model
            state = load_checkpoint(where / "checkpoint.pt")
            nets = build_networks({k: tuple(v) for k, v in state["architecture"].items()})
            for name, net in nets.items():
                net.load_state_dict(state["networks"][name])
            sigma = math.sqrt(0.5) if model == "triangle" else args.sigma
            torch.manual_seed(args.seed)  # the -ELBO draws z: the same numbers on every replot
            s = scores(model, nets, test_x, sigma, "cpu")
            plot(model, split, s, split.test_labels, where)
            print(f"{where}: AUPRC {anomaly_auprc(s, split.test_labels):.3f} at the last epoch")
            if model == "latent-ebm":  # the same run's VAE half, scored as the baseline is
                s = scores("vae", nets, test_x, sigma, "cpu")
                print(f"{where}: AUPRC {anomaly_auprc(s, split.test_labels):.3f} with its generator and "
                      "encoder's -ELBO as the score instead of the energy")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--digits", type=int, nargs="+", default=[1, 4, 5, 7, 9])
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--average-last", type=int, default=5, help="average the AUPRC over the last this many epochs")
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--latent-dim", type=int, default=16)
    ap.add_argument("--sigma", type=float, default=0.3)
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--lr", type=float, default=3e-4, help="generator and encoder learning rate")
    ap.add_argument("--lr-ebm", type=float, default=1e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train-images", type=int, default=0, help="use only this many training images (0: all)")
    ap.add_argument("--test-images", type=int, default=0, help="score only this many test images (0: all)")
    ap.add_argument("--models", nargs="+", default=["latent-ebm", "vae"], choices=("latent-ebm", "triangle", "vae"))
    ap.add_argument("--data-root", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--download", action="store_true")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default="runs/anomaly_mnist")
    ap.add_argument("--plots-only", action="store_true",
                    help="rescore the checkpoints of an earlier run in --out and redraw its plots")
    args = ap.parse_args(argv)
    if args.plots_only:
        return replot(args)
    if args.average_last > args.epochs:
        ap.error("--average-last cannot exceed --epochs")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results, t0 = {}, time.perf_counter()
    for digit in args.digits:
        split = mnist_anomaly_split(args.data_root, digit, download=args.download)
        results[digit] = {m: train(m, split, args, out / f"digit{digit}" / m) for m in args.models}
        (out / f"digit{digit}.json").write_text(json.dumps(results[digit], indent=2))
    total = time.perf_counter() - t0
    command = "python benchmarks/anomaly_mnist.py " + " ".join(sys.argv[1:] if argv is None else argv)
    lines = [
        "| held-out digit | VAE (paper) | latent EBM (paper) | " + " | ".join(f"{m} (kldiv)" for m in args.models) + " |",
        "| --- | --- | --- | " + " | ".join("---" for _ in args.models) + " |",
    ]
    for digit, res in results.items():
        ours = " | ".join(f"{res[m]['auprc']:.3f} ± {res[m]['auprc_sd']:.3f}" for m in args.models)
        lines.append(f"| {digit} | {PAPER_VAE.get(digit, math.nan):.3f} | {PAPER.get(digit, math.nan):.3f} | {ours} |")
    table = "\n".join(lines)
    note = (f"\n\nkldiv columns: AUPRC averaged over the last {args.average_last} of {args.epochs} epochs "
            f"(± their standard deviation), width {args.width}, z in R^{args.latent_dim}; "
            f"wall time {total / 60:.1f} min.\n\n    {command.strip()}\n")
    (out / "table.md").write_text(table + note)
    print(table + note)


if __name__ == "__main__":
    main()
