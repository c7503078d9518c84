"""Why a latent EBM ranks noise as in-distribution: its OOD AUROC under two scores, for trained runs.

For each run directory (a `recipes/latent_ebm.py` checkpoint trained on
MNIST, e.g. one of the scoreboard's), the normal test digits are scored
against uniform noise, constant images and Fashion-MNIST by

| score | formula |
| --- | --- |
| energy at the encoder mean (the paper's) | $-f(x, \\mu_\\phi(x))$ |
| free energy, importance-sampled | $-\\log \\frac1K \\sum_k \\exp\\big(f(x, z_k) - \\log q_\\phi(z_k \\mid x)\\big)$, $z_k \\sim q_\\phi(z \\mid x)$: the latent EBM's own marginal, $-\\log \\int \\exp f(x, z)\\,dz$ up to $\\log Z$ |
| encoder spread | $\\sum_i \\log s_{\\phi,i}(x)$, the log standard deviations of $q_\\phi(z \\mid x)$ |

and the table gives the AUROC of each (1: every OOD image scores above every
test digit).  The third column is the part of the second that the encoder
contributes, to show which network does the ranking.

    python benchmarks/ood_latent_ebm.py runs/scoreboard/latent-ebm
    python benchmarks/ood_latent_ebm.py runs/a runs/b --samples 16
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA_ROOT  # noqa: E402

from kldiv import metrics  # noqa: E402
from kldiv.data import anomaly_split, load_dataset  # noqa: E402
from kldiv.evaluate import load_run  # noqa: E402

SCORES = ("energy at the encoder mean", "free energy (IS)", "encoder spread")


@torch.no_grad()
def scores(nets: dict, x: torch.Tensor, kind: str, samples: int, seed: int = 0) -> torch.Tensor:
    """One score per image (higher: more anomalous)."""
    E, I = nets["energy"], nets["encoder"]
    g = torch.Generator().manual_seed(seed)
    out = []
    for xb in x.split(500):
        q = I(xb)
        if kind == "energy at the encoder mean":
            out.append(-E(xb, q.mean).flatten())
        elif kind == "free energy (IS)":
            z = q.mean + q.stddev * torch.randn((samples, *q.mean.shape), generator=g)
            lw = torch.stack([E(xb, zk).flatten() - q.log_prob(zk) for zk in z])
            out.append(-(torch.logsumexp(lw, 0) - math.log(samples)))
        else:
            out.append(q.stddev.log().flatten(1).sum(1))
    return torch.cat(out)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    ap.add_argument("runs", nargs="+", help="latent-EBM run directories (trained on MNIST)")
    ap.add_argument("--samples", type=int, default=16, help="importance samples K per image")
    ap.add_argument("--images", type=int, default=2000, help="images per set")
    ap.add_argument("--data-root", default=str(DATA_ROOT))
    args = ap.parse_args(argv)
    g = torch.Generator().manual_seed(1)
    results = {}
    lines = ["| run | score | uniform noise | constant | Fashion-MNIST |", "| --- | --- | --- | --- | --- |"]
    for run in args.runs:
        state, nets, _ = load_run(run)
        cfg = state["config"]
        if cfg.get("hold_out", -1) >= 0:
            x, labels = anomaly_split("mnist", args.data_root, cfg["hold_out"]).test.tensors()
            normal = x[labels == 0]
        else:
            normal = load_dataset("mnist", args.data_root, train=False).tensors()[0]
        normal = normal[torch.randperm(len(normal), generator=torch.Generator().manual_seed(0))[: args.images]]
        shape = (args.images, *normal.shape[1:])
        ood = {
            "uniform noise": torch.rand(shape, generator=g) * 2 - 1,
            "constant": (torch.rand(args.images, 1, 1, 1, generator=g) * 2 - 1).expand(shape).contiguous(),
            "Fashion-MNIST": load_dataset("fashion-mnist", args.data_root, train=False).tensors()[0][: args.images],
        }
        results[run] = {}
        for kind in SCORES:
            s_in = scores(nets, normal, kind, args.samples)
            results[run][kind] = {k: metrics.ood_auroc(s_in, scores(nets, v, kind, args.samples)) for k, v in ood.items()}
            r = results[run][kind]
            lines.append(f"| `{run}` | {kind} | {r['uniform noise']:.3f} | {r['constant']:.3f} | "
                         f"{r['Fashion-MNIST']:.3f} |")
    print("\n".join(lines))
    return results


if __name__ == "__main__":
    main()
