"""`Run`, one training run as a recipe's loop sees it: the processes and the
device, the output directory, the networks' preparation (device, memory
format, ``--compile``), the batches, each player's checked and clipped
update, and the close of every step; it hands checkpoints to `Checkpoints`
and what it writes as it goes to `RunLog`."""

from __future__ import annotations

import math
import os
import random
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from kldiv._checks import device as checked_device
from kldiv.compiler import Estimator, Round
from kldiv.errors import NonFiniteError
from kldiv.train.batches import StepBatchSampler, _collate
from kldiv.train.checkpoints import Checkpoints
from kldiv.train.compile import compile_network, no_donated_buffers
from kldiv.train.config import RunConfig
from kldiv.train.log import RunLog


def _processes_and_device(cfg: RunConfig) -> tuple[int, int, torch.device]:
    """``(rank, world, device)``: under ``torchrun``, join the process group (NCCL on
    GPUs, else Gloo); then the device ``--device`` names, checked, or with ``auto``
    this process's GPU when there is one, else the CPU."""
    rank, world, local = 0, 1, 0
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import torch.distributed as dist

        local = int(os.environ.get("LOCAL_RANK", "0"))
        cuda = torch.cuda.is_available() and cfg.device in ("auto", "cuda")
        if cuda:
            torch.cuda.set_device(local)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if cuda else "gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
    device = checked_device(cfg.device, local=local if world > 1 else None)
    return rank, world, device


