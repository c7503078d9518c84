"""Data sets: the embedded digits, real MNIST on disk, fake files in torchvision's layout, toys."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from kldiv.data import (
    DATASETS,
    TOY_2D,
    DatasetNotFoundError,
    anomaly_split,
    digits_dataset,
    infinite_batches,
    load_dataset,
    mnist_anomaly_split,
    toy_2d,
)

# the shared data folder sits next to the repository
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
needs_mnist = pytest.mark.skipif(
    not (SHARED_DATA / "MNIST" / "raw").is_dir(),
    reason=f"real MNIST not found at {SHARED_DATA / 'MNIST' / 'raw'} (a sibling of the repository)",
)
needs_fashion = pytest.mark.skipif(
    not (SHARED_DATA / "FashionMNIST" / "raw").is_dir(),
    reason=f"real Fashion-MNIST not found at {SHARED_DATA / 'FashionMNIST' / 'raw'}",
)



# ---------------------------------------------------------------------------------------
# digits (embedded)
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [8, 16, 28, 32])
@pytest.mark.parametrize("mode", ["resize", "pad"])
def test_digits_shapes_and_range(size, mode):
    ds = digits_dataset(size, train=None, mode=mode)
    x, y = ds.tensors()
    assert len(ds) == 1797
    assert x.shape == (1797, 1, size, size) and x.dtype == torch.float32
    assert x.min() == -1.0 and x.max() <= 1.0
    assert x.max() > 0.9
    assert y.min() == 0 and y.max() == 9
    item, label = ds[5]
    assert item.shape == (1, size, size) and label == y[5]


def test_digits_pad_keeps_the_original_pixels():
    small, _ = digits_dataset(8, train=None).tensors()
    padded, _ = digits_dataset(28, train=None, mode="pad").tensors()
    assert torch.equal(padded[:, :, 10:18, 10:18], small)
    border = padded.clone()
    border[:, :, 10:18, 10:18] = -1
    assert (border == -1).all()
    # values 0..16 map to 2v/16 - 1 exactly
    from sklearn.datasets import load_digits

    assert torch.equal(small[:, 0], torch.as_tensor(load_digits().images, dtype=torch.float32) / 8 - 1)


def test_digits_split_is_deterministic_and_complete():
    train, test = digits_dataset(16, train=True), digits_dataset(16, train=False)
    assert (len(train), len(test)) == (1438, 359)
    xa, ya = train.tensors()
    xb, _ = digits_dataset(16, train=True).tensors()
    assert torch.equal(xa, xb)
    _, yt = test.tensors()
    _, y_all = digits_dataset(16, train=None).tensors()
    assert torch.equal(torch.bincount(torch.cat([ya, yt])), torch.bincount(y_all))
    other, _ = digits_dataset(16, train=True, seed=1).tensors()
    assert not torch.equal(xa, other)
    x_load, _ = load_dataset("digits", image_size=16).tensors()
    assert torch.equal(x_load, xa)


def test_unknown_names_are_refused():
    with pytest.raises(ValueError, match="cifar10"):
        load_dataset("imagenet")
    with pytest.raises(ValueError, match="pad"):
        digits_dataset(8, mode="crop")
    assert set(DATASETS) == {"digits", "mnist", "fashion-mnist", "cifar10", "svhn", "celeba"}


# ---------------------------------------------------------------------------------------
# real MNIST / Fashion-MNIST on disk
# ---------------------------------------------------------------------------------------
@needs_mnist
def test_mnist_loader():
    test = load_dataset("mnist", SHARED_DATA, train=False)
    x, y = test.tensors()
    assert x.shape == (10000, 1, 28, 28)
    assert x.min() == -1.0 and x.max() == 1.0
    counts = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert torch.equal(torch.bincount(y), torch.tensor(counts))
    assert test[0][1] == 7  # the first test digit
    big = load_dataset("MNIST", SHARED_DATA, train=False, image_size=32)
    assert big[0][0].shape == (1, 32, 32)
    assert big[0][0].min() >= -1 and big[0][0].max() <= 1


@needs_fashion
def test_fashion_mnist_loader():
    test = load_dataset("fashion-mnist", SHARED_DATA, train=False)
    x, y = test.tensors()
    assert x.shape == (10000, 1, 28, 28)
    assert torch.equal(torch.bincount(y), torch.full((10,), 1000))
    assert len(load_dataset("fashion_mnist", SHARED_DATA, train=True)) == 60000


@pytest.fixture(scope="module")
def split_1():
    return mnist_anomaly_split(SHARED_DATA, held_out=1)


@needs_mnist
def test_anomaly_split_sizes_and_labels(split_1):
    s = split_1
    n_ones = 7877  # every 1 among the 70,000 images
    normal = 70000 - n_ones
    k = int(0.8 * normal)
    assert len(s.train) == k == 49698
    assert len(s.test) == normal - k + n_ones == 20302
    assert int(s.test_labels.sum()) == n_ones
    assert torch.equal(s.test_labels, (s.test_digits == 1).long())
    assert not (s.train.labels == 1).any()
    assert torch.equal(torch.stack([s.test[i][1] for i in range(50)]), s.test_labels[:50])
    x, _ = s.train.tensors()
    assert x.shape == (k, 1, 28, 28) and x.min() == -1 and x.max() == 1
    # train and test are disjoint and together cover the pool
    both = torch.cat([s.train_index, s.test_index])
    assert torch.equal(both.sort().values, torch.arange(70000))


@needs_mnist
def test_anomaly_split_follows_the_documented_protocol(split_1):
    import torchvision

    labels = np.concatenate(
        [torchvision.datasets.MNIST(str(SHARED_DATA), train=t).targets.numpy() for t in (True, False)]
    )
    normal = np.flatnonzero(labels != 1)
    rng = np.random.RandomState(42)
    perm = rng.permutation(len(normal))
    k = int(0.8 * len(normal))
    assert np.array_equal(split_1.train_index.numpy(), normal[perm[:k]])
    test = np.concatenate([normal[perm[k:]], np.flatnonzero(labels == 1)])
    assert np.array_equal(split_1.test_index.numpy(), test[rng.permutation(len(test))])
    again = mnist_anomaly_split(SHARED_DATA, held_out=1)
    assert torch.equal(again.train_index, split_1.train_index)
    assert torch.equal(again.test_index, split_1.test_index)
    zero = mnist_anomaly_split(SHARED_DATA, held_out=0)
    assert int(zero.test_labels.sum()) == 5923 + 980
    with pytest.raises(ValueError):
        mnist_anomaly_split(SHARED_DATA, held_out=10)


# ---------------------------------------------------------------------------------------
# missing files
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "where"),
    [
        ("mnist", "MNIST/raw"),
        ("fashion-mnist", "FashionMNIST/raw"),
        ("cifar10", "cifar-10-batches-py"),
        ("svhn", "train_32x32.mat"),
        ("celeba", "celeba"),
    ],
)
def test_missing_data_names_the_path_and_the_download_flag(tmp_path, name, where):
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset(name, tmp_path / "nowhere")
    assert isinstance(info.value, FileNotFoundError)
    message = str(info.value)
    assert str((tmp_path / "nowhere" / where).resolve()) in message
    assert "--download" in message and "download=True" in message


# ---------------------------------------------------------------------------------------
# fake files in torchvision's layout (CIFAR-10, SVHN, CelebA are not on this machine)
# ---------------------------------------------------------------------------------------
def _files_exist(fpath, md5=None):
    # torchvision checks md5 sums of the real archives; fake files only need to exist
    return os.path.isfile(fpath)


def _write_fake_cifar10(root: Path, per_batch: int) -> np.ndarray:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.RandomState(0)
    first = None
    for i, name in enumerate([f"data_batch_{j}" for j in range(1, 6)] + ["test_batch"]):
        data = rng.randint(0, 256, size=(per_batch, 3 * 32 * 32), dtype=np.uint8)
        first = data if i == 0 else first
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data, "labels": [(i + j) % 10 for j in range(per_batch)]}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{c}" for c in range(10)]}, f)
    return first


def test_fake_cifar10(tmp_path, monkeypatch):
    first = _write_fake_cifar10(tmp_path, per_batch=4)
    # with torchvision's md5 check in force the fake files count as corrupted
    with pytest.raises(DatasetNotFoundError, match="cifar-10-batches-py"):
        load_dataset("cifar10", tmp_path)
    import torchvision.datasets.cifar

    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", _files_exist)
    train = load_dataset("cifar10", tmp_path, train=True)
    test = load_dataset("cifar10", tmp_path, train=False)
    assert (len(train), len(test)) == (20, 4)
    x, y = train.tensors()
    assert x.shape == (20, 3, 32, 32)
    assert y[:4].tolist() == [0, 1, 2, 3]
    # CIFAR rows are 1024 red, 1024 green, 1024 blue values, each 32×32 row-major
    expected = torch.as_tensor(first[0].reshape(3, 32, 32), dtype=torch.float32) * 2 / 255 - 1
    assert torch.allclose(x[0], expected)
    small = load_dataset("cifar10", tmp_path, image_size=16)
    assert small[0][0].shape == (3, 16, 16)
    assert small[0][0].min() >= -1 and small[0][0].max() <= 1


def test_fake_svhn(tmp_path, monkeypatch):
    from scipy.io import savemat

    rng = np.random.RandomState(0)
    X = rng.randint(0, 256, size=(32, 32, 3, 6), dtype=np.uint8)  # SVHN's (H, W, C, N)
    y = np.array([[10], [1], [2], [3], [10], [9]], dtype=np.uint8)  # the digit 0 is labelled 10
    savemat(tmp_path / "train_32x32.mat", {"X": X, "y": y})
    savemat(tmp_path / "test_32x32.mat", {"X": X[..., :2], "y": y[:2]})
    import torchvision.datasets.svhn

    monkeypatch.setattr(torchvision.datasets.svhn, "check_integrity", _files_exist)
    train = load_dataset("svhn", tmp_path)
    x, labels = train.tensors()
    assert x.shape == (6, 3, 32, 32)
    assert labels.tolist() == [0, 1, 2, 3, 0, 9]
    expected = torch.as_tensor(X[..., 4], dtype=torch.float32).permute(2, 0, 1) * 2 / 255 - 1
    assert torch.allclose(x[4], expected)
    assert len(load_dataset("svhn", tmp_path, train=False)) == 2
    assert load_dataset("svhn", tmp_path, image_size=8)[0][0].shape == (3, 8, 8)


def _write_fake_celeba(root: Path) -> None:
    from PIL import Image

    folder = root / "celeba"
    (folder / "img_align_celeba").mkdir(parents=True)
    names = [f"{i:06d}.jpg" for i in range(1, 7)]
    partition = [0, 0, 0, 1, 2, 2]  # torchvision needs two or more images per split
    for i, name in enumerate(names):
        # a flat colour, 30 wide × 36 high (CelebA's aligned faces are 178 × 218)
        Image.new("RGB", (30, 36), (250, 10 * i, 128)).save(folder / "img_align_celeba" / name)
    attrs = [f"Attr{a}" for a in range(40)]
    lines = {
        "list_eval_partition.txt": [f"{n} {p}" for n, p in zip(names, partition)],
        "identity_CelebA.txt": [f"{n} {i + 1}" for i, n in enumerate(names)],
        "list_bbox_celeba.txt": [str(len(names)), "image_id x_1 y_1 width height"]
        + [f"{n} 1 2 3 4" for n in names],
        "list_landmarks_align_celeba.txt": [str(len(names)), " ".join(f"p{j}" for j in range(10))]
        + [f"{n} " + " ".join(["5"] * 10) for n in names],
        "list_attr_celeba.txt": [str(len(names)), " ".join(attrs)]
        + [f"{n} " + " ".join(["1", "-1"] * 20) for n in names],
    }
    for filename, rows in lines.items():
        (folder / filename).write_text("\n".join(rows) + "\n")


def test_fake_celeba(tmp_path, monkeypatch):
    _write_fake_celeba(tmp_path)
    import torchvision.datasets.celeba

    monkeypatch.setattr(torchvision.datasets.celeba, "check_integrity", _files_exist)
    train = load_dataset("celeba", tmp_path, train=True, image_size=16)
    assert len(train) == 3
    x, attributes = train[1]
    assert x.shape == (3, 16, 16)
    assert attributes.shape == (40,) and attributes[:2].tolist() == [1, 0]
    # a flat colour (250, 10, 128) survives JPEG and resizing to within a few levels
    expected = torch.tensor([250, 10, 128], dtype=torch.float32) * 2 / 255 - 1
    assert torch.allclose(x.mean((1, 2)), expected, atol=0.05)
    assert x.min() >= -1 and x.max() <= 1
    test = load_dataset("celeba", tmp_path, train=False)
    assert len(test) == 2 and test[0][0].shape == (3, 64, 64)


# ---------------------------------------------------------------------------------------
# toys and batches
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", TOY_2D)
def test_toy_2d(name):
    x = toy_2d(name, 20000, seed=3)
    assert x.shape == (20000, 2) and x.dtype == torch.float32
    assert torch.isfinite(x).all()
    assert x.mean(0).abs().max() < 0.1
    assert x.var(0).mean().item() == pytest.approx(1.0, abs=0.15)
    assert torch.equal(toy_2d(name, 100, seed=3), toy_2d(name, 100, seed=3))
    assert not torch.equal(toy_2d(name, 100, seed=3), toy_2d(name, 100, seed=4))
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    assert torch.equal(toy_2d(name, 50, generator=g1), toy_2d(name, 50, generator=g2))


def test_toy_aliases_and_unknown():
    assert torch.equal(toy_2d("two_moons", 10, seed=0), toy_2d("moons", 10, seed=0))
    assert torch.equal(toy_2d("circles", 10, seed=0), toy_2d("rings", 10, seed=0))
    with pytest.raises(ValueError, match="8gaussians"):
        toy_2d("spiral galaxy", 10)


def test_checkerboard_fills_only_black_cells():
    x = toy_2d("checkerboard", 5000, seed=0) * 1.155  # back to the [-2, 2]² board
    cells = torch.floor(x).long()
    assert ((cells[:, 0] + cells[:, 1]) % 2 == 0).all()


def test_infinite_batches_run_past_an_epoch():
    ds = digits_dataset(8, train=False)  # 359 images
    it = infinite_batches(ds, 100)
    batches = [next(it) for _ in range(7)]  # three full batches per epoch, so past two epochs
    assert all(b.shape == (100, 1, 8, 8) for b in batches)
    x, y = next(infinite_batches(ds, 10, with_labels=True))
    assert x.shape == (10, 1, 8, 8) and y.shape == (10,)
    a, b = infinite_batches(ds, 10, seed=5), infinite_batches(ds, 10, seed=5)
    assert torch.equal(next(a), next(b))
    with pytest.raises(ValueError, match="fewer than one batch"):
        next(infinite_batches(ds, 1000))


def test_hold_out_split_of_any_labelled_set_keeps_its_own_train_and_test_parts():
    split = anomaly_split("digits", "unused", 3, image_size=8)
    train, test = digits_dataset(8, train=True), digits_dataset(8, train=False)
    assert 3 not in split.train.labels.tolist()
    assert len(split.train) == int((train.labels != 3).sum())
    assert torch.equal(split.test.images, test.images)
    assert torch.equal(split.test_labels, (test.labels == 3).long()) and torch.equal(split.test_digits, test.labels)
    assert torch.equal(split.train.images, train.images[split.train_index])
    with pytest.raises(ValueError, match="held_out must be one of digits's classes 0..9"):
        anomaly_split("digits", "unused", 10)
    with pytest.raises(ValueError, match="celeba has attributes"):
        anomaly_split("celeba", "unused", 1)


@needs_mnist
def test_hold_out_split_of_mnist_is_the_anomaly_protocol(split_1):
    split = anomaly_split("mnist", SHARED_DATA, 1)
    assert torch.equal(split.test_index, split_1.test_index) and torch.equal(split.train_index, split_1.train_index)
