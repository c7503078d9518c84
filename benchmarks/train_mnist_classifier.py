"""Train the small MNIST classifier whose features define kldiv's MNIST Fréchet distance.

    python benchmarks/train_mnist_classifier.py            # data in ../shared/data
    python benchmarks/train_mnist_classifier.py --data-root ~/data --download

Trains `kldiv.metrics.MNISTClassifier` on the 60,000 MNIST training images
(in [-1, 1], no augmentation) with Adam and a cosine learning-rate schedule,
reports the accuracy on the 10,000 test images, and writes the checkpoint
`{"state_dict", "test_accuracy", "config"}` to kldiv/assets/mnist_classifier.pt
(about 0.4 MB), which `kldiv.metrics.load_mnist_classifier()` reads.

The run is deterministic for a given torch build and thread count: fixed
seeds, `torch.use_deterministic_algorithms(True)`, a fixed number of CPU
threads (`--threads`), and shuffling from a seeded generator. It takes a few
minutes on two CPU cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch.nn import functional as F

from kldiv.metrics import MNISTClassifier

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Config:
    # data
    data_root: str = str(REPO.parent / "shared" / "data")  # torchvision layout: <root>/MNIST/raw
    download: bool = False  # fetch MNIST with torchvision if it is not there
    # optimisation
    epochs: int = 3
    batch_size: int = 128
    lr: float = 2e-3  # Adam, cosine-annealed to 0 over all steps
    weight_decay: float = 0.0
    # reproducibility
    seed: int = 0
    threads: int = 1  # single-threaded: reproducible, and fastest on a shared 2-core CPU
    device: str = "cpu"
    # output
    out: str = str(REPO / "kldiv" / "assets" / "mnist_classifier.pt")


def parse_args() -> Config:
    defaults = Config()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for field in dataclasses.fields(Config):
        value = getattr(defaults, field.name)
        flag = "--" + field.name.replace("_", "-")
        if isinstance(value, bool):
            parser.add_argument(flag, action="store_true", default=value)
        else:
            parser.add_argument(flag, type=type(value), default=value, help="default: %(default)s")
    return Config(**vars(parser.parse_args()))


def load_split(cfg: Config, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """All images of one split as a float tensor (n, 1, 28, 28) in [-1, 1], and the labels (n,)."""
    data = torchvision.datasets.MNIST(root=cfg.data_root, train=train, download=cfg.download)
    x = data.data.unsqueeze(1).to(torch.float32) / 127.5 - 1.0
    return x, data.targets.clone()


@torch.no_grad()
def accuracy(
    model: MNISTClassifier, x: torch.Tensor, y: torch.Tensor, device: torch.device
) -> float:
    model.eval()
    correct = 0
    for xb, yb in zip(x.split(1000), y.split(1000), strict=True):
        correct += int((model(xb.to(device)).argmax(dim=1).cpu() == yb).sum())
    return correct / len(y)


def main(cfg: Config) -> None:
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    device = torch.device(cfg.device)

    x_train, y_train = load_split(cfg, train=True)
    x_test, y_test = load_split(cfg, train=False)

    model = MNISTClassifier().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = len(x_train) // cfg.batch_size  # the last partial batch is dropped
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=cfg.epochs * steps_per_epoch
    )
    shuffle = torch.Generator().manual_seed(cfg.seed)

    start = time.perf_counter()
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        order = torch.randperm(len(x_train), generator=shuffle)
        total = 0.0
        for step in range(steps_per_epoch):
            idx = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
            xb, yb = x_train[idx].to(device), y_train[idx].to(device)
            loss = F.cross_entropy(model(xb), yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += float(loss.detach())
        print(
            f"epoch {epoch}/{cfg.epochs}  train loss {total / steps_per_epoch:.4f}  "
            f"test accuracy {accuracy(model, x_test, y_test, device):.4f}  "
            f"({time.perf_counter() - start:.0f} s)",
            flush=True,
        )

    test_accuracy = accuracy(model, x_test, y_test, device)
    config = {
        k: v
        for k, v in dataclasses.asdict(cfg).items()
        if k not in ("data_root", "out", "download")
    }
    checkpoint = {
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "test_accuracy": test_accuracy,
        "config": config,
        "torch_version": str(torch.__version__),
    }
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, out)
    print(f"test accuracy {test_accuracy:.4f} on {len(y_test)} MNIST test images")
    print(f"wrote {out.name} ({out.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main(parse_args())
