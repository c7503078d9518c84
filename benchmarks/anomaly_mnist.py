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

from kldiv import KL, DataDensity, GeneratorDensity, LatentEBM
from kldiv.data import mnist_anomaly_split
from kldiv.metrics import anomaly_auprc, latent_ebm_scores
from kldiv.train import Run, RunConfig, build_networks

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


def train(model: str, split, args, out: Path) -> dict:
    """Train the latent EBM or the VAE on ``split.train``; AUPRC after each of the last epochs."""
    cfg = RunConfig(data="mnist", batch_size=args.batch_size, seed=args.seed, out=str(out),
                    device=args.device, log_every=100, checkpoint_every=10**9, steps=0)
    shape, d = (1, 28, 28), args.latent_dim
    architecture = {
        "generator": ("kldiv.nn.Generator", dict(latent_dim=d, image_shape=shape, width=args.width)),
        "encoder": ("kldiv.nn.GaussianEncoder", dict(image_shape=shape, latent_dim=d, width=args.width)),
    }
    if model == "latent-ebm":
        architecture["energy"] = ("kldiv.nn.EnergyXZ", dict(image_shape=shape, latent_dim=d, width=args.width))
    run = Run(cfg, name=model)
    nets = build_networks(architecture)
    G, I = run.prepare(nets["generator"]), run.prepare(nets["encoder"])
    q = DataDensity(I)
    p = GeneratorDensity(G, latent_shape=d, sigma=args.sigma, synthesis="mean")
    betas = (0.0, 0.9)
    opts = {}
    if model == "latent-ebm":
        E = run.prepare(nets["energy"])
        pi = LatentEBM(E)
        L = KL(q, p) + KL(p, pi) - KL(q, pi)  # eq. 10; the encoder on eq. 15
        step = L.maximize(pi, name="ebm").minimize(q, name="encoder").minimize(p, name="generator").compile()
        opts["ebm"] = torch.optim.Adam(nets["energy"].parameters(), args.lr_ebm, betas=betas)
        players = ("ebm", "encoder", "generator")
    else:
        step = KL(q, p).minimize(q, name="encoder").minimize(p, name="generator").compile()
        players = ("encoder", "generator")
    opts["encoder"] = torch.optim.Adam(nets["encoder"].parameters(), args.lr, betas=betas, weight_decay=1e-4)
    opts["generator"] = torch.optim.Adam(nets["generator"].parameters(), args.lr, betas=betas, weight_decay=1e-4)
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
            if model == "latent-ebm":
                scores = latent_ebm_scores(E, I, test_x, device=run.device)
            else:
                scores = negative_elbo(G, I, test_x.to(run.device), args.sigma)
            auprcs.append(anomaly_auprc(scores, labels))
            print(f"  {model} digit {split.held_out} epoch {epoch}: AUPRC {auprcs[-1]:.3f}", flush=True)
    return {"auprc_per_epoch": auprcs, "auprc": sum(auprcs) / len(auprcs),
            "auprc_sd": (sum((a - sum(auprcs) / len(auprcs)) ** 2 for a in auprcs) / max(1, len(auprcs) - 1)) ** 0.5,
            "seconds": time.perf_counter() - t0}


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
    ap.add_argument("--models", nargs="+", default=["latent-ebm", "vae"], choices=("latent-ebm", "vae"))
    ap.add_argument("--data-root", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--download", action="store_true")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default="runs/anomaly_mnist")
    args = ap.parse_args(argv)
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