class Run:
    """One training run: device, processes, output directory, checkpoints, logs.

    Its checkpoints are ``run.checkpoints`` (a `Checkpoints`: ``checkpoint.pt``,
    ``config.json``, ``--keep``, ``--resume``); its metrics, progress and images
    are ``run.runlog`` (a `RunLog`). With ``--amp fp16``, ``run.scalers`` holds one
    ``torch.amp.GradScaler`` per player (`attach` makes them; checkpointed): `update`
    and `update_all` back-propagate the scaled loss, unscale before their checks and
    clipping, and skip a step whose gradient overflowed, halving that player's scale
    (logged as ``<player>/loss_scale``).

    Arguments:
        cfg: the recipe's config (a [`RunConfig`][kldiv.train.RunConfig] subclass).
        name: the recipe's name (default output directory ``runs/<name>``).
    """

    def __init__(self, cfg: RunConfig, *, name: str):
        self.cfg = cfg
        self.name = name
        self.rank, self.world, self.device = _processes_and_device(cfg)
        self.out = Path(cfg.out or Path("runs") / name)
        self.step = 0
        self.metrics: dict[str, float] = {}
        seed = cfg.seed + 1_000_003 * self.rank  # each rank samples its own noise
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        random.seed(seed)
        if self.device.type == "cuda" and cfg.tf32:
            torch.set_float32_matmul_precision("high")  # TF32 tensor cores for float32 matrix products
            torch.backends.cudnn.allow_tf32 = True  # and convolutions
        self.scalers: dict[str, torch.amp.GradScaler] = {}  # --amp fp16: one loss scale per player (`attach`)
        self.runlog = RunLog(self.out, name=name, cfg=cfg, main=self.is_main)
        self.checkpoints = Checkpoints(self)
        self.checkpoints.check_out_dir()
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)

    @property
    def checkpoint_path(self) -> Path:
        """``<out>/checkpoint.pt``."""
        return self.checkpoints.path

    @checkpoint_path.setter
    def checkpoint_path(self, path: Path) -> None:
        self.checkpoints.path = path

    @property
    def is_main(self) -> bool:
        """Whether this process writes files (rank 0)."""
        return self.rank == 0

    # --- data and networks --------------------------------------------------------------
    def dataset(self, train: bool = True) -> Dataset:
        """The config's data set: ``--data``, ``--data-root``, ``--download``, ``--image-size``.

        With ``--hold-out C`` the training set lacks class ``C`` and the test
        set is labelled 1 for it (`kldiv.data.anomaly_split`)."""
        from kldiv.data import anomaly_split, load_dataset

        cfg = self.cfg
        size = cfg.image_size or None
        if cfg.hold_out >= 0:
            split = anomaly_split(cfg.data, cfg.data_root, cfg.hold_out, download=cfg.download, image_size=size)
            return split.train if train else split.test
        return load_dataset(cfg.data, cfg.data_root, train=train, download=cfg.download, image_size=size)

    def prepare(self, net: nn.Module) -> nn.Module:
        """Move a network to the device, with ``--channels-last`` put its 4-D
        tensors (convolution weights) in the channels-last memory format, and,
        with ``--compile``, compile it. Build the densities from what this
        returns; keep the original for checkpoints (`attach`).

        Every network is compiled, spectrally normalised ones included (see
        `compile_network`). The memory format is changed in place, parameter
        by parameter, so the original module is channels-last too; its
        ``state_dict`` is the same either way, and a checkpoint written with
        ``--channels-last`` resumes without it and the other way round."""
        net = net.to(self.device)
        if self.cfg.channels_last:
            net = net.to(memory_format=torch.channels_last)  # rank-4 tensors only; the others stay as they are
        if not self.cfg.compile:
            return net
        return compile_network(net, self.cfg.compile_mode)

    def attach(
        self,
        estimator: Estimator,
        networks: Mapping[str, nn.Module],
        optimizers: Mapping[str, torch.optim.Optimizer],
        schedulers: Mapping[str, object] | None = None,
        extra_state: Mapping[str, object] | None = None,
        architecture: Mapping[str, tuple[str, Mapping]] | None = None,
        clip: Mapping[str, float] | None = None,
    ) -> None:
        """Register what the checkpoints hold, wrap the players' networks for
        several processes, and resume if asked.

        Arguments:
            estimator: the compiled game.
            networks: the networks by name (the uncompiled modules).
            optimizers: one optimiser per player, keyed by player name.
            schedulers: learning-rate schedulers stepped once per epoch.
            extra_state: objects with ``state_dict``/``load_state_dict`` (e.g.
                a persistent sampler buffer) to checkpoint too.
            architecture: how to rebuild the networks (see
                [`build_networks`][kldiv.train.build_networks]), stored in checkpoints.
            clip: per player, the norm its gradient is clipped at before its
                update (``torch.nn.utils.clip_grad_norm_``); players not named
                get ``--clip-grad`` (0: no clipping). The norm before clipping
                is logged as ``<player>/grad_norm``.
        """
        self.estimator = estimator
        self.networks = dict(networks)
        self.optimizers = dict(optimizers)
        self.schedulers = dict(schedulers or {})
        self.extra_state = dict(extra_state or {})
        self.architecture = {k: (path, dict(kw)) for k, (path, kw) in (architecture or {}).items()}
        missing = set(estimator.plans) - set(self.optimizers)
        if missing:
            raise ValueError(f"give an optimiser for every player; missing {sorted(missing)}")
        self.clip = {name: float(self.cfg.clip_grad) for name in estimator.plans}
        for name, norm in (clip or {}).items():
            if name not in self.clip:
                raise ValueError(f"clip names no player {name!r}; the players are {sorted(self.clip)}")
            self.clip[name] = float(norm)
        bad = {k: v for k, v in self.clip.items() if not (math.isfinite(v) and v >= 0)}
        if bad:
            raise ValueError(f"gradient clipping norms must be finite and >= 0 (0: off), got {bad}")
        if self.cfg.amp == "fp16":
            self.scalers = {name: torch.amp.GradScaler(self.device.type) for name in estimator.plans}
        self.ema: dict[str, nn.Module] = {}
        if self.cfg.ema:
            from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

            avg = get_ema_multi_avg_fn(self.cfg.ema)
            # parameters are averaged; buffers are copied from the live network (batch-norm statistics,
            # and spectral norm's power-iteration vectors, whose average is no singular vector at all)
            self.ema = {k: AveragedModel(m, multi_avg_fn=avg, use_buffers=False) for k, m in self.networks.items()}
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            trained = {id(m) for p in estimator.game.players for m in p.networks}
            wrappers = {}
            for m in estimator._networks.values():
                if id(m) in trained and any(q.requires_grad for q in m.parameters()):
                    ids = [self.device.index] if self.device.type == "cuda" else None
                    wrappers[m] = DDP(m, device_ids=ids)
            estimator.distribute(wrappers)
        if self.cfg.resume:
            self.checkpoints.resume()
        if self.is_main:  # after a resume has been accepted: a refused one writes nothing
            self.checkpoints.write_config()

    # --- checkpoints (`Checkpoints`) ----------------------------------------------------
    def save(self) -> None:
        """Write the checkpoint (rank 0 only), atomically; with ``--keep N`` also
        keep it as ``checkpoint-STEP.pt`` and remove the numbered ones older than the last N."""
        self.checkpoints.save()

    # --- the loop -----------------------------------------------------------------------
    def batches(self, dataset: Dataset | Tensor) -> Iterator[Tensor]:
        """The remaining batches of the run (from the resumed step to ``--steps``),
        on the device; ``self.step`` is the index of the batch being yielded."""
        n = dataset.shape[0] if isinstance(dataset, Tensor) else len(dataset)
        sampler = StepBatchSampler(
            n, self.cfg.batch_size, seed=self.cfg.seed, start=self.step, stop=self.cfg.steps,
            rank=self.rank, world=self.world,
        )
        self.steps_per_epoch = sampler.steps_per_epoch
        if isinstance(dataset, Tensor):
            source = (dataset[idx] for idx in sampler)
        else:
            # The loader's own generator: creating its iterator must not draw from the
            # global one, or a resumed run would sample different noise.
            loader_rng = torch.Generator().manual_seed(self.cfg.seed + self.step)
            source = iter(DataLoader(dataset, batch_sampler=sampler, num_workers=self.cfg.num_workers,
                                     collate_fn=_collate, pin_memory=self.device.type == "cuda",
                                     generator=loader_rng))
        self.runlog.start(self.step)
        for x in source:
            yield self.place(x)

    def place(self, x: Tensor) -> Tensor:
        """A batch as `batches` yields it: on the device and, with ``--channels-last``,
        an image batch ``(n, C, H, W)`` in the channels-last memory format."""
        fmt = torch.channels_last if self.cfg.channels_last and x.dim() == 4 else torch.preserve_format
        return x.to(self.device, non_blocking=True, memory_format=fmt)

    def autocast(self):
        """The ``--amp`` autocast context: bfloat16 or float16 (a no-op with ``--amp none``)."""
        dtype = torch.float16 if self.cfg.amp == "fp16" else torch.bfloat16
        return torch.autocast(self.device.type, dtype=dtype, enabled=self.cfg.amp != "none")

    def _step(self, player: str) -> None:
        """Step ``player``'s optimiser; with ``--amp fp16`` through its loss scaler, which
        skips a step whose gradient overflowed (found by `_backward`) and halves the scale."""
        scaler = self.scalers.get(player)
        if scaler is None:
            self.optimizers[player].step()
            return
        scaler.step(self.optimizers[player])
        scaler.update()
        if self.logging:
            self.metrics[f"{player}/loss_scale"] = float(scaler.get_scale())

    def update(self, r: Round, player: str) -> float | None:
        """Back-propagate ``player``'s loss in round ``r``, check it, clip its gradient
        (``clip``), and step its optimiser (one line of a sequential schedule such as
        the papers' Algorithm 1). Returns the player's value when the round computed
        it (``values=True``), else ``None``.

        Raises:
            NonFiniteError: the loss or a gradient is NaN/inf; nothing is
                updated and the last checkpoint stays as it was.
        """
        self._backward(r, player)
        self._step(player)
        return self._record(r, player)

    def update_all(self, r: Round) -> dict[str, float | None]:
        """Every player's gradient from the same parameters, then every optimiser
        steps (a simultaneous schedule: one shared evaluation per round).

        A network trained by two players is stepped by each player's optimiser
        with that player's gradient alone (as in a sequential schedule, where
        the second player's gradient is taken after the first one's update):
        the gradients are kept apart, never summed."""
        names = list(self.estimator.plans)
        grads: dict[str, list] = {}
        for name in names:
            self._backward(r, name)
            params = self.estimator.parameters(name)
            grads[name] = [q.grad for q in params]
            for q in params:
                q.grad = None
        for name in names:
            for q, g in zip(self.estimator.parameters(name), grads[name]):
                q.grad = g
            self._step(name)
        return {name: self._record(r, name) for name in names}

    def _backward(self, r: Round, player: str) -> None:
        self.optimizers[player].zero_grad(set_to_none=True)
        scaler = self.scalers.get(player)
        try:
            with self.autocast(), no_donated_buffers():  # players share compiled graphs (retain_graph)
                loss = r.backward(player, scale=None if scaler is None else scaler.scale)
        except NonFiniteError as err:  # a network output caught by the first-round checks
            raise NonFiniteError(f"{err}\n{self._stop_note(player)}") from err
        if scaler is not None:
            scaler.unscale_(self.optimizers[player])  # the true gradient, for the checks and clipping below
        grads = [p.grad for p in self.estimator.parameters(player) if p.grad is not None]
        loss_ok = torch.isfinite(loss.detach()).all()
        grads_ok = torch.stack([torch.isfinite(g).all() for g in grads]).all() if grads else loss_ok
        if not bool(loss_ok) or (scaler is None and not bool(grads_ok)):
            what = "loss" if not bool(loss_ok) else "gradient"
            raise NonFiniteError(f"the {what} is not finite.\n{self._stop_note(player)}")
        if scaler is not None and not bool(grads_ok) and scaler.get_scale() <= 1:
            # above a scale of 1 an overflow is the scale's (the scaler skips the step and halves it);
            # at 1 or below, the gradient itself is not finite
            raise NonFiniteError(f"the gradient is not finite under --amp fp16 at a loss scale of "
                                 f"{scaler.get_scale():g}: it overflows even unscaled.\n{self._stop_note(player)}")
        bound = self.cfg.max_loss
        if bound > 0 and float(loss.detach().abs().max()) > bound:
            raise NonFiniteError(
                f"the loss is {float(loss.detach().abs().max()):.3g} in magnitude, beyond --max-loss {bound:g}: "
                f"the run is diverging.\n{self._stop_note(player)}"
            )
        max_norm = self.clip.get(player, 0.0)
        if max_norm > 0 and grads and (scaler is None or bool(grads_ok)):
            norm = torch.nn.utils.clip_grad_norm_(self.estimator.parameters(player), max_norm)
            if self.logging:
                self.metrics[f"{player}/grad_norm"] = float(norm)

    def _stop_note(self, player: str) -> str:
        where = f"player {player!r} in step {self.step + 1} of {self.cfg.steps}: the run stops before updating. "
        last_saved = self.checkpoints.last_saved
        if last_saved is None and not self.cfg.resume:
            return where + (f"No checkpoint was written yet (the first is due after step "
                            f"{min(self.cfg.checkpoint_every, self.cfg.steps)}); start again, perhaps with a "
                            "lower learning rate or --amp none.")
        last = (f"{self.checkpoint_path} (after step {last_saved})" if last_saved is not None
                else f"{self.checkpoint_path} as it was")
        return where + (f"The last good checkpoint is {last}; resume from it with --resume, perhaps with a "
                        "lower learning rate or --amp none.")

    @property
    def logging(self) -> bool:
        """Whether the step in progress writes metrics (every ``--log-every`` steps and
        the last): open its round with ``step.round(x, values=run.logging)``, so the
        players' full values are computed on those steps only."""
        return (self.step + 1) % self.cfg.log_every == 0 or self.step + 1 == self.cfg.steps

    def _record(self, r: Round, player: str) -> float | None:
        if not r.values:  # the value is up to the value-only terms: nothing worth logging
            return None
        value = float(r.value(player))
        self.metrics[player] = value
        for label, v in r.terms(player).items():
            self.metrics[f"{player}/{label}"] = float(v)
        for i, group in enumerate(self.optimizers[player].param_groups):
            self.metrics[f"{player}/lr" + (f"{i}" if i else "")] = float(group["lr"])
        return value

    def end_step(self, **extra: float) -> None:
        """Close the step: log, checkpoint and step the per-epoch schedulers on schedule."""
        self.metrics.update({k: float(v) for k, v in extra.items()})
        self.step += 1
        for k, a in self.ema.items():
            a.update_parameters(self.networks[k])
            with torch.no_grad():
                for mine, live in zip(a.module.buffers(), self.networks[k].buffers()):
                    mine.copy_(live)
        if self.schedulers and self.step % self.steps_per_epoch == 0:
            for s in self.schedulers.values():
                s.step()
        cfg = self.cfg
        if self.is_main and (self.step % cfg.log_every == 0 or self.step == cfg.steps):
            self.log(self.metrics)
            players = self.estimator.plans if getattr(self, "estimator", None) is not None else ()
            self.runlog.print_progress(self.step, self.metrics, players)  # without a terminal
        if self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps:
            self.save()
            self.checkpoints.last_saved = self.step
        self.runlog.tick(self.step, self.metrics)

    def should_sample(self) -> bool:
        """Whether this step (already closed by `end_step`) writes sample grids."""
        return self.is_main and (self.step % self.cfg.sample_every == 0 or self.step == self.cfg.steps)

    # --- what the run writes (`RunLog`) -------------------------------------------------
    def log(self, metrics: Mapping[str, float]) -> None:
        """Append one JSON line ``{"step", "time", **metrics}`` to ``metrics.jsonl``."""
        self.runlog.log(self.step, metrics)

    def save_images(self, name: str, images: Tensor, nrow: int = 10) -> Path | None:
        """Save images in [-1, 1] as a PNG grid ``<out>/<name>.png`` (rank 0)."""
        return self.runlog.save_images(name, images, nrow=nrow)

    def snapshot(self, generator: nn.Module, z: Tensor, encoder: nn.Module | None = None,
                 x: Tensor | None = None) -> None:
        """Write ``samples.png`` (``generator(z)``) and, with an encoder, ``reconstructions.png``
        (data rows above their reconstructions ``g(mu_q(x))``), networks in eval mode."""
        self.runlog.snapshot(generator, z, encoder, x)

    def close(self) -> None:
        """Say what the run wrote, and tear down the process group of a distributed run."""
        self.runlog.close(self.step)
        if self.world > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
