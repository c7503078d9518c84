"""How noisy the score-function gradient is, with and without its baseline, beside the pathwise one.

For a fixed batch of the embedded digits and fixed networks, the encoder's
gradient of KL(q || p) is estimated ``--rounds`` times, each time from fresh
samples of z, by every estimator that applies:

* a VAE over 16 Bernoulli bits (no pathwise gradient exists): the score
  function with kldiv's leave-one-out baseline, and without it;
* a Gaussian VAE, z in R^8: the pathwise (reparameterised) gradient, and the
  score-function route forced on the same networks
  (``DataDensity(encoder, reparameterized=False)``), with and without the baseline.

Printed per estimator: the total variance of the gradient (the trace of its
covariance over the rounds, summed over the encoder's parameters) and its ratio
to the first estimator of the model.  All of them are unbiased (the oracles of
``tests/test_score_function.py`` and ``tests/test_oracle.py`` check it), so the
variance is what tells them apart.  The networks are
first trained for ``--train-steps`` steps, so the variances are measured at a
point of a run rather than at initialisation.

    python benchmarks/score_variance.py
    python benchmarks/score_variance.py --rounds 500 --batch 256
"""

from __future__ import annotations

import argparse
import time

import pyro.distributions as dist
import torch
from sklearn.datasets import load_digits
from torch import nn

from kldiv import KL, DataDensity, GeneratorDensity
from kldiv.nn import MLPEncoder

BITS, DZ = 16, 8


class BernoulliEncoder(nn.Module):
    """x -> prod_i Bernoulli(z_i; sigmoid(l_i(x)))."""

    def __init__(self, hidden: int = 256):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, hidden), nn.SiLU(), nn.Linear(hidden, BITS))

    def forward(self, x):
        return dist.Bernoulli(logits=self.net(x)).to_event(1)


def decoder(dz: int) -> nn.Module:
    return nn.Sequential(nn.Linear(dz, 256), nn.SiLU(), nn.Linear(256, 64))


def train(estimator, params, images, steps: int, batch: int) -> None:
    opt = torch.optim.Adam(params, lr=1e-3)
    for _ in range(steps):
        out = estimator(images[torch.randint(len(images), (batch,))])
        opt.zero_grad()
        out.backward()
        opt.step()


def gradients(estimator, params, x: torch.Tensor, rounds: int) -> torch.Tensor:
    """(rounds, parameters): the encoder's gradient from fresh samples of z, on one batch."""
    rows = []
    for _ in range(rounds):
        for p in params:
            p.grad = None
        estimator(x).backward()
        rows.append(torch.cat([p.grad.flatten() for p in params]))
    for p in params:
        p.grad = None
    return torch.stack(rows)


def report(model: str, rows: dict[str, torch.Tensor], reference: str) -> list[str]:
    ref = rows[reference].var(0).sum().item()
    lines = []
    for name, g in rows.items():
        var = g.var(0).sum().item()
        lines.append(f"| {model} | {name} | {var:.4g} | {var / ref:.2f} |")
    return lines


def main(argv=None) -> list[str]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    ap.add_argument("--rounds", type=int, default=300, help="gradient estimates per estimator")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--train-steps", type=int, default=300, help="training steps before measuring")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    torch.manual_seed(args.seed)
    images = torch.tensor(load_digits().data, dtype=torch.float32) / 8 - 1  # (1797, 64)
    x = images[torch.randperm(len(images))[: args.batch]]
    lines = ["| model | estimator of the encoder's gradient | total variance | ratio |",
             "| --- | --- | --- | --- |"]

    # 1. Bernoulli bits: the score function is the only route
    enc, dec = BernoulliEncoder(), decoder(BITS)
    prior = dist.Bernoulli(probs=torch.full((BITS,), 0.5)).to_event(1)
    p = GeneratorDensity(dec, latent_shape=BITS, sigma=0.3, prior=prior)
    q = DataDensity(enc, reparameterized=False)
    game = KL(q, p).minimize(q, p, name="vae")
    train(game.compile(), [*enc.parameters(), *dec.parameters()], images, args.train_steps, args.batch)
    params = list(enc.parameters())
    rows = {
        "score function, leave-one-out baseline": gradients(game.compile(), params, x, args.rounds),
        "score function, no baseline": gradients(game.compile(baseline=False), params, x, args.rounds),
    }
    lines += report(f"Bernoulli VAE, {BITS} bits", rows, "score function, leave-one-out baseline")

    # 2. a Gaussian z: the pathwise gradient exists; the score function is forced for comparison
    enc, dec = MLPEncoder(64, DZ, hidden=(256,)), decoder(DZ)
    p = GeneratorDensity(dec, latent_shape=DZ, sigma=0.3)
    pathwise = KL(DataDensity(enc), p).minimize(enc, dec, name="vae")
    train(pathwise.compile(), [*enc.parameters(), *dec.parameters()], images, args.train_steps, args.batch)
    params = list(enc.parameters())
    q_score = DataDensity(enc, reparameterized=False)
    forced = KL(q_score, p).minimize(enc, dec, name="vae")
    rows = {
        "pathwise (reparameterised)": gradients(pathwise.compile(), params, x, args.rounds),
        "score function, leave-one-out baseline": gradients(forced.compile(), params, x, args.rounds),
        "score function, no baseline": gradients(forced.compile(baseline=False), params, x, args.rounds),
    }
    lines += report(f"Gaussian VAE, z in R^{DZ}", rows, "pathwise (reparameterised)")
    lines.append(f"\n{args.rounds} rounds on one batch of {args.batch} digits after {args.train_steps} training "
                 f"steps; ratio: to the first estimator of the model. {time.perf_counter() - t0:.0f} s.")
    print("\n".join(lines))
    return lines


if __name__ == "__main__":
    main()
