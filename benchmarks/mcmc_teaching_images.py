"""MCMC teaching on MNIST and Fashion-MNIST with the authors' MNIST chain, trained and scored.

Xie et al. (2021) revise each VAE sample with 50 noise-free Langevin steps of
size 0.001 on the descriptor plus a Gaussian reference (sigma 0.016), with a
data batch of 400 and as many chains (the recipe's ``mnist`` and
``fashion-mnist`` presets). This script trains the recipe with those
settings on each data set at a width two CPU cores can afford, then scores
every run once, at its last step:

| column | what |
| --- | --- |
| EBM value, last 200 steps | the EBM player's logged value (E_data[f] - E_revised[f]): bounded if training is stable |
| revised range | the smallest and largest pixel of the revised samples over the last 200 steps |
| FD VAE, FD revised | Fréchet distance, in the features of kldiv's MNIST classifier, between the data set's test images and the VAE's samples g(z) and the revised samples (the recipe's own chain from g(z), clamped to [-1, 1]) |
| RMSE | reconstruction g(mu(x)) of the test images |
| AUROC | by the EBM's negative log density -f(x) - log N(x; 0, 0.016² I) (`kldiv.evaluate`): uniform noise, constant images and the other data set against the test images |
| AUROC without reference | the same by -f(x) alone, the network without the model's Gaussian reference |
| mean squared norm | the mean of ||x||^2 over the test images and over uniform noise: the reference's -log N(x; 0, s^2 I) is ||x||^2 / 2s^2 plus a constant |

It writes ``results.json`` and ``revised-<data>.png`` / ``samples-<data>.png``
into ``--out``.

    python benchmarks/mcmc_teaching_images.py                       # both data sets, 600 steps each: about 70 minutes on two cores
    python benchmarks/mcmc_teaching_images.py --evaluate-only       # score the finished runs in --out again
    python benchmarks/mcmc_teaching_images.py --data mnist --noise-share 0.2 --out runs/mcmc_teaching_noise
    python benchmarks/mcmc_teaching_images.py --steps 20000 --width 64 --latent-dim 100 --device cuda
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA_ROOT, load_recipe  # noqa: E402
from scoreboard import generator_samples, revised_samples  # noqa: E402

from kldiv import metrics  # noqa: E402
from kldiv.data import load_dataset  # noqa: E402
from kldiv.evaluate import evaluate  # noqa: E402

DATA = ("mnist", "fashion-mnist")


def test_images(name: str, root: str, n: int) -> torch.Tensor:
    ds = load_dataset(name, root, train=False)
    return torch.stack([ds[i][0] for i in range(min(n, len(ds)))])


def train(name: str, args, run_dir: Path) -> None:
    argv = ["--data", name, "--data-root", args.data_root, "--width", str(args.width),
            "--latent-dim", str(args.latent_dim), "--steps", str(args.steps), "--log-every", "50",
            "--checkpoint-every", "100", "--sample-every", str(args.steps), "--device", args.device,
            "--seed", str(args.seed), "--noise-share", str(args.noise_share), "--out", str(run_dir)]
    if (run_dir / "checkpoint.pt").exists():
        argv.append("--resume")  # an interrupted run continues; a finished one does nothing more
    load_recipe("mcmc_teaching").main(argv)


def score(name: str, args, run_dir: Path) -> dict:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in rows if r["step"] > rows[-1]["step"] - 200]
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else (
        "cpu" if args.device == "auto" else args.device)
    ev = evaluate(run_dir, data_root=args.data_root, samples=args.samples, device=device)
    real = test_images(name, args.data_root, args.test_images)
    revised = revised_samples(run_dir, args.samples, device, args.seed).clamp(-1, 1)
    vae = generator_samples(run_dir, args.samples, device).clamp(-1, 1)
    from torchvision.utils import save_image

    save_image(revised[:100] * 0.5 + 0.5, Path(args.out) / f"revised-{name}.png", nrow=10)
    save_image(vae[:100] * 0.5 + 0.5, Path(args.out) / f"samples-{name}.png", nrow=10)
    return {
        "steps": rows[-1]["step"],
        "ebm_value_last_200": [min(r["ebm"] for r in last), max(r["ebm"] for r in last)],
        "revised_range_last_200": [min(r["revised_min"] for r in last), max(r["revised_max"] for r in last)],
        "fd_vae": metrics.mnist_frechet_distance(real, vae),
        "fd_revised": metrics.mnist_frechet_distance(real, revised),
        "rmse": ev["reconstruction_rmse"],
        "auroc": ev["ood_auroc"],
        "ood_score": ev["ood_score"],
        "auroc_without_reference": ev.get("ood_auroc_without_reference"),
        "mean_squared_norm": {
            "test images": real.flatten(1).square().sum(1).mean().item(),
            "uniform noise": (torch.rand(real.shape, generator=torch.Generator().manual_seed(1)) * 2 - 1)
            .flatten(1).square().sum(1).mean().item(),
        },
    }


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", nargs="+", default=list(DATA), choices=DATA)
    ap.add_argument("--steps", type=int, default=600, help="training rounds per data set (batch 400)")
    ap.add_argument("--width", type=int, default=16, help="channel width of every network (the code: 64)")
    ap.add_argument("--latent-dim", type=int, default=100, help="dimension of z (the code: 100)")
    ap.add_argument("--samples", type=int, default=2000, help="generated images per Fréchet distance")
    ap.add_argument("--test-images", type=int, default=10000)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--noise-share", type=float, default=0.0,
                    help="share of the EBM's log Z gradient paid by chains from uniform noise (the recipe's flag)")
    ap.add_argument("--data-root", default=str(DATA_ROOT))
    ap.add_argument("--out", default="runs/mcmc_teaching_images")
    ap.add_argument("--evaluate-only", action="store_true", help="score the finished runs in --out again")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    for name in args.data:
        run_dir = out / name
        if not args.evaluate_only:
            train(name, args, run_dir)
        results[name] = score(name, args, run_dir)
        print(name, json.dumps(results[name]), flush=True)
    (out / "results.json").write_text(json.dumps({"args": vars(args), "results": results}, indent=2) + "\n")
    print(f"wrote {out / 'results.json'}")
    return results


if __name__ == "__main__":
    main()
