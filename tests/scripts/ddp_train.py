"""A deterministic two-player game trained with kldiv.train, for the torchrun test.

The VAE's encoder is a point mass, the EBM's log Z is paid by data samples with
a constant ratio: nothing is random but the data order, so one process on a
batch of 2B and two processes on B each must end with the same parameters.

    python -m torch.distributed.run --standalone --nproc_per_node 2 ddp_train.py OUT 8
    python ddp_train.py OUT 16
"""

import sys

import pyro.distributions as dist
import torch
from torch import nn

from kldiv import KL, DataDensity, GeneratorDensity, MarginalEBM
from kldiv.samplers import Importance
from kldiv.train import Run, RunConfig


class PointEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(6, 2)

    def forward(self, x):
        return dist.Delta(self.lin(x), event_dim=1)


def main(out: str, batch: int):
    cfg = RunConfig(batch_size=batch, steps=5, out=out, seed=3, log_every=1, checkpoint_every=100)
    run = Run(cfg, name="ddp")
    torch.manual_seed(0)
    enc, dec = PointEncoder(), nn.Linear(2, 6)
    energy = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 1))
    q, p = DataDensity(enc), GeneratorDensity(dec, latent_shape=2, sigma=0.5)
    pi = MarginalEBM(energy, sampler=Importance("data", ratio=0.3))
    step = (
        KL(q, p).minimize(p, name="generator").minimize(q, name="encoder")
        .minimize(pi, objective=KL(DataDensity(name="q_data"), pi), name="ebm")
        # values=False: a later player's value would re-evaluate the point mass of the
        # updated encoder at the earlier sample, where its log density is -inf
        .compile(values=False)
    )
    nets = {"encoder": enc, "decoder": dec, "energy": energy}
    opts = {
        "generator": torch.optim.SGD(dec.parameters(), lr=0.1),
        "encoder": torch.optim.SGD(enc.parameters(), lr=0.1),
        "ebm": torch.optim.SGD(energy.parameters(), lr=0.1),
    }
    run.attach(step, nets, opts)
    data = torch.randn(64, 6, generator=torch.Generator().manual_seed(1))
    for x in run.batches(data):
        r = step.round(x)
        for player in ("ebm", "encoder", "generator"):
            run.update(r, player)
        run.end_step()
    run.close()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
